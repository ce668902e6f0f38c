"""Strided pointwise layers in either layout (1x1 kernel, no padding, stride above 1,
e.g. a ResNet's downsampling shortcut): the pixels the kernel reads copied into a plain
pointwise problem (``pointwise``), and its input gradient put back in their places.

The general path would unfold a column matrix (every s-th pixel of each channel) and
multiply one small GEMM per image. Alternating, 2 threads, NCHW forward: 32 -> 64 at
14x14 with stride 2 (batch 32) 0.28 -> 0.14 ms (torch 0.13); 16 -> 32 at 28x28 0.42 ->
0.20 ms (torch 0.20); 32 -> 64 at 32x32 (batch 64) 1.95 -> 0.84 ms (torch 0.93). Layers
whose output channels fill their lanes forward in the direct lanes kernel instead, in
either layout (the pixels read in place, ``lanes_plan.lanes_applies``). Here the
gradients: grad_w by the direct kernel on x itself (``direct_grad.weight_grad_into``;
grad_y transposed channels last in NCHW), and grad_x, where its channels are whole
vectors of lanes, in one parallel kernel: each pixel the kernel reads gets grad_y's
pixel times W^T, in registers, every other pixel a zero, in one pass over grad_x
(``_grad_x_lanes``; NCHW's ``_grad_x_planes`` writes the registers' lanes into the
channels' planes one value at a time). Alternating, 2 threads, NHWC: 16 -> 32 at
28x28, batch 32, 0.21 ms through a GEMM, a zeroed grad_x and a strided copy -> 0.07
ms, torch 0.15; 32 -> 64 at 32x32, batch 64, 0.96 -> 0.45 ms. NCHW, best of 5, the
pixels' copy and GEMMs before: grad_x 16 -> 32 at 28x28 0.23-0.25 -> 0.13-0.14 ms,
32 -> 64 at 32x32 (batch 64) 1.31-1.34 -> 0.77; grad_w 32 -> 64 at 14x14 0.23-0.25
-> 0.17-0.18, at 32x32 1.72-1.74 -> 1.19-1.21; in the small ResNet's NCHW step both
gradients of its two shortcuts 0.63 -> 0.40-0.42 ms and 0.76-0.86 -> 0.54-0.60.

Examples
--------
>>> import numpy as np
>>> from fastconv import conv2d
>>> x = np.arange(2 * 1 * 4 * 4, dtype=np.float32).reshape(2, 1, 4, 4)
>>> conv2d(x, np.full((3, 1, 1, 1), 2, np.float32), stride=2)[1, 2]    # 2 x[1, 0, ::2, ::2]
array([[32., 36.],
       [48., 52.]], dtype=float32)
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from numba import njit, prange

from ... import _lanes, config
from ..._memory import allocate
from ..._runtime import guarded
from ...costs import Estimate, Profile
from .._common import U
from .direct_grad import direct_backward_applies, nhwc_grad_y, weight_grad_into
from .pointwise import backward_cost_pointwise, backward_pointwise, forward_pointwise


def applies(args) -> bool:
    """A 1x1 layer without padding at a stride above 1."""
    return (args.kh == args.kw == 1 and args.stride != (1, 1)
            and args.padding == ((0, 0), (0, 0)))


def plain(args):
    """The pointwise problem (stride 1) on the pixels ``args`` reads."""
    return replace(args, h=args.h_out, w=args.w_out, stride=(1, 1), dilation=(1, 1))


def copy_seconds(a, p: Profile) -> float:
    """Model time of one copy of the pixels read (or of putting a gradient back in
    their places): bytes at the profile's copy rate plus a fixed cost per output row."""
    return a.n * a.c_in * (a.h_out * a.w_out * a.dtype.itemsize / (p.copy_gbs * 1e9)
                           + a.h_out * p.copy_row_ns * 1e-9)


def backward_cost(a, p: Profile) -> Estimate:
    """Model time of ``backward``: the plain problem's GEMMs, the copy of the pixels
    read, grad_x zeroed and its pixels put back."""
    gemms = backward_cost_pointwise(plain(a), p)
    zero = a.n * a.c_in * a.h * a.w * a.dtype.itemsize / (p.copy_gbs * 1e9)
    return Estimate(gemms.seconds + 2 * copy_seconds(a, p) + zero, gemms.workspace,
                    gemms.detail + ", the pixels read copied")


def _pixels(x, args):
    """The view of x (layout of ``args``) at the pixels the kernel reads: (N, C, Ho, Wo)
    in that layout's order."""
    sh, sw = args.stride
    dims = args.dims
    return dims.from_canonical_view(
        dims.to_canonical_view(x)[:, :, ::sh, ::sw][:, :, :args.h_out, :args.w_out])


def forward(x, wmat, args, out, bias_g) -> None:
    """``pointwise.forward_pointwise`` of the pixels read (a contiguous copy)."""
    forward_pointwise(np.ascontiguousarray(_pixels(x, args)), wmat, plain(args), out,
                      bias_g)


def backward(gy, x, w, args, grad_x, grad_w) -> None:
    """``pointwise.backward_pointwise`` of the pixels read; grad_x (or None) zero but at
    those pixels, grad_w (or None) fully written: by the direct weight gradient
    (``direct_grad.weight_grad_into``, on grad_y channels last) where it applies, with
    no copy of the pixels, and grad_x by ``_grad_x_lanes`` (NHWC) or ``_grad_x_planes``
    (NCHW) where ``lanes_grad_x_applies``."""
    if grad_w is not None and direct_backward_applies(args):  # the pixels read in place
        weight_grad_into(x, nhwc_grad_y(gy, args), args, grad_w)
        grad_w = None
    if grad_x is not None and lanes_grad_x_applies(args):
        _lanes_grad_x(np.ascontiguousarray(gy, args.dtype), w, args, grad_x)
        grad_x = None
    if grad_x is None and grad_w is None:
        return
    sub = plain(args)           # the pointwise problem of the pixels read
    xs = None if grad_w is None else np.ascontiguousarray(_pixels(x, args))
    gxs = None if grad_x is None else allocate(
        "conv2d_backward", "grad_x", sub.dims.shape(sub.n, sub.c_in, sub.h, sub.w),
        args.dtype)
    backward_pointwise(gy, xs, w, sub, gxs, grad_w)
    if grad_x is not None:
        grad_x[...] = 0
        _pixels(grad_x, args)[...] = gxs


def lanes_grad_x_applies(args) -> bool:
    """Whether ``_grad_x_lanes`` / ``_grad_x_planes`` run grad_x: one group, the input
    channels whole vectors of lanes."""
    return args.groups == 1 and args.c_in % _lanes.per_register(args.dtype.itemsize) == 0


def _lanes_grad_x(gy, w, args, grad_x) -> None:
    """grad_x (layout of ``args``), C-contiguous, fully written, of a
    ``lanes_grad_x_applies`` layer; gy C-contiguous in the same layout, w (1x1) in it."""
    w_oi = args.dims.weight_to_canonical_view(w).reshape(args.c_out, args.c_in)
    wt = np.ascontiguousarray(w_oi, args.dtype)                       # W^T: (D, C)
    kernel = _grad_x_lanes if args.dims.channels_last else _grad_x_planes
    guarded(kernel)(gy.reshape(-1), wt.reshape(-1), grad_x.reshape(-1),
                    (args.n, args.h, args.w, args.c_in, args.h_out, args.w_out,
                     args.c_out) + tuple(args.stride))


@njit(inline="always")
def _sums4(gf, g0, steps, wf, c0, dims, like):
    """The registers sum over d of gf[g0 + k*g_step + d*d_step] * wt[d, c0 :][:lanes] for
    the 4 pixels k, steps = (g_step, d_step), dims = (D, C), wf = wt (D, C) flat, of
    like's dtype: each row's vector loaded once for 4 multiply-adds."""
    g_step, d_step = steps
    d_all, c_all = dims
    a0 = a1 = a2 = a3 = _lanes.zeros(like)
    for d in range(d_all):
        u = _lanes.load(wf, U(d * c_all + c0))
        gd = g0 + U(d) * d_step
        a0 = _lanes.fma(a0, gf[gd], u)
        a1 = _lanes.fma(a1, gf[gd + g_step], u)
        a2 = _lanes.fma(a2, gf[gd + U(2) * g_step], u)
        a3 = _lanes.fma(a3, gf[gd + U(3) * g_step], u)
    return a0, a1, a2, a3


@njit(inline="always")
def _pixels4(gf, g0, g_step, wf, c0, gx, o, o_step, d_all, c_all):
    """gx[o + k*o_step + c0 :][:lanes] = sum over d of gf[g0 + k*g_step + d] * wt[d, c0 :]
    for the 4 pixels k, wf = wt (D, C) flat (``_sums4``)."""
    a0, a1, a2, a3 = _sums4(gf, g0, (g_step, U(1)), wf, c0, (d_all, c_all), gx)
    _lanes.store(gx, o + U(c0), a0)
    _lanes.store(gx, o + o_step + U(c0), a1)
    _lanes.store(gx, o + U(2) * o_step + U(c0), a2)
    _lanes.store(gx, o + U(3) * o_step + U(c0), a3)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _grad_x_lanes(gf, wf, gx, dims):
    """gx (N, H, W, C) flat, fully written: gx[n, i*s_h, j*s_w] = gy[n, i, j] @ wt for
    i < Ho, j < Wo (C a whole number of vectors of lanes), zero at every other pixel;
    gf = gy (N, Ho, Wo, D) flat, wf = W^T (D, C) flat, dims = (N, H, W, C, Ho, Wo, D,
    s_h, s_w). One task per row of grad_x; a row's pixels go 4 at a time (the last 4
    overlap the 4 before where Wo is not a multiple of 4; written twice, same values)."""
    n_img, h, wd, c_all, ho, wo, d_all, sh, sw = dims
    nl = _lanes.count(gx)
    zero = gx.dtype.type(0)
    row = U(wd * c_all)
    for task in prange(n_img * h):
        n, r = task // h, task % h
        dst = U(task) * row
        if r % sh != 0 or r // sh >= ho:
            for t in range(row):
                gx[dst + t] = zero
            continue
        for q in range(wd):                 # the pixels the kernel does not read
            if q % sw != 0 or q // sw >= wo:
                for t in range(U(q * c_all), U((q + 1) * c_all)):
                    gx[dst + t] = zero
        g_row = U((n * ho + r // sh) * wo * d_all)
        span = 4 if wo >= 4 else 1          # under 4 pixels: each one as 4 (step 0)
        step = U(1 if wo >= 4 else 0)
        for j0 in range(0, wo, span):
            j = min(j0, wo - span)
            for c0 in range(0, c_all, nl):
                _pixels4(gf, g_row + U(j * d_all), step * U(d_all), wf, c0, gx,
                         dst + U(j * sw * c_all), step * U(sw * c_all), d_all, c_all)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _grad_x_planes(gf, wf, gx, dims):
    """``_grad_x_lanes`` in NCHW: gx (N, C, H, W) flat, fully written: gx[n, :, i*s_h,
    j*s_w] = gy[n, :, i, j] @ wt for i < Ho, j < Wo, zero at every other pixel; gf = gy
    (N, D, Ho, Wo) flat, wf = W^T (D, C) flat, dims as ``_grad_x_lanes``'. One task per
    row r of grad_x, in every plane: zeroed, then (r a row the kernel reads) its pixels
    4 at a time, their channels' sums in registers as in NHWC, written lane by lane
    into the planes."""
    n_img, h, wd, c_all, ho, wo, d_all, sh, sw = dims
    nl = _lanes.count(gx)
    zero = gx.dtype.type(0)
    plane, g_plane = U(h * wd), U(ho * wo)
    for task in prange(n_img * h):
        n, r = task // h, task % h
        row0 = U(n * c_all) * plane + U(r * wd)             # gx[n, 0, r, 0]
        for c in range(c_all):
            for q in range(U(c) * plane + row0, U(c) * plane + row0 + U(wd)):
                gx[q] = zero
        if r % sh != 0 or r // sh >= ho:
            continue
        g_row = U(n * d_all) * g_plane + U(r // sh * wo)    # gy[n, 0, i, 0]
        span = 4 if wo >= 4 else 1          # under 4 pixels: each one as 4 (step 0)
        step = U(1 if wo >= 4 else 0)
        for j0 in range(0, wo, span):
            j = min(j0, wo - span)
            for c0 in range(0, c_all, nl):
                a0, a1, a2, a3 = _sums4(gf, g_row + U(j), (step, g_plane), wf, c0,
                                        (d_all, c_all), gx)
                o = row0 + U(j * sw)
                o_step = step * U(sw)
                for lane in range(nl):
                    q = o + U(c0 + lane) * plane
                    gx[q] = _lanes.lane(a0, lane)
                    gx[q + o_step] = _lanes.lane(a1, lane)
                    gx[q + U(2) * o_step] = _lanes.lane(a2, lane)
                    gx[q + U(3) * o_step] = _lanes.lane(a3, lane)
