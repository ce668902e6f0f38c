"""The autograd conv2d: one :class:`~fastconv.autograd.Function` on
:func:`fastconv.conv2d` / :func:`fastconv.conv2d_backward`.

A layer's arrays that need no conversion (plain host arrays of float32 or float64, a
4-D input) are validated once per shapes and arguments (``fastconv.conv.problem``) and
both directions then run on that record, without the public functions' checks on every
call of every training step; any other call goes through the public functions.
"""

from __future__ import annotations

import numpy as np

from .. import _blas, devices
from .. import conv as _conv
from ..algos.im2col.padded import shared_copies
from ..autograd import Function, Tensor
from ..autograd.arrays import transpose
from ..layout import LAYOUTS


class Conv2d(Function):
    gpu = True

    @staticmethod
    def forward(ctx, x, w, b, stride=1, padding=0, dilation=1, groups=1, layout="NCHW",
                algo="auto", canonical_weight=False):
        # canonical_weight: w is OIHW whatever the layout (the nn layers' weights, as
        # torch's); the kernels take the layout's own order (HWIO for NHWC)
        ctx.permute_weight = canonical_weight and not LAYOUTS[layout].is_canonical
        if ctx.permute_weight:
            w = transpose(w, LAYOUTS[layout].weight_from_canonical, contiguous=True)
        ctx.save_for_backward(x, w)
        ctx.args = (stride, padding, dilation, groups)
        ctx.layout, ctx.algo, ctx.has_bias = layout, algo, b is not None
        ctx.problem = _conv.problem(x, w, b, ctx.args, layout, algo)
        # The forward's GEMMs of a small layer run on one BLAS thread, as fastconv's own
        # small products do (fastconv._blas): a second thread gains little there and then
        # spins on the core the following kernels need. Bound on the multiply-adds:
        # (input pixels) * C_out * (C_in/groups) * kh * kw.
        c_in = tuple(x.shape)[LAYOUTS[layout].channel_axis - 4] if x.ndim >= 3 else 1
        # the zero-padded copy of x a direct kernel makes is kept for the weight gradient
        ctx.padded = {}
        with _blas.limit_for(x.size // max(c_in, 1) * w.size), \
                shared_copies(ctx.padded, keep=ctx.needs_input_grad[1]):
            if ctx.problem is not None:
                return _conv.forward(x, w, b, ctx.problem, algo)
            return _conv.conv2d(x, w, b, stride, padding, dilation, groups, layout=layout,
                                algo=algo, device=devices.array_device(x))

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        # e.g. the first layer: its input (the data) needs no gradient, and grad_x is the
        # larger half of the work
        needs = (need_x, need_w, need_b and ctx.has_bias)
        with shared_copies(ctx.padded, keep=False):
            a = ctx.problem
            if a is not None and type(g) is np.ndarray and g.dtype == a.dtype \
                    and g.shape == a.y_layout_shape:
                gx, gw, gb = _conv.gradients(g, x, w, a, needs, ctx.algo)
            else:
                gx, gw, gb = _conv.conv2d_backward(g, x, w, *ctx.args, layout=ctx.layout,
                                                   algo=ctx.algo, needs_input_grad=needs,
                                                   device=devices.array_device(g))
        ctx.padded = None
        if ctx.permute_weight and gw is not None:
            gw = transpose(gw, LAYOUTS[ctx.layout].weight_to_canonical, contiguous=True)
        return gx, gw, gb


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           layout="NCHW", algo="auto", weight_layout=None) -> Tensor:
    """2-D cross-correlation (see :func:`fastconv.conv2d` for shapes and arguments).

    ``weight_layout`` None: the weight is in ``layout``'s order (OIHW for NCHW, HWIO for
    NHWC); "OIHW": it is (out, in/groups, kh, kw) whatever ``layout`` (torch's order, that
    of :class:`fastconv.nn.Conv2d`), and its gradient comes back in that order,
    C-contiguous (as the optimisers' one-pass steps take it)."""
    if weight_layout not in (None, "OIHW"):
        raise ValueError(f"conv2d: weight_layout={weight_layout!r} must be None or 'OIHW'")
    return Conv2d.apply(input, weight, bias, stride=stride, padding=padding,
                        dilation=dilation, groups=groups, layout=layout, algo=algo,
                        canonical_weight=weight_layout == "OIHW")
