"""The direct ("naive") algorithm: the convolution formula as loops.

    y[n, d, i, j] = sum_{c, a, b} w[d, c, a, b] * x[n, g*Cg + c, s_h*i + r_h*a - p_top,
                                                     s_w*j + r_w*b - p_left]

One parallel task per (image, output channel); each task owns its output plane. It is
the benchmark baseline, so it does no reordering beyond keeping the innermost loop on
contiguous output columns.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import config
from .._runtime import parallel_guard
from ._common import valid_range


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _conv_direct_nchw(x, w, out, sh, sw, pt, pl, rh, rw, groups):
    """x (N, C, H, W), w (D, C/groups, KH, KW), out (N, D, Ho, Wo) zero-filled."""
    n_img, _, h, wd = x.shape
    d_all, cg, kh, kw = w.shape
    ho, wo = out.shape[2], out.shape[3]
    dg = d_all // groups
    for task in prange(n_img * d_all):
        n = task // d_all
        d = task % d_all
        c0 = (d // dg) * cg
        plane = out[n, d]
        for c in range(cg):
            for a in range(kh):
                i_lo, i_hi = valid_range(ho, a * rh - pt, sh, h)
                for b in range(kw):
                    j_lo, j_hi = valid_range(wo, b * rw - pl, sw, wd)
                    wv = w[d, c, a, b]
                    for i in range(i_lo, i_hi):
                        row = x[n, c0 + c, i * sh + a * rh - pt]
                        for j in range(j_lo, j_hi):
                            plane[i, j] += wv * row[j * sw + b * rw - pl]


def forward(x: np.ndarray, w: np.ndarray, args, out: np.ndarray) -> None:
    """Direct convolution into ``out`` (caller's layout). Wraps ``_conv_direct_nchw``."""
    if args.layout == "NHWC":
        x = x.transpose(0, 3, 1, 2)
        w = w.transpose(3, 2, 0, 1)
        y = np.zeros(args.y_shape, args.dtype)
    else:
        y = out
        y[...] = 0
    with parallel_guard():
        _conv_direct_nchw(np.ascontiguousarray(x), np.ascontiguousarray(w), y,
                          args.stride[0], args.stride[1], args.padding[0][0],
                          args.padding[1][0], args.dilation[0], args.dilation[1], args.groups)
    if args.layout == "NHWC":
        out[...] = y.transpose(0, 2, 3, 1)


# ----------------------------------------------------------------------------- backward
#   grad_x[n, g*Cg + c, s_h*i + r_h*a - p_top, s_w*j + r_w*b - p_left]
#       += sum_{d in group g} w[d, c, a, b] * grad_y[n, d, i, j]
#   grad_w[d, c, a, b] = sum_{n, i, j} grad_y[n, d, i, j] * x[n, g*Cg + c, ...]


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _conv_direct_grad_x_nchw(gy, w, gx, sh, sw, pt, pl, rh, rw, groups):
    """gy (N, D, Ho, Wo), w (D, C/groups, KH, KW), gx (N, C, H, W) zero-filled.

    One task per (image, input channel): each task owns the plane it scatters into."""
    n_img, c_all, h, wd = gx.shape
    d_all, cg, kh, kw = w.shape
    ho, wo = gy.shape[2], gy.shape[3]
    dg = d_all // groups
    for task in prange(n_img * c_all):
        n = task // c_all
        c = task % c_all
        g = c // cg
        cl = c % cg
        plane = gx[n, c]
        for d in range(g * dg, (g + 1) * dg):
            for a in range(kh):
                i_lo, i_hi = valid_range(ho, a * rh - pt, sh, h)
                for b in range(kw):
                    j_lo, j_hi = valid_range(wo, b * rw - pl, sw, wd)
                    wv = w[d, cl, a, b]
                    for i in range(i_lo, i_hi):
                        row = plane[i * sh + a * rh - pt]
                        grow = gy[n, d, i]
                        for j in range(j_lo, j_hi):
                            row[j * sw + b * rw - pl] += wv * grow[j]


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _conv_direct_grad_w_nchw(gy, x, gw, sh, sw, pt, pl, rh, rw, groups):
    """gy (N, D, Ho, Wo), x (N, C, H, W), gw (D, C/groups, KH, KW) fully written.

    One task per output channel d: each task owns the weights of d."""
    n_img, _, h, wd = x.shape
    d_all, cg, kh, kw = gw.shape
    ho, wo = gy.shape[2], gy.shape[3]
    dg = d_all // groups
    for d in prange(d_all):
        c0 = (d // dg) * cg
        for c in range(cg):
            for a in range(kh):
                i_lo, i_hi = valid_range(ho, a * rh - pt, sh, h)
                for b in range(kw):
                    j_lo, j_hi = valid_range(wo, b * rw - pl, sw, wd)
                    acc = gw.dtype.type(0)
                    for n in range(n_img):
                        for i in range(i_lo, i_hi):
                            row = x[n, c0 + c, i * sh + a * rh - pt]
                            grow = gy[n, d, i]
                            for j in range(j_lo, j_hi):
                                acc += grow[j] * row[j * sw + b * rw - pl]
                    gw[d, c, a, b] = acc


def backward(grad_y: np.ndarray, x: np.ndarray, w: np.ndarray, args, grad_x, grad_w) -> None:
    """Direct gradients into ``grad_x`` / ``grad_w`` (caller's layout, fully written);
    either may be None (not computed). Wraps ``_conv_direct_grad_x_nchw`` and
    ``_conv_direct_grad_w_nchw``."""
    if args.layout == "NHWC":
        x = x.transpose(0, 3, 1, 2)
        w = w.transpose(3, 2, 0, 1)
        grad_y = grad_y.transpose(0, 3, 1, 2)
    gy = np.ascontiguousarray(grad_y)
    if args.layout == "NHWC":
        gx = None if grad_x is None else np.zeros(args.x_shape, args.dtype)
        gw = None if grad_w is None else np.empty(args.w_shape, args.dtype)
    else:  # the wrapper's outputs are C-contiguous NCHW / OIHW already
        gx, gw = grad_x, grad_w
        if gx is not None:
            gx[...] = 0
    conv = (args.stride[0], args.stride[1], args.padding[0][0], args.padding[1][0],
            args.dilation[0], args.dilation[1], args.groups)
    with parallel_guard():
        if gx is not None:
            _conv_direct_grad_x_nchw(gy, np.ascontiguousarray(w), gx, *conv)
        if gw is not None:
            _conv_direct_grad_w_nchw(gy, np.ascontiguousarray(x), gw, *conv)
    if args.layout == "NHWC":
        if gx is not None:
            grad_x[...] = gx.transpose(0, 2, 3, 1)
        if gw is not None:
            grad_w[...] = gw.transpose(2, 3, 1, 0)
