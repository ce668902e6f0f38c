"""The direct algorithm's backward of depthwise layers (NCHW, one output channel per input
channel, stride 1) with long unit-stride loops.

* grad_x is the forward's depthwise correlation of grad_y with the flipped kernel, padded
  by r*(K-1) - p before (``naive._conv_depthwise_nchw`` itself):
  grad_x[n, c, u, v] = sum_{a,b} w[c, 0, a, b] grad_y[n, c, u + p_top - r_h a,
  v + p_left - r_w b].
* grad_w[c, 0, a, b] = sum_{n,i,j} grad_y[n, c, i, j] x[n, c, i + r_h a - p_top,
  j + r_w b - p_left]: per image, the input plane is copied zero-padded (width
  Wp = Wo + r_w (KW-1)) and grad_y into a plane of that width (zero beyond Wo), so each
  tap is one dot product of two flat runs (``_depthwise_grad_w_nchw``). The zeros add
  terms the formula does not have: a non-finite result is recomputed with the formula's
  terms only (``_depthwise_grad_w_exact``).

The padded plane of grad_x's correlation multiplies the kernel by zeros where the formula
has no term, so a kernel holding NaN or Inf runs the formula's loops instead
(``naive.backward``).

Examples
--------
>>> import numpy as np
>>> from fastconv import conv2d_backward
>>> x = np.ones((2, 3, 5, 5), np.float32)              # (N, C, H, W)
>>> w = np.ones((3, 1, 3, 3), np.float32)              # depthwise (C, 1, 3, 3)
>>> gy = np.ones((2, 3, 5, 5), np.float32)             # padding 1: 5x5 out
>>> gx, gw, gb = conv2d_backward(gy, x, w, padding=1, groups=3, algo="naive")
>>> float(gx[0, 0, 2, 2]), float(gx[0, 0, 0, 0]), float(gw[0, 0, 1, 1]), float(gw[0, 0, 0, 0])
(9.0, 4.0, 50.0, 32.0)
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import config
from ._common import U, valid_range


@njit(inline="always")
def padded_plane(img, hp, wp, tail, pt, pl, dtype):
    """A flat zero-padded copy of the plane img (H, W): hp rows of wp columns, img[u, v]
    at row u + pt, column v + pl (rows and columns outside hp x wp dropped), plus ``tail``
    zeros so that taps may read past the last row."""
    h, wd = img.shape
    xp = np.zeros(hp * wp + tail, dtype)
    v_lo, v_hi = max(pl, 0), min(wp, wd + pl)
    for u in range(max(pt, 0), min(hp, h + pt)):
        line = img[u - pt]
        base = U(u * wp)
        for v in range(U(v_lo), U(v_hi)):
            xp[base + v] = line[v - U(pl)]
    return xp


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _depthwise_grad_w_nchw(gy, x, gw, pt, pl, rh, rw):
    """gy (N, C, Ho, Wo), x (N, C, H, W), gw (C, 1, KH, KW) fully written; stride 1.
    One task per channel (it owns its weights); per image, each tap is a dot product of
    the padded input plane and grad_y laid out at the padded width. Exact for finite
    inputs (the extra terms are zeros times finite values); with NaN or Inf the zeros
    may spread them to more taps than the formula does (``_depthwise_grad_w_exact``)."""
    n_img, c_all = x.shape[0], x.shape[1]
    kh, kw = gw.shape[2], gw.shape[3]
    ho, wo = gy.shape[2], gy.shape[3]
    hp, wp = ho + rh * (kh - 1), wo + rw * (kw - 1)
    tail = rw * (kw - 1)
    m = U(ho * wp)
    for c in prange(c_all):
        acc = np.zeros(kh * kw, np.float64)
        gp = np.zeros(ho * wp, gy.dtype)
        for n in range(n_img):
            xp = padded_plane(x[n, c], hp, wp, tail, pt, pl, gy.dtype)
            for i in range(ho):
                row = gy[n, c, i]
                base = U(i * wp)
                for j in range(U(wo)):
                    gp[base + j] = row[j]
            for a in range(kh):
                for b in range(kw):
                    off = U(a * rh * wp + b * rw)
                    s = gy.dtype.type(0)
                    for p in range(m):
                        s += gp[p] * xp[off + p]
                    acc[a * kw + b] += s
        for a in range(kh):
            for b in range(kw):
                gw[c, 0, a, b] = acc[a * kw + b]


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _depthwise_grad_w_exact(gy, x, gw, pt, pl, rh, rw):
    """As ``_depthwise_grad_w_nchw`` with the formula's terms only (each tap a sum of dot
    products of a grad_y row and an input row over the columns that read inside the
    input), so NaN and Inf reach the taps they reach in the formula; slower (short
    rows)."""
    n_img, c_all, h, wd = x.shape
    kh, kw = gw.shape[2], gw.shape[3]
    ho, wo = gy.shape[2], gy.shape[3]
    for c in prange(c_all):
        for a in range(kh):
            i_lo, i_hi = valid_range(ho, a * rh - pt, 1, h)
            for b in range(kw):
                j_lo, j_hi = valid_range(wo, b * rw - pl, 1, wd)
                first = U(j_lo + b * rw - pl)
                start = U(j_lo)
                acc = 0.0
                for n in range(n_img):
                    s = gy.dtype.type(0)
                    for i in range(i_lo, i_hi):
                        grow = gy[n, c, i]
                        xrow = x[n, c, i + a * rh - pt]
                        for j in range(U(j_hi - j_lo)):
                            s += grow[start + j] * xrow[first + j]
                    acc += s
                gw[c, 0, a, b] = acc


def applies(args) -> bool:
    """NCHW, one output channel per input channel (C_out == C_in == groups), stride 1,
    and each padding at most the dilated kernel's reach r*(K-1) (grad_x's flipped
    padding is then not negative). NHWC layers have the direct algorithm's NHWC loops."""
    return (not args.dims.channels_last and args.c_in == args.groups == args.c_out
            and args.stride == (1, 1)
            and all(0 <= p <= r * (k - 1) for pair, r, k in
                    zip(args.padding, args.dilation, (args.kh, args.kw), strict=True)
                    for p in pair))


def backward_depthwise(gy, x, w, args, gx, gw, forward_kernel) -> None:
    """NCHW / OIHW arrays (gx, gw C-contiguous, or None: not computed), for a layer that
    ``applies``; ``forward_kernel`` is the direct algorithm's depthwise forward."""
    (pt, _), (pl, _) = args.padding
    rh, rw = args.dilation
    if gx is not None:
        flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1])
        forward_kernel(gy, flipped, gx, 1, 1, rh * (args.kh - 1) - pt,
                       rw * (args.kw - 1) - pl, rh, rw, np.zeros(0, gy.dtype))
    if gw is not None:
        x = np.ascontiguousarray(x)
        _depthwise_grad_w_nchw(gy, x, gw, pt, pl, rh, rw)
        if not np.isfinite(gw).all():  # NaN or Inf in x or grad_y: the formula's pattern
            _depthwise_grad_w_exact(gy, x, gw, pt, pl, rh, rw)
