"""conv2d and conv2d_backward: validate, run through the policy, package.

The algorithm and its fallbacks are decided by ``fastconv.autotune`` (the one policy);
the algorithms themselves are entries of ``fastconv.algos.registry``."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from . import _args, autotune, devices
from ._args.memo import remembered
from ._channel_sums import channel_sums
from ._memory import allocate
from .algos import registry
from .algos.registry import ALGORITHMS  # noqa: F401  (re-exported as fastconv.ALGORITHMS)
from .layout import LAYOUTS


def conv_args(op, x, w, bias, stride, padding, dilation, groups, layout,
              check_input=_args.check_array, algo="auto", half=False):
    """Validate conv2d's arrays, arguments and ``algo`` (known, and able to run the
    problem, even for an empty batch); returns (x, w, bias, ConvArgs) with x 4-D.
    ``check_input`` and ``half`` as in ``fastconv._args.conv_arrays``."""
    registry.check_algo(op, algo)
    x, w, bias, args = _args.conv_arrays(op, x, w, bias, stride, padding, dilation, groups,
                                         layout, check_input, half)
    if algo != "auto":
        registry.check_supported(op, algo, args)
    return x, w, bias, args


def problem(x, w, bias, window, layout, algo: str = "auto"):
    """The ConvArgs of ``conv2d(x, w, bias, *window, layout=layout, algo=algo)`` for
    arrays that need no conversion (x 4-D; x, w and bias plain host ndarrays of one dtype,
    float32 or float64), or None for any other call (it goes through ``conv2d``).
    ``window`` is (stride, padding, dilation, groups). Validated as ``conv2d``
    validates, with its errors, once per shapes and arguments: the autograd op asks on
    every call of a layer, and the same few problems come back every training step."""
    dtype = x.dtype if _args.plain_float(x) and x.ndim == 4 else None
    if dtype is None or not (type(w) is np.ndarray and w.dtype == dtype) or not (
            bias is None or (type(bias) is np.ndarray and bias.dtype == dtype)):
        return None
    return _problem("conv2d", x.shape, w.shape, None if bias is None else bias.shape, dtype,
                    *window, layout, algo)


@remembered
def _problem(op, x_shape, w_shape, bias_shape, dtype, stride, padding, dilation, groups,
             layout, algo):
    """``conv_args``' checks on the shapes alone (its arrays already checked), kept."""
    registry.check_algo(op, algo)
    args = _args.conv_args_from_shapes(op, x_shape, w_shape, stride, padding, dilation,
                                       groups, layout, dtype)
    _args.check_bias_shape(op, bias_shape, args)
    if algo != "auto":
        registry.check_supported(op, algo, args)
    return args


def forward(x, w, bias, args, algo: str = "auto") -> np.ndarray:
    """conv2d's output, a new array, on validated arrays (``conv_args`` or ``problem``)."""
    out = allocate("conv2d", "output", args.y_layout_shape, args.dtype)
    return forward_into(x, w, bias, args, out, algo)


def forward_into(x, w, bias, args, out, algo: str = "auto", choice: str | None = None):
    """conv2d on validated arrays (``conv_args``) into ``out``, through the policy
    (``fastconv.autotune.run_forward``); returns ``out`` as the caller's shape."""
    if args.n > 0:
        autotune.run_forward(x, w, bias, args, out, algo=algo, choice=choice)
    return out[0] if args.unbatched else out


def conv2d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, *, layout="NCHW",
           algo="auto", device="cpu"):
    """2-D cross-correlation, as torch.nn.functional.conv2d.

    Parameters
    ----------
    x : ndarray, (N, C_in, H, W) for layout "NCHW" or (N, H, W, C_in) for "NHWC";
        3-D (unbatched) input is accepted and gives 3-D output: (C_in, H, W), or an
        (H, W, C) photo with layout="NHWC". 2-D input is one gray image (H, W): one
        input channel.
    w : ndarray, (C_out, C_in/groups, kh, kw) "OIHW" for NCHW, (kh, kw, C_in/groups, C_out)
        "HWIO" for NHWC. With a 2-D input, w may be 2-D (kh, kw): one filter, and the
        output is 2-D (H_out, W_out); a 4-D w (C_in/groups = 1) gives the unbatched
        3-D output of C_out channels. A 2-D w needs a 2-D input.
    bias : ndarray (C_out,) or None.
    stride, dilation : int or (h, w).
    padding : int, (h, w), ((top, bottom), (left, right)), "valid" or "same" (stride 1).
    groups : int dividing C_in and C_out.
    layout : "NCHW" (default) or "NHWC".
    algo : "auto", "naive", "im2col", "fft" or "winograd" (3x3 kernels with stride 1
        only; ValueError otherwise).
    device : "cpu" (default) or "cuda": run on the GPU (``fastconv.cuda.conv2d``; numpy
        or GPU arrays; algorithms "auto", "naive", "im2col").

    Returns
    -------
    y : ndarray (N, C_out, H_out, W_out) or (N, H_out, W_out, C_out), dtype of x, with
        H_out = floor((H + p_top + p_bottom - dilation_h*(kh-1) - 1) / stride_h) + 1
        (likewise W_out).

    Notes
    -----
    float32 and float64 are computed in that dtype; float16 in float32, the output
    rounded once to float16. x, w and bias may be array-likes
    (``fastconv._args.check_array``: ndarray subclasses and ``__array__``, buffer or
    ``__dlpack__`` objects without a copy; nested lists and non-native byte order are
    copied); y is a plain ndarray. "naive" is slow (direct loops);
    "fft" pays off for large kernels; "winograd" (F(4x4, 3x3) by default) does 4x fewer
    multiplications on 3x3 stride-1 layers; "auto" chooses (see
    ``fastconv.choose_algorithm``).

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.arange(9.0).reshape(1, 1, 3, 3)
    >>> w = np.array([[[[0.0, 1.0], [2.0, 3.0]]]])
    >>> fastconv.conv2d(x, w)[0, 0]
    array([[19., 25.],
           [37., 43.]])

    A gray image and a 2-D kernel give a 2-D result:

    >>> fastconv.conv2d(x[0, 0], w[0, 0])
    array([[19., 25.],
           [37., 43.]])

    Blurring each channel of an RGB photo as image libraries hold it, (H, W, 3): layout
    "NHWC", one group per channel, and an HWIO weight (kh, kw, 1, 3) holding the same
    3x3 box filter for each channel:

    >>> photo = np.random.default_rng(0).random((48, 64, 3)).astype(np.float32)
    >>> box = np.full((3, 3, 1, 3), 1 / 9, np.float32)
    >>> blurred = fastconv.conv2d(photo, box, padding=1, groups=3, layout="NHWC")
    >>> blurred.shape
    (48, 64, 3)
    >>> bool(np.isclose(blurred[10, 20, 1], photo[9:12, 19:22, 1].mean()))
    True
    """
    op = "conv2d"
    gpu = devices.gpu_op(op, device)
    if gpu is not None:
        return gpu(x, w, bias, stride, padding, dilation, groups, layout=layout, algo=algo)
    x = _args.check_array(op, "input", x, half=True)
    if x.ndim == 2:
        return _conv_plane(x, w, bias, stride, padding, dilation, groups, layout, algo)
    x, w, bias, args = conv_args(op, x, w, bias, stride, padding, dilation, groups, layout,
                                 algo=algo, half=True)
    half, args, (x, w, bias) = _float32(args, x, w, bias)
    y = forward(x, w, bias, args, algo)
    return _args.narrow(y) if half else y


def _conv_plane(x, w, bias, stride, padding, dilation, groups, layout, algo):
    """conv2d of a 2-D (H, W) image: one input channel in ``layout``; a 2-D (kh, kw) weight
    is one filter (OIHW (1, 1, kh, kw) / HWIO (kh, kw, 1, 1)) and gives 2-D output."""
    axis = _args.plane_axis(_args.check_layout("conv2d", layout))
    w, flat = _plane_weight("conv2d", w, layout)
    y = conv2d(np.expand_dims(x, axis), w, bias, stride, padding, dilation, groups,
               layout=layout, algo=algo)
    return np.squeeze(y, axis) if flat else y


def _plane_weight(op, w, layout):
    """(weight, flat): a 2-D (kh, kw) weight as the one filter of ``layout``'s 4-D weight
    (OIHW (1, 1, kh, kw), HWIO (kh, kw, 1, 1); a view), and whether it was 2-D."""
    w = _args.check_array(op, "weight", w, half=True)
    if w.ndim != 2:
        return w, False
    return LAYOUTS[layout].weight_from_canonical_view(w[None, None]), True


def _conv_plane_backward(grad_y, x, w, window, layout, algo, needs):
    """conv2d_backward of a 2-D (H, W) image (as :func:`_conv_plane`): grad_x 2-D, grad_w
    of w's shape (2-D for a 2-D w); ``window`` is (stride, padding, dilation, groups)."""
    op = "conv2d_backward"
    axis = _args.plane_axis(_args.check_layout(op, layout))
    w = _args.check_array(op, "weight", w, half=True)
    w4, flat = _plane_weight(op, w, layout)
    grad_y = _args.check_array(op, "grad_y", grad_y, half=True)
    gx, gw, gb = conv2d_backward(np.expand_dims(grad_y, axis) if flat else grad_y,
                                 np.expand_dims(x, axis), w4, *window, layout=layout,
                                 algo=algo, needs_input_grad=needs)
    return (None if gx is None else np.squeeze(gx, axis),
            None if gw is None else gw.reshape(w.shape), gb)


def _float32(args, *arrays):
    """(half, args, arrays): for a float16 problem, True, the record in float32 and the
    arrays' float32 copies (float16 is computed in float32 and rounded once at the end);
    otherwise False and everything as it is."""
    half, arrays = _args.widen(*arrays)
    return half, (replace(args, dtype=np.dtype(np.float32)) if half else args), arrays


def conv2d_backward(grad_y, x, w, stride=1, padding=0, dilation=1, groups=1, *,
                    layout="NCHW", algo="auto", device="cpu",
                    needs_input_grad=(True, True, True)):
    """Gradients of ``conv2d`` with respect to its input, weight and bias.

    Parameters
    ----------
    grad_y : ndarray, the gradient of the loss with respect to conv2d's output: shape
        (N, C_out, H_out, W_out) for "NCHW", (N, H_out, W_out, C_out) for "NHWC"
        (3-D when x is 3-D; for a 2-D x, conv2d's output: 2-D with a 2-D w).
    x, w, stride, padding, dilation, groups, layout, algo : as in ``conv2d``.
    device : "cpu" (default) or "cuda": the same op on the GPU (``fastconv.cuda``).
    needs_input_grad : three bools (grad_x, grad_w, grad_bias), default all True: which
        gradients to compute (torch's ``output_mask``); the others are returned as None.
        Leaving out grad_x, e.g. in a network's first layer whose input is the data,
        saves about half of the work.

    Returns
    -------
    grad_x : ndarray, shape and layout of x (or None).
    grad_w : ndarray, shape and layout of w (OIHW or HWIO) (or None).
    grad_bias : ndarray (C_out,), grad_y summed over N, H_out, W_out (or None).
    All three in the dtype of x (float16: computed in float32, rounded once). Array
    arguments may be array-likes, as in ``conv2d``.

    Notes
    -----
    With y[n, d, i, j] = sum_{c,a,b} w[d, c, a, b] x[n, gCg + c, s_h i + r_h a - p_top,
    s_w j + r_w b - p_left]:
    grad_w[d, c, a, b] = sum_{n,i,j} grad_y[n, d, i, j] x[n, gCg + c, ...] and grad_x
    gathers grad_y[n, d, i, j] w[d, c, a, b] at every input position each term read.
    "im2col" runs two GEMMs per tile (grad_w and the column gradient) and a fold (col2im)
    within the forward's workspace budget, and for batches of small images the same
    products image-last without the column matrix (``im2col.image_last_tile``); "fft"
    forms both in the frequency domain; "winograd" computes grad_x as a Winograd
    correlation of grad_y with the flipped kernel and grad_w as the adjoint of
    F(2x2, 3x3) (im2col computes the gradients of dilated layers, and grad_x where a
    padding exceeds 2);
    "naive" is the formula as loops. "auto" picks by the backward's own cost model
    (``fastconv.plan(..., backward=True)``), and takes im2col's image-last path where it
    applies unless that plan picked Winograd for a layer of 32 or more channels.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.arange(9.0).reshape(1, 1, 3, 3)
    >>> w = np.array([[[[0.0, 1.0], [2.0, 3.0]]]])
    >>> gx, gw, gb = fastconv.conv2d_backward(np.ones((1, 1, 2, 2)), x, w)
    >>> gw[0, 0]
    array([[ 8., 12.],
           [20., 24.]])
    >>> gb
    array([4.])
    """
    op = "conv2d_backward"
    needs, gpu = devices.gpu_backward(op, device, needs_input_grad)
    if gpu is not None:
        return gpu(grad_y, x, w, stride, padding, dilation, groups, layout=layout, algo=algo)
    need_x, need_w, need_b = needs
    x = _args.check_array(op, "input", x, half=True)
    if x.ndim == 2:
        return _conv_plane_backward(grad_y, x, w, (stride, padding, dilation, groups),
                                    layout, algo, (need_x, need_w, need_b))
    x, w, _, args = conv_args(op, x, w, None, stride, padding, dilation, groups, layout,
                              algo=algo, half=True)
    grad_y = _args.check_array(op, "grad_y", grad_y, half=True)
    _args.check_same_dtype(op, input=x, weight=w, grad_y=grad_y)
    half, args, (grad_y, x, w) = _float32(args, grad_y, x, w)
    grad_y = _args.batched_grad_y(op, grad_y, args, "conv2d")
    grad_x, grad_w, grad_bias = gradients(grad_y, x, w, args, (need_x, need_w, need_b), algo)
    if args.unbatched and need_x:
        grad_x = grad_x[0]
    return _args.narrow((grad_x, grad_w, grad_bias)) if half else (grad_x, grad_w, grad_bias)


def gradients(grad_y, x, w, args, needs, algo: str = "auto"):
    """``conv2d_backward``'s (grad_x, grad_w, grad_bias) on validated arrays: x 4-D and
    w as ``conv_args`` returned them for problem ``args`` (float32 or float64), grad_y
    of the batched output's shape; ``needs`` three bools (a gradient not needed is
    None)."""
    need_x, need_w, need_b = needs
    op = "conv2d_backward"
    grad_x = allocate(op, "input gradient", x.shape, args.dtype) if need_x else None
    grad_w = allocate(op, "weight gradient", w.shape, args.dtype) if need_w else None
    if args.n > 0 and (need_x or need_w):
        autotune.run_backward(grad_y, x, w, args, grad_x, grad_w, algo=algo)
    elif need_w:
        grad_w[...] = 0
    grad_bias = None
    if need_b:
        grad_bias = channel_sums(grad_y, args.dims.channels_last).astype(args.dtype)
    return grad_x, grad_w, grad_bias
