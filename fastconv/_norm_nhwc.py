"""The channels-last batch-norm kernels (``fastconv.norm``'s NHWC layout), each direction
one call from Python.

x is viewed as (P, C), P = N*H*W pixels. The reductions sum fixed blocks of ``ROWS``
pixels into per-block float64 partial sums (one task per block; in SIMD registers, a
float64 vector of channels at a time, where C is a whole number of such vectors:
``in_registers``), then add the partials serially in order (the result does not
depend on the thread count).

``train`` and ``backward`` run their passes and the serial steps between them inside
one compiled function: in a training step every op starts after some Python work, and
three kernel calls, their scratch arrays and a dozen numpy calls on (C,) vectors took
20-30 us a layer more than one call (a (32, 7, 7, 64) batch norm + ReLU, 2 threads,
after 50 us of other work: 58 -> 38 us; (32, 28, 28, 16): 130 -> 102 us).

>>> import numpy as np
>>> x = np.arange(8.0).reshape(4, 2)                    # 4 pixels, 2 channels
>>> y, stats = np.empty_like(x), np.empty((3, 2))
>>> train(x, np.ones(2), np.zeros(2), 0.0, y, False, stats, in_registers(2, x.dtype), x,
...       False)
>>> stats[0], stats[1]                                  # mean, biased variance
(array([3., 4.]), array([5., 5.]))
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numba import uint64 as U

from . import _lanes, _norm_relu, config

#: Pixels per partial sum.
ROWS = 256
#: Rows the element-wise passes run for one vector of channels before the next (a band
#: of rows stays in the L1 cache: 8 KB at 64 float32 channels).
_BAND = 32


def view(a):
    """(N*H*W, C): a pixel's channels lie in one row."""
    return a.reshape(-1, a.shape[3])


def in_registers(c: int, dtype) -> bool:
    """Whether the sums of C channels run in registers (``_block_sums_lanes``): C a whole
    number of float64 vectors. ``dtype`` (x's) is not used: the sums are float64."""
    return c % _lanes.per_register(8) == 0


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _block_sums(u, u_shift, v, v_shift, part1, part2, relu, mask, scale, shift):
    """Per block t of ``ROWS`` rows: part1[t, c] = sum of du and part2[t, c] = sum of
    du * dv over the block's rows r, du = u[r, c] - u_shift[c], dv = v[r, c] -
    v_shift[c]; u, v (P, C), part1, part2 (T, C). Moments: u = v = x, both shifts the
    shift; gradient sums: u = grad_y unshifted, v = x less the mean. du is 0 where a
    fused ReLU did not pass it (``_norm_relu.gated``: relu ``OUTPUT``, mask (P, C) its
    output; ``REDONE``, recomputed from v = x with the mean, scale and shift; mask,
    scale and shift stand-ins the kernel does not read otherwise)."""
    n_rows, c_all = u.shape
    for t in prange(part1.shape[0]):
        s1 = part1[t]
        s2 = part2[t]
        s1[:] = 0.0
        s2[:] = 0.0
        for r in range(t * ROWS, min((t + 1) * ROWS, n_rows)):
            for c in range(c_all):
                du = _norm_relu.gated(u[r, c] - u_shift[c], relu, mask[r, c], v[r, c],
                                      v_shift[c], scale[c], shift[c], v)
                s1[c] += du
                s2[c] += du * (v[r, c] - v_shift[c])


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _block_sums_lanes(u, neg_u_shift, v, neg_v_shift, part1, part2, relu, mask, scale,
                      shift):
    """``_block_sums`` for C a whole number of float64 vectors, the shifts given negated
    and u, v, mask C-contiguous (mask flat): each vector of channels' two sums
    accumulate in registers (float64 lanes, float32 values widened), row by row as
    there (the loop over channels with the sums in memory ran at about half this speed
    on 16-32 channels)."""
    n_rows, c_all = u.shape
    uf, vf = u.reshape(u.size), v.reshape(v.size)
    nl = _lanes.count(part1)
    for t in prange(part1.shape[0]):
        s1, s2 = part1[t], part2[t]
        for c0 in range(0, c_all, nl):
            ku, kv = _lanes.load(neg_u_shift, U(c0)), _lanes.load(neg_v_shift, U(c0))
            a, b = _lanes.load(scale, U(c0)), _lanes.load(shift, U(c0))
            a1, a2 = _lanes.zeros(s1), _lanes.zeros(s2)
            for r in range(t * ROWS, min((t + 1) * ROWS, n_rows)):
                o = U(r * c_all + c0)
                du = _lanes.add(_lanes.load_f64(uf, o), ku)
                dv = _lanes.add(_lanes.load_f64(vf, o), kv)
                du = _norm_relu.gated_lanes(du, relu, mask, o, dv, a, b, vf)
                a1 = _lanes.add(a1, du)
                a2 = _lanes.fma_lanes(a2, du, dv)
            _lanes.store(s1, U(c0), a1)
            _lanes.store(s2, U(c0), a2)


@njit(cache=True)
def _sums(u, u_shift, v, v_shift, lanes, relu, mask, scale, shift):
    """The block partials (two (T, C) float64 arrays) of ``_block_sums``, in registers
    with ``lanes`` (``in_registers``)."""
    blocks = (u.shape[0] + ROWS - 1) // ROWS
    p1, p2 = np.empty((blocks, u.shape[1])), np.empty((blocks, u.shape[1]))
    if lanes:
        _block_sums_lanes(u, -u_shift, v, -v_shift, p1, p2, relu, mask.reshape(mask.size),
                          scale, shift)
    else:
        _block_sums(u, u_shift, v, v_shift, p1, p2, relu, mask, scale, shift)
    return p1, p2


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _apply_rows(x, mean, scale, shift, y, relu, res, with_res):
    """y = ``normalised(x, mean[c], scale[c], shift[c])`` for x, y (P, C), plus res (P,
    C) with ``with_res`` (in float64, rounded once), then max(y, 0) with ``relu``; one
    task per row block."""
    n_rows, c_all = x.shape
    n_blocks = (n_rows + ROWS - 1) // ROWS
    for t in prange(n_blocks):
        for r in range(t * ROWS, min((t + 1) * ROWS, n_rows)):
            for c in range(c_all):
                y[r, c] = _norm_relu.output(x[r, c], mean[c], scale[c], shift[c], relu,
                                            res[r, c], with_res)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _apply_lanes(x, neg_mean, scale, shift, y, relu, res, with_res):
    """``_apply_rows`` for C a whole number of float64 vectors, the mean negated, x and
    y C-contiguous: a vector of channels at a time over a band of ``_BAND`` rows (LLVM's
    vectorised loop over the channels of a row ran at 0.8x this speed on (25088, 16) and
    (6272, 32); a whole block's rows for one vector after another re-read each row's
    cache lines, 1.4x the time on (1568, 64); row by row, the short loop over the
    vectors took 1.25x on (25088, 16))."""
    n_rows, c_all = x.shape
    xf, yf, rf = x.reshape(x.size), y.reshape(y.size), res.reshape(res.size)
    nl = _lanes.count(scale)
    for t in prange((n_rows + ROWS - 1) // ROWS):
        end = min((t + 1) * ROWS, n_rows)
        for r0 in range(t * ROWS, end, _BAND):
            for c0 in range(0, c_all, nl):
                k, a, b = (_lanes.load(neg_mean, U(c0)), _lanes.load(scale, U(c0)),
                           _lanes.load(shift, U(c0)))
                for r in range(r0, min(r0 + _BAND, end)):
                    o = U(r * c_all + c0)
                    v = _norm_relu.normalised_lanes(_lanes.add(_lanes.load_f64(xf, o), k), a,
                                                    b)
                    if with_res:
                        v = _lanes.add(v, _lanes.load_f64(rf, o))
                    _lanes.store_f64(yf, o, _lanes.relu(v) if relu else v)


@njit(cache=True)
def apply(x, mean, scale, shift, y, relu, lanes, res, with_res):
    """y = (x - mean[c]) * scale[c] + shift[c] for x, y (P, C) C-contiguous, mean,
    scale, shift (C,) float64, plus res (P, C) C-contiguous with ``with_res`` (a
    stand-in otherwise), then max(y, 0) (NaN kept) with ``relu``; in registers with
    ``lanes`` (``in_registers``)."""
    if lanes:
        _apply_lanes(x, -mean, scale, shift, y, relu, res, with_res)
    else:
        _apply_rows(x, mean, scale, shift, y, relu, res, with_res)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _backward_apply(gy, x, mean, a, b, kx, gx, relu, mask, shift, g_res, with_res):
    """gx = g * a[c] + b[c] + (x - mean[c]) * kx[c] for gy, x, gx (P, C), g = gy
    ``_norm_relu.gated`` (a = weight * invstd: the forward's scale; mask indexed as gy,
    not flat, which took 1.4x the time on (25088, 16)), and g itself into g_res (P, C)
    with ``with_res`` (the gradient of a residual added before the ReLU); per row
    block."""
    n_rows, c_all = x.shape
    n_blocks = (n_rows + ROWS - 1) // ROWS
    for t in prange(n_blocks):
        for r in range(t * ROWS, min((t + 1) * ROWS, n_rows)):
            for c in range(c_all):
                g = _norm_relu.gated(gy[r, c], relu, mask[r, c], x[r, c], mean[c], a[c],
                                     shift[c], x)
                gx[r, c] = g * a[c] + b[c] + (x[r, c] - mean[c]) * kx[c]
                if with_res:
                    g_res[r, c] = g


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _backward_lanes(gy, x, neg_mean, a, b, kx, gx, relu, mask, shift, g_res, with_res):
    """``_backward_apply`` for C a whole number of float64 vectors, the mean negated,
    every (P, C) array C-contiguous (mask flat)."""
    n_rows, c_all = x.shape
    gf, xf, of = gy.reshape(gy.size), x.reshape(x.size), gx.reshape(gx.size)
    rf = g_res.reshape(g_res.size)
    nl = _lanes.count(a)
    for t in prange((n_rows + ROWS - 1) // ROWS):
        end = min((t + 1) * ROWS, n_rows)
        for r0 in range(t * ROWS, end, _BAND):
            for c0 in range(0, c_all, nl):
                k, va, vb, vk = (_lanes.load(neg_mean, U(c0)), _lanes.load(a, U(c0)),
                                 _lanes.load(b, U(c0)), _lanes.load(kx, U(c0)))
                vs = _lanes.load(shift, U(c0))
                for r in range(r0, min(r0 + _BAND, end)):
                    o = U(r * c_all + c0)
                    g = _lanes.load_f64(gf, o)
                    dx = _lanes.add(_lanes.load_f64(xf, o), k)
                    g = _norm_relu.gated_lanes(g, relu, mask, o, dx, va, vs, xf)
                    _lanes.store_f64(of, o, _lanes.fma_lanes(_lanes.fma_lanes(vb, g, va), dx, vk))
                    if with_res:
                        _lanes.store_f64(rf, o, g)


@njit(inline="always")
def _partial_sums(p1, p2, c):
    """Channel c's block partials of p1 and p2 (T, C) added in order (float64)."""
    s1 = 0.0
    s2 = 0.0
    for t in range(p1.shape[0]):
        s1 += p1[t, c]
        s2 += p2[t, c]
    return s1, s2


@njit(cache=True)
def train(x, weight, bias, eps, y, relu, stats, lanes, res, with_res):
    """x, y (P, C) C-contiguous; weight, bias (C,) float64. stats (3, C) = the batch
    mean, the biased variance and invstd = 1 / sqrt(var + eps) (sums of x less its
    first pixel, the module docstring of ``fastconv.norm``), and y = (x - mean) *
    scale + bias, scale = weight * invstd (plus res with ``with_res``, then max(y, 0)
    with ``relu``: ``apply``). ``lanes``: ``in_registers``."""
    count = x.shape[0]
    shift = x[0].astype(np.float64)
    p1, p2 = _sums(x, shift, x, shift, lanes, _norm_relu.NONE, x, shift, shift)
    scale = np.empty(x.shape[1])
    for c in range(x.shape[1]):
        s1, s2 = _partial_sums(p1, p2, c)
        ds = s1 / count
        var = max(s2 / count - ds * ds, 0.0)
        stats[0, c] = shift[c] + ds
        stats[1, c] = var
        stats[2, c] = 1.0 / np.sqrt(var + eps)
        scale[c] = weight[c] * stats[2, c]
    apply(x, stats[0], scale, bias, y, relu, lanes, res, with_res)


@njit(cache=True)
def backward(gy, x, mean, invstd, weight, training, gx, grad_w, grad_b, lanes, relu, mask,
             bias, g_res, with_res):
    """gy, x, gx (P, C) C-contiguous; mean, invstd, weight, bias (C,) float64. gx = the
    gradient (``fastconv.norm.batch_norm_backward``), grad_b = sum g and grad_w = sum
    g * (x - mean) * invstd per channel ((C,) each, the sums in float64 rounded once to
    their dtype), g = gy where the ReLU after the batch norm passed it
    (``_norm_relu.gated``: ``relu`` ``OUTPUT``, mask its output (P, C); ``REDONE``,
    from x with scale = weight * invstd and bias; ``NONE``: all of gy, mask and bias not
    read), in the same passes; with ``with_res``, g into g_res (P, C) too (a residual's
    gradient). ``lanes``: ``in_registers``."""
    count = x.shape[0]
    c_all = x.shape[1]
    co = np.empty((3, c_all))            # gx = g * co[0] + co[1] + (x - mean) * co[2]
    for c in range(c_all):
        co[0, c] = weight[c] * invstd[c]   # the forward's scale
    p1, p2 = _sums(gy, np.zeros(c_all), x, mean, lanes, relu, mask, co[0], bias)
    for c in range(c_all):
        s1, s2 = _partial_sums(p1, p2, c)
        a = co[0, c]
        grad_b[c] = s1
        grad_w[c] = s2 * invstd[c]
        co[1, c] = -a * s1 / count if training else 0.0
        co[2, c] = -a * invstd[c] * invstd[c] * s2 / count if training else 0.0
    if lanes:
        _backward_lanes(gy, x, -mean, co[0], co[1], co[2], gx, relu, mask.reshape(mask.size),
                        bias, g_res, with_res)
    else:
        _backward_apply(gy, x, mean, co[0], co[1], co[2], gx, relu, mask, bias, g_res,
                        with_res)
