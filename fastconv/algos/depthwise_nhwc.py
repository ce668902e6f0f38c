"""The depthwise NHWC forward in SIMD registers: one output channel per input channel
(``C_out == C_in == groups``), channels innermost.

In NHWC a pixel's channels are contiguous, and a depthwise layer multiplies each
channel by its own weight, so a block of ``count`` channels (one register,
``fastconv._lanes``) is one lane-by-lane multiply-add per tap:

    y[n, i, j, c:c+L] = bias[c:c+L] + sum over taps (a, b) of
                        x[n, i*s_h - p_t + a*r_h, j*s_w - p_l + b*r_w, c:c+L] * w[a, b, 0, c:c+L]

``_depthwise_rows`` takes one output row (n, i) per task and, for each block of
channels, accumulates 8 output pixels of the row at once in 8 registers: one load of
the tap's weights feeds 8 multiply-adds. Pixels whose kernel reaches into the left or
right padding run one at a time over their valid columns, and rows of taps in the
top or bottom padding are skipped. The last block of channels ends at C (it overlaps
the one before when C is not a multiple of the lanes and writes those channels
again, with the same values), so the kernel needs C >= ``count``.

>>> import numpy as np
>>> from fastconv import conv2d
>>> x = np.ones((2, 5, 5, 16), np.float32)           # NHWC
>>> w = np.ones((3, 3, 1, 16), np.float32)           # HWIO, one channel per group
>>> y = conv2d(x, w, padding=1, groups=16, layout="NHWC", algo="naive")
>>> float(y[0, 0, 0, 0]), float(y[0, 2, 2, 15])      # a corner: 4 taps; inside: 9
(4.0, 9.0)
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import _lanes
from .._runtime import parallel_guard
from ._common import U, interior_columns

#: Pixels accumulated at once (the kernel's 8 registers).
PIXELS = 8
#: Output rows of a task, done group of 8 columns by group (the input rows of a group's
#: kernel stay in L1 from one output row to the next).
BAND = 8


def applies(args) -> bool:
    """Whether ``forward`` runs the NHWC depthwise layer ``args``: one output channel
    per input channel and at least one register of channels."""
    return (args.dims.channels_last and args.c_in == args.groups == args.c_out
            and args.c_in >= _lanes.LANE_BYTES // args.dtype.itemsize and args.w_out > 0)


@njit(inline="always")
def _edge_pixel(xf, wf, v, xrow, wrow, geo, c_all, col0):
    """v + one pixel's sums over the kernel columns inside the image (its kernel reaches
    into the left or right padding): xrow, wrow the offsets of the pixel's input row
    (column 0, the block's first channel) and of the weight's kernel row."""
    kw, wd, rw = geo
    for b in range(max(0, (rw - 1 - col0) // rw), min(kw, (wd - col0 + rw - 1) // rw)):
        v = _lanes.fma_lanes(v, _lanes.load(xf, xrow + U((col0 + b * rw) * c_all)),
                             _lanes.load(wf, wrow + U(b * c_all)))
    return v


@njit(inline="always")
def _group(xf, wf, fo, v0, x0, w0, o, taps, ps, c_all):
    """fo[o + p*c_all : + count] = v0 + one block's sums of 8 pixels p, over the taps t
    (x0 + taps[t] + p*ps: pixel p's input at tap t; w0 + t*c_all: the tap's weights)."""
    v1, v2, v3, v4, v5, v6, v7 = v0, v0, v0, v0, v0, v0, v0
    for t in range(taps.shape[0]):
        wv = _lanes.load(wf, w0 + U(t) * c_all)
        xq = x0 + taps[t]
        v0 = _lanes.fma_lanes(v0, _lanes.load(xf, xq), wv)
        v1 = _lanes.fma_lanes(v1, _lanes.load(xf, xq + ps), wv)
        v2 = _lanes.fma_lanes(v2, _lanes.load(xf, xq + U(2) * ps), wv)
        v3 = _lanes.fma_lanes(v3, _lanes.load(xf, xq + U(3) * ps), wv)
        v4 = _lanes.fma_lanes(v4, _lanes.load(xf, xq + U(4) * ps), wv)
        v5 = _lanes.fma_lanes(v5, _lanes.load(xf, xq + U(5) * ps), wv)
        v6 = _lanes.fma_lanes(v6, _lanes.load(xf, xq + U(6) * ps), wv)
        v7 = _lanes.fma_lanes(v7, _lanes.load(xf, xq + U(7) * ps), wv)
    _lanes.store(fo, o, v0)
    _lanes.store(fo, o + c_all, v1)
    _lanes.store(fo, o + U(2) * c_all, v2)
    _lanes.store(fo, o + U(3) * c_all, v3)
    _lanes.store(fo, o + U(4) * c_all, v4)
    _lanes.store(fo, o + U(5) * c_all, v5)
    _lanes.store(fo, o + U(6) * c_all, v6)
    _lanes.store(fo, o + U(7) * c_all, v7)


@njit(inline="always")
def _single(xf, wf, fo, fb, xs, os, geo, n, i, j, a_lo, a_hi):
    """Output pixel (n, i, j) one block at a time, over its kernel's taps inside the image."""
    _, h, wd, c_all = xs
    kh, kw, sh, sw, pt, pl, rh, rw = geo
    nl = _lanes.count(fb)
    for blk in range(-(-c_all // nl)):
        c0 = min(blk * nl, c_all - nl)                # the last block ends at C
        v = _lanes.load(fb, U(c0))
        for a in range(a_lo, a_hi):
            xrow = U((n * h + i * sh - pt + a * rh) * wd * c_all + c0)
            v = _edge_pixel(xf, wf, v, xrow, U(a * kw * c_all + c0), (kw, wd, rw), c_all,
                            j * sw - pl)
        _lanes.store(fo, U(((n * os[1] + i) * os[2] + j) * c_all + c0), v)


@njit(parallel=True, cache=True)
def _depthwise_rows(xf, xs, wf, fb, fo, os, geo, j_lo, j_hi):
    """out = depthwise conv(x, w) + bias, x (N, H, W, C) and out (N, Ho, Wo, C)
    C-contiguous, given flat (xf, fo) with their shapes xs, os; wf the HWIO weight
    (KH, KW, 1, C) flat, fb (C,) the bias (zeros without one). geo = (KH, KW, s_h, s_w,
    p_t, p_l, r_h, r_w); output columns j_lo <= j < j_hi have their whole kernel
    inside the image's columns. One task per image and group of 8 output columns, down
    all the output rows (the kernel's input rows stay in L1 from one output row to the
    next); the first and last group's tasks also do the pixels in the padding."""
    n_img, h, wd, c_all = xs
    _, ho, wo, _ = os
    kh, kw, sh, sw, pt, pl, rh, rw = geo
    nl = _lanes.count(fb)
    blocks = -(-c_all // nl)
    ps = sw * c_all
    groups = -(-(j_hi - j_lo) // PIXELS) if j_hi - j_lo >= PIXELS else 0
    bands = -(-ho // BAND)
    for task in prange(n_img * bands):
        n = task // bands
        i0 = task % bands * BAND
        i1 = min(ho, i0 + BAND)
        taps = np.empty(kh * kw, np.uint64)
        for i in range(i0, i1):                 # pixels in the padding (all, if no group)
            a_lo = max(0, (pt - i * sh + rh - 1) // rh)       # rows of taps in the image
            a_hi = min(kh, (h + pt - i * sh + rh - 1) // rh)
            for e in range(j_lo if groups else j_hi):
                _single(xf, wf, fo, fb, xs, os, geo, n, i, e, a_lo, a_hi)
            for e in range(j_hi, wo):
                _single(xf, wf, fo, fb, xs, os, geo, n, i, e, a_lo, a_hi)
        for g in range(groups):
            j = min(j_lo + g * PIXELS, j_hi - PIXELS)  # the last group ends at j_hi
            for i in range(i0, i1):
                a_lo = max(0, (pt - i * sh + rh - 1) // rh)
                a_hi = min(kh, (h + pt - i * sh + rh - 1) // rh)
                for a in range(a_hi - a_lo):    # tap offsets from the first tap
                    for b in range(kw):
                        taps[a * kw + b] = U((a * rh * wd + b * rw) * c_all)
                x0 = ((n * h + i * sh - pt + a_lo * rh) * wd + j * sw - pl) * c_all
                o = ((n * ho + i) * wo + j) * c_all
                for blk in range(blocks):
                    c0 = min(blk * nl, c_all - nl)
                    _group(xf, wf, fo, _lanes.load(fb, U(c0)), U(x0 + c0),
                           U(a_lo * kw * c_all + c0), U(o + c0), taps[:(a_hi - a_lo) * kw],
                           U(ps), U(c_all))


def forward(x, w, args, out, bias) -> None:
    """The forward of an ``applies`` problem: out (N, Ho, Wo, C) (any strides) =
    depthwise conv(x (N, H, W, C), w (KH, KW, 1, C)) + bias (C,) when given."""
    dt = args.dtype
    fb = np.zeros(args.c_out, dt) if bias is None else np.ascontiguousarray(bias, dt)
    target = out if out.flags.c_contiguous else np.empty(out.shape, dt)
    xc = np.ascontiguousarray(x, dt)
    (pt, _), (pl, _) = args.padding
    geo = (args.kh, args.kw, *args.stride, pt, pl, *args.dilation)
    with parallel_guard():
        _depthwise_rows(xc.reshape(-1), xc.shape, np.ascontiguousarray(w, dt).reshape(-1),
                        fb, target.reshape(-1), target.shape, geo, *interior_columns(args))
    if target is not out:
        out[...] = target
