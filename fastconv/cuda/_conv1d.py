"""conv1d and conv1d_backward on the GPU: the GPU conv2d over a unit height axis.

As on the CPU (``fastconv.conv_nd``), the signal (N, C, W) is the image (N, C, 1, W) and
the weight (O, I, k) the filter (O, I, 1, k) (NWC / WIO: NHWC / HWIO), reshaped on the
device (a copy only for a strided device array); the arguments are validated under
conv1d's names first, so the errors are the CPU's.
"""

from __future__ import annotations

from .. import _args
from .._args.conv_nd import check_grad_y, conv_nd_arrays
from ..layout import LAYOUTS
from . import _conv, _layout
from ._device import Residency, host_spec


def _problem(op, x, w, bias, stride, padding, dilation, groups, layout, algo):
    """(ConvNdArgs, the 2-D layout, conv2d's (stride, padding, dilation, groups))."""
    _conv.check_algo(op, algo)
    _, _, _, a = conv_nd_arrays(op, host_spec(x), host_spec(w), host_spec(bias), stride,
                                padding, dilation, groups, layout, rank=1, half=False)
    window = ((1, a.stride[0]), ((0, 0), a.padding[0]), (1, a.dilation[0]), a.groups)
    return a, LAYOUTS[a.layout.replace("W", "HW")], window  # NCW: NCHW, NWC: NHWC


def _unit_height(d, axis, batched=True):
    """The device array ``d`` (contiguous first) with a unit axis at ``axis``, and a unit
    batch axis in front when it has none (``batched`` False)."""
    d = _layout.contiguous(d)
    shape = list(d.shape)
    shape.insert(axis - (0 if batched else 1), 1)
    return d.reshape(tuple(shape) if batched else (1,) + tuple(shape))


def conv1d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, *, layout="NCW",
           algo="auto"):
    """fastconv.conv1d on the GPU: same arguments, shapes and errors.

    x: (N, C_in, W) for "NCW", (N, W, C_in) for "NWC" (2-D without N); w: (C_out,
    C_in/groups, k) or (k, C_in/groups, C_out); bias (C_out,) or None. Returns y in x's
    layout; residency and algo as in ``fastconv.cuda._conv.conv2d``.
    """
    op = "conv1d"
    a, lay2, window = _problem(op, x, w, bias, stride, padding, dilation, groups, layout,
                               algo)
    res = Residency(x, w, bias)
    h = lay2.name.index("H")
    y = _conv.conv2d(_unit_height(res.to_device(x), h, not a.unbatched),
                     _unit_height(res.to_device(w), lay2.weight.index("H")),
                     res.to_device(bias), *window, layout=lay2.name, algo=algo)
    return res.result(y.reshape(a.y_layout_shape[1:] if a.unbatched else a.y_layout_shape))


def conv1d_backward(grad_y, x, w, stride=1, padding=0, dilation=1, groups=1, *,
                    layout="NCW", algo="auto", needs_input_grad=(True, True, True)):
    """fastconv.conv1d_backward on the GPU -> (grad_x, grad_w, grad_bias), as
    ``fastconv.cuda._conv.conv2d_backward`` on the unit-height problem (needs_input_grad
    likewise)."""
    op = "conv1d_backward"
    needs = _args.check_needs_input_grad(op, needs_input_grad)
    a, lay2, window = _problem(op, x, w, None, stride, padding, dilation, groups, layout,
                               algo)
    gys = check_grad_y(op, host_spec(grad_y), a, half=False)
    _args.check_same_dtype(op, input=host_spec(x), weight=host_spec(w), grad_y=gys)
    res = Residency(grad_y, x, w)
    h, batched = lay2.name.index("H"), not a.unbatched
    gx, gw, gb = _conv.conv2d_backward(_unit_height(res.to_device(grad_y), h, batched),
                                       _unit_height(res.to_device(x), h, batched),
                                       _unit_height(res.to_device(w), lay2.weight.index("H")),
                                       *window, layout=lay2.name, algo=algo,
                                       needs_input_grad=needs)
    x_shape = a.x_layout_shape[1:] if a.unbatched else a.x_layout_shape
    return (res.result(gx.reshape(x_shape)) if needs[0] else None,
            res.result(gw.reshape(tuple(w.shape))) if needs[1] else None,
            res.result(gb))
