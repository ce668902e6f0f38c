"""F(4x4, 3x3)'s weight gradient on NHWC, fused: the adjoint of ``nhwc_tiles``'
forward, tile by tile in cache.

y = A^T [U * V] A is linear in the transformed kernel U = G w G^T, so per entry e of the
6x6 transforms GW[e] (C, D) = sum over tiles of V[e]^T (C, tiles) @ Yt[e] (tiles, D), with
V = B^T d B the input tile's transform (``nhwc_tiles.tile_in4``) and Yt = A g A^T that
of the tile's 4x4 block g of grad_y (``tile_gy4``); then grad_w = G^T GW G. Each task
takes a run of consecutive tiles of the batch, block by block: it transforms a block's
input and output-gradient tiles into buffers of its own (channels contiguous, as in the
forward), and adds their 36 products into a sum of its own (36 C D values) in register
tiles: 4 input channels x 2 registers of output channels, or 8 x 1 where the output
channels fill one register, over the block's tiles. The tasks' sums are added in task
order (the same result on every call for a given thread count).

Against im2col's direct weight gradient, which multiplies 9 taps per output pixel and
reads a zero-padded copy of x, this multiplies 36 entries per 16 output pixels and reads
x in place.

>>> import numpy as np
>>> x = np.ones((1, 4, 4, 16), np.float32)             # NHWC
>>> gy = np.ones((1, 4, 4, 16), np.float32)            # padding 1: 4x4 outputs
>>> gw = np.empty((3, 3, 16, 16), np.float32)          # HWIO
>>> fused_grad_w(gy, x, gw, (1, 1))
True
>>> [round(float(gw[i, j, 0, 0]), 3) for i, j in ((0, 0), (1, 1), (0, 1))]
[9.0, 16.0, 12.0]
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from ... import _lanes, config
from ..._runtime import guarded
from .._common import U
from .grad_w4 import GT4, _a6
from .nhwc_tiles import _load_if, block_tiles, tile_in4
from .tasks import _scalars

#: G^T (x) G^T: grad_w[3i + j] = sum over e = 6a + b of KRON[3i + j, e] GW[e].
_KRON = np.kron(GT4, GT4)
#: The most channels a side: every task keeps a sum of 36 C D values beside its tiles
#: (64 -> 64: 576 KB in float32; 128 -> 128, 2.4 MB, or half that in channel groups).
#: With AVX-512, 128 channels (Intel Xeon, 2 MB of L2 a core; 2 threads, alternating,
#: best of 5, weight gradient alone, the chunked path / this kernel): NHWC 128 -> 128
#: at 8x8 (batch 64) 7.6 / 3.4 ms, at 14x14 (batch 32) 16.0 / 8.1, at 28x28 (batch 16)
#: 19.9 / 10.2; NCHW (staged, ``grad_w_nchw``) 9.0 / 5.2, 15.7 / 10.0, 11.3 / 11.2. At
#: 256 channels the chunked path ran as fast or faster (14x14, batch 16: NHWC 22.2 /
#: 23.9, NCHW 15.2 / 17.4). Without AVX-512 (not measured at 128): 64.
MAX_CHANNELS = 128 if _lanes.WIDE else 64


def applies(c_in: int, c_out: int, itemsize: int) -> bool:
    """Whether ``fused_grad_w`` takes a layer of ``c_in`` -> ``c_out`` channels (one
    group) of items of ``itemsize`` bytes: input channels filling at least one register
    in whole eights, output channels in one register or whole pairs of
    registers, at most ``MAX_CHANNELS`` a side."""
    nl = _lanes.per_register(itemsize)
    return (nl <= c_in <= MAX_CHANNELS and c_in % 8 == 0
            and (c_out == nl or (c_out % (2 * nl) == 0 and c_out <= MAX_CHANNELS)))


@njit(inline="always")
def _gy4_vector(fg, base, steps, extent, tv, fp, o, plane, coefs):
    """One vector of channels of ``tile_gy4``: fp[o + e*plane] = (A g A^T)[e] (e < 36)
    for the 4x4 block g whose entry (a, b) lies at fg[base + a*s_row + b*s_col] (steps =
    (s_row, s_col)) for a < rows and b < cols (extent = (rows, cols)), zero elsewhere:
    A down each column into tv (24 vectors, in L1), then A along the rows into fp."""
    srow, scol = steps
    rows, cols = extent
    two, four, eight = coefs
    nl = U(_lanes.count(tv))
    zero = _lanes.zeros(tv)
    for b in range(4):       # columns past the edge read as zeros, as rows do
        i = base + U(b) * scol
        on = b < cols
        r = _a6(_load_if(fg, i, on and 0 < rows, zero),
                _load_if(fg, i + srow, on and 1 < rows, zero),
                _load_if(fg, i + U(2) * srow, on and 2 < rows, zero),
                _load_if(fg, i + U(3) * srow, on and 3 < rows, zero), two, four, eight)
        for e in range(6):
            _lanes.store(tv, U(e * 4 + b) * nl, r[e])
    for a in range(6):
        t = U(a * 4) * nl
        r = _a6(_lanes.load(tv, t), _lanes.load(tv, t + nl), _lanes.load(tv, t + U(2) * nl),
                _lanes.load(tv, t + U(3) * nl), two, four, eight)
        for e in range(6):
            _lanes.store(fp, o + U(6 * a + e) * plane, r[e])


@njit(inline="always")
def tile_gy4(fg, gs, n, top, left, tv, fp, k, plane):
    """fp[e*plane + k + d] = (A g A^T)[e] (e < 36, d < D) for the 4x4 block g of grad_y
    at rows top.., columns left.. of image n (zero beyond the output's edge); fg =
    grad_y (N, Ho, Wo, D).ravel() with gs its shape, D whole vectors; tv: scratch of 24
    vectors."""
    _, ho, wo, d_all = gs
    coefs = _scalars(tv, 2, 4, 8)
    nl = U(_lanes.count(tv))
    base = U(((n * ho + top) * wo + left) * d_all)
    steps = (U(wo * d_all), U(d_all))
    extent = (min(4, ho - top), min(4, wo - left))
    for q in range(U(d_all) // nl):
        _gy4_vector(fg, base + q * nl, steps, extent, tv, fp, k + q * nl, plane, coefs)


@njit(inline="always")
def _sums_two(fv, fp, fa, v0, p0, a0, ucg, udg, count):
    """fa[a0 + r*D :][:2 registers] += sum over t < count of fv[v0 + t*C + r] *
    fp[p0 + t*D :][:2 registers], for the 4 rows r."""
    nl = U(_lanes.count(fa))
    s00, s01 = _lanes.load(fa, a0), _lanes.load(fa, a0 + nl)
    s10, s11 = _lanes.load(fa, a0 + udg), _lanes.load(fa, a0 + udg + nl)
    s20, s21 = _lanes.load(fa, a0 + U(2) * udg), _lanes.load(fa, a0 + U(2) * udg + nl)
    s30, s31 = _lanes.load(fa, a0 + U(3) * udg), _lanes.load(fa, a0 + U(3) * udg + nl)
    for t in range(count):
        pq = p0 + U(t) * udg
        u0, u1 = _lanes.load(fp, pq), _lanes.load(fp, pq + nl)
        vq = v0 + U(t) * ucg
        s00, s01 = _lanes.fma(s00, fv[vq], u0), _lanes.fma(s01, fv[vq], u1)
        s10, s11 = _lanes.fma(s10, fv[vq + U(1)], u0), _lanes.fma(s11, fv[vq + U(1)], u1)
        s20, s21 = _lanes.fma(s20, fv[vq + U(2)], u0), _lanes.fma(s21, fv[vq + U(2)], u1)
        s30, s31 = _lanes.fma(s30, fv[vq + U(3)], u0), _lanes.fma(s31, fv[vq + U(3)], u1)
    _lanes.store(fa, a0, s00)
    _lanes.store(fa, a0 + nl, s01)
    _lanes.store(fa, a0 + udg, s10)
    _lanes.store(fa, a0 + udg + nl, s11)
    _lanes.store(fa, a0 + U(2) * udg, s20)
    _lanes.store(fa, a0 + U(2) * udg + nl, s21)
    _lanes.store(fa, a0 + U(3) * udg, s30)
    _lanes.store(fa, a0 + U(3) * udg + nl, s31)


@njit(inline="always")
def _sums_one(fv, fp, fa, v0, p0, a0, ucg, udg, count):
    """fa[a0 + r*D :][:1 register] += sum over t < count of fv[v0 + t*C + r] *
    fp[p0 + t*D :][:1 register], for the 8 rows r."""
    s0, s1 = _lanes.load(fa, a0), _lanes.load(fa, a0 + udg)
    s2, s3 = _lanes.load(fa, a0 + U(2) * udg), _lanes.load(fa, a0 + U(3) * udg)
    s4, s5 = _lanes.load(fa, a0 + U(4) * udg), _lanes.load(fa, a0 + U(5) * udg)
    s6, s7 = _lanes.load(fa, a0 + U(6) * udg), _lanes.load(fa, a0 + U(7) * udg)
    for t in range(count):
        u = _lanes.load(fp, p0 + U(t) * udg)
        vq = v0 + U(t) * ucg
        s0, s1 = _lanes.fma(s0, fv[vq], u), _lanes.fma(s1, fv[vq + U(1)], u)
        s2, s3 = _lanes.fma(s2, fv[vq + U(2)], u), _lanes.fma(s3, fv[vq + U(3)], u)
        s4, s5 = _lanes.fma(s4, fv[vq + U(4)], u), _lanes.fma(s5, fv[vq + U(5)], u)
        s6, s7 = _lanes.fma(s6, fv[vq + U(6)], u), _lanes.fma(s7, fv[vq + U(7)], u)
    for r, s in enumerate((s0, s1, s2, s3, s4, s5, s6, s7)):
        _lanes.store(fa, a0 + U(r) * udg, s)


@njit(inline="always")
def block_sums(v, p, fa, count, rows, c_all, d_all):
    """fa[e] (C, D) += v[e]^T (C, count) @ p[e] (count, D) for the 36 entries e of a
    block's transformed tiles (v: planes of ``rows`` tiles x C, p alike x D; fa the
    task's sums (36, C, D).ravel())."""
    ucg, udg = U(c_all), U(d_all)
    nl = _lanes.count(p)
    for e in range(36):
        v0, p0, a0 = U(e * rows) * ucg, U(e * rows) * udg, U(e) * ucg * udg
        if d_all == nl:
            for c in range(0, c_all, 8):
                _sums_one(v, p, fa, v0 + U(c), p0, a0 + U(c) * udg, ucg, udg, count)
            continue
        for c in range(0, c_all, 4):
            for j in range(0, d_all, 2 * nl):
                _sums_two(v, p, fa, v0 + U(c), p0 + U(j), a0 + U(c) * udg + U(j), ucg, udg,
                          count)


@njit(inline="always")
def task_buffers(x, block, c_all, d_all):
    """A task's scratch, of x's dtype: v and p, a block's transformed tiles of x and of
    grad_y (36 planes of ``block`` tiles x C, x D), d and tmp (36 C each) for
    ``tile_in4``, tv (24 vectors) for ``tile_gy4``."""
    v = np.empty(36 * block * c_all, x.dtype)
    p = np.empty(36 * block * d_all, x.dtype)
    return (v, p, np.empty(36 * c_all, x.dtype), np.empty(36 * c_all, x.dtype),
            np.empty(24 * _lanes.count(p), x.dtype))


@njit(inline="always")
def _taps(sums, t0, t1, q_all, lo, hi, kron, out, col0):
    """out[3i + j, col0 + q] = sum over e of kron[3i + j, e] * (sum over the rows t0 <=
    t < t1 of sums[t, e*q_all + q]) for lo <= q < hi, in float64 (the rows added in
    order); returns whether one of them is NaN or +-Inf."""
    n = hi - lo
    gw = np.zeros((36, n))
    for t in range(t0, t1):
        for e in range(36):
            src = sums[t, e * q_all + lo:e * q_all + hi]
            dst = gw[e]
            for q in range(n):
                dst[q] += src[q]
    row = np.empty(n)
    bad = False
    for tap in range(9):
        row[:] = 0
        for e in range(36):
            coef = kron[tap, e]
            if coef != 0.0:
                src2 = gw[e]
                for q in range(n):
                    row[q] += coef * src2[q]
        dst2 = out[tap, col0 + lo:col0 + hi]
        for q in range(n):
            dst2[q] = row[q]
            # NaN and +-Inf fail the comparison (x - x is folded to 0 under the
            # "reassoc" fastmath flag)
            bad |= not (abs(row[q]) < math.inf)
    return bad


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _grad_w(x, gy, sums, pads, block, groups, kron, out, flags):
    """The Winograd-domain weight gradient GW of x (N, H, W, C) and grad_y (N, Ho, Wo,
    D), padding pads = (top, left), in parts: task k takes the k % groups-th group of
    C / groups input channels and the (k // groups)-th run of whole blocks of ``block``
    consecutive tiles of the batch, and leaves its part in sums[k] (36 (C / groups) D;
    module docstring). With one run (the groups cover the whole batch) each task also
    writes its channels' columns of out (9, C D) = kron @ GW (``_taps``; flags[k]:
    whether one of them is NaN or +-Inf); with several, ``_finish`` adds the runs."""
    n_img, h, wd, c_all = x.shape
    _, ho, wo, d_all = gy.shape
    tw = (wo + 3) // 4
    per_img = (ho + 3) // 4 * tw
    total = n_img * per_img
    blocks = (total + block - 1) // block
    tasks = sums.shape[0]
    runs = tasks // groups
    cg = c_all // groups
    ucg, udg = U(cg), U(d_all)
    fx, fg = x.reshape(x.size), gy.reshape(gy.size)
    in_grid = (h, wd, 0, 0, 1, 1)
    pt, pl = pads
    for task in prange(tasks):
        run, g = task // groups, task % groups
        fa = sums[task]
        fa[:] = 0
        v, p, d, tmp, tv = task_buffers(x, block, cg, d_all)
        for b in range(run * blocks // runs, (run + 1) * blocks // runs):
            k0 = b * block
            count = min(total, k0 + block) - k0
            for t in range(count):
                kk = k0 + t
                n, r = kk // per_img, kk % per_img
                top, left = r // tw * 4, r % tw * 4
                tile_in4(fx, x.shape, g * cg, cg, n, top - pt, left - pl, in_grid, d, tmp,
                         v, U(t) * ucg, U(block) * ucg)
                tile_gy4(fg, gy.shape, n, top, left, tv, p, U(t) * udg, U(block) * udg)
            block_sums(v, p, fa, count, block, cg, d_all)
        if runs == 1:
            q_all = cg * d_all
            flags[task] = _taps(sums, task, task + 1, q_all, 0, q_all, kron, out, g * q_all)


#: Columns (channel pairs) per task of ``_finish``.
FINISH_COLUMNS = 1024


@njit(parallel=True, cache=True)
def _finish(sums, kron, out, flags):
    """out (9, C D) = kron @ (the sum of the rows of sums (tasks, 36 C D)), a run of
    ``FINISH_COLUMNS`` columns per task (flags[task]: whether one is NaN or +-Inf; as
    many flags as tasks or more)."""
    q_all = out.shape[1]
    for k in prange((q_all + FINISH_COLUMNS - 1) // FINISH_COLUMNS):
        lo = k * FINISH_COLUMNS
        flags[k] = _taps(sums, 0, sums.shape[0], q_all, lo, min(q_all, lo + FINISH_COLUMNS),
                         kron, out, 0)


def fused_grad_w(grad_y, x, grad_w, pads, groups=None) -> bool:
    """grad_w (3, 3, C, D) = the weight gradient of the NHWC F(4x4, 3x3) layer with
    input x (N, H, W, C), output gradient grad_y (N, Ho, Wo, D) (both C-contiguous) and
    padding pads = (top, left), for channels ``applies`` accepts; ``groups`` of input
    channels (None: ``channel_groups``'s choice). Returns whether every value is
    finite."""
    c_all, d_all = x.shape[3], grad_y.shape[3]
    threads = numba.get_num_threads()
    tiles = grad_y.shape[0] * -(-grad_y.shape[1] // 4) * -(-grad_y.shape[2] // 4)
    if groups is None:
        groups = channel_groups(c_all, tiles, threads, x.itemsize)
    block = block_tiles(c_all // groups, d_all, x.itemsize)
    runs = 1 if groups > 1 else max(1, min(threads, -(-tiles // block)))
    sums = np.empty((runs * groups, 36 * c_all // groups * d_all), x.dtype)
    out = grad_w if grad_w.flags.c_contiguous else np.empty(grad_w.shape, grad_w.dtype)
    flat = out.reshape(9, c_all * d_all)
    kron = _KRON
    flags = np.zeros(max(runs * groups, -(-c_all * d_all // FINISH_COLUMNS)), np.bool_)
    guarded(_grad_w)(x, grad_y, sums, pads, block, groups, kron, flat, flags)
    if runs > 1:
        guarded(_finish)(sums, kron, flat, flags)
    if out is not grad_w:
        grad_w[...] = out
    return not flags.any()


def channel_groups(c_in: int, tiles: int, threads: int, itemsize: int) -> int:
    """1, or ``threads`` groups of input channels, one a task, where each group fills
    whole registers and eights and the layer has few tiles for its channels (at most
    C_in * threads). Groups finish their own taps in their task, but each transforms
    every tile of grad_y; runs of tiles share those transforms, but their sums (36 C D
    values each) are added after the kernel, across the cores. 64 -> 64 at 7x7 (batch
    32, 128 tiles, 2 threads): 0.33 ms in groups, 0.37 in runs; 32 -> 32 at 14x14 (512
    tiles) 0.33 either way; 64 -> 64 at 16x16 (batch 64) 2.2 against 2.1."""
    cg = c_in // max(threads, 1)
    if threads < 2 or c_in % threads or cg % 8 or cg < _lanes.per_register(itemsize):
        return 1
    return threads if tiles <= c_in * threads else 1
