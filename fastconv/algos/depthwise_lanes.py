"""Depthwise forwards in SIMD registers (``fastconv._lanes``), one output channel per
input channel (``C_out == C_in == groups``), a kernel per layout.

NHWC: a pixel's channels are contiguous, and each channel has its own weights, so a
block of ``count`` channels (one register) is one lane-by-lane multiply-add per tap:

    y[n, i, j, c:c+L] = bias[c:c+L] + sum over taps (a, b) of
                        x[n, i*s_h - p_t + a*r_h, j*s_w - p_l + b*r_w, c:c+L] * w[a, b, 0, c:c+L]

``_depthwise_rows`` accumulates 8 output pixels of a row at once in 8 registers (one
load of the tap's weights feeds 8 multiply-adds; a kernel 3 columns wide at column
stride 1 loads each input column once for the up to 3 pixels that read it). A task
takes ``BAND`` output rows of an image and goes through them group of 8 columns by
group, so that the input rows of a group's kernel stay in L1 from one output row to
the next. Pixels whose kernel
reaches into the left or right padding run one at a time over their valid columns,
and rows of taps in the top or bottom padding are skipped. The last block of channels
ends at C (it overlaps the one before when C is not a multiple of the lanes and writes
those channels again, with the same values), so the kernel needs C >= ``count``.

NCHW, stride 1: ``_depthwise_planes`` copies an input plane zero-padded (every tap of
every output lies inside it) and accumulates 4 registers of an output row at once, the
weight of each tap broadcast to every lane:

    y[n, d, i, j:j+L] = bias[d] + sum over taps of w[d, 0, a, b] * xp[i + a*r_h, j + b*r_w :][:L]

(the last register of a row ends at Wo, overlapping the one before), so it needs
Wo >= ``count``; ``depthwise_nchw`` runs the direct algorithm's loops otherwise.

>>> import numpy as np
>>> from fastconv import conv2d
>>> x = np.ones((2, 5, 5, 16), np.float32)           # NHWC
>>> w = np.ones((3, 3, 1, 16), np.float32)           # HWIO, one channel per group
>>> y = conv2d(x, w, padding=1, groups=16, layout="NHWC", algo="naive")
>>> float(y[0, 0, 0, 0]), float(y[0, 2, 2, 15])      # a corner: 4 taps; inside: 9
(4.0, 9.0)
>>> x = np.ones((2, 16, 20, 20), np.float32)         # NCHW
>>> w = np.ones((16, 1, 3, 3), np.float32)
>>> y = conv2d(x, w, padding=1, groups=16, algo="naive")
>>> float(y[0, 0, 0, 0]), float(y[1, 15, 10, 10])
(4.0, 9.0)
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import _lanes
from .._runtime import parallel_guard
from ._common import U, interior_columns
from .depthwise_grad import padded_plane

#: Pixels accumulated at once (the kernel's 8 registers).
PIXELS = 8
#: Output rows of a task, done group of 8 columns by group (the input rows of a group's
#: kernel stay in L1 from one output row to the next).
BAND = 8


def nhwc_applies(args) -> bool:
    """Whether ``forward_nhwc`` runs the NHWC depthwise layer ``args``: one output channel
    per input channel and at least one register of channels."""
    return (args.dims.channels_last and args.c_in == args.groups == args.c_out
            and args.c_in >= _lanes.per_register(args.dtype.itemsize) and args.w_out > 0)


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
def _group(xf, wf, fo, v0, x0, w0, o, taps, ps, c_all, stream):
    """fo[o + p*c_all : + count] = v0 + one block's sums of 8 pixels p, over the taps t
    (x0 + taps[t] + p*ps: pixel p's input at tap t; w0 + t*c_all: the tap's weights);
    stream: past the caches (``_store8``)."""
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
    _store8(fo, o, c_all, v0, v1, v2, v3, v4, v5, v6, v7, stream)


@njit(inline="always")
def _slide3(xf, wf, fo, v0, x0, w0, o, rows, rstep, c_all, stream):
    """``_group`` for a kernel 3 columns wide at column stride and dilation 1: pixel p's
    tap b reads input column p + b, so each of the 10 columns a kernel row spans is
    loaded once and feeds up to 3 pixels (13 loads for 24 multiply-adds instead of 27).
    rows: the kernel rows inside the image, from x0 and w0; rstep: the input offset from
    one kernel row to the next."""
    v1, v2, v3, v4, v5, v6, v7 = v0, v0, v0, v0, v0, v0, v0
    for a in range(rows):
        xa, wa = x0 + U(a) * rstep, w0 + U(3 * a) * c_all
        k0, k1 = _lanes.load(wf, wa), _lanes.load(wf, wa + c_all)
        k2 = _lanes.load(wf, wa + U(2) * c_all)
        u = _lanes.load(xf, xa)
        v0 = _lanes.fma_lanes(v0, u, k0)
        u = _lanes.load(xf, xa + c_all)
        v0, v1 = _lanes.fma_lanes(v0, u, k1), _lanes.fma_lanes(v1, u, k0)
        v0, v1, v2 = _feed3(xf, xa + U(2) * c_all, v0, v1, v2, k0, k1, k2)
        v1, v2, v3 = _feed3(xf, xa + U(3) * c_all, v1, v2, v3, k0, k1, k2)
        v2, v3, v4 = _feed3(xf, xa + U(4) * c_all, v2, v3, v4, k0, k1, k2)
        v3, v4, v5 = _feed3(xf, xa + U(5) * c_all, v3, v4, v5, k0, k1, k2)
        v4, v5, v6 = _feed3(xf, xa + U(6) * c_all, v4, v5, v6, k0, k1, k2)
        v5, v6, v7 = _feed3(xf, xa + U(7) * c_all, v5, v6, v7, k0, k1, k2)
        u = _lanes.load(xf, xa + U(8) * c_all)
        v6, v7 = _lanes.fma_lanes(v6, u, k2), _lanes.fma_lanes(v7, u, k1)
        v7 = _lanes.fma_lanes(v7, _lanes.load(xf, xa + U(9) * c_all), k2)
    _store8(fo, o, c_all, v0, v1, v2, v3, v4, v5, v6, v7, stream)


@njit(inline="always")
def _feed3(xf, i, va, vb, vc, k0, k1, k2):
    """The input column u = xf[i :][:count]'s share of the three pixels whose kernels
    hold it in columns 2, 1 and 0: (va + u*k2, vb + u*k1, vc + u*k0)."""
    u = _lanes.load(xf, i)
    return (_lanes.fma_lanes(va, u, k2), _lanes.fma_lanes(vb, u, k1),
            _lanes.fma_lanes(vc, u, k0))


@njit(inline="always")
def _store8(fo, o, step, v0, v1, v2, v3, v4, v5, v6, v7, stream):
    """fo[o + p*step : + count] = vp for the 8 pixels p (past the caches with
    ``stream``: ``_lanes.put``)."""
    _lanes.put(fo, o, v0, stream)
    _lanes.put(fo, o + step, v1, stream)
    _lanes.put(fo, o + U(2) * step, v2, stream)
    _lanes.put(fo, o + U(3) * step, v3, stream)
    _lanes.put(fo, o + U(4) * step, v4, stream)
    _lanes.put(fo, o + U(5) * step, v5, stream)
    _lanes.put(fo, o + U(6) * step, v6, stream)
    _lanes.put(fo, o + U(7) * step, v7, stream)


@njit(inline="always")
def _single(xf, wf, fo, fb, xs, os, geo, n, i, j, a_lo, a_hi, stream):
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
        _lanes.put(fo, U(((n * os[1] + i) * os[2] + j) * c_all + c0), v, stream)


@njit(parallel=True, cache=True)
def _depthwise_rows(xf, xs, wf, fb, fo, os, geo, j_lo, j_hi, stream):
    """out = depthwise conv(x, w) + bias, x (N, H, W, C) and out (N, Ho, Wo, C)
    C-contiguous, given flat (xf, fo) with their shapes xs, os; wf the HWIO weight
    (KH, KW, 1, C) flat, fb (C,) the bias (zeros without one). geo = (KH, KW, s_h, s_w,
    p_t, p_l, r_h, r_w); output columns j_lo <= j < j_hi have their whole kernel
    inside the image's columns. One task per image and group of 8 output columns, down
    all the output rows (the kernel's input rows stay in L1 from one output row to the
    next); the first and last group's tasks also do the pixels in the padding. stream:
    the stores go past the caches (``_lanes.put``), and each task ends with a fence."""
    n_img, h, wd, c_all = xs
    _, ho, wo, _ = os
    kh, kw, sh, sw, pt, pl, rh, rw = geo
    nl = _lanes.count(fb)
    blocks = -(-c_all // nl)
    ps = sw * c_all
    slide = kw == 3 and sw == 1 and rw == 1             # ``_slide3``
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
                _single(xf, wf, fo, fb, xs, os, geo, n, i, e, a_lo, a_hi, stream)
            for e in range(j_hi, wo):
                _single(xf, wf, fo, fb, xs, os, geo, n, i, e, a_lo, a_hi, stream)
        for g in range(groups):
            j = min(j_lo + g * PIXELS, j_hi - PIXELS)  # the last group ends at j_hi
            for i in range(i0, i1):
                a_lo = max(0, (pt - i * sh + rh - 1) // rh)
                a_hi = min(kh, (h + pt - i * sh + rh - 1) // rh)
                for a in range(0 if slide else a_hi - a_lo):   # taps from the first
                    for b in range(kw):
                        taps[a * kw + b] = U((a * rh * wd + b * rw) * c_all)
                x0 = ((n * h + i * sh - pt + a_lo * rh) * wd + j * sw - pl) * c_all
                o = ((n * ho + i) * wo + j) * c_all
                for blk in range(blocks):
                    c0 = min(blk * nl, c_all - nl)
                    if slide:
                        _slide3(xf, wf, fo, _lanes.load(fb, U(c0)), U(x0 + c0),
                                U(a_lo * kw * c_all + c0), U(o + c0), a_hi - a_lo,
                                U(rh * wd * c_all), U(c_all), stream)
                        continue
                    _group(xf, wf, fo, _lanes.load(fb, U(c0)), U(x0 + c0),
                           U(a_lo * kw * c_all + c0), U(o + c0), taps[:(a_hi - a_lo) * kw],
                           U(ps), U(c_all), stream)
        if stream:
            _lanes.stream_fence()


def forward_nhwc(x, w, args, out, bias) -> None:
    """The forward of an ``nhwc_applies`` problem: out (N, Ho, Wo, C) (any strides) =
    depthwise conv(x (N, H, W, C), w (KH, KW, 1, C)) + bias (C,) when given."""
    dt = args.dtype
    fb = np.zeros(args.c_out, dt) if bias is None else np.ascontiguousarray(bias, dt)
    target = out if out.flags.c_contiguous else np.empty(out.shape, dt)
    xc = np.ascontiguousarray(x, dt)
    (pt, _), (pl, _) = args.padding
    geo = (args.kh, args.kw, *args.stride, pt, pl, *args.dilation)
    stream = int(_lanes.can_stream(out, args.c_out))
    with parallel_guard():
        _depthwise_rows(xc.reshape(-1), xc.shape, np.ascontiguousarray(w, dt).reshape(-1),
                        fb, target.reshape(-1), target.shape, geo, *interior_columns(args),
                        stream)
    if target is not out:
        out[...] = target


#: Registers of an output row accumulated at once (independent chains of multiply-adds).
ROW_REGISTERS = 4


@njit(parallel=True, cache=True)
def _depthwise_planes(x, w, out, pt, pl, rh, rw, bias):
    """out (N, D, Ho, Wo) C-contiguous = the stride-1 depthwise correlation of x (N, C,
    H, W) with w (D, 1, KH, KW) (output channel d reads input channel d // (D/C)) plus
    bias (D,); Wo >= count. One task per output plane (module docstring)."""
    n_img, _, h, wd = x.shape
    d_all, _, kh, kw = w.shape
    ho, wo = out.shape[2], out.shape[3]
    mult = d_all // x.shape[1]
    fo, wf = out.reshape(out.size), w.reshape(w.size)
    nl = _lanes.count(fo)
    hp, wp = ho + rh * (kh - 1), wo + rw * (kw - 1)
    last = wo - nl
    for task in prange(n_img * d_all):
        n = task // d_all
        d = task % d_all
        xp = padded_plane(x[n, d // mult], hp, wp, 0, pt, pl, out.dtype)
        b0 = _lanes.splat(fo, bias[d])
        taps = U(d * kh * kw)
        for i in range(ho):
            o = U((task * ho + i) * wo)
            for v in range(0, -(-wo // nl), ROW_REGISTERS):
                j0, j1 = U(min(v * nl, last)), U(min((v + 1) * nl, last))
                j2, j3 = U(min((v + 2) * nl, last)), U(min((v + 3) * nl, last))
                c0, c1, c2, c3 = b0, b0, b0, b0
                for a in range(kh):
                    row = U((i + a * rh) * wp)
                    for b in range(kw):
                        wv = wf[taps + U(a * kw + b)]
                        q = row + U(b * rw)
                        c0 = _lanes.fma(c0, wv, _lanes.load(xp, q + j0))
                        c1 = _lanes.fma(c1, wv, _lanes.load(xp, q + j1))
                        c2 = _lanes.fma(c2, wv, _lanes.load(xp, q + j2))
                        c3 = _lanes.fma(c3, wv, _lanes.load(xp, q + j3))
                _lanes.store(fo, o + j0, c0)
                _lanes.store(fo, o + j1, c1)
                _lanes.store(fo, o + j2, c2)
                _lanes.store(fo, o + j3, c3)


def depthwise_nchw(x, w, out, sh, sw, pt, pl, rh, rw, bias, fallback) -> None:
    """out (N, D, Ho, Wo) = the depthwise correlation of x (N, C, H, W) with w (D, 1,
    KH, KW) plus bias ((D,) or empty: none), x and w C-contiguous: ``_depthwise_planes``
    for stride 1, a C-contiguous out and rows of at least one register; else
    ``fallback`` (the direct algorithm's kernel, same arguments)."""
    lanes = _lanes.per_register(out.dtype.itemsize)
    if (sh, sw) != (1, 1) or not out.flags.c_contiguous or out.shape[3] < lanes:
        fallback(x, w, out, sh, sw, pt, pl, rh, rw, bias)
        return
    b = bias if bias.shape[0] == out.shape[1] else np.zeros(out.shape[1], out.dtype)
    _depthwise_planes(x, w, out, pt, pl, rh, rw, b)
