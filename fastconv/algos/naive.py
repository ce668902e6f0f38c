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

These are the NCHW kernels. NHWC has its own (``direct_nhwc``: channels innermost, one
task per output row), for the forward and both gradients; only depthwise layers with a
channel multiplier run the NCHW depthwise kernel on copies in NHWC.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from .. import _lanes, config, numerics
from .._runtime import parallel_guard
from ..costs import Estimate, Profile, io_bytes
from . import _nhwc, depthwise_lanes, direct_nhwc
from ._common import U, geometry, valid_range
from .depthwise_grad import applies as depthwise_grad_applies
from .depthwise_grad import backward_depthwise, padded_plane
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
            xp = padded_plane(img, hp, wp, rw * (kw - 1), pt, pl, out.dtype)
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


def channel_multiplier(args) -> bool:
    """A depthwise layer with several output channels per input channel (``C_out >
    C_in == groups``: a single-channel input such as LeNet's first layer)."""
    return is_depthwise(args) and args.c_out > args.c_in


def forward(x: np.ndarray, w: np.ndarray, args, out: np.ndarray, bias=None) -> None:
    """Direct convolution into ``out`` (caller's layout), plus ``bias`` when given.

    Each layout has its own kernels: NCHW wraps ``_conv_direct_nchw``
    (``_conv_depthwise_nchw`` for depthwise layers), NHWC
    ``direct_nhwc._conv_direct_nhwc`` (one kernel for dense, grouped and depthwise
    layers, channels innermost), except depthwise layers of at least one SIMD register
    of channels (``depthwise_lanes``: 8 pixels' blocks of channels in registers).
    Depthwise layers with a channel multiplier (``channel_multiplier``) have a few input
    channels and no long channel loop in NHWC: they run ``_conv_depthwise_nchw`` on NCHW
    copies in both layouts (``_nhwc``). Always exact: returns None."""
    dims = args.dims
    if depthwise_lanes.nhwc_applies(args):
        depthwise_lanes.forward_nhwc(x, w, args, out, bias)
        return
    b = np.zeros(0, args.dtype) if bias is None else np.ascontiguousarray(bias)
    if dims.channels_last and not channel_multiplier(args):
        with parallel_guard():
            direct_nhwc._conv_direct_nhwc(np.ascontiguousarray(x), np.ascontiguousarray(w),
                                          out, *geometry(args), args.groups, b)
        return
    x = _nhwc.nchw_copy(x, dims)
    w = np.ascontiguousarray(dims.weight_to_canonical_view(w))
    y = _nhwc.nchw_target(out, dims)
    if is_depthwise(args):
        with parallel_guard():
            _depthwise_forward(x, w, y, *geometry(args), b)
    else:
        # The kernel accumulates onto its output: start from the bias (or zero).
        y[...] = 0 if bias is None else bias[:, None, None]
        with parallel_guard():
            _conv_direct_nchw(x, w, y, *geometry(args), args.groups)
    _nhwc.write_back(y, out, dims)


def _depthwise_forward(x, w, out, sh, sw, pt, pl, rh, rw, bias) -> None:
    """The NCHW depthwise forward kernels (``depthwise_lanes.depthwise_nchw``)."""
    depthwise_lanes.depthwise_nchw(x, w, out, sh, sw, pt, pl, rh, rw, bias,
                                   _conv_depthwise_nchw)


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
    either may be None (not computed). Each layout has its own kernels: NCHW wraps
    ``_conv_direct_grad_x_nchw`` and ``_conv_direct_grad_w_nchw`` (depthwise layers of
    stride 1: ``depthwise_grad.backward_depthwise``), NHWC
    ``direct_nhwc._conv_direct_grad_x_nhwc`` and ``_conv_direct_grad_w_nhwc``. Always
    exact: returns None."""
    gy = np.ascontiguousarray(grad_y)
    conv = (*geometry(args), args.groups)
    if args.dims.channels_last:
        _backward_nhwc(gy, x, w, args, grad_x, grad_w, conv)
        return
    with parallel_guard():
        # the flipped kernel meets the padding's zeros: exact loops for a non-finite w
        if depthwise_grad_applies(args) and (grad_x is None or numerics.all_finite(w)):
            backward_depthwise(gy, np.ascontiguousarray(x), np.ascontiguousarray(w), args,
                               grad_x, grad_w, _depthwise_forward)
        else:
            _direct_grads(gy, x, w, grad_x, grad_w, conv)


def _direct_grads(gy, x, w, grad_x, grad_w, conv) -> None:
    """The formula's loops (NCHW); they accumulate grad_x onto zeros."""
    if grad_x is not None:
        grad_x[...] = 0
        _conv_direct_grad_x_nchw(gy, np.ascontiguousarray(w), grad_x, *conv)
    if grad_w is not None:
        _conv_direct_grad_w_nchw(gy, np.ascontiguousarray(x), grad_w, *conv)


def _backward_nhwc(gy, x, w, args, grad_x, grad_w, conv) -> None:
    """NHWC gradients: grad_x with the HWIO weight's last two axes swapped (rows over
    input channels contiguous), grad_w summed over the kernel's blocks of output rows."""
    with parallel_guard():
        if grad_x is not None:
            wt = np.ascontiguousarray(w.transpose(0, 1, 3, 2))
            direct_nhwc._conv_direct_grad_x_nhwc(gy, wt, grad_x, *conv)
        if grad_w is not None:
            blocks = direct_nhwc.grad_w_blocks(args.n * args.h_out, numba.get_num_threads())
            parts = np.empty((blocks, *grad_w.shape), grad_w.dtype)
            direct_nhwc._conv_direct_grad_w_nhwc(gy, np.ascontiguousarray(x), parts, *conv)
            np.sum(parts, axis=0, out=grad_w)


def _direct_grads(gy, x, w, gx, gw, conv) -> None:
    """The formula's loops; they accumulate grad_x onto zeros."""
    if gx is not None:
        gx[...] = 0
        _conv_direct_grad_x_nchw(gy, w, gx, *conv)
    if gw is not None:
        _conv_direct_grad_w_nchw(gy, x, gw, *conv)


# ------------------------------------------------------------------------ registry
#: The layouts with kernels of their own (NHWC: ``direct_nhwc``, except depthwise layers
#: with a channel multiplier, which run on NCHW copies).
LAYOUTS = ("NCHW", "NHWC")
#: The NHWC direct kernel's rate over the NCHW one's (``Profile.direct_gflops``): its
#: inner loop runs over contiguous output channels and vectorises. Single-threaded it ran
#: 8-30x faster on 3x3 and 7x7 layers; counted at 4x so that im2col keeps every layer it
#: runs faster. That loop fills a SIMD register only from a register's width of output
#: channels per group: below it the speedup is counted in proportion
#: (``_nhwc_direct_speedup``; one output channel ran at 1.1 GFLOP/s, 0.2x the NCHW
#: kernel's modelled rate: 16 -> 1 channels 3x3 on 8 x 64 x 64, 8.5 ms).
NHWC_DIRECT_SPEEDUP = 4.0


def _nhwc_direct_speedup(a) -> float:
    """``NHWC_DIRECT_SPEEDUP`` scaled by the share of a SIMD register that the output
    channels of a group fill (at most all of it)."""
    lanes = _lanes.per_register(a.dtype.itemsize)
    return NHWC_DIRECT_SPEEDUP * min(1.0, (a.c_out // a.groups) / lanes)


#: NCHW depthwise planes in SIMD registers (``depthwise_lanes._depthwise_planes``) over
#: the profile's depthwise rate: one thread, a 256 x 256 plane, kernels 16 to 18, net of
#: the call's fixed cost: 31-33 GMAC/s against the default profile's 11.8 (the suite's
#: depthwise layer, bound by memory, about 12 a thread: its copy term covers that).
LANES_DEPTHWISE_SPEEDUP = 2.7


def _native_nhwc(a) -> bool:
    return a.dims.channels_last and not channel_multiplier(a)


def _depthwise_macs(a) -> tuple[int, float]:
    """(multiply-adds, rate factor) of the depthwise kernel of ``a``'s layout: NCHW with
    stride 1 computes rows of whole registers, 4 at a time (``depthwise_lanes``), at
    ``LANES_DEPTHWISE_SPEEDUP`` times the rate, or, with rows shorter than a register,
    padded rows of width Wo + r_w*(KW - 1); other strides at half the rate; NHWC
    computes each output once, at the rate of NCHW stride 1."""
    unit = a.stride == (1, 1)
    width, factor = a.w_out, 1.0 if unit or _native_nhwc(a) else 0.5
    lanes = _lanes.per_register(a.dtype.itemsize)
    if unit and not _native_nhwc(a) and width >= lanes:
        step = depthwise_lanes.ROW_REGISTERS * lanes
        # rows of under 3 registers repeat some of a group's 4 (LeNet's 28 pixels: 2 of
        # 4): no faster than the plain loops there (measured 0.84 against 0.42 ms for
        # im2col on LeNet's first layer)
        speedup = LANES_DEPTHWISE_SPEEDUP if width >= 3 * lanes else 1.0
        width, factor = -(-width // step) * step, speedup
    elif unit and not _native_nhwc(a):
        width += a.dilation[1] * (a.kw - 1)
    return a.n * a.c_out * a.h_out * width * a.kh * a.kw, factor


def _busy(a, p: Profile) -> int:
    """Threads with work: one task per (image, output channel) in NCHW, per output row
    (image, i) in NHWC."""
    tasks = a.n * a.h_out if _native_nhwc(a) else a.n * a.c_out
    return min(max(tasks, 1), p.threads)


def cost(a, p: Profile) -> Estimate:
    """Model time of the forward: FLOPs at the direct-loop rate (NHWC:
    ``NHWC_DIRECT_SPEEDUP`` times it; depthwise layers: multiply-adds at the depthwise
    kernel's rate). Fewer tasks than threads leave threads idle (``_busy``)."""
    item = a.dtype.itemsize
    busy = _busy(a, p)
    copies = a.dims.channels_last and not _native_nhwc(a)
    io = io_bytes(a)
    if is_depthwise(a):
        macs, factor = _depthwise_macs(a)
        rate = p.depthwise_gmacs * 1e9 * (4 / item) * busy * factor
        secs = p.call_us * 1e-6 + macs / rate + (1 + 2 * copies) * io / (p.copy_gbs * 1e9)
        width = a.w_out + a.dilation[1] * (a.kw - 1)
        scratch = 0 if _native_nhwc(a) or a.stride != (1, 1) else (
            p.threads * (a.h_out + a.kh) * width * 2 * item)
        return Estimate(secs, scratch + copies * io,
                        f"depthwise kernel, {macs / 1e6:.3g} M multiply-adds")
    rate = p.direct_gflops * 1e9 * (4 / item) * busy
    if _native_nhwc(a):
        rate *= _nhwc_direct_speedup(a)
    secs = p.call_us * 1e-6 + a.flops / rate
    return Estimate(secs, 0, f"direct loops at {rate / 1e9:.3g} GFLOP/s")


def backward_cost(a, p: Profile) -> Estimate:
    """Model time of the backward: twice the forward's FLOPs at the direct rate; NCHW
    depthwise layers of stride 1 (``depthwise_grad``): grad_x is one depthwise forward
    (``cost``), grad_w as many multiply-adds over padded planes at the profile's
    depthwise rate (its dot products do not run in SIMD registers of their own: the
    kernel sweep's 16x16 kernel measured 2.34 ms backward against 0.51 forward) and one
    pass over the input and gradient; in NHWC, twice the forward's model (the gradient
    kernels have the forward's loops)."""
    if depthwise_grad_applies(a):
        fwd = cost(a, p)
        item = a.dtype.itemsize
        planes = a.n * a.c_out * a.h_out * (a.w_out + a.dilation[1] * (a.kw - 1))
        rate = p.depthwise_gmacs * 1e9 * (4 / item) * _busy(a, p)
        io = io_bytes(a)
        grad_w = planes * a.kh * a.kw / rate + io / (p.copy_gbs * 1e9)
        return Estimate(fwd.seconds + grad_w, fwd.workspace,
                        f"depthwise kernels: grad_x as the forward ({fwd.detail}), grad_w "
                        f"{1e3 * grad_w:.3g} ms")
    if _native_nhwc(a):
        fwd = cost(a, p)
        return Estimate(2 * fwd.seconds, 0, "NHWC direct loops, 2x the forward")
    rate = p.direct_gflops * 1e9 * (4 / a.dtype.itemsize) * _busy(a, p)
    return Estimate(p.call_us * 1e-6 + 2 * a.flops / rate, 0, "direct loops, 2x forward FLOPs")


ALGORITHM = register(Algorithm(
    "naive", "direct loops from the formula (a depthwise kernel for depthwise layers)",
    forward, backward, cost, backward_cost, layouts=LAYOUTS, devices=("cpu", "cuda")))
