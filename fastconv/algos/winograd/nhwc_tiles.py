"""F(4x4, 3x3) on NHWC, one tile at a time: the input transform of a tile
(``tile_in4``), its output transform (``tile_out4``), and the fused forward
(``fused_forward``) that runs both around the tile's products in one kernel.

A tile's channels are contiguous in NHWC, so each transform runs ``f4``'s B^T or A^T on
whole vectors of channels (``fastconv._lanes``; the compiler's own loops over a few dozen
channels ran as scalar code, their vector bodies being longer), the channels beyond the
last whole vector one at a time. A vector's 6x6 block is read straight from x, rows and
columns in the padding as zeros, and the results of the pass down the columns wait in
L1 for the pass along the rows (36 vectors in, 24 out). Against copying the block out
first and running each pass over all channels: the input transform 0.7-0.8x the time,
the fused forward 0.82x on 16 -> 16 channels at 28x28 (batch 32) with the output
transform alike, 0.90x on 32 -> 32 at 32x32 (2 threads).

The fused forward gives each task a block of consecutive tiles of the batch: it
transforms them into a buffer of its own, multiplies the 36 planes by the transformed
kernel in registers (``_small_gemm._tile``) and transforms the products into the output,
so that the transformed tiles never leave the core's cache (through shared chunks they
went to memory and back twice: cifar's 32 -> 32 layer at 32x32, batch 64, took 9.3-10 ms
so, against 6 for torch).

>>> import numpy as np
>>> from fastconv import conv2d
>>> x = np.ones((2, 8, 8, 32), np.float32)             # NHWC
>>> w = np.ones((3, 3, 32, 32), np.float32)            # HWIO
>>> y = conv2d(x, w, padding=1, layout="NHWC", algo="winograd")
>>> float(y[0, 3, 3, 0]), float(y[1, 0, 0, 31])
(288.0, 128.0)
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ... import _lanes, config
from ..._args.memo import per_problem
from ..._runtime import guarded
from ..._small_gemm import TILE_ROWS, TILE_ROWS_1, _tile, _tile1
from .._common import U
from .f4 import _at6, _bt6
from .tasks import _scalars

#: Bytes of transformed tiles and products a fused task aims at (``block_tiles``): they
#: stay in the core's L2 cache between the transforms and the products.
FUSED_TASK_BYTES = 256 << 10
#: Channels per side the fused forward takes at most: every task reads the transformed
#: kernel (36 * Cg * Dg values), which stops fitting in L2 beside the task's tiles (128
#: -> 128 at 28x28, batch 16: 1.15x the time of shared chunks; 64 -> 64 at 56x56 0.77x).
FUSED_MAX_CHANNELS = 64


@njit(inline="always")
def _vectors(a, n):
    """(n, the lanes of a vector of a's dtype, the first n' <= n in whole vectors) as
    unsigned values: a tile's channels run in vectors up to n', the rest one at a time."""
    un, nl = U(n), U(_lanes.count(a))
    return un, nl, un - un % nl


@njit(inline="always")
def _load_if(a, i, ok, zero):
    """The lanes a[i ...] where ``ok``, else ``zero`` (a row of a tile in the padding)."""
    return _lanes.load(a, i) if ok else zero


@njit(inline="always")
def _in4_vector(fx, base, steps, inside, tv, fv, o, plane, coefs):
    """One vector of channels of ``tile_in4``: fv[o + e*plane] = (B^T d B)[e] (e < 36)
    for the 6x6 block d whose entry (a, b) lies at fx[base + a*s_row + b*s_col] (steps
    = (s_row, s_col)) for the rows a_lo <= a < a_hi and columns b_lo <= b < b_hi inside
    the input (inside = (a_lo, a_hi, b_lo, b_hi)), zero elsewhere. B^T runs down each
    column straight from x, the column results go to tv (36 vectors, in L1), then B
    along the rows into fv."""
    srow, scol = steps
    a_lo, a_hi, b_lo, b_hi = inside
    two, four, five = coefs
    nl = U(_lanes.count(tv))
    zero = _lanes.zeros(tv)
    for b in range(6):
        if b_lo <= b < b_hi:
            i = base + U(b) * scol
            r = _bt6(_load_if(fx, i, a_lo <= 0 < a_hi, zero),
                     _load_if(fx, i + srow, a_lo <= 1 < a_hi, zero),
                     _load_if(fx, i + U(2) * srow, a_lo <= 2 < a_hi, zero),
                     _load_if(fx, i + U(3) * srow, a_lo <= 3 < a_hi, zero),
                     _load_if(fx, i + U(4) * srow, a_lo <= 4 < a_hi, zero),
                     _load_if(fx, i + U(5) * srow, a_lo <= 5 < a_hi, zero), two, four, five)
            for e in range(6):
                _lanes.store(tv, U(e * 6 + b) * nl, r[e])
        else:
            for e in range(6):
                _lanes.store(tv, U(e * 6 + b) * nl, zero)
    for a in range(6):
        t = U(a * 6) * nl
        r = _bt6(_lanes.load(tv, t), _lanes.load(tv, t + nl), _lanes.load(tv, t + U(2) * nl),
                 _lanes.load(tv, t + U(3) * nl), _lanes.load(tv, t + U(4) * nl),
                 _lanes.load(tv, t + U(5) * nl), two, four, five)
        for e in range(6):
            _lanes.store(fv, o + U(6 * a + e) * plane, r[e])


@njit(inline="always")
def _in4_scalars(fx, base, steps, inside, c_lo, c_hi, d, tmp, fv, o, plane, coefs):
    """``_in4_vector`` for the channels c_lo <= c < c_hi one at a time (those beyond
    the last whole vector): the block copied into d with its zeros, then B^T down its
    columns into tmp and B along its rows into fv; d, tmp: scratch of 36 * (c_hi - c_lo)
    values."""
    srow, scol = steps
    a_lo, a_hi, b_lo, b_hi = inside
    two, four, five = coefs
    n = U(c_hi - c_lo)
    for a in range(6):
        for b in range(6):
            at = U(a * 6 + b) * n
            src = base + U(a) * srow + U(b) * scol + U(c_lo)
            for c in range(n):
                d[at + c] = fx[src + c] if a_lo <= a < a_hi and b_lo <= b < b_hi else 0
    for c in range(n):
        for b in range(6):       # down the columns: tmp[e, b]
            q = U(b) * n + c
            r = _bt6(d[q], d[q + U(6) * n], d[q + U(12) * n], d[q + U(18) * n],
                     d[q + U(24) * n], d[q + U(30) * n], two, four, five)
            for e in range(6):
                tmp[U(e * 6 + b) * n + c] = r[e]
        for a in range(6):       # along the rows: fv[6a + e]
            q = U(a * 6) * n + c
            r = _bt6(tmp[q], tmp[q + n], tmp[q + U(2) * n], tmp[q + U(3) * n],
                     tmp[q + U(4) * n], tmp[q + U(5) * n], two, four, five)
            for e in range(6):
                fv[o + U(c_lo) + c + U(6 * a + e) * plane] = r[e]


@njit(inline="always")
def tile_in4(fx, xs, c0, cg, n, top, left, grid, d, tmp, fv, k, plane):
    """fv[e*plane + k + c] = (B^T d B)[e] (e < 36, c < Cg) for the 6x6 input block d at
    rows top.., columns left.. (zero outside the input) of image n, channels c0..;
    fx = x (N, H, W, C).ravel() with xs its shape; d, tmp: scratch of 36*Cg values.
    Whole vectors of channels go through registers (``_in4_vector``), the rest one
    channel at a time (module docstring).

    grid (hp, wp, sigma_h, sigma_w, dh, dw): the block lies in the hp x wp input phase
    x[:, sigma_h::dh, sigma_w::dw] (the whole input: (H, W, 0, 0, 1, 1))."""
    _, h, wd, c_all = xs
    hp, wp, sig_h, sig_w, dh, dw = grid
    ucg, nl, full = _vectors(d, cg)
    # (entry (a, b) at base + a*s_row + b*s_col, as uint64: a block above or left of
    # the image starts before x, and the steps wrap back into it)
    base = U(((n * h + sig_h + top * dh) * wd + sig_w + left * dw) * c_all + c0)
    steps = (U(dh * wd * c_all), U(dw * c_all))
    inside = (max(0, -top), min(6, hp - top), max(0, -left), min(6, wp - left))
    coefs = _scalars(d, 2, 4, 5)
    for q in range(full // nl):
        _in4_vector(fx, base + q * nl, steps, inside, tmp, fv, k + q * nl, plane, coefs)
    if full < ucg:
        _in4_scalars(fx, base, steps, inside, full, ucg, d, tmp, fv, k, plane, coefs)


@njit(inline="always")
def _out4_vector(fp, k, plane, fy, base, steps, extent, add, tv, nan, coefs):
    """One vector of channels of ``tile_out4``: A^T down the 6 columns of the products
    fp[k + e*plane] (e < 36) into tv (24 vectors, in L1), then A along each of the
    block's first ``extent`` = (rows, cols) rows and columns, plus ``add``, stored at
    fy[base + a*s_row + q*s_col] (steps = (s_row, s_col)). Returns ``nan`` with NaN in
    the lanes where an output was NaN or +-Inf."""
    srow, scol = steps
    rows, cols = extent
    two, four, eight = coefs
    nl = U(_lanes.count(tv))
    six = U(6) * plane
    for col in range(6):
        i = k + U(col) * plane
        r = _at6(_lanes.load(fp, i), _lanes.load(fp, i + six), _lanes.load(fp, i + U(2) * six),
                 _lanes.load(fp, i + U(3) * six), _lanes.load(fp, i + U(4) * six),
                 _lanes.load(fp, i + U(5) * six), two, four, eight)
        for a in range(4):
            _lanes.store(tv, U(a * 6 + col) * nl, r[a])
    for a in range(rows):
        t = U(a * 6) * nl
        r = _at6(_lanes.load(tv, t), _lanes.load(tv, t + nl), _lanes.load(tv, t + U(2) * nl),
                 _lanes.load(tv, t + U(3) * nl), _lanes.load(tv, t + U(4) * nl),
                 _lanes.load(tv, t + U(5) * nl), two, four, eight)
        for q in range(cols):
            val = r[q] + add
            _lanes.store(fy, base + U(a) * srow + U(q) * scol, val)
            nan = nan + (val - val)      # NaN for NaN and +-Inf (IEEE: no fastmath)
    return nan


@njit(inline="always")
def _out4_scalars(fp, k, plane, c_lo, c_hi, fy, base, steps, extent, add, tmp, coefs):
    """``_out4_vector`` for the channels c_lo <= c < c_hi one at a time (tmp: scratch of
    24 values); returns how many outputs were NaN or +-Inf."""
    srow, scol = steps
    rows, cols = extent
    two, four, eight = coefs
    six = U(6) * plane
    bad = 0
    for c in range(U(c_lo), U(c_hi)):
        for col in range(6):
            i = k + U(col) * plane + c
            r = _at6(fp[i], fp[i + six], fp[i + U(2) * six], fp[i + U(3) * six],
                     fp[i + U(4) * six], fp[i + U(5) * six], two, four, eight)
            for a in range(4):
                tmp[a * 6 + col] = r[a]
        for a in range(rows):
            r = _at6(tmp[a * 6], tmp[a * 6 + 1], tmp[a * 6 + 2], tmp[a * 6 + 3], tmp[a * 6 + 4],
                     tmp[a * 6 + 5], two, four, eight)
            for q in range(cols):
                val = r[q] + add[c]
                fy[base + U(a) * srow + U(q) * scol + c] = val
                # NaN and +-Inf fail the comparison (math.isfinite gets folded away
                # under the "reassoc" fastmath flag)
                bad += not (abs(val) < math.inf)
    return bad


@njit(inline="always")
def tile_out4(fp, k, plane, dg, fy, ys, d0, n, top, left, grid, add, buf, nan):
    """The 4x4 block A^T M A (+ add, Dg values) of the tile whose products are
    fp[e*plane + k + d] (e < 36, d < Dg), written into y's rows top.., columns left..
    of image n, channels d0.. (cut at the output's edge); fy = y (N, Ho, Wo, D).ravel()
    with ys its shape; buf: scratch of 28*Dg values. Returns (nan, bad): ``nan`` with
    NaN in the lanes where a whole-vector output was NaN or +-Inf, ``bad`` how many
    other outputs were. Whole vectors of channels stay in registers between the two
    passes (``_out4_vector``), the rest go one channel at a time.

    grid (ho, wo, rho_h, rho_w, dh, dw): the block lies in the ho x wo output phase
    y[:, rho_h::dh, rho_w::dw] (the whole output: (Ho, Wo, 0, 0, 1, 1))."""
    _, y_h, y_w, d_all = ys
    ho, wo, rho_h, rho_w, dh, dw = grid
    coefs = _scalars(buf, 2, 4, 8)
    udg, nl, full = _vectors(buf, dg)
    base = U(((n * y_h + rho_h + top * dh) * y_w + rho_w + left * dw) * d_all + d0)
    steps = (U(dh * y_w * d_all), U(dw * d_all))
    extent = (min(4, ho - top), min(4, wo - left))
    for q in range(full // nl):
        nan = _out4_vector(fp, k + q * nl, plane, fy, base + q * nl, steps, extent,
                           _lanes.load(add, q * nl), buf, nan, coefs)
    bad = 0
    if full < udg:
        bad = _out4_scalars(fp, k, plane, full, udg, fy, base, steps, extent, add, buf,
                            coefs)
    return nan, bad


@njit(inline="always")
def block_buffers(x, count, rows, c_all, d_all):
    """A fused task's scratch, of x's dtype: v and p, the transformed tiles (36 planes
    of ``rows`` x C) and their products (x D), v zero where ``count`` tiles fill less
    than a register tile; d and tmp (36 C each) for ``tile_in4``, buf (28 D) for
    ``tile_out4``."""
    v = np.empty(36 * rows * c_all, x.dtype)
    if count < TILE_ROWS:    # rows beyond the block's tiles are zeros
        v[:] = 0
    return (v, np.empty(36 * rows * d_all, x.dtype), np.empty(36 * c_all, x.dtype),
            np.empty(36 * c_all, x.dtype), np.empty(28 * d_all, x.dtype))


@njit(inline="always")
def tile_products(v, fu, p, count, rows, c_all, d_all):
    """p[e] (count, D) = v[e] (count, C) @ ut[e] (C, D) for the 36 planes e of a block's
    transformed tiles (v: planes of ``rows`` >= ``TILE_ROWS_1`` tiles x C, p alike x D,
    fu = ut (36, C, D).ravel()), in register tiles (``_small_gemm``): 12 rows of one
    register where D is one register, else 6 rows of two (rows beyond ``count`` are
    computed too where fewer than a tile's; zeros in v from the caller)."""
    ucg, udg = U(c_all), U(d_all)
    nl = _lanes.count(p)
    used = max(count, TILE_ROWS_1)
    for e in range(36):
        a0, b0, c0 = U(e * rows) * ucg, U(e) * ucg * udg, U(e * rows) * udg
        if d_all == nl:      # one register of output channels, 12 rows a tile
            for r0 in range(0, used, TILE_ROWS_1):
                i = U(min(r0, used - TILE_ROWS_1))
                _tile1(v, fu, p, a0 + i * ucg, ucg, b0, udg, c0 + i * udg, c_all)
            continue
        for j in range(0, d_all, 2 * nl):   # two registers, 6 rows a tile
            for r0 in range(0, used, TILE_ROWS):
                i = U(min(r0, used - TILE_ROWS))
                _tile(v, fu, p, a0 + i * ucg, ucg, b0 + U(j), udg, c0 + i * udg + U(j),
                      c_all)


def tile_count(y_shape) -> int:
    """4x4 output tiles of an NHWC output y (N, Ho, Wo, D), over the batch."""
    return y_shape[0] * -(-y_shape[1] // 4) * -(-y_shape[2] // 4)


def block_tiles(cg: int, dg: int, itemsize: int) -> int:
    """Tiles per task of the fused forward: transformed tiles and products of about
    ``FUSED_TASK_BYTES``, in whole register tiles of rows (12: two of ``_tile``'s, one
    of ``_tile1``'s; else the last one overlaps the one before and computes its rows
    twice), at most 60."""
    per_tile = 36 * (cg + dg) * itemsize
    return TILE_ROWS_1 * max(1, min(5, FUSED_TASK_BYTES // per_tile // TILE_ROWS_1))


def fused_applies(x_shape, y_shape, itemsize: int, groups: int, m: int, phase) -> bool:
    """Whether ``fused_forward`` runs this NHWC F(m x m, 3x3) (x (N, H, W, C), y (N, Ho,
    Wo, D), items of ``itemsize`` bytes): F(4x4, 3x3), one group, no phase of a dilated
    layer, at most ``FUSED_MAX_CHANNELS`` channels a side, input channels filling at
    least one vector (fewer run every tile's input transform as scalar code: 1 -> 16 and
    8 -> 32 channels ran 1.1-1.6x the time of im2col's path, 16 -> 16 0.65x), output
    channels in one vector or whole pairs of vectors (the register tiles' columns) and
    at least ``TILE_ROWS_1`` tiles in the batch."""
    nl = _lanes.per_register(itemsize)
    c_in, c_out = x_shape[3], y_shape[3]
    return (m == 4 and groups == 1 and phase is None and c_in >= nl
            and (c_out % (2 * nl) == 0 or c_out == nl)
            and max(c_in, c_out) <= FUSED_MAX_CHANNELS
            and tile_count(y_shape) >= TILE_ROWS_1)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _fused(x, ut, y, add, pads, block, flags):
    """y = F(4x4, 3x3) of x (N, H, W, C) with the transformed kernel ut (36, C, D)
    (C-contiguous), padding pads = (top, left), plus add (D,): one task per block of
    ``block`` consecutive tiles of the batch (module docstring). flags[task]: whether
    the task wrote a NaN or +-Inf."""
    n_img, h, wd, c_all = x.shape
    _, ho, wo, d_all = y.shape
    th, tw = (ho + 3) // 4, (wo + 3) // 4
    per_img = th * tw
    total = n_img * per_img
    rows = max(block, TILE_ROWS_1)
    ucg, udg = U(c_all), U(d_all)
    nl = _lanes.count(y)
    fx, fy, fu = x.reshape(x.size), y.reshape(y.size), ut.reshape(ut.size)
    in_grid = (h, wd, 0, 0, 1, 1)
    out_grid = (ho, wo, 0, 0, 1, 1)
    pt, pl = pads
    for task in prange((total + block - 1) // block):
        k0 = task * block
        count = min(total, k0 + block) - k0
        v, p, d, tmp, buf = block_buffers(x, count, rows, c_all, d_all)
        for t in range(count):
            kk = k0 + t
            r = kk % per_img
            tile_in4(fx, x.shape, 0, c_all, kk // per_img, r // tw * 4 - pt,
                     r % tw * 4 - pl, in_grid, d, tmp, v, U(t) * ucg, U(rows) * ucg)
        tile_products(v, fu, p, count, rows, c_all, d_all)
        nan = _lanes.zeros(buf)
        bad = 0
        for t in range(count):
            kk = k0 + t
            r = kk % per_img
            nan, b = tile_out4(p, U(t) * udg, U(rows) * udg, d_all, fy, y.shape, 0,
                               kk // per_img, r // tw * 4, r % tw * 4, out_grid, add, buf,
                               nan)
            bad += b
        for lane in range(nl):
            bad += not (abs(_lanes.lane(nan, lane)) < math.inf)
        flags[task] = bad > 0


def fused_forward(x, u, y, bias, pads) -> bool:
    """y (N, Ho, Wo, D) = F(4x4, 3x3) of x (N, H, W, C) (both C-contiguous) with the
    transformed kernel u (1, 36, C, D) (``kernel.transform_kernel_io``), padding (top,
    left), plus bias; for layers ``fused_applies`` accepts. Returns whether every output
    is finite."""
    ut = np.ascontiguousarray(u[0])
    block, n_flags, zero = _fused_parts(x.shape[3], y.shape, y.dtype)
    add = zero if bias is None else np.ascontiguousarray(bias, y.dtype)
    flags = np.zeros(n_flags, np.bool_)
    guarded(_fused)(x, ut, y, add, pads, block, flags)
    return not flags.any()


@per_problem
def _fused_parts(c_in: int, y_shape, dtype):
    """(tiles per task, tasks, a zero bias) of ``fused_forward`` for C_in input channels
    and an output of ``y_shape`` and ``dtype`` (the zeros only ever read)."""
    block = block_tiles(c_in, y_shape[3], dtype.itemsize)
    return block, -(-tile_count(y_shape) // block), np.zeros(y_shape[3], dtype)
