"""The direct ("naive") algorithm: the convolution formula as loops.

    y[n, d, i, j] = sum_{c, a, b} w[d, c, a, b] * x[n, g*Cg + c, s_h*i + r_h*a - p_top,
                                                     s_w*j + r_w*b - p_left]

One parallel task per (image, output channel); each task owns its output plane. It is
the benchmark baseline, so it does no reordering beyond keeping the innermost loop on
contiguous output columns.

Layers with one input channel per group (``C_in == groups``: depthwise layers, and
single-channel inputs such as a grayscale image or LeNet's first layer) have no channel
sum to turn into a GEMM, so im2col gains little there; the direct algorithm runs them
with ``_conv_depthwise_nchw``, a kernel written to vectorise (long unit-stride
multiply-adds over a padded plane, unsigned inner offsets).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import config
from .._runtime import parallel_guard
from ..costs import Estimate, Profile
from . import _nhwc
from ._common import U, geometry, valid_range
from .registry import Algorithm, register


@njit(inline="always")
def _add_taps(y_plane, x_plane, k, sh, sw, pt, pl, rh, rw, adjoint):
    """Every tap (a, b) of the kernel k (KH, KW) between an output-grid plane y_plane
    (Ho, Wo) and an input plane x_plane (H, W): y_plane[i, j] += k[a, b] *
    x_plane[i*sh + a*rh - pt, j*sw + b*rw - pl] over the (i, j) that read inside x_plane,
    or, ``adjoint`` (a literal at every call, so the branch is compiled away),
    x_plane[...] += k[a, b] * y_plane[i, j] (the scatter of the input gradient)."""
    ho, wo = y_plane.shape
    h, wd = x_plane.shape
    kh, kw = k.shape
    for a in range(kh):
        i_lo, i_hi = valid_range(ho, a * rh - pt, sh, h)
        for b in range(kw):
            j_lo, j_hi = valid_range(wo, b * rw - pl, sw, wd)
            wv = k[a, b]
            for i in range(i_lo, i_hi):
                row = x_plane[i * sh + a * rh - pt]
                if adjoint:
                    grow = y_plane[i]
                    for j in range(j_lo, j_hi):
                        row[j * sw + b * rw - pl] += wv * grow[j]
                else:
                    for j in range(j_lo, j_hi):
                        y_plane[i, j] += wv * row[j * sw + b * rw - pl]


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _conv_direct_nchw(x, w, out, sh, sw, pt, pl, rh, rw, groups):
    """x (N, C, H, W), w (D, C/groups, KH, KW), out (N, D, Ho, Wo) zero-filled."""
    n_img = x.shape[0]
    d_all, cg = w.shape[0], w.shape[1]
    dg = d_all // groups
    for task in prange(n_img * d_all):
        n = task // d_all
        d = task % d_all
        c0 = (d // dg) * cg
        plane = out[n, d]
        for c in range(cg):
            _add_taps(plane, x[n, c0 + c], w[d, c], sh, sw, pt, pl, rh, rw, False)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _conv_depthwise_nchw(x, w, out, sh, sw, pt, pl, rh, rw, bias):
    """x (N, C, H, W), w (D, 1, KH, KW) with D = C*m, out (N, D, Ho, Wo) (overwritten);
    output channel d reads input channel d // m. bias: (D,) or empty (no bias).

    Stride 1: the input plane is copied into a zero-padded plane of width
    Wp = Wo + rw*(KW-1), so every tap is one long multiply-add over the flattened plane,
    acc[p] += w[a, b] * xp[p + a*rh*Wp + b*rw] (columns Wo..Wp-1 of acc are discarded).
    Other strides accumulate each output row from KH*KW strided input rows."""
    n_img, _, h, wd = x.shape
    d_all, _, kh, kw = w.shape
    ho, wo = out.shape[2], out.shape[3]
    mult = d_all // x.shape[1]
    with_bias = bias.shape[0] == d_all
    zero = out.dtype.type(0)
    unit = sh == 1 and sw == 1
    hp = ho + rh * (kh - 1) if unit else 0
    wp = wo + rw * (kw - 1) if unit else 0
    for task in prange(n_img * d_all):
        n = task // d_all
        d = task % d_all
        img = x[n, d // mult]
        b0 = bias[d] if with_bias else zero
        if unit:
            # padded plane (+ a tail so the last taps may read past the last row)
            xp = np.zeros(hp * wp + rw * (kw - 1), out.dtype)
            v_lo, v_hi = max(pl, 0), min(wp, wd + pl)
            for u in range(max(pt, 0), min(hp, h + pt)):
                line = img[u - pt]
                base = U(u * wp)
                for v in range(U(v_lo), U(v_hi)):
                    xp[base + v] = line[v - U(pl)]
            m = U(ho * wp)
            acc = np.empty(ho * wp, out.dtype)
            for p in range(m):
                acc[p] = b0
            for a in range(kh):
                for b in range(kw):
                    wv = w[d, 0, a, b]
                    off = U(a * rh * wp + b * rw)
                    for p in range(m):
                        acc[p] += wv * xp[off + p]
            for i in range(ho):
                row = out[n, d, i]
                base = U(i * wp)
                for j in range(U(wo)):
                    row[j] = acc[base + j]
            continue
        step = U(sw)
        for i in range(ho):
            row = out[n, d, i]
            for j in range(U(wo)):
                row[j] = b0
            for a in range(kh):
                src = i * sh + a * rh - pt
                if src < 0 or src >= h:
                    continue
                line = img[src]
                for b in range(kw):
                    off = b * rw - pl
                    j_lo, j_hi = valid_range(wo, off, sw, wd)
                    wv = w[d, 0, a, b]
                    first = U(j_lo * sw + off)
                    start = U(j_lo)
                    for j in range(U(j_hi - j_lo)):
                        row[start + j] += wv * line[first + j * step]


def is_depthwise(args) -> bool:
    """One input channel per group (``C_in == groups``; a single-channel input with
    groups=1 counts): the depthwise kernel runs."""
    return args.c_in == args.groups


def forward(x: np.ndarray, w: np.ndarray, args, out: np.ndarray, bias=None) -> None:
    """Direct convolution into ``out`` (caller's layout), plus ``bias`` when given.
    Wraps ``_conv_direct_nchw`` (``_conv_depthwise_nchw`` for depthwise layers); other
    layouts run on NCHW copies (``_nhwc``). Always exact: returns None."""
    dims = args.dims
    x = _nhwc.nchw_copy(x, dims)
    w = np.ascontiguousarray(dims.weight_to_canonical_view(w))
    y = _nhwc.nchw_target(out, dims)
    if is_depthwise(args):
        b = np.zeros(0, args.dtype) if bias is None else np.ascontiguousarray(bias)
        with parallel_guard():
            _conv_depthwise_nchw(x, w, y, *geometry(args), b)
    else:
        # The kernel accumulates onto its output: start from the bias (or zero).
        y[...] = 0 if bias is None else bias[:, None, None]
        with parallel_guard():
            _conv_direct_nchw(x, w, y, *geometry(args), args.groups)
    _nhwc.write_back(y, out, dims)


# ----------------------------------------------------------------------------- backward
#   grad_x[n, g*Cg + c, s_h*i + r_h*a - p_top, s_w*j + r_w*b - p_left]
#       += sum_{d in group g} w[d, c, a, b] * grad_y[n, d, i, j]
#   grad_w[d, c, a, b] = sum_{n, i, j} grad_y[n, d, i, j] * x[n, g*Cg + c, ...]


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _conv_direct_grad_x_nchw(gy, w, gx, sh, sw, pt, pl, rh, rw, groups):
    """gy (N, D, Ho, Wo), w (D, C/groups, KH, KW), gx (N, C, H, W) zero-filled.

    One task per (image, input channel): each task owns the plane it scatters into."""
    n_img, c_all = gx.shape[0], gx.shape[1]
    cg = w.shape[1]
    dg = w.shape[0] // groups
    for task in prange(n_img * c_all):
        n = task // c_all
        c = task % c_all
        g = c // cg
        plane = gx[n, c]
        for d in range(g * dg, (g + 1) * dg):
            _add_taps(gy[n, d], plane, w[d, c % cg], sh, sw, pt, pl, rh, rw, True)


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
    ``_conv_direct_grad_w_nchw``; other layouts run on NCHW copies. Always exact:
    returns None."""
    dims = args.dims
    gy = _nhwc.nchw_copy(grad_y, dims)
    gx = None if grad_x is None else _nhwc.nchw_target(grad_x, dims)
    gw = None if grad_w is None else _nhwc.oihw_target(grad_w, dims)
    if gx is not None:
        gx[...] = 0
        w = np.ascontiguousarray(dims.weight_to_canonical_view(w))
    if gw is not None:
        x = _nhwc.nchw_copy(x, dims)
    conv = (*geometry(args), args.groups)
    with parallel_guard():
        if gx is not None:
            _conv_direct_grad_x_nchw(gy, w, gx, *conv)
        if gw is not None:
            _conv_direct_grad_w_nchw(gy, x, gw, *conv)
    if gx is not None:
        _nhwc.write_back(gx, grad_x, dims)
    if gw is not None:
        _nhwc.write_weight_back(gw, grad_w, dims)


# ------------------------------------------------------------------------ registry
#: The layouts with kernels of their own; others run through copies to NCHW / OIHW.
LAYOUTS = ("NCHW",)

def cost(a, p: Profile) -> Estimate:
    """Model time of the forward: FLOPs at the direct-loop rate (depthwise layers:
    multiply-adds at the depthwise kernel's rate). Both run one task per (image, output
    channel), so fewer tasks than threads leave threads idle."""
    item = a.dtype.itemsize
    busy = min(max(a.n * a.c_out, 1), p.threads)  # one task per (image, output channel)
    if is_depthwise(a):
        unit = a.stride == (1, 1)
        width = a.w_out + a.dilation[1] * (a.kw - 1) if unit else a.w_out
        macs = a.n * a.c_out * a.h_out * width * a.kh * a.kw
        rate = p.depthwise_gmacs * 1e9 * (4 / item) * busy * (1.0 if unit else 0.5)
        io = (a.n * (a.c_in * a.h * a.w + a.c_out * a.h_out * a.w_out)) * item
        secs = p.call_us * 1e-6 + macs / rate + io / (p.copy_gbs * 1e9)
        scratch = p.threads * (a.h_out + a.kh) * width * 2 * item if unit else 0
        return Estimate(secs, scratch, f"depthwise kernel, {macs / 1e6:.3g} M multiply-adds")
    rate = p.direct_gflops * 1e9 * (4 / item) * busy
    secs = p.call_us * 1e-6 + a.flops / rate
    temp = a.n * a.c_out * a.h_out * a.w_out * item if a.layout not in LAYOUTS else 0
    return Estimate(secs, temp, f"direct loops at {rate / 1e9:.3g} GFLOP/s")


def backward_cost(a, p: Profile) -> Estimate:
    """Model time of the backward: the formula as loops for every layer (no depthwise
    kernel), twice the forward's FLOPs at the direct rate."""
    busy = min(max(a.n * a.c_out, 1), p.threads)
    rate = p.direct_gflops * 1e9 * (4 / a.dtype.itemsize) * busy
    return Estimate(p.call_us * 1e-6 + 2 * a.flops / rate, 0, "direct loops, 2x forward FLOPs")


ALGORITHM = register(Algorithm(
    "naive", "direct loops from the formula (a depthwise kernel for depthwise layers)",
    forward, backward, cost, backward_cost, layouts=LAYOUTS, devices=("cpu", "cuda")))
