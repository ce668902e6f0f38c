"""Strided pointwise layers in either layout (1x1 kernel, no padding, stride above 1,
e.g. a ResNet's downsampling shortcut): the pixels the kernel reads copied into a plain
pointwise problem (``pointwise``), and its input gradient put back in their places.

The general path would unfold a column matrix (every s-th pixel of each channel) and
multiply one small GEMM per image. Alternating, 2 threads, NCHW forward: 32 -> 64 at
14x14 with stride 2 (batch 32) 0.28 -> 0.14 ms (torch 0.13); 16 -> 32 at 28x28 0.42 ->
0.20 ms (torch 0.20); 32 -> 64 at 32x32 (batch 64) 1.95 -> 0.84 ms (torch 0.93). NHWC
layers of several images forward in the direct lanes kernel instead (the pixels read
in place, ``lanes_plan.lanes_applies``); here their gradients: grad_x 0.31 -> 0.23 ms
(16 -> 32 at 28x28, batch 32; torch 0.12-0.17), grad_w by the direct kernel on x
itself (``direct_grad.weight_grad_into``).

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

from ..._memory import allocate
from ...costs import Estimate, Profile
from .direct_grad import direct_backward_applies, weight_grad_into
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
    those pixels, grad_w (or None) fully written (in NHWC by the direct weight gradient,
    ``direct_grad.weight_grad_into``, where it applies: no copy of the pixels)."""
    sub = plain(args)
    if grad_w is not None and direct_backward_applies(args):  # NHWC: pixels read in place
        weight_grad_into(x, np.ascontiguousarray(gy, args.dtype), args, grad_w)
        grad_w = None
    xs = None if grad_w is None else np.ascontiguousarray(_pixels(x, args))
    gxs = None if grad_x is None else allocate(
        "conv2d_backward", "grad_x", sub.dims.shape(sub.n, sub.c_in, sub.h, sub.w),
        args.dtype)
    backward_pointwise(gy, xs, w, sub, gxs, grad_w)
    if grad_x is not None:
        grad_x[...] = 0
        _pixels(grad_x, args)[...] = gxs
