"""The direct NHWC convolution: small layers on many small images (LeNet's 6 -> 16
channels 5x5) in one parallel numba kernel, without a layout copy or a GEMM.

In NHWC an output pixel's C_out values are contiguous, and so are the weight's for one
tap (HWIO: w[a, b, c, :]). ``_conv_rows`` takes one output row (n, i) per task and,
for each block of ``count`` output channels (one SIMD register, ``fastconv._lanes``),
accumulates 8 output pixels of the row at once in 8 registers:

    acc_p += x[n, i*s_h - p_t + a*r_h, (j + p)*s_w - p_l + b*r_w, c] * w[a, b, c, block]

over the taps (a, b, c): one load of the weight's lanes feeds 8 fused multiply-adds,
each with one input value in every lane, and the weight stays in L1. With column
dilation 1 a kernel row's taps (b, c) are one contiguous run of KW*C input values. The
8 pixels must lie wholly inside the image's columns (a group of fewer pixels at the
row's end repeats its first pixel's taps and drops those sums); pixels whose kernel
reaches into the left or right padding run one at a time over their valid columns.
Rows of taps outside the image (top, bottom padding) are skipped. The bias starts each
accumulator; output channels beyond C_out (up to a whole block) are computed from zero
weights and not written.

>>> import numpy as np
>>> from fastconv import conv2d
>>> x = np.ones((8, 6, 6, 2), np.float32)            # NHWC
>>> w = np.ones((3, 3, 2, 16), np.float32)           # HWIO
>>> y = conv2d(x, w, padding=1, layout="NHWC", algo="im2col")
>>> float(y[0, 0, 0, 0]), float(y[0, 2, 2, 15])      # a corner: 2 channels x 4 taps
(8.0, 18.0)
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from ... import _lanes
from ..._runtime import parallel_guard
from ...costs import DEFAULT_PROFILE, Estimate, Profile
from .._common import U
from .image_last_direct import direct_cost, direct_forward_applies
from .tiling import IMAGE_LAST_MIN_IMAGES

#: Multiply-adds per second per thread of ``_conv_rows`` on whole groups of 8 pixels
#: (float32; half for float64), for the cost model. Measured on one core of the 2-core
#: machine: 45 GMAC/s where a block's weight (taps x one register) fits in
#: ``L1_WEIGHT_BYTES`` (LeNet's 6 -> 16 5x5: 9.6 KB; the 3 -> 64 7x7 stride-2 stem: 9.4 KB
#: a block), 35 beyond (32 -> 32 3x3: 18 KB, 64 -> 128 3x3 stride 2: 36 KB). The same
#: with 256-bit as with 512-bit registers (35 GMAC/s each, alternating, on a loaded
#: machine: the loads of the broadcast inputs bound both).
NHWC_DIRECT_GMACS = 45.0
NHWC_DIRECT_GMACS_LARGE = 35.0
L1_WEIGHT_BYTES = 16 * 1024
#: Pixels accumulated at once (the kernel's 8 registers).
PIXELS = 8
#: The kernel runs layers of at most this many output channels (wider layers make
#: wide GEMMs, which BLAS runs faster) ...
MAX_CHANNELS = 64
#: ... of at least 3/4 of the lanes of their blocks of output channels in use
#: (``_lane_use``; LeNet's 1 -> 6 would compute 16 channels for 6) ...
MIN_LANE_USE = 0.75
#: ... and of at least this many taps in a run (KW*C_in; C_in with column dilation):
#: shorter runs spend as much on the loop as on the multiply-adds.
MIN_RUN = 8
#: ... and at most this many taps C_in*KH*KW (more: the GEMM is wide enough for BLAS).
MAX_TAPS = 600


def _lane_use(args) -> float:
    """Output channels over the lanes computed for them (whole blocks)."""
    count = _lanes.LANE_BYTES // args.dtype.itemsize
    return args.c_out / (-(-args.c_out // count) * count)


def nhwc_direct_applies(args) -> bool:
    """Whether the forward of ``args`` runs ``forward_nhwc_direct``: NHWC, several images
    (at least ``IMAGE_LAST_MIN_IMAGES``), one group, a kernel larger than 1x1, at most
    ``MAX_CHANNELS`` output channels using at least ``MIN_LANE_USE`` of their lanes,
    runs of at least ``MIN_RUN`` taps and at most ``MAX_TAPS`` taps C_in*KH*KW. Any
    stride, padding and dilation."""
    if not args.dims.channels_last or args.groups != 1 or args.kh * args.kw == 1:
        return False
    run = args.c_in * (args.kw if args.dilation[1] == 1 else 1)
    return (args.n >= IMAGE_LAST_MIN_IMAGES and args.c_out <= MAX_CHANNELS
            and _lane_use(args) >= MIN_LANE_USE and run >= MIN_RUN
            and args.c_in * args.kh * args.kw <= MAX_TAPS and args.w_out > 0)


@njit(inline="always")
def _write(fo, o, v, m):
    """fo[o + k] = lane k of v for k < m."""
    for k in range(m):
        fo[o + U(k)] = _lanes.lane(v, k)


@njit(inline="always")
def _offset(p, k, step):
    """Pixel p's input offset in a group of k pixels (pixel 0's beyond them)."""
    return U(p * step if p < k else 0)


@njit(inline="always")
def _edge_pixel(xf, fw, v, xrow, wrow, geo, c_all, col0, nl):
    """v + one pixel's sums over the kernel columns inside the image (its kernel
    reaches into the left or right padding): xrow, wrow the offsets of the pixel's
    input row (column 0) and of the weight's kernel row. Four accumulators, taps in
    turn, for four chains of multiply-adds at once."""
    kw, wd, rw = geo
    b_lo = max(0, (rw - 1 - col0) // rw)
    b_hi = min(kw, (wd - col0 + rw - 1) // rw)
    # with column dilation 1 the valid taps are one run of (b_hi - b_lo)*C values
    run, kcols = ((b_hi - b_lo) * c_all, 1) if rw == 1 else (c_all, b_hi - b_lo)
    e1, e2, e3 = _lanes.zeros(fw), _lanes.zeros(fw), _lanes.zeros(fw)
    for bb in range(kcols):
        b = b_lo + bb
        xo = xrow + U((col0 + b * rw) * c_all)
        wq = wrow + U(b * c_all * nl)
        q4 = U(run - run % 4)
        for q in range(U(0), q4, U(4)):
            x, w = xo + q, wq + q * U(nl)
            v = _lanes.fma(v, xf[x], _lanes.load(fw, w))
            e1 = _lanes.fma(e1, xf[x + U(1)], _lanes.load(fw, w + U(nl)))
            e2 = _lanes.fma(e2, xf[x + U(2)], _lanes.load(fw, w + U(2 * nl)))
            e3 = _lanes.fma(e3, xf[x + U(3)], _lanes.load(fw, w + U(3 * nl)))
        for q in range(q4, U(run)):
            v = _lanes.fma(v, xf[xo + q], _lanes.load(fw, wq + q * U(nl)))
    return _lanes.add(_lanes.add(v, e1), _lanes.add(e2, e3))


@njit(parallel=True, cache=True)
def _conv_rows(xf, xs, fw, fb, fo, os, geo, j_lo, j_hi):
    """out = conv(x, w) + bias, x (N, H, W, C) and out (N, Ho, Wo, D) C-contiguous, given
    flat (xf, fo) with their shapes xs, os. fw: the weight as (D_pad/L, KH*KW*C, L) flat,
    L lanes a block, zero beyond D; fb (D_pad,) the bias (zeros without one). geo = (KH,
    KW, s_h, s_w, p_t, p_l, r_h, r_w); output columns j_lo <= j < j_hi have their
    whole kernel inside the image's columns. One task per output row (module
    docstring)."""
    n_img, h, wd, c_all = xs
    _, ho, wo, d_all = os
    kh, kw, sh, sw, pt, pl, rh, rw = geo
    nl = _lanes.count(fb)
    wlen = kh * kw * c_all * nl
    run, kcols = (kw * c_all, 1) if rw == 1 else (c_all, kw)
    ps = sw * c_all
    for task in prange(n_img * ho):
        n = task // ho
        i = task % ho
        a_lo = max(0, (pt - i * sh + rh - 1) // rh)           # rows of taps in the image
        a_hi = min(kh, (h + pt - i * sh + rh - 1) // rh)
        obase = (n * ho + i) * wo * d_all
        for d0 in range(0, fb.shape[0], nl):
            m = min(nl, d_all - d0)
            wb = U(d0 // nl * wlen)
            bias = _lanes.load(fb, U(d0))
            for e in range(j_lo + wo - j_hi):  # pixels reaching into the padding
                j = e if e < j_lo else j_hi + e - j_lo
                v = bias
                for a in range(a_lo, a_hi):
                    xrow = U((n * h + i * sh - pt + a * rh) * wd * c_all)
                    v = _edge_pixel(xf, fw, v, xrow, wb + U(a * kw * c_all * nl),
                                    (kw, wd, rw), c_all, j * sw - pl, nl)
                _write(fo, U(obase + j * d_all + d0), v, m)
            j = j_lo
            while j < j_hi:                    # groups of 8 pixels inside the image
                col0 = j * sw - pl
                k = min(PIXELS, j_hi - j)
                # offsets of pixels 1..7 (repeating pixel 0 beyond the k real ones)
                o1, o2, o3 = _offset(1, k, ps), _offset(2, k, ps), _offset(3, k, ps)
                o4, o5 = _offset(4, k, ps), _offset(5, k, ps)
                o6, o7 = _offset(6, k, ps), _offset(7, k, ps)
                v0 = bias
                v1, v2, v3, v4, v5, v6, v7 = v0, v0, v0, v0, v0, v0, v0
                for a in range(a_lo, a_hi):
                    r = i * sh - pt + a * rh
                    for b in range(kcols):
                        xo = U(((n * h + r) * wd + col0 + b * rw) * c_all)
                        wq = wb + U((a * kw + b) * c_all * nl)
                        for q in range(U(run)):
                            wv = _lanes.load(fw, wq + q * U(nl))
                            xq = xo + q
                            v0 = _lanes.fma(v0, xf[xq], wv)
                            v1 = _lanes.fma(v1, xf[xq + o1], wv)
                            v2 = _lanes.fma(v2, xf[xq + o2], wv)
                            v3 = _lanes.fma(v3, xf[xq + o3], wv)
                            v4 = _lanes.fma(v4, xf[xq + o4], wv)
                            v5 = _lanes.fma(v5, xf[xq + o5], wv)
                            v6 = _lanes.fma(v6, xf[xq + o6], wv)
                            v7 = _lanes.fma(v7, xf[xq + o7], wv)
                o = U(obase + j * d_all + d0)
                for p, v in enumerate((v0, v1, v2, v3, v4, v5, v6, v7)):
                    if p < k:
                        _write(fo, o + U(p * d_all), v, m)
                j += k


def _packed_weight(w, dtype) -> np.ndarray:
    """HWIO (KH, KW, C, D) -> (D_pad/L, KH*KW*C, L) flat, zero beyond D."""
    kh, kw, c, d = w.shape
    nl = _lanes.LANE_BYTES // dtype.itemsize
    blocks = -(-d // nl)
    padded = np.zeros((kh * kw * c, blocks * nl), dtype)
    padded[:, :d] = w.reshape(kh * kw * c, d)
    return np.ascontiguousarray(padded.reshape(-1, blocks, nl).transpose(1, 0, 2)).reshape(-1)


def forward_nhwc_direct(x, w, args, out, bias) -> None:
    """The forward of a ``nhwc_direct_applies`` problem: out (N, Ho, Wo, C_out) (any
    strides) = conv(x (N, H, W, C_in), w (KH, KW, C_in, C_out)) + bias (C_out,) when
    given. Wraps ``_conv_rows``."""
    dt = args.dtype
    nl = _lanes.LANE_BYTES // dt.itemsize
    fb = np.zeros(-(-args.c_out // nl) * nl, dt)
    if bias is not None:
        fb[:args.c_out] = bias
    target = out if out.flags.c_contiguous else np.empty(out.shape, dt)
    xc = np.ascontiguousarray(x, dt)
    xf = xc.reshape(-1)
    fo = target.reshape(-1)  # a view: target is C-contiguous
    (pt, _), (pl, _) = args.padding
    geo = (args.kh, args.kw, *args.stride, pt, pl, *args.dilation)
    with parallel_guard():
        _conv_rows(xf, xc.shape, _packed_weight(w, dt), fb, fo, target.shape, geo,
                   *_interior(args))
    if target is not out:
        out[...] = target


def _interior(a) -> tuple[int, int]:
    """The output columns j_lo <= j < j_hi whose whole kernel lies inside the image's."""
    (sw, rw), pl = (a.stride[1], a.dilation[1]), a.padding[1][0]
    j_lo = min(a.w_out, (pl + sw - 1) // sw)
    return j_lo, max(j_lo, min(a.w_out, (a.w + pl - (a.kw - 1) * rw - 1) // sw + 1))


def nhwc_direct_cost(a, p: Profile) -> Estimate:
    """Model time of ``forward_nhwc_direct``: the multiply-adds computed (output channels
    rounded up to whole blocks of lanes, the interior of each output row up to whole
    groups of 8 pixels, pixels reaching into the padding at half the rate: 4 chains of
    multiply-adds instead of 8) at ``NHWC_DIRECT_GMACS`` per thread
    (``NHWC_DIRECT_GMACS_LARGE`` for a block's weight beyond ``L1_WEIGHT_BYTES``; half
    for float64), plus the call's fixed cost."""
    d_pad = a.c_out / _lane_use(a)
    j_lo, j_hi = _interior(a)
    slots = -(-(j_hi - j_lo) // PIXELS) * PIXELS + 2 * (a.w_out - (j_hi - j_lo))
    macs = a.n * a.h_out * slots * d_pad * a.c_in * a.kh * a.kw
    block_bytes = a.c_in * a.kh * a.kw * _lanes.LANE_BYTES
    gmacs = NHWC_DIRECT_GMACS if block_bytes <= L1_WEIGHT_BYTES else NHWC_DIRECT_GMACS_LARGE
    rate = gmacs * 1e9 * p.threads * (4 / a.dtype.itemsize)
    return Estimate(p.call_us * 1e-6 + macs / rate, 0,
                    f"direct NHWC kernel (no GEMM, no layout copy), {macs / 1e6:.3g}M "
                    f"multiply-adds {1e3 * macs / rate:.3g} ms")


@functools.lru_cache(maxsize=256)
def nhwc_direct_chosen(args) -> bool:
    """Whether im2col's forward runs ``forward_nhwc_direct``: where it applies
    (``nhwc_direct_applies``) and, where the direct image-last kernel applies too, its
    model time (``nhwc_direct_cost``) is not above that kernel's (``direct_cost``; both
    scale with the profile's threads and add its call cost, so the profile does not
    change the choice: cached per problem). Measured, batch 64, 2 threads: 6 -> 16 5x5
    at 12x12 0.18 vs 0.41 ms (image-last); 6 -> 16 5x5 padding 2 at 14x14 (4 of 14
    pixels a row in the padding) 0.88 vs 0.56 ms; 6 -> 12 5x5 at 12x12 (12 of 16
    lanes) 0.22 vs 0.19 ms."""
    if not nhwc_direct_applies(args):
        return False
    if not direct_forward_applies(args):
        return True
    return (nhwc_direct_cost(args, DEFAULT_PROFILE).seconds
            <= direct_cost(args, DEFAULT_PROFILE).seconds)
