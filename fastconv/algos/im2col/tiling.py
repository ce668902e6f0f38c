"""How im2col cuts the batch into tiles, and the workspace a tile needs."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ... import config
from .._common import geometry, workspace

#: NCHW tiles of at least this many images whose output rows are at most this wide are
#: unfolded image-index-last (``image_last._im2col_chwn``): rows of a few pixels copy
#: slowly, runs of pixels x images do not. Wider rows copy fast as they are and skip the
#: extra passes.
IMAGE_LAST_MAX_WIDTH = 16
IMAGE_LAST_MIN_IMAGES = 4


@dataclass(frozen=True)
class Tiling:
    """How the batch is cut: ``images`` whole images per tile, or a ``band`` of output
    rows of one image (images == 1 and band < h_out). ``image_last``: the NCHW forward
    unfolds the tile with the image index innermost."""

    images: int
    band: int
    col_bytes: int  # size of the column buffer
    image_last: bool = False


def tiling(args, chunk_bytes: int | None = None, budget: int | None = None) -> Tiling:
    """Pick the tile for ``args``: as many whole images as fit in ``chunk_bytes``
    (``config.IM2COL_CHUNK_BYTES``, at most ``budget``, ``config.WORKSPACE_BYTES``) of
    unfolded columns, else as many output rows of one image (at least one)."""
    chunk = config.IM2COL_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    budget = config.WORKSPACE_BYTES if budget is None else budget
    chunk = max(1, min(chunk, budget))
    item = args.dtype.itemsize
    ckk = args.c_in * args.kh * args.kw
    row_bytes = ckk * args.w_out * item
    image_bytes = row_bytes * args.h_out
    if image_bytes <= chunk:
        images = max(1, min(args.n, chunk // max(image_bytes, 1)))
        image_last = (not args.dims.channels_last and images >= IMAGE_LAST_MIN_IMAGES  # NCHW only
                      and args.w_out <= IMAGE_LAST_MAX_WIDTH)
        return Tiling(images, args.h_out, images * image_bytes, image_last)
    band = max(1, min(args.h_out, chunk // max(row_bytes, 1)))
    return Tiling(1, band, band * row_bytes)


def tile_count(args, t: Tiling) -> int:
    """How many tiles ``t`` cuts the problem into."""
    return math.ceil(args.n / t.images) * math.ceil(args.h_out / t.band)


def gemm_shapes(args) -> tuple[int, int, int, int]:
    """(M, K, N, count): the forward issues ``count`` products (M x K) @ (K x N). NCHW:
    weights @ columns per image, band and group (per tile and group for image-last
    tiles; one batched product per image and group for pointwise layers); NHWC: columns
    (tile pixels) @ weights per tile and group."""
    g = args.groups
    m, cg = args.c_out // g, args.c_in // g
    t = tiling(args)
    tiles = tile_count(args, t)
    pixels = args.n * args.h_out * args.w_out
    if args.dims.channels_last:
        return pixels // tiles, cg * args.kh * args.kw, m, tiles * g
    if is_pointwise(args):
        return m, cg, args.h * args.w, args.n * g
    gemms = tiles if t.image_last else tiles * t.images  # image-last: one GEMM per tile
    return m, cg * args.kh * args.kw, pixels // gemms, gemms * g


def is_pointwise(args) -> bool:
    """1x1 kernel, stride 1, no padding: the input already is the column matrix."""
    return (args.kh == args.kw == 1 and args.stride == (1, 1)
            and args.padding == ((0, 0), (0, 0)))


def tiles(args, t: Tiling) -> Iterator[tuple[int, int, int, int]]:
    """(n0, nb, i0, band) of every tile of ``t``: images n0 .. n0 + nb - 1, output rows
    i0 .. i0 + band - 1, in the order the drivers run them."""
    for n0 in range(0, args.n, t.images):
        nb = min(t.images, args.n - n0)
        for i0 in range(0, args.h_out, t.band):
            yield n0, nb, i0, min(t.band, args.h_out - i0)


def column_buffer(args, t: Tiling) -> np.ndarray:
    """This thread's workspace for the column buffer of one tile of ``t``."""
    return workspace("im2col.cols", t.col_bytes // args.dtype.itemsize, args.dtype)


def gemm_sizes(args) -> tuple[int, int, int]:
    """(G, Dg, Cg*KH*KW): groups, output channels per group and the rows of a group's
    columns (the GEMMs' inner dimension)."""
    g = args.groups
    return g, args.c_out // g, (args.c_in // g) * args.kh * args.kw


def unfold_params(args) -> tuple:
    """(Wo, s_h, s_w, p_top, p_left, r_h, r_w, KH, KW): the arguments the unfold and fold
    kernels take after the tile's position."""
    return (args.w_out, *geometry(args), args.kh, args.kw)
