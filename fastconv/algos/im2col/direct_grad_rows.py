"""The weight gradient of layers with few output channels, with a SIMD register along
each output row instead of across the output channels (``direct_grad``'s kernels).

LeNet's first layer (1 -> 6 channels, 5x5) fills 6 of a register's 16 float32 lanes
when the lanes hold output channels; along its 28-pixel output rows, two registers hold
a row with 28 of 32 lanes used. Here, for each image, the kernel stages

    xs[c, b, r, j] = xp[r, j + b*r_w, c]   (j < W_out; 0 for W_out <= j < Wv)
    gs[d, i, j]    = grad_y[i, j, d]       (j < W_out, d < D; 0 elsewhere)

(xp the zero-padded input, Wv = W_out rounded up to whole registers, D rounded up to
whole groups of ``CHANNELS``) and sums, for each group of ``TAPS`` taps t = (c, a, b)
and ``CHANNELS`` output channels d, 24 registers of products

    acc[t, d] += xs[c, b, i*s_h + a*r_h, j : j + L] * gs[d, i, j : j + L]

over the image's output rows i and registers j (xp read from x with its padding as
zeros; no padded copy); every load is a whole register at a row's start or a whole
register on, and the zeros past W_out make the lanes past the row add nothing (0 * 0,
so an infinite input next to a row's end stays out of the taps that do not read it).
A run of images sums into its own registers; at the end each register's lanes and the
runs are added in order in float64 (the result does not depend on the thread count).
The staged image (about 40 KB for LeNet's layer) is read from L1 by all of its groups.
Needs AVX-512's 32 registers (24 sums, 4 input and 1 grad_y vector live) and stride 1
along the rows.

LeNet's first layer (batch 64 of 28x28, padding 2), grad_w and the bias gradient, 2
threads, calls alternating in one process, best of 100: NCHW 0.38-0.40 ms with the
output channels in the lanes (grad_y transposed first) against 0.19-0.22 here; NHWC
0.30-0.35 against 0.22-0.26 (grad_y's rows gathered 6 values apart).

>>> import numpy as np
>>> from fastconv import conv2d_backward
>>> x = np.ones((8, 1, 12, 12), np.float32)
>>> w = np.ones((6, 1, 5, 5), np.float32)
>>> _, gw, _ = conv2d_backward(np.ones((8, 6, 12, 12), np.float32), x, w, padding=2,
...                            needs_input_grad=(False, True, False))
>>> float(gw[0, 0, 2, 2]), float(gw[0, 0, 0, 0])    # 8 images x 12x12 / 10x10 pixels
(1152.0, 800.0)
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from ... import _lanes
from ..._runtime import parallel_guard
from .._common import U, workspace
from .direct_grad_tiles import into_weight
from .padded import padded_size

#: Taps summed at once (4 input vectors live) ...
TAPS = 4
#: ... for this many output channels (6 grad_y rows): 24 registers of sums. The kernels'
#: tuples of registers (``_group_pass``) are written out for these two values.
CHANNELS = 6
#: Registers of sums a group fills.
SUMS = TAPS * CHANNELS
#: A run of images (one set of sums) holds about this many images' multiply-adds ...
RUN_IMAGES = 8
#: ... and an image's staged rows take at most this many bytes (in L1 and L2).
STAGE_BYTES = 96 * 1024
#: Multiply-adds per second per thread (lanes counted, the staging included; float32,
#: half for float64), for the cost model: LeNet's first layer, 2 threads, 40.
ROWS_GMACS = 40.0


def rows_macs(a) -> int:
    """The multiply-adds of ``weight_grad_rows``, every lane counted."""
    taps, d_pad, _, _ = _sizes(a)
    return a.n * a.h_out * _row_width(a) * taps * d_pad


def _row_width(a) -> int:
    """W_out rounded up to whole registers."""
    nl = _lanes.per_register(a.dtype.itemsize)
    return -(-a.w_out // nl) * nl


def _sizes(a) -> tuple[int, int, int, int]:
    """(taps rounded up to ``TAPS``, channels rounded up to ``CHANNELS``, staged input
    elements, staged grad_y elements) of one image."""
    hp, _ = padded_size(a)
    wv = _row_width(a)
    taps = -(-a.kh * a.kw * a.c_in // TAPS) * TAPS
    d_pad = -(-a.c_out // CHANNELS) * CHANNELS
    return taps, d_pad, a.c_in * a.kw * hp * wv, d_pad * a.h_out * wv


def rows_apply(a) -> bool:
    """Whether ``weight_grad_rows`` takes the weight gradient of ``a`` (a problem the
    direct backward takes): 32 vector registers, stride 1 along the rows, a staged image
    within ``STAGE_BYTES``, and more of the lanes used along a row than across the
    output channels (LeNet's first layer: 28 of 32 against 6 of 16). The direct
    backward runs it where the register tiles do not apply (``direct_grad.by_rows``)."""
    if not _lanes.WIDE or a.stride[1] != 1 or a.groups != 1 or a.w_out == 0:
        return False
    nl = _lanes.per_register(a.dtype.itemsize)
    along = a.w_out / _row_width(a)
    across = a.c_out / (-(-a.c_out // nl) * nl)
    _, _, xs, gs = _sizes(a)
    return along > across and (xs + gs) * a.dtype.itemsize <= STAGE_BYTES


@njit(inline="always")
def _fma4(acc, xv, g):
    """acc[k] + xv[k] * g for the 4 taps k (one grad_y vector for 4 multiply-adds)."""
    f = _lanes.fma_lanes
    return (f(acc[0], xv[0], g), f(acc[1], xv[1], g), f(acc[2], xv[2], g),
            f(acc[3], xv[3], g))


@njit(inline="always")
def _load4(a, i, o):
    return (_lanes.load(a, i + o[0]), _lanes.load(a, i + o[1]),
            _lanes.load(a, i + o[2]), _lanes.load(a, i + o[3]))


@njit(inline="always")
def _add4(a, i, nl, v):
    """Store a[i + k*nl : ...] += v[k] for the 4 vectors."""
    for k in range(4):
        _lanes.store(a, i + U(k * nl), _lanes.add(_lanes.load(a, i + U(k * nl)), v[k]))


@njit(cache=True)
def _group_pass(stage, o, g0, plane, rows, acc, at):
    """Add to acc[at ...] (24 vectors: 6 channels x 4 taps) the products of one image's
    staged rows: taps at offsets o in stage, the 6 channels' grad_y rows from g0 (planes
    ``plane`` apart); rows = (output rows, row width Wv, input rows between output
    rows). Not inlined into the parallel loop: numba's parallel-loop analysis fails on
    tuples of registers."""
    ho, wv, step = rows
    nl = _lanes.count(stage)
    z = _lanes.zeros(stage)
    s0, s1, s2 = (z, z, z, z), (z, z, z, z), (z, z, z, z)
    s3, s4, s5 = (z, z, z, z), (z, z, z, z), (z, z, z, z)
    for i in range(ho):
        xr = U(i * step)
        gr = g0 + U(i * wv)
        for j in range(0, wv, nl):
            xv = _load4(stage, xr + U(j), o)
            g = gr + U(j)
            s0 = _fma4(s0, xv, _lanes.load(stage, g))
            s1 = _fma4(s1, xv, _lanes.load(stage, g + plane))
            s2 = _fma4(s2, xv, _lanes.load(stage, g + 2 * plane))
            s3 = _fma4(s3, xv, _lanes.load(stage, g + 3 * plane))
            s4 = _fma4(s4, xv, _lanes.load(stage, g + 4 * plane))
            s5 = _fma4(s5, xv, _lanes.load(stage, g + 5 * plane))
    step4 = U(4 * nl)
    _add4(acc, at, nl, s0)
    _add4(acc, at + step4, nl, s1)
    _add4(acc, at + 2 * step4, nl, s2)
    _add4(acc, at + 3 * step4, nl, s3)
    _add4(acc, at + 4 * step4, nl, s4)
    _add4(acc, at + 5 * step4, nl, s5)


@njit(cache=True)
def _stage_image(xf, xsteps, n, gf, gsteps, geo, stage, at):
    """Write image n's staged input and grad_y rows (the module's xs and gs) into stage
    from element at: xf the input flat with the element steps (image, channel, row,
    column) and sizes (H, W) xsteps, gf grad_y flat with its steps gsteps; geo = (KW,
    r_w, Ho, Wo, D, D_pad, Wv, s_h, staged input rows Hs, p_top, p_left, C). Unsigned
    indices: no negative-index checks, so that the contiguous runs vectorise."""
    kw, rw, ho, wo, d_all, d_pad, wv, _, hs, pt, pl, c_all = geo
    xn, xc, xh, xw, h, w = xsteps
    zero = stage.dtype.type(0)
    at = U(at)
    wv_, xw_ = U(wv), U(xw)
    for c in range(c_all):
        for b in range(kw):
            j_lo = min(wo, max(0, pl - b * rw))          # the columns inside x
            j_hi = max(j_lo, min(wo, w + pl - b * rw))
            for r in range(hs):
                row = r - pt
                if row < 0 or row >= h:
                    for j in range(wv_):
                        stage[at + j] = zero
                    at += wv_
                    continue
                for j in range(U(j_lo)):
                    stage[at + j] = zero
                src = U(n * xn + c * xc + row * xh + (j_lo + b * rw - pl) * xw)
                dst = at + U(j_lo)
                if xw == 1:                     # a contiguous run
                    for j in range(U(j_hi - j_lo)):
                        stage[dst + j] = xf[src + j]
                else:
                    for j in range(U(j_hi - j_lo)):
                        stage[dst + j] = xf[src + j * xw_]
                for j in range(U(j_hi), wv_):
                    stage[at + j] = zero
                at += wv_
    gn, gd, gi, gj = gsteps
    wo_, gj_ = U(wo), U(gj)
    for d in range(d_pad):
        for i in range(ho):
            if d < d_all:
                src = U(n * gn + d * gd + i * gi)
                if gj == 1:
                    for j in range(wo_):
                        stage[at + j] = gf[src + j]
                else:
                    for j in range(wo_):
                        stage[at + j] = gf[src + j * gj_]
                for j in range(wo_, wv_):
                    stage[at + j] = zero
            else:
                for j in range(wv_):
                    stage[at + j] = zero
            at += wv_


@njit(parallel=True, cache=True)
def _grad_w_rows(xf, xsteps, gf, gsteps, geo, toff, images, stage, acc, sums):
    """sums (runs, D_pad/6, taps/4, 24) float64, fully written: for images = (N, per),
    the run q's sums (``per`` images each) of every group of 4 taps (offsets toff into
    an image's staged input) and 6 output channels, summed in registers acc (runs, ...,
    24, L) flat and their lanes then added in order; stage (runs, staged image) flat, a
    run's own rows."""
    n_img, per = images
    kw, rw, ho, wo, d_all, d_pad, wv, sh, hs, _, _, c_all = geo
    nl = _lanes.count(acc)
    n_tap = toff.size // TAPS
    n_chan = d_pad // CHANNELS
    per_run = n_chan * n_tap * SUMS * nl
    x_size = c_all * kw * hs * wv
    img = x_size + d_pad * ho * wv
    plane = U(ho * wv)
    step = sh * wv
    zero = _lanes.zeros(acc)
    for q in prange((n_img + per - 1) // per):
        base = U(q * per_run)
        for v in range(0, per_run, nl):
            _lanes.store(acc, base + U(v), zero)
        s0 = U(q * img)                          # the run's own staged image
        for n in range(q * per, min(n_img, (q + 1) * per)):
            _stage_image(xf, xsteps, n, gf, gsteps, geo, stage, s0)
            for ch in range(n_chan):
                g0 = s0 + U(x_size) + U(ch * CHANNELS) * plane
                for t in range(n_tap):
                    o = (s0 + U(toff[TAPS * t]), s0 + U(toff[TAPS * t + 1]),
                         s0 + U(toff[TAPS * t + 2]), s0 + U(toff[TAPS * t + 3]))
                    _group_pass(stage, o, g0, plane, (ho, wv, step), acc,
                                base + U((ch * n_tap + t) * SUMS * nl))
        for v in range(per_run // nl):
            total = 0.0
            for k in range(nl):
                total += np.float64(acc[base + U(v * nl + k)])
            sums[q, v] = total


@njit(cache=True)
def _sum_runs(sums, dims, out, steps):
    """out[a, b, c, d] (flat; element steps ``steps``) = the sum over the runs, in
    order, of tap t = (c*KH + a)*KW + b and channel d's sums (``_grad_w_rows``' sums;
    dims = (KH, KW, C, D)), rounded once to out's dtype."""
    kh, kw, c_all, d_all = dims
    sa, sb, sc, sd = steps
    n_tap = sums.shape[1] // SUMS // -(-d_all // CHANNELS)
    for t in range(kh * kw * c_all):
        c, rest = divmod(t, kh * kw)
        a, b = divmod(rest, kw)
        for d in range(d_all):
            at = (((d // CHANNELS) * n_tap + t // TAPS) * SUMS + (d % CHANNELS) * TAPS
                  + t % TAPS)
            total = 0.0
            for q in range(sums.shape[0]):
                total += sums[q, at]
            out[a * sa + b * sb + c * sc + d * sd] = total


@functools.lru_cache(maxsize=64)
def _tap_offsets(c_in: int, kh: int, kw: int, rows: int, r_h: int, wv: int) -> np.ndarray:
    """Each tap t = (c*KH + a)*KW + b's offset in an image's staged input (``rows``
    rows of Wv a column shift b) from its output row's first element, the taps rounded
    up to ``TAPS`` (the last ones read tap 0's rows; their sums are never used);
    read-only, cached per geometry."""
    c = np.arange(c_in)[:, None, None]
    ka = np.arange(kh)[None, :, None]
    kb = np.arange(kw)[None, None, :]
    off = ((c * kw + kb) * rows + ka * r_h) * wv
    out = np.zeros(-(-off.size // TAPS) * TAPS, np.int64)
    out[:off.size] = off.reshape(-1)
    out.flags.writeable = False
    return out


def weight_grad_rows(x, gy, a, grad_w) -> None:
    """grad_w (layout of ``a``) = the weight gradient for x and grad_y (both in the
    layout of ``a``, any strides) of a ``rows_apply`` problem."""
    dt = a.dtype
    nl = _lanes.per_register(dt.itemsize)
    wv = _row_width(a)
    taps, d_pad, xs, gs = _sizes(a)
    per = min(RUN_IMAGES, a.n)
    runs = -(-a.n // per)
    x = np.ascontiguousarray(x, dt)
    gy = np.ascontiguousarray(gy, dt)
    xsteps = tuple(s // x.itemsize for s in a.dims.to_canonical_view(x).strides)
    gsteps = tuple(s // gy.itemsize for s in a.dims.to_canonical_view(gy).strides)
    stage = workspace("direct_grad_rows.stage", runs * (xs + gs), dt)
    n_sums = d_pad // CHANNELS * taps // TAPS * SUMS
    acc = workspace("direct_grad_rows.acc", runs * n_sums * nl, dt)
    sums = np.empty((runs, n_sums), np.float64)
    (pt, _), (pl, _) = a.padding
    geo = (a.kw, a.dilation[1], a.h_out, a.w_out, a.c_out, d_pad, wv, a.stride[0],
           padded_size(a)[0], pt, pl, a.c_in)
    with parallel_guard():
        _grad_w_rows(x.reshape(-1), xsteps + (a.h, a.w), gy.reshape(-1), gsteps, geo,
                     _tap_offsets(a.c_in, a.kh, a.kw, geo[8], a.dilation[0], wv),
                     (a.n, per), stage, acc, sums)
    into_weight(grad_w, a, lambda out, steps: _sum_runs(
        sums, (a.kh, a.kw, a.c_in, a.c_out), out, steps))
