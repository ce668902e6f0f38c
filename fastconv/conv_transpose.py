"""conv_transpose2d and its backward: conv2d's input gradient, run by conv2d's machinery.

A transposed convolution scatters each input pixel, times the kernel, into the output:
exactly what conv2d's backward does to grad_y to form grad_x. So the forward runs the
policy's backward (``fastconv.autotune.run_backward``, the registry's backward entries
computing grad_x only) on the conv2d problem beneath (``fastconv._args.TransposeArgs``);
its gradients are a conv2d forward (grad_x) and conv2d's weight gradient with the roles
swapped (grad_w). Every algorithm with a backward serves it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import _args, autotune, devices
from ._args.transpose import TransposeArgs, transpose_args_from_shapes
from ._channel_sums import channel_sums
from ._memory import allocate
from .algos import registry


def _transpose_arrays(op, x, w, bias, stride, padding, output_padding, groups, dilation,
                      layout, algo):
    """Validate the arrays, arguments and ``algo``; returns (x 4-D, w, bias, record)."""
    registry.check_algo(op, algo)
    x, w, bias, a = _args.transpose_arrays(op, x, w, bias, stride, padding, output_padding,
                                           groups, dilation, layout, half=True)
    if algo != "auto" and a.conv is not None:
        registry.check_supported(op, algo, a.conv)
        if not registry.get(algo).grads(a.conv)[0]:
            able = [n for n in registry.ALGORITHMS
                    if registry.get(n).supports(a.conv) and registry.get(n).grads(a.conv)[0]]
            raise ValueError(f"{op}: algo={algo!r} does not compute conv2d's input gradient "
                             f"for this problem (kernel {a.conv.kh}x{a.conv.kw}, stride "
                             f"{a.conv.stride}, padding {padding!r}, dilation "
                             f"{a.conv.dilation}; Winograd needs padding at most 2, a dilated "
                             f"layer in each of its phase problems); use algo='auto' or "
                             f"one of {able}")
    return x, w, bias, a


def _add_bias(out, bias, a: TransposeArgs):
    if bias is not None:
        shape = [1, 1, 1, 1]
        shape[a.dims.channel_axis] = a.c_out
        out += bias.reshape(shape)
    return out


def _top_left(a: TransposeArgs, arr):
    """The rows and columns of an output-shaped array that conv2d's problem covers."""
    index = [slice(None)] * 4
    index[a.dims.spatial_axes[0]] = slice(0, a.reach_h)
    index[a.dims.spatial_axes[1]] = slice(0, a.reach_w)
    return arr[tuple(index)]


def conv_transpose2d(x, w, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, layout="NCHW", algo="auto", device="cpu"):
    """2-D transposed convolution, as torch.nn.functional.conv_transpose2d: the
    gradient of ``conv2d`` with respect to its input.

    Parameters
    ----------
    x : ndarray (N, C_in, H, W) for "NCHW", (N, H, W, C_in) for "NHWC"; 3-D is one
        unbatched image and gives 3-D output.
    w : ndarray (C_in, C_out/groups, kh, kw) for "NCHW" (torch's), (kh, kw, C_out/groups,
        C_in) for "NHWC": conv2d's weight (OIHW / HWIO) of the problem whose output has
        C_in channels.
    bias : ndarray (C_out,) or None.
    stride, padding, output_padding, dilation : int or (h, w); padding removes rows and
        columns from both sides of the full output, output_padding adds rows and columns
        at the bottom and right (only the bias reaches them when they lie past the
        last input's reach); each output_padding must be smaller than its stride or its
        dilation (torch's rule).
    groups : int dividing C_in and C_out.
    layout : "NCHW" (default) or "NHWC".
    algo : "auto", "naive", "im2col", "fft" or "winograd": the algorithm computing
        conv2d's input gradient (Winograd: 3x3 kernels, stride 1, dilation 1, padding at
        most 2; ValueError where one cannot run). "auto" follows
        :func:`plan_conv_transpose2d`.
    device : "cpu" (default) or "cuda": run on the GPU (``fastconv.cuda.conv_transpose2d``,
        conv2d's GPU input gradient; numpy or GPU arrays; algorithms "auto", "naive",
        "im2col"; float32 and float64).

    Returns
    -------
    y : ndarray (N, C_out, H_out, W_out) or (N, H_out, W_out, C_out), dtype of x, with
        H_out = (H - 1)*stride - 2*padding + dilation*(kh - 1) + output_padding + 1.
        float16 is computed in float32 and rounded once.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.array([[[[1.0, 2.0]]]])               # (1, 1, 1, 2)
    >>> w = np.array([[[[1.0, 3.0], [5.0, 7.0]]]])
    >>> fastconv.conv_transpose2d(x, w, stride=2)[0, 0]
    array([[ 1.,  3.,  2.,  6.],
           [ 5.,  7., 10., 14.]])

    The adjoint of conv2d: <conv2d(u, w), v> = <u, conv_transpose2d(v, w)>.

    >>> rng = np.random.default_rng(0)
    >>> u, w = rng.standard_normal((2, 3, 7, 7)), rng.standard_normal((4, 3, 3, 3))
    >>> v = rng.standard_normal((2, 4, 3, 3))
    >>> lhs = np.vdot(fastconv.conv2d(u, w, stride=2), v)
    >>> rhs = np.vdot(u, fastconv.conv_transpose2d(v, w, stride=2))
    >>> bool(np.isclose(lhs, rhs))
    True
    """
    op = "conv_transpose2d"
    gpu = devices.gpu_op(op, device)
    if gpu is not None:
        return gpu(x, w, bias, stride, padding, output_padding, groups, dilation,
                   layout=layout, algo=algo)
    x, w, bias, a = _transpose_arrays(op, x, w, bias, stride, padding, output_padding,
                                      groups, dilation, layout, algo)
    half, (x, w, bias) = _args.widen(x, w, bias)
    dtype = np.dtype(np.float32) if half else a.dtype
    out = allocate(op, "output", a.y_layout_shape, dtype)
    if a.conv is None or a.n == 0:
        out[...] = 0
    else:
        conv = dataclasses.replace(a.conv, dtype=dtype)
        target = allocate(op, "output", conv.x_layout_shape, dtype) if a.cropped else out
        # conv2d's input is not read for grad_x alone: a zero-strided stand-in, no memory
        unread = np.broadcast_to(np.zeros((), dtype), conv.x_layout_shape)
        autotune.run_backward(x, unread, w, conv, target, None, algo=algo)
        if a.cropped:
            out[...] = 0
            _top_left(a, out)[...] = target
    _add_bias(out, bias, a)
    y = out[0] if a.unbatched else out
    return _args.narrow(y) if half else y


def conv_transpose2d_backward(grad_y, x, w, stride=1, padding=0, output_padding=0,
                              groups=1, dilation=1, *, layout="NCHW", algo="auto",
                              device="cpu", needs_input_grad=(True, True, True)):
    """Gradients of :func:`conv_transpose2d` with respect to its input, weight and bias.

    Parameters
    ----------
    grad_y : ndarray, the gradient of the loss with respect to conv_transpose2d's output
        (its shape; 3-D when x is 3-D).
    x, w, stride, padding, output_padding, groups, dilation, layout : as in
        :func:`conv_transpose2d`.
    algo : the algorithm for both products ("auto": conv2d's plan for grad_x, the
        backward policy for grad_w); an explicit one must be one that
        :func:`conv_transpose2d` accepts for the problem (ValueError otherwise), and a
        gradient it does not compute comes from im2col, as in ``conv2d_backward``.
    device : "cpu" (default) or "cuda": the same op on the GPU
        (``fastconv.cuda.conv_transpose2d_backward``).
    needs_input_grad : three bools (grad_x, grad_w, grad_bias); the others come back None.

    Returns
    -------
    grad_x : shape of x: ``conv2d(grad_y, w, stride=stride, padding=padding, ...)`` (rows
        of grad_y past the inputs' reach do not enter).
    grad_w : shape of w: conv2d's weight gradient with x as its grad_y and grad_y as its
        input.
    grad_bias : (C_out,): grad_y summed over N, H_out, W_out.
    All in the dtype of x (float16: computed in float32, rounded once).

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x, w = np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2))
    >>> gx, gw, gb = fastconv.conv_transpose2d_backward(np.ones((1, 1, 3, 3)), x, w)
    >>> gx[0, 0], gw[0, 0], gb
    (array([[4., 4.],
           [4., 4.]]), array([[4., 4.],
           [4., 4.]]), array([9.]))
    """
    op = "conv_transpose2d_backward"
    needs, gpu = devices.gpu_backward(op, device, needs_input_grad)
    if gpu is not None:
        return gpu(grad_y, x, w, stride, padding, output_padding, groups, dilation,
                   layout=layout, algo=algo)
    need_x, need_w, need_b = needs
    x, w, _, a = _transpose_arrays(op, x, w, None, stride, padding, output_padding, groups,
                                   dilation, layout, algo)
    grad_y = _args.transpose_grad_y(op, grad_y, x, w, a, half=True)
    half, (grad_y, x, w) = _args.widen(grad_y, x, w)
    dtype = np.dtype(np.float32) if half else a.dtype
    grad_x = allocate(op, "input gradient", x.shape, dtype) if need_x else None
    grad_w = allocate(op, "weight gradient", w.shape, dtype) if need_w else None
    sums = None
    if a.conv is None or a.n == 0:
        for g in (grad_x, grad_w):
            if g is not None:
                g[...] = 0
    else:
        conv = dataclasses.replace(a.conv, dtype=dtype)
        gy = np.ascontiguousarray(_top_left(a, grad_y)) if a.cropped else grad_y
        if need_x and need_w:
            # grad_bias sums grad_y's reach only when nothing lies past it (not cropped)
            sums = np.empty(a.c_out) if need_b and not a.cropped else None
            autotune.run_forward_and_weight_grad(gy, w, x, conv, grad_x, grad_w, algo=algo,
                                                 x_sums=sums)
        elif need_x:
            autotune.run_forward(gy, w, None, conv, grad_x, algo=algo)
        elif need_w:
            autotune.run_backward(x, gy, w, conv, None, grad_w, algo=algo)
    grad_bias = None
    if need_b and sums is not None:
        grad_bias = sums.astype(dtype)
    elif need_b:
        grad_bias = channel_sums(grad_y, a.dims.channels_last).astype(dtype)
    if a.unbatched and need_x:
        grad_x = grad_x[0]
    result = (grad_x, grad_w, grad_bias)
    return _args.narrow(result) if half else result


def plan_conv_transpose2d(x_shape, w_shape, stride=1, padding=0, output_padding=0,
                          groups=1, dilation=1, *, layout="NCHW", dtype=np.float32,
                          measure=False) -> autotune.Plan:
    """How ``conv_transpose2d(x, w, ..., algo="auto")`` would run this problem.

    A transposed convolution is conv2d's input gradient, and it runs as such; so its plan
    is the backward plan of the conv2d problem beneath (``fastconv.plan(...,
    backward=True)`` with that problem's input of shape (N, C_out, H_out, W_out) less
    any unreached output_padding, and x's shape as its output), with ``algorithm`` the
    one the backward policy runs for grad_x (``autotune.backward_choice``). The
    estimates are the backward's, which price grad_w too (an upper bound here).

    Parameters are those of :func:`conv_transpose2d` as shapes, plus ``dtype`` and
    ``measure`` as in ``fastconv.plan``.

    Examples
    --------
    >>> import fastconv
    >>> p = fastconv.plan_conv_transpose2d((16, 64, 28, 28), (64, 32, 4, 4), 2, 1)
    >>> p.algorithm in fastconv.ALGORITHMS
    True
    """
    op = "plan_conv_transpose2d"
    a = transpose_args_from_shapes(op, x_shape, w_shape, stride, padding, output_padding,
                                   groups, dilation, layout, autotune.plan_dtype(op, dtype))
    if a.conv is None or a.n == 0:
        raise ValueError(f"{op}: nothing to plan (empty batch, or no input reaches the "
                         "output)")
    p = autotune.plan_for(a.conv, measure, backward=True)
    runs = autotune.backward_choice(a.conv, "auto", need_x=True)
    if runs != p.algorithm:
        p = dataclasses.replace(p, algorithm=runs, why=f"{runs}: the backward policy's "
                                f"choice for batches of small images; plan: {p.why}")
    return p

