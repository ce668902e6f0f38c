"""conv1d and conv1d_backward: a 1-D convolution run as conv2d over a unit height axis.

The signal (N, C, W) becomes the image (N, C, 1, W) and the weight (O, I, k) the filter
(O, I, 1, k) as views (no copies; NWC / WIO likewise become NHWC / HWIO), so every
conv2d algorithm and the policy's choice serve conv1d. Arguments are validated here
under conv1d's name (``fastconv._args.conv_nd``)."""

from __future__ import annotations

import numpy as np

from . import _args, conv
from ._args.conv_nd import check_grad_y, conv_nd_arrays
from .algos import registry
from .layout import LAYOUTS

#: the 2-D layout each 1-D layout runs in
AS_2D = {"NCW": "NCHW", "NWC": "NHWC"}


def _as_2d(op, x, w, bias, stride, padding, dilation, groups, layout, algo):
    """Validate a conv1d problem; returns (x4, w4, bias, args, lay2, window) with x4 and
    w4 the 4-D views conv2d runs and ``window`` its (stride, padding, dilation, groups)."""
    registry.check_algo(op, algo)
    x, w, bias, args = conv_nd_arrays(op, x, w, bias, stride, padding, dilation, groups,
                                      layout, rank=1)
    lay2 = LAYOUTS[AS_2D[args.layout]]
    x4 = np.expand_dims(x, lay2.name.index("H"))
    w4 = np.expand_dims(w, lay2.weight.index("H"))
    window = ((1, args.stride[0]), ((0, 0), args.padding[0]), (1, args.dilation[0]),
              args.groups)
    if algo != "auto":
        a2 = _args.conv_args_from_shapes(op, x4.shape, w4.shape, *window, lay2.name,
                                         args.dtype)
        registry.check_supported(op, algo, a2)
    return x4, w4, bias, args, lay2, window


def conv1d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, *, layout="NCW",
           algo="auto"):
    """1-D cross-correlation, as torch.nn.functional.conv1d.

    Parameters
    ----------
    x : ndarray (N, C_in, W) for layout "NCW" or (N, W, C_in) for "NWC"; 2-D (unbatched)
        input gives 2-D output, as torch.
    w : ndarray (C_out, C_in/groups, k) "OIW" for NCW, (k, C_in/groups, C_out) "WIO" for
        NWC.
    bias : ndarray (C_out,) or None.
    stride, dilation : int (or a 1-tuple).
    padding : int, (lo, hi), "valid" or "same" (stride 1).
    groups : int dividing C_in and C_out.
    layout : "NCW" (default) or "NWC".
    algo : "auto" or a conv2d algorithm ("naive", "im2col", "fft"; "winograd" needs a
        3x3 kernel, which a 1-D kernel never is).

    Returns
    -------
    y : ndarray (N, C_out, W_out) or (N, W_out, C_out), dtype of x (float16 computed in
        float32, as conv2d), W_out = floor((W + lo + hi - dilation*(k-1) - 1) / stride) + 1.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.arange(5.0).reshape(1, 1, 5)
    >>> fastconv.conv1d(x, np.array([[[1.0, 0.0, -1.0]]]), padding=1)
    array([[[-1., -2., -2., -2.,  3.]]])
    >>> fastconv.conv1d(np.ones((16, 2)), np.ones((3, 2, 4)), layout="NWC").shape
    (14, 4)
    """
    op = "conv1d"
    x4, w4, bias, args, lay2, window = _as_2d(op, x, w, bias, stride, padding, dilation,
                                              groups, layout, algo)
    y = conv.conv2d(x4, w4, bias, *window, layout=lay2.name, algo=algo)
    y = np.squeeze(y, lay2.name.index("H"))
    return y[0] if args.unbatched else y


def conv1d_backward(grad_y, x, w, stride=1, padding=0, dilation=1, groups=1, *,
                    layout="NCW", algo="auto", needs_input_grad=(True, True, True)):
    """Gradients of ``conv1d`` with respect to its input, weight and bias.

    grad_y has conv1d's output shape; the arguments are conv1d's, ``needs_input_grad``
    as in ``fastconv.conv2d_backward``. Returns (grad_x, grad_w, grad_bias) of the shapes
    of x, w and (C_out,), None where not wanted.

    >>> import numpy as np, fastconv
    >>> x = np.arange(5.0).reshape(1, 1, 5)
    >>> gx, gw, gb = fastconv.conv1d_backward(np.ones((1, 1, 3)), x, np.ones((1, 1, 3)))
    >>> gx, gw, gb
    (array([[[1., 2., 3., 2., 1.]]]), array([[[3., 6., 9.]]]), array([3.]))
    """
    op = "conv1d_backward"
    needs = conv._check_needs_input_grad(op, needs_input_grad)
    x4, w4, _, args, lay2, window = _as_2d(op, x, w, None, stride, padding, dilation,
                                           groups, layout, algo)
    grad_y = check_grad_y(op, grad_y, args)
    _args.check_same_dtype(op, input=x4, weight=w4, grad_y=grad_y)
    gx, gw, gb = conv.conv2d_backward(np.expand_dims(grad_y, lay2.name.index("H")), x4, w4,
                                      *window, layout=lay2.name, algo=algo,
                                      needs_input_grad=needs)
    if gx is not None:
        gx = np.squeeze(gx, lay2.name.index("H"))
        gx = gx[0] if args.unbatched else gx
    if gw is not None:
        gw = np.squeeze(gw, lay2.weight.index("H"))
    return gx, gw, gb
