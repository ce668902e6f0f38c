"""Fused ops: batch norm + ReLU, residual add + ReLU, ReLU + max pooling.

Each is one autograd Function doing in one pass what two ops would do in two, with one
output array instead of two, and the gradient of the pair:

- :func:`batch_norm_relu`: max(batch_norm(x), 0), the ReLU applied in batch norm's
  normalising pass (``fastconv.batch_norm(..., fuse_relu=True)``; the batch norm
  Function of ``fastconv.nn.functional`` with ``relu=True``);
- :func:`add_relu`: max(a + b, 0), the residual connection and the ReLU after it;
- :func:`batch_norm_add_relu`: max(batch_norm(x) + r, 0), a residual block's end (its
  last batch norm, the residual connection and the ReLU) in batch norm's normalising
  pass: two passes over the maps fewer than the batch norm and ``add_relu``, and one
  op; the backward writes the residual's gradient in its second pass;
- :func:`relu_max_pool2d`: max_pool2d(relu(x)), computed as relu(max_pool2d(x)), the
  ReLU on the pooled map (a quarter of x's size with 2x2 windows).

Each keeps its output ``y`` for the backward pass: the ReLU gradient passes where
y > 0, as :func:`fastconv.nn.functional.relu`'s. ``fastconv.nn.Sequential`` runs a
BatchNorm2d followed by a ReLU, and a ReLU followed by a MaxPool2d, through them (and a
Linear followed by a ReLU through ``functional.linear(..., relu=True)``).

>>> import numpy as np
>>> from fastconv.nn import fused
>>> fused.add_relu(np.array([1.0, -2.0]), np.array([0.5, 1.0])).data
array([1.5, 0. ])
"""

from __future__ import annotations

import numpy as np

from .. import _elementwise
from .._args import batch_norm_record
from ..autograd import Function, Tensor
from .functional import BatchNorm, MaxPool2d
from .functional import batch_norm as _batch_norm


class AddReLU(Function):
    """y = max(a + b, 0); both inputs get g where y > 0."""

    @staticmethod
    def forward(ctx, a, b):
        y = _elementwise.add_relu(a, b)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        gx = _elementwise.relu_backward(g, ctx.saved_tensors[0])
        return gx, gx     # one array for both: the engine never adds into a gradient


def add_relu(a, b) -> Tensor:
    """max(a + b, 0) for a and b of one shape (any shape): relu(a + b) in one pass."""
    a, b = (t if isinstance(t, Tensor) else Tensor(t) for t in (a, b))
    if a.shape != b.shape:
        raise ValueError(f"add_relu: a of shape {a.shape} and b of shape {b.shape} must "
                         "have one shape")
    return AddReLU.apply(a, b)


def batch_norm_relu(input, running_mean, running_var, weight=None, bias=None,
                    training=False, momentum=0.1, eps=1e-5, *, layout="NCHW") -> Tensor:
    """relu(batch_norm(input, ...)) in one pass (arguments as
    :func:`fastconv.nn.functional.batch_norm`): input (N, C, H, W), or (N, H, W, C) with
    layout="NHWC"; the output has its shape."""
    return BatchNorm.apply(input, weight, bias, running_mean=running_mean,
                           running_var=running_var, training=training, momentum=momentum,
                           eps=eps, layout=layout, relu=True)


def batch_norm_add_relu(input, residual, running_mean, running_var, weight=None, bias=None,
                        training=False, momentum=0.1, eps=1e-5, *, layout="NCHW") -> Tensor:
    """max(batch_norm(input, ...) + residual, 0) (batch norm's arguments as
    :func:`fastconv.nn.functional.batch_norm`; residual of input's shape): one op and
    one normalising pass where input and residual are plain host arrays of one dtype,
    float32 or float64 (the sum taken in float64 and rounded once); otherwise
    ``add_relu(batch_norm(...), residual)``.

    >>> import numpy as np
    >>> x = np.array([1.0, 3.0]).reshape(2, 1, 1, 1)        # mean 2, var 1
    >>> batch_norm_add_relu(x, np.full_like(x, 0.5), None, None, training=True,
    ...                     eps=0.0).data.ravel()
    array([0. , 1.5])
    """
    x, r = (getattr(t, "data", t) for t in (input, residual))
    if type(x) is np.ndarray and type(r) is np.ndarray and r.shape == x.shape \
            and r.dtype == x.dtype and batch_norm_record(
                x, running_mean, running_var, getattr(weight, "data", weight),
                getattr(bias, "data", bias), training, momentum, eps, layout) is not None:
        return BatchNorm.apply(input, weight, bias, residual, running_mean=running_mean,
                               running_var=running_var, training=training,
                               momentum=momentum, eps=eps, layout=layout, relu=True)
    return add_relu(_batch_norm(input, running_mean, running_var, weight, bias, training,
                                momentum, eps, layout=layout), residual)


def relu_max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1,
                    ceil_mode=False, *, layout="NCHW") -> Tensor:
    """max_pool2d(relu(input)) as one op (arguments as
    :func:`fastconv.nn.functional.max_pool2d`), the ReLU on the pooled map. Exact: a
    window's maximum is positive where some input is, and then it is the ReLU's maximum
    too; elsewhere both give 0; NaN propagates through both; the gradient goes to the
    window's first maximum where y > 0, where the ReLU-then-pool pair sends it.

    >>> import numpy as np
    >>> x = np.array([[[[-1.0, -2.0], [-3.0, -4.0]], [[1.0, -2.0], [3.0, 0.5]]]])
    >>> relu_max_pool2d(x, 2).data.ravel()
    array([0., 3.])
    """
    return MaxPool2d.apply(input, kernel_size=kernel_size, stride=stride, padding=padding,
                           dilation=dilation, ceil_mode=ceil_mode, layout=layout, relu=True)
