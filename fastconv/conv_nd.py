"""conv1d, conv3d, their backward and conv3d_plan.

conv1d runs as conv2d over a unit height axis: the signal (N, C, W) becomes the image
(N, C, 1, W) and the weight (O, I, k) the filter (O, I, 1, k) as views (no copies; NWC /
WIO likewise become NHWC / HWIO), so every conv2d algorithm and the policy's choice
serve it; besides, its forward has a Winograd algorithm of its own
(``fastconv.algos.winograd.line``). conv3d has algorithms of its own
(``fastconv.algos.conv3d``: "naive", "im2col", "fft", "winograd") on channels-first
arrays; an NDHWC call runs through copies to NCDHW / OIDHW and back. Arguments are
validated under each op's name (``fastconv._args.conv_nd``); float16 is computed in
float32 and rounded once, as conv2d's."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from . import _args, autotune, conv, conv1d_window, devices
from ._args.conv_nd import check_grad_y, conv_nd_args_from_shapes, conv_nd_arrays
from ._channel_sums import channel_sums_first
from ._memory import allocate
from .algos import conv3d as _algos
from .algos import registry
from .algos.winograd import line
from .layout import LAYOUTS

#: the 2-D layout each 1-D layout runs in
AS_2D = {"NCW": "NCHW", "NWC": "NHWC"}


def _unit_height(a):
    """(the 2-D layout, conv2d's (stride, padding, dilation, groups)) of 1-D problem
    ``a`` run over a unit height axis."""
    window = ((1, a.stride[0]), ((0, 0), a.padding[0]), (1, a.dilation[0]), a.groups)
    return LAYOUTS[AS_2D[a.layout]], window


def _as_2d(op, x, w, bias, stride, padding, dilation, groups, layout, algo):
    """Validate a conv1d problem; returns (x4, w4, bias, args, lay2, window) with x4 and
    w4 the 4-D views conv2d runs and ``window`` its (stride, padding, dilation, groups)."""
    registry.check_algo(op, algo)
    x, w, bias, args = conv_nd_arrays(op, x, w, bias, stride, padding, dilation, groups,
                                      layout, rank=1)
    lay2, window = _unit_height(args)
    x4 = np.expand_dims(x, lay2.name.index("H"))
    w4 = np.expand_dims(w, lay2.weight.index("H"))
    if algo == "winograd":
        reason = line.why_not(args)
        if reason is not None:
            raise ValueError(f"{op}: algo='winograd' {reason} (use algo='auto', 'naive', "
                             f"'im2col' or 'fft')")
    elif algo != "auto":
        a2 = _args.conv_args_from_shapes(op, x4.shape, w4.shape, *window, lay2.name,
                                         args.dtype)
        registry.check_supported(op, algo, a2)
    return x4, w4, bias, args, lay2, window


def _by_winograd(op, args, x4_shape, w4_shape, window, lay2, algo) -> bool:
    """Whether conv1d's forward runs the 1-D Winograd (``fastconv.algos.winograd.line``):
    when asked for, or for "auto" where it is worth it and conv2d's choice for the
    unit-height problem is im2col (the FFT keeps the large kernels it wins)."""
    if algo != "auto":
        return algo == "winograd"
    if not line.worth_it(args):
        return False
    a2 = _args.conv_args_from_shapes(op, x4_shape, w4_shape, *window, lay2.name,
                                     args.dtype)
    return autotune.forward_choice(a2, "auto") == "im2col"


def _ncw(x4, w4, lay2):
    """conv1d's (N, C, W) view of x4 in its own layout and its (C_out, C_in, k) weights."""
    if lay2.name == "NCHW":
        return x4[:, :, 0], w4[:, :, 0]
    return x4[:, 0], w4[0].transpose(2, 1, 0)


def _windowed(op, args, x4, w4, window, lay2, algo, backward=False, need_x=False):
    """Whether conv1d (its backward when ``backward``) runs conv3d's windowed unfold
    (``fastconv.conv1d_window``): where conv2d would run im2col on a stride-1 problem."""
    if not conv1d_window.applies(args, "im2col"):
        return False
    a2 = _args.conv_args_from_shapes(op, x4.shape, w4.shape, *window, lay2.name, args.dtype)
    choice = (autotune.backward_choice(a2, algo, need_x) if backward
              else autotune.forward_choice(a2, algo))
    return choice == "im2col"


def conv1d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, *, layout="NCW",
           algo="auto", device="cpu"):
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
    algo : "auto", "naive", "im2col", "fft" (conv2d's, over the unit height axis) or
        "winograd": F(4, 3) over the signal's phase sequences, half of im2col's
        multiplications (``fastconv.algos.winograd.line``; stride 1, dilation 1, one
        group, k >= 3, float32 / float64; its backward runs im2col's). "auto" runs
        "winograd" where that applies, the layer has at least 2^20 multiply-adds per
        image and conv2d's choice for the unit-height problem is im2col; otherwise
        conv2d's choice, which ``fastconv.plan((N, C_in, 1, W), (C_out, C_in/groups,
        1, k), padding=((0, 0), (lo, hi)))`` explains.
    device : "cpu" (default) or "cuda": the GPU conv2d over the unit height axis
        (``fastconv.cuda.conv1d``; algorithms "auto", "naive", "im2col"; float32 and
        float64).

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
    gpu = devices.gpu_op(op, device)
    if gpu is not None:
        return gpu(x, w, bias, stride, padding, dilation, groups, layout=layout, algo=algo)
    x4, w4, bias, args, lay2, window = _as_2d(op, x, w, bias, stride, padding, dilation,
                                              groups, layout, algo)
    y = None
    if _by_winograd(op, args, x4.shape, w4.shape, window, lay2, algo):
        y = line.forward(*_ncw(x4, w4, lay2), bias, args)
    if y is not None:
        return y[0] if args.unbatched else y
    algo = "im2col" if algo == "winograd" else algo  # y None: not finite, see line
    if _windowed(op, args, x4, w4, window, lay2, algo):
        y = conv1d_window.forward(x4[:, :, 0], w4[:, :, 0], bias, args)
    else:
        y = conv.conv2d(x4, w4, bias, *window, layout=lay2.name, algo=algo)
        y = np.squeeze(y, lay2.name.index("H"))
    return y[0] if args.unbatched else y


def conv1d_backward(grad_y, x, w, stride=1, padding=0, dilation=1, groups=1, *,
                    layout="NCW", algo="auto", device="cpu",
                    needs_input_grad=(True, True, True)):
    """Gradients of ``conv1d`` with respect to its input, weight and bias.

    grad_y has conv1d's output shape; the arguments are conv1d's, ``needs_input_grad``
    as in ``fastconv.conv2d_backward``, ``device`` as in :func:`conv1d`. Returns (grad_x,
    grad_w, grad_bias) of the shapes of x, w and (C_out,), None where not wanted. Where
    the forward runs "winograd", so does grad_x (the forward of grad_y with the kernel
    reversed, ``fastconv.algos.winograd.line.input_gradient``; for "auto" when that
    problem is worth it too); grad_w runs im2col's (or "auto"'s) algorithm.

    >>> import numpy as np, fastconv
    >>> x = np.arange(5.0).reshape(1, 1, 5)
    >>> gx, gw, gb = fastconv.conv1d_backward(np.ones((1, 1, 3)), x, np.ones((1, 1, 3)))
    >>> gx, gw, gb
    (array([[[1., 2., 3., 2., 1.]]]), array([[[3., 6., 9.]]]), array([3.]))
    """
    op = "conv1d_backward"
    needs, gpu = devices.gpu_backward(op, device, needs_input_grad)
    if gpu is not None:
        return gpu(grad_y, x, w, stride, padding, dilation, groups, layout=layout, algo=algo)
    x4, w4, _, args, lay2, window = _as_2d(op, x, w, None, stride, padding, dilation,
                                           groups, layout, algo)
    grad_y = check_grad_y(op, grad_y, args)
    _args.check_same_dtype(op, input=x4, weight=w4, grad_y=grad_y)
    gx_w = None
    if needs[0] and _by_winograd(op, args, x4.shape, w4.shape, window, lay2, algo):
        t = line.input_gradient_problem(args)
        if t is not None and (algo == "winograd" or line.worth_it(t)):
            gx_w = line.input_gradient(grad_y, _ncw(x4, w4, lay2)[1], args)
    if gx_w is not None:
        needs = (False, *needs[1:])
    algo = "im2col" if algo == "winograd" else algo  # the weight gradient's algorithm
    if not any(needs):
        gx, gw, gb = None, None, None
    elif _windowed(op, args, x4, w4, window, lay2, algo, backward=True, need_x=needs[0]):
        gx, gw, gb = conv1d_window.backward(grad_y, x4[:, :, 0], w4[:, :, 0], args, needs)
    else:
        gx, gw, gb = conv.conv2d_backward(np.expand_dims(grad_y, lay2.name.index("H")), x4,
                                          w4, *window, layout=lay2.name, algo=algo,
                                          needs_input_grad=needs)
        gx = None if gx is None else np.squeeze(gx, lay2.name.index("H"))
        gw = None if gw is None else np.squeeze(gw, lay2.weight.index("H"))
    gx = gx_w if gx_w is not None else gx
    if gx is not None and args.unbatched:
        gx = gx[0]
    return gx, gw, gb


def conv1d_plan(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1, *,
                layout="NCW", dtype=np.float32, backward=False):
    """How ``conv1d(x, w, ..., algo="auto")`` (or its backward, ``backward=True``) would
    run this problem: conv2d's ``Plan`` for the unit-height problem, or where the 1-D
    Winograd runs (the forward; the backward's grad_x), that plan with the algorithm
    and the sentence saying so. Shapes and arguments as in :func:`conv1d`.

    >>> import fastconv
    >>> fastconv.conv1d_plan((8, 64, 16000), (64, 64, 9), padding=4).algorithm
    'winograd'
    >>> fastconv.conv1d_plan((8, 64, 16000), (64, 64, 9), stride=2).algorithm
    'im2col'
    """
    op = "conv1d_plan"
    a = conv_nd_args_from_shapes(op, x_shape, w_shape, rank=1, stride=stride,
                                 padding=padding, dilation=dilation, groups=groups,
                                 layout=layout, dtype=autotune.plan_dtype(op, dtype))
    lay2, window = _unit_height(a)
    x4 = (a.n, a.c_in, 1, a.size[0]) if lay2.name == "NCHW" else (a.n, 1, a.size[0], a.c_in)
    k, cg = a.kernel[0], a.c_in // a.groups
    w4 = (a.c_out, cg, 1, k) if lay2.name == "NCHW" else (1, k, cg, a.c_out)
    p2 = autotune.plan(x4, w4, *window, layout=lay2.name, dtype=a.dtype, backward=backward)
    if not _by_winograd(op, a, x4, w4, window, lay2, "auto"):
        return p2
    rule = (f"F(4, 3) over the signal's phase sequences, {3 * line.phases(a) / 2:g} "
            f"multiplications per output and channel pair against im2col's {k}; run where "
            "conv2d's plan for the unit-height problem is im2col and the layer has at "
            "least 2^20 multiply-adds per image")
    if not backward:
        return replace(p2, algorithm="winograd", why=f"winograd: {rule}. {p2.why}")
    t = line.input_gradient_problem(a)
    if t is None or not line.worth_it(t):
        return p2
    return replace(p2, why=f"grad_x by winograd ({rule}); the rest: {p2.why}")


# ------------------------------------------------------------------------ conv3d
OP = "conv3d"


def _check_algo(op: str, algo) -> str:
    if algo != "auto" and algo not in _algos.ALGORITHMS:
        raise ValueError(f"{op}: algo={algo!r} is not known; acceptable algorithms are "
                         f"'auto', {', '.join(repr(a) for a in _algos.ALGORITHMS)}")
    return algo


def _check_supported(op: str, algo, a) -> None:
    """A ValueError naming the op, the algorithm and its rule where ``algo`` cannot run
    problem ``a``."""
    why = None if algo == "auto" else _algos.why_not(algo, a)
    if why is not None:
        raise ValueError(f"{op}: algo={algo!r} {why}")


def _canonical(a, *arrays):
    """Contiguous channels-first copies (or the arrays themselves) of x-like arrays."""
    dims = a.dims
    return tuple(None if t is None else np.ascontiguousarray(dims.to_canonical_view(t))
                 for t in arrays)


def _pick(a, algo, arrays, backward=False) -> str:
    """The algorithm to run: ``algo``, or for "auto" the cost model's choice, except that
    the FFT (which spreads one NaN or Inf over whole volumes) gives way to im2col when an
    array is not all finite, so the result has the formula's pattern of NaN and Inf."""
    if algo != "auto":
        return algo
    choice = _algos.plan_for(a, backward).algorithm
    if choice == "fft" and not all(np.isfinite(t).all() for t in arrays):
        return "im2col"
    return choice


def _forward3d(entry, xc, wc, a, out, bias) -> None:
    """``entry``'s forward into ``out`` plus ``bias`` (by the algorithm where it adds it
    itself); where Winograd reports a non-finite output, im2col's result instead (the
    formula's NaN and Inf)."""
    if entry.adds_bias:
        if entry.forward(xc, wc, a, out, bias) is not False:
            return
        entry = _algos.ALGORITHMS["im2col"]
    entry.forward(xc, wc, a, out)
    if bias is not None:
        out += bias.reshape(-1, 1, 1, 1)


def conv3d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, *, layout="NCDHW",
           algo="auto", device="cpu"):
    """3-D cross-correlation, as torch.nn.functional.conv3d.

    Parameters
    ----------
    x : ndarray (N, C_in, D, H, W) for layout "NCDHW" or (N, D, H, W, C_in) for "NDHWC";
        4-D (unbatched) input gives 4-D output, as torch.
    w : ndarray (C_out, C_in/groups, kd, kh, kw) "OIDHW" for NCDHW, (kd, kh, kw,
        C_in/groups, C_out) "DHWIO" for NDHWC.
    bias : ndarray (C_out,) or None.
    stride, dilation : int or (d, h, w).
    padding : int, (d, h, w), ((lo, hi), (lo, hi), (lo, hi)), "valid" or "same"
        (stride 1).
    groups : int dividing C_in and C_out.
    layout : "NCDHW" (default) or "NDHWC".
    algo : "auto" (the cheapest by the cost model, see :func:`conv3d_plan`; the FFT
        only on finite arrays, im2col otherwise), "naive" (direct loops), "im2col" (3-D
        unfold + GEMM, image by image in chunks of output positions: memory
        bounded whatever the batch), "fft" (pays off for large kernels; one NaN or Inf
        spreads over whole volumes) or "winograd" (kernels (kd, 3, 3) at stride and
        dilation 1: F(4x4, 3x3) over the (h, w) planes, 4x fewer multiplications for
        3x3x3; where an output is not finite the call is recomputed by im2col, so NaN
        and Inf follow the formula).
    device : "cpu" (default) or "cuda": run on the GPU (``fastconv.cuda.conv3d``: a
        direct kernel, "naive", or a 3-D unfold and the blocked GEMM, "im2col"; "auto"
        follows the GPU conv2d's thin-GEMM rule; float32 and float64).

    Returns
    -------
    y : ndarray (N, C_out, D_out, H_out, W_out) or (N, D_out, H_out, W_out, C_out),
        dtype of x, D_out = floor((D + lo + hi - dilation*(kd-1) - 1) / stride) + 1
        (likewise H_out, W_out).

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.ones((1, 1, 3, 3, 3))
    >>> fastconv.conv3d(x, np.ones((1, 1, 2, 2, 2)))[0, 0, 0]
    array([[8., 8.],
           [8., 8.]])
    >>> fastconv.conv3d(np.ones((4, 5, 6, 2)), np.ones((3, 3, 3, 2, 7)), padding=1,
    ...                 layout="NDHWC").shape
    (4, 5, 6, 7)
    """
    gpu = devices.gpu_op(OP, device)
    if gpu is not None:
        return gpu(x, w, bias, stride, padding, dilation, groups, layout=layout, algo=algo)
    _check_algo(OP, algo)
    x, w, bias, a = conv_nd_arrays(OP, x, w, bias, stride, padding, dilation, groups,
                                   layout, rank=3)
    _check_supported(OP, algo, a)
    half, (x, w, bias) = _args.widen(x, w, bias)
    if half:
        a = replace(a, dtype=np.dtype(np.float32))
    out = allocate(OP, "output", a.y_shape, a.dtype)
    if a.n > 0:
        xc, = _canonical(a, x)
        wc = np.ascontiguousarray(a.dims.weight_to_canonical_view(w))
        _forward3d(_algos.ALGORITHMS[_pick(a, algo, (xc, wc))], xc, wc, a, out, bias)
    y = a.dims.from_canonical_view(out)
    if a.unbatched:
        y = y[0]
    y = np.ascontiguousarray(y)
    return _args.narrow(y) if half else y


def conv3d_backward(grad_y, x, w, stride=1, padding=0, dilation=1, groups=1, *,
                    layout="NCDHW", algo="auto", device="cpu",
                    needs_input_grad=(True, True, True)):
    """Gradients of ``conv3d`` with respect to its input, weight and bias.

    grad_y has conv3d's output shape and layout; the other arguments are conv3d's;
    ``needs_input_grad`` (three bools, default all True) says which of (grad_x, grad_w,
    grad_bias) to compute, the others are None. Returns arrays of the shapes (and
    layouts) of x, w and (C_out,), in x's dtype. "auto" picks by the backward's cost
    model (``conv3d_plan(..., backward=True)``). ``device`` as in :func:`conv3d`.

    >>> import numpy as np, fastconv
    >>> gx, gw, gb = fastconv.conv3d_backward(np.ones((1, 1, 2, 2, 2)),
    ...                                       np.ones((1, 1, 3, 3, 3)),
    ...                                       np.ones((1, 1, 2, 2, 2)))
    >>> gx[0, 0, 0]
    array([[1., 2., 1.],
           [2., 4., 2.],
           [1., 2., 1.]])
    >>> gw[0, 0, 0], gb
    (array([[8., 8.],
           [8., 8.]]), array([8.]))
    """
    op = "conv3d_backward"
    needs, gpu = devices.gpu_backward(op, device, needs_input_grad)
    if gpu is not None:
        return gpu(grad_y, x, w, stride, padding, dilation, groups, layout=layout, algo=algo)
    need_x, need_w, need_b = needs
    _check_algo(op, algo)
    x, w, _, a = conv_nd_arrays(op, x, w, None, stride, padding, dilation, groups, layout,
                                rank=3)
    _check_supported(op, algo, a)
    grad_y = check_grad_y(op, grad_y, a)
    _args.check_same_dtype(op, input=x, weight=w, grad_y=grad_y)
    half, (grad_y, x, w) = _args.widen(grad_y, x, w)
    if half:
        a = replace(a, dtype=np.dtype(np.float32))
    gyc, xc = _canonical(a, grad_y, x)
    gx = allocate(op, "input gradient", a.x_shape, a.dtype) if need_x else None
    gw = allocate(op, "weight gradient", a.w_shape, a.dtype) if need_w else None
    if a.n > 0 and (need_x or need_w):
        wc = np.ascontiguousarray(a.dims.weight_to_canonical_view(w))
        chosen = _pick(a, algo, (gyc, xc, wc), backward=True)
        _algos.ALGORITHMS[chosen].backward(gyc, xc, wc, a, gx, gw)
    elif need_w:
        gw[...] = 0
    gb = channel_sums_first(gyc).astype(a.dtype) if need_b else None
    if gx is not None:
        gx = np.ascontiguousarray(a.dims.from_canonical_view(gx))
        gx = gx[0] if a.unbatched else gx
    if gw is not None:
        gw = np.ascontiguousarray(a.dims.weight_from_canonical_view(gw))
    return _args.narrow((gx, gw, gb)) if half else (gx, gw, gb)


def conv3d_plan(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1, *,
                layout="NCDHW", dtype=np.float32, backward=False):
    """How ``conv3d(x, w, ..., algo="auto")`` (or its backward, ``backward=True``) would
    run this problem: a ``Plan3d`` with the algorithm, the modelled seconds of each and a
    sentence saying why. Shapes and arguments as in :func:`conv3d`.

    >>> import fastconv
    >>> p = fastconv.conv3d_plan((1, 1, 64, 64, 64), (1, 1, 15, 15, 15), padding=7)
    >>> p.algorithm, sorted(p.estimates)
    ('fft', ['fft', 'im2col', 'naive'])
    """
    a = conv_nd_args_from_shapes("conv3d_plan", x_shape, w_shape, rank=3, stride=stride,
                                 padding=padding, dilation=dilation, groups=groups,
                                 layout=layout, dtype=dtype)
    return _algos.plan_for(a, backward)
