"""conv1d and conv3d as differentiable ops (:class:`~fastconv.autograd.Function`s) over
``fastconv.conv1d`` / ``conv3d`` and their backward; re-exported by
``fastconv.nn.functional``."""

from __future__ import annotations

from .. import conv_nd as _c
from .. import devices
from ..autograd import Function


class _ConvNd(Function):
    """Saves x and w; the backward asks only for the gradients the graph needs. Tensors
    on "cuda" run the GPU ops (``fastconv.cuda.conv1d`` / ``conv3d``)."""

    gpu = True

    forward_fn = staticmethod(_c.conv1d)
    backward_fn = staticmethod(_c.conv1d_backward)

    @classmethod
    def forward(cls, ctx, x, w, b, stride=1, padding=0, dilation=1, groups=1, layout=None,
                algo="auto"):
        ctx.save_for_backward(x, w)
        ctx.args = (stride, padding, dilation, groups)
        ctx.layout, ctx.algo, ctx.has_bias = layout, algo, b is not None
        return cls.forward_fn(x, w, b, stride, padding, dilation, groups, layout=layout,
                              algo=algo, device=devices.array_device(x))

    @classmethod
    def backward(cls, ctx, g):
        x, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        return cls.backward_fn(g, x, w, *ctx.args, layout=ctx.layout, algo=ctx.algo,
                               needs_input_grad=(need_x, need_w, need_b and ctx.has_bias),
                               device=devices.array_device(g))


class Conv1d(_ConvNd):
    pass


class Conv3d(_ConvNd):
    forward_fn = staticmethod(_c.conv3d)
    backward_fn = staticmethod(_c.conv3d_backward)


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           layout="NCW", algo="auto"):
    """1-D cross-correlation (see :func:`fastconv.conv1d` for shapes and arguments);
    returns a Tensor.

    >>> import numpy as np
    >>> from fastconv import Tensor
    >>> x = Tensor(np.ones((1, 2, 5)), requires_grad=True)
    >>> conv1d(x, np.ones((3, 2, 3))).sum().backward()
    >>> x.grad[0, 0]
    array([3., 6., 9., 6., 3.])
    """
    return Conv1d.apply(input, weight, bias, stride=stride, padding=padding,
                        dilation=dilation, groups=groups, layout=layout, algo=algo)


def conv3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           layout="NCDHW", algo="auto"):
    """3-D cross-correlation (see :func:`fastconv.conv3d` for shapes and arguments);
    returns a Tensor.

    >>> import numpy as np
    >>> y = conv3d(np.ones((1, 1, 3, 3, 3)), np.ones((2, 1, 2, 2, 2)), padding=1)
    >>> y.shape
    (1, 2, 4, 4, 4)
    """
    return Conv3d.apply(input, weight, bias, stride=stride, padding=padding,
                        dilation=dilation, groups=groups, layout=layout, algo=algo)
