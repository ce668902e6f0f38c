"""The NCHW forward's tiles split over threads, each tile on one thread.

The plain tile loop unfolds a tile with numba's threads, then multiplies it with BLAS's
threads: every tile hands the cores from one pool to the other, and each multi-threaded
GEMM waits for its slowest thread (see ``fastconv._blas``). When there are several
large tiles per thread, each thread here takes a run of whole tiles instead, unfolding
with a serial copy of the unfold kernel and multiplying on one BLAS thread; the threads
meet once, at the end.

Examples
--------
>>> import numpy as np
>>> import fastconv
>>> from fastconv._args import conv_args_from_shapes
>>> a = conv_args_from_shapes("conv2d", (16, 64, 56, 56), (128, 64, 3, 3), 2, 1)
>>> split_tiles(a, threads=2)    # 4 tiles of 4 images: two per thread
True
>>> x = np.ones((2, 3, 5, 5), np.float32)
>>> float(fastconv.conv2d(x, np.ones((4, 3, 3, 3), np.float32), algo="im2col")[0, 0, 0, 0])
27.0
"""

from __future__ import annotations

import contextlib

import numba
import numpy as np

from ... import _blas, config
from ..._runtime import parallel_guard
from .._common import view, workspace
from .phased_unfold import (
    col2im_phased,
    col2im_phased_serial,
    im2col_phased,
    im2col_phased_serial,
)
from .tiling import column_buffer, gemm_sizes, tile_count, tiles, tiling, unfold_params
from .unfold import _col2im_nchw, _col2im_nchw_serial, _im2col_nchw, _im2col_nchw_serial

#: Split tiles over the threads when each tile's GEMMs hold at least this many
#: multiply-adds (smaller ones already run on one BLAS thread, ``config.SMALL_GEMM_MACS``)
#: and there are at least ``SPLIT_MIN_TILES_PER_THREAD`` tiles per thread (or a multiple of
#: the thread count), so that the threads finish together.
SPLIT_MIN_TILES_PER_THREAD = 2

#: The split grad_x-only backward's whole-image tiles hold at most this many bytes of
#: columns (at least one image): the fold reads the column gradients the GEMM has just
#: written, from the per-core L2 cache when they fit (the decoder layer's
#: conv_transpose2d, one 1.6 MB image a tile: 6.8 ms against 7.5 ms in tiles of five
#: images; with grad_w too, no faster).
SPLIT_BACKWARD_TILE_BYTES = 2 << 20


def split_tiles(args, threads: int | None = None) -> bool:
    """Whether the NCHW forward of ``args`` runs its tiles split over the threads:
    several tiles per thread (a multiple of the thread count, or at least
    ``SPLIT_MIN_TILES_PER_THREAD`` each) whose GEMMs are not small."""
    threads = numba.get_num_threads() if threads is None else threads
    if threads < 2 or args.dims.channels_last:
        return False
    t = tiling(args)
    if t.image_last:
        return False
    count = tile_count(args, t)
    g, dg, cgkk = gemm_sizes(args)
    macs = t.images * g * dg * cgkk * t.band * args.w_out
    even = count % threads == 0 or count >= SPLIT_MIN_TILES_PER_THREAD * threads * 2
    return count >= SPLIT_MIN_TILES_PER_THREAD * threads and even and \
        macs > config.SMALL_GEMM_MACS


def _parts(args, tile_bytes: int | None = None, t=None):
    """(tiling, each thread's run of tiles) for the tiling ``t`` (default: ``tiling``).
    Tiles of whole images: the batch cut into
    one even run of images per thread, each run into tiles of at most ``images`` (16
    images in tiles of 5 would give the threads 10 and 6), and of at most
    ``tile_bytes`` of columns when given (at least one image); bands of rows: the tiles
    in order, an even share of them per thread."""
    t = tiling(args) if t is None else t
    if t.band == args.h_out:
        per_tile = t.images
        if tile_bytes is not None:
            per_tile = max(1, min(per_tile, tile_bytes * t.images // t.col_bytes))
        threads = min(numba.get_num_threads(), args.n)
        runs = []
        for k in range(threads):
            lo, hi = args.n * k // threads, args.n * (k + 1) // threads
            count = -(-(hi - lo) // per_tile)
            cuts = [lo + (hi - lo) * m // count for m in range(count + 1)]
            runs.append([(cuts[m], cuts[m + 1] - cuts[m], 0, args.h_out)
                         for m in range(count)])
        return t, runs
    todo = list(tiles(args, t))
    threads = min(numba.get_num_threads(), len(todo))
    bounds = [len(todo) * k // threads for k in range(threads + 1)]
    return t, [todo[bounds[k]:bounds[k + 1]] for k in range(threads)]


def forward_split(x, wmat, args, out, bias_g, t=None) -> None:
    """The NCHW tile loop of ``drivers._forward_nchw`` with runs of whole tiles per
    thread (``split_tiles``): serial unfold, GEMM on one BLAS thread, into ``out``.
    ``t``: the tiles (default ``tiling``; ``panels.panel_tiling``'s cache-sized ones)."""
    t, runs = _parts(args, t=t)
    g, dg, cgkk = wmat.shape
    ckk = g * cgkk
    conv = unfold_params(args)
    unfold = _unfold_fold(conv, parallel=False)[0]

    def part(k: int) -> None:
        buf = column_buffer(args, t)  # per thread
        for n0, nb, i0, band in runs[k]:
            length = band * args.w_out
            cols = view(buf[:nb * ckk * length], (nb, ckk, length))
            unfold(x, cols, n0, i0, *conv)
            y = view(out[n0:n0 + nb, :, i0:i0 + band, :], (nb, g, dg, length))
            np.matmul(wmat, view(cols, (nb, g, cgkk, length)), out=y)
            if bias_g is not None:
                y += bias_g

    _blas.on_threads(part, len(runs))


def split_backward(args) -> bool:
    """Whether the NCHW backward of ``args`` runs split over the threads: as the forward
    (``split_tiles``), with tiles of whole images (the folds of two bands of one image
    would add into the same input rows)."""
    return split_tiles(args) and tiling(args).band == args.h_out


def backward_split(gy, x, wmat, args, grad_x, gw) -> None:
    """The NCHW tile loop of ``drivers._backward_nchw`` with runs of whole-image tiles
    per thread (``split_backward``): grad_x (or None) zeroed and folded by each thread
    in its own images, tile by tile (zeroing the stride-2 layer's 16 images on the
    calling thread first took about 1 ms of the 17; a tile's images are in cache for
    its fold); gw (G, Dg, Cg*KH*KW) (or None) = the sum of the threads' parts
    (each summed transposed, ``backward_tile``).
    """
    t, runs = _parts(args, SPLIT_BACKWARD_TILE_BYTES if gw is None else None)
    conv = unfold_params(args)
    sums = [None] * len(runs)

    def part(k: int) -> None:
        buf = column_buffer(args, t)  # per thread
        acc = None if gw is None else np.zeros(transposed_shape(gw), gw.dtype)
        for tile in runs[k]:
            if grad_x is not None:
                grad_x[tile[0]:tile[0] + tile[1]] = 0    # numpy releases the GIL here
            backward_tile(gy, x, wmat, grad_x, acc, buf, tile, conv, parallel=False)
        sums[k] = acc

    _blas.on_threads(part, len(runs))
    if gw is not None:
        gw[...] = sum(sums[1:], sums[0]).transpose(0, 2, 1)


def transposed_shape(gw) -> tuple[int, int, int]:
    """(G, Cg*KH*KW, Dg): the weight gradient (G, Dg, Cg*KH*KW) as ``backward_tile``
    sums it."""
    return gw.shape[0], gw.shape[2], gw.shape[1]


def _unfold_fold(conv, parallel: bool):
    """The NCHW unfold and fold kernels for the tile geometry ``conv``
    (``unfold_params``): at a column stride above 1 through the column phases
    (``phased_unfold``; one core, the stride-2 layer's 16 images: unfold 5.6-6.1 ->
    2.2-2.5 ms, fold 6.5 -> 2.9-3.6 ms), else the plain ones; with ``parallel`` on
    numba's threads, else their serial twins."""
    if conv[2] > 1:
        return (im2col_phased, col2im_phased) if parallel else (im2col_phased_serial,
                                                                col2im_phased_serial)
    return (_im2col_nchw, _col2im_nchw) if parallel else (_im2col_nchw_serial,
                                                          _col2im_nchw_serial)


def backward_tile(gy, x, wmat, grad_x, gw_t, buf, tile, conv, parallel: bool) -> None:
    """One NCHW tile (n0, nb, i0, band) of the backward: gw_t (G, Cg*KH*KW, Dg), the
    weight gradient transposed (or None), += cols @ gy_tile^T per image (this orientation
    runs ~13% faster in OpenBLAS than gy_tile @ cols^T on 3x3 layers: the long side of
    the result along the rows), and W^T @ gy_tile folded into grad_x (or None). With
    ``parallel`` the unfold and fold use numba's threads and the GEMMs ``_blas.matmul``
    and ``_blas.matmul_sum``; otherwise all of it runs on the calling thread
    (``backward_split``)."""
    n0, nb, i0, band = tile
    g, dg, cgkk = wmat.shape
    length = band * conv[0]
    cols = view(buf[:nb * g * cgkk * length], (nb, g * cgkk, length))
    cols4 = view(cols, (nb, g, cgkk, length))
    gyt = view(gy[n0:n0 + nb, :, i0:i0 + band, :], (nb, g, dg, length))
    unfold, fold = _unfold_fold(conv, parallel)
    matmul = _blas.matmul if parallel else np.matmul
    with parallel_guard() if parallel else contextlib.nullcontext():
        if gw_t is not None:
            unfold(x, cols, n0, i0, *conv)
            tmp = view(workspace("im2col.grad_w", gw_t.size, gw_t.dtype), gw_t.shape)
            if parallel:      # the tile's per-image terms, a run per thread
                gw_t += _blas.matmul_sum(cols4, gyt.transpose(0, 1, 3, 2), tmp)
            else:
                for bi in range(nb):
                    gw_t += np.matmul(cols4[bi], gyt[bi].transpose(0, 2, 1), out=tmp)
        if grad_x is not None:
            matmul(wmat.transpose(0, 2, 1), gyt, out=cols4)
            fold(cols, grad_x, n0, i0, *conv)
