"""F(4x4, 3x3) on NCHW through the fused tile kernels of ``nhwc_tiles``: each task stages
the rows its tiles read channels last, runs the NHWC tile transforms and register
products on them, and writes its output rows back to NCHW.

The NHWC transforms run on whole vectors of channels (``nhwc_tiles``), which NCHW holds
one plane apart. As in NHWC, a task takes a block of consecutive tiles of the batch
(``nhwc_tiles.block_tiles``); for each tile row the block touches it copies the columns
its tiles read of the row's 6 input rows (zero padding included) into a channels-last
buffer of its own, 8 channels x a vector of columns at a time, transposed in registers
(``_lanes.store_columns``); it transforms its tiles from there, multiplies them by the
transformed kernel in registers, transforms the products into a channels-last buffer of
its output rows and writes those back to y's planes the same way. Both copies stay in
the core's cache, where the chunked NCHW path (``drivers._run_nchw``: transforms over
planes, then BLAS GEMMs) moved the transformed tiles through memory. x and y may be any
strided views (a dilated layer's phases; then one value at a time).

>>> import numpy as np
>>> from fastconv import conv2d
>>> x = np.ones((2, 32, 16, 16), np.float32)           # NCHW
>>> w = np.ones((32, 32, 3, 3), np.float32)            # OIHW
>>> y = conv2d(x, w, padding=1, algo="winograd")
>>> float(y[0, 0, 3, 3]), float(y[1, 31, 0, 0])
(288.0, 128.0)
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ... import _lanes, config
from ..._runtime import guarded
from ..._small_gemm import TILE_ROWS_1
from .._common import U
from ..staging import raveled, stage_in, stage_out
from .nhwc_tiles import (
    block_buffers,
    block_tiles,
    fused_applies,
    tile_in4,
    tile_out4,
    tile_products,
)


def applies(x_shape, y_shape, itemsize: int, groups: int, m: int) -> bool:
    """Whether ``forward`` runs this NCHW F(m x m, 3x3) (x (N, C, H, W), y (N, D, Ho,
    Wo)): where the NHWC fused forward would (``nhwc_tiles.fused_applies``). On small
    maps too: forward, 2 threads, batch 32, fused / the chunked path it replaces: 32 ->
    32 at 14x14 0.54 / 0.73 ms, 64 -> 64 at 7x7 0.57 / 0.88 (AMD EPYC, AVX-512); the
    cost model weighs it against the other algorithms."""
    n, c, h, w = x_shape
    _, d, ho, wo = y_shape
    return fused_applies((n, h, w, c), (n, ho, wo, d), itemsize, groups, m, None)


def staging_bytes(c_in: int, c_out: int, w_out: int, itemsize: int) -> int:
    """Bytes of a task's staging buffers (``_fused_nchw``): the input rows of the tile
    rows a block touches and their output rows, channels last."""
    tw = -(-w_out // 4)
    slots = _slots(block_tiles(c_in, c_out, itemsize), tw)
    return slots * (6 * (4 * tw + 2) * c_in + 4 * 4 * tw * c_out) * itemsize


def _slots(block: int, tw: int) -> int:
    """Tile rows of ``tw`` tiles that ``block`` consecutive tiles can touch."""
    return (block + tw - 2) // tw + 1


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _fused_nchw(x, xf, ut, y, yf, add, pads, block, slots, flags):
    """y (N, D, Ho, Wo) = F(4x4, 3x3) of x (N, C, H, W) (any strides) with the
    transformed kernel ut (36, C, D) (C-contiguous), padding pads = (top, left), plus
    add (D,): one task per block of ``block`` consecutive tiles of the batch, as
    ``nhwc_tiles._fused``, each tile row it touches staged channels last (the task's
    columns of its 6 input rows in, of its 4 output rows out; module docstring), at
    most ``slots`` of them (``_slots``). xf, yf:
    x and y raveled where C-contiguous, else empty (``stage_in``, ``stage_out``).
    flags[task]: whether the task wrote a NaN or +-Inf."""
    n_img, c_all, _, _ = x.shape
    _, d_all, ho, wo = y.shape
    th, tw = (ho + 3) // 4, (wo + 3) // 4
    total = n_img * th * tw
    rows = max(block, TILE_ROWS_1)
    ucg, udg = U(c_all), U(d_all)
    fu = ut.reshape(ut.size)
    pt, pl = pads
    in_cols, out_cols = 4 * tw + 2, 4 * tw
    nl = _lanes.count(add)
    for task in prange((total + block - 1) // block):
        k0 = task * block
        count = min(total, k0 + block) - k0
        r_first = k0 // tw
        n_rows = (k0 + count - 1) // tw - r_first + 1
        xs = np.empty(slots * 6 * in_cols * c_all, x.dtype)
        ys = np.empty(slots * 4 * out_cols * d_all, x.dtype)
        for s in range(n_rows):              # stage the task's columns of each tile row
            r = r_first + s
            j_lo, j_hi = max(0, k0 - r * tw), min(tw, k0 + count - r * tw)
            stage_in(x, xf, r // th, r % th * 4 - pt, -pl, 6,
                      (4 * j_lo, 4 * j_hi + 2, in_cols), xs, s * 6 * in_cols * c_all)
        v, p, d, tmp, buf = block_buffers(x, count, rows, c_all, d_all)
        in_shape = (1, slots * 6, in_cols, c_all)
        in_grid = (slots * 6, in_cols, 0, 0, 1, 1)
        for t in range(count):
            kk = k0 + t
            tile_in4(xs, in_shape, 0, c_all, 0, (kk // tw - r_first) * 6, kk % tw * 4,
                     in_grid, d, tmp, v, U(t) * ucg, U(rows) * ucg)
        tile_products(v, fu, p, count, rows, c_all, d_all)
        nan = _lanes.zeros(buf)
        bad = 0
        out_shape = (1, slots * 4, out_cols, d_all)
        for t in range(count):
            kk = k0 + t
            s = kk // tw - r_first
            # (the tile row's last output row: the block is cut there, and at Wo)
            last = s * 4 + min(4, ho - kk // tw % th * 4)
            nan, b = tile_out4(p, U(t) * udg, U(rows) * udg, d_all, ys, out_shape, 0, 0,
                               s * 4, kk % tw * 4, (last, wo, 0, 0, 1, 1), add, buf, nan)
            bad += b
        for s in range(n_rows):
            r = r_first + s
            j_lo, j_hi = max(0, k0 - r * tw), min(tw, k0 + count - r * tw)
            stage_out(ys, s * 4 * out_cols * d_all, (4 * j_lo, min(wo, 4 * j_hi), out_cols),
                       y, yf, r // th, r % th * 4, min(4, ho - r % th * 4))
        for lane in range(nl):
            bad += not (abs(_lanes.lane(nan, lane)) < math.inf)
        flags[task] = bad > 0


def forward(x, ut, y, bias, pads) -> bool:
    """y (N, D, Ho, Wo) = F(4x4, 3x3) of x (N, C, H, W) (any strides) with the
    transformed kernel ut (1, 36, C, D) in the tile kernels' order
    (``kernel.transform_kernel_io``), padding (top, left), plus bias; for layers
    ``applies`` accepts. Returns whether every output is finite."""
    ut = ut[0]
    add = np.zeros(y.shape[1], y.dtype) if bias is None else np.ascontiguousarray(bias, y.dtype)
    block = block_tiles(x.shape[1], y.shape[1], x.itemsize)
    tiles = y.shape[0] * -(-y.shape[2] // 4) * -(-y.shape[3] // 4)
    flags = np.zeros(-(-tiles // block), np.bool_)
    slots = _slots(block, -(-y.shape[3] // 4))
    guarded(_fused_nchw)(x, raveled(x), ut, y, raveled(y), add, pads, block, slots, flags)
    return not flags.any()
