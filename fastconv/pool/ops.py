"""The public pooling ops: validate (``fastconv._args``), dispatch to the GPU or run the
caller's layout's kernels (``_layouts.KERNELS``) on the arrays as they are.

Every op takes array-likes where it takes arrays (``fastconv._args.check_array``:
ndarray subclasses and ``__array__``, buffer or ``__dlpack__`` objects without a copy;
nested lists and non-native byte order copied) and returns plain ndarrays. float16 is
computed in float32 and the results rounded once to float16 (max pooling: exactly the
float16 maxima; indices stay int64)."""

from __future__ import annotations

import numpy as np

from .. import devices
from .._args import (
    as_ndarray,
    avg_pool_args,
    check_array,
    check_flag,
    check_grad_y,
    check_indices_range,
    check_input_shape,
    check_layout,
    global_pool_args,
    max_unpool_inputs,
    narrow,
    plain_float,
    plane_axis,
    pool_args,
    warn_channels_last,
    widen,
)
from .._memory import allocate
from .._runtime import parallel_guard
from . import _max_kernels as M
from ._layouts import KERNELS


def _batched(a: np.ndarray, unbatched: bool) -> np.ndarray:
    """A 4-D C-contiguous view (or copy) of an array: a batch axis of 1 added when the
    caller's arrays are 3-D."""
    return np.ascontiguousarray(a[None] if unbatched else a)


def _as_given(s, *arrays, half=False):
    """The results as the caller gave the input: the batch axis dropped when unbatched,
    float32 rounded to float16 for a float16 call (``half``); one array, or a tuple."""
    out = tuple(a[0] if s.unbatched else a for a in arrays)
    out = narrow(out) if half else out
    return out[0] if len(out) == 1 else out


def _on_plane(op, pool, x, layout, *args, **kwargs):
    """``pool`` (max_pool2d or avg_pool2d) of a 2-D (H, W) image: run as one channel in
    ``layout``, the channel axis dropped from the results (2-D out)."""
    axis = plane_axis(check_layout(op, layout))
    out = pool(np.expand_dims(x, axis), *args, layout=layout, **kwargs)
    if isinstance(out, tuple):
        return tuple(np.squeeze(a, axis) for a in out)
    return np.squeeze(out, axis)


def _plane_backward(op, backward, input_shape, layout, arrays, *args, **kwargs):
    """``backward`` (a pooling gradient) for a 2-D (H, W) input: ``arrays`` (grad_y, and
    max pooling's indices) and ``input_shape`` given one channel in ``layout``; the
    gradient comes back 2-D."""
    axis = plane_axis(check_layout(op, layout))
    shape = list(input_shape)
    shape.insert(0 if axis == 0 else 2, 1)
    arrays = [(name, as_ndarray(op, name, a)) for name, a in arrays]
    for name, a in arrays:
        if a.ndim != 2:
            raise ValueError(f"{op}: {name} is {a.ndim}-D but input_shape "
                             f"{tuple(input_shape)} is 2-D (one gray image)")
    arrays = [np.expand_dims(a, axis) for _, a in arrays]
    gx = backward(*arrays, tuple(shape), *args, layout=layout, **kwargs)
    return np.squeeze(gx, axis)


def _run(kernel, size: int, *args):
    """Run a layout's kernel under the parallel guard, unless its output is empty; its
    result (None when it did not run)."""
    if size:
        with parallel_guard():
            return kernel(*args)
    return None


# ------------------------------------------------------------------------------ max pool
def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *,
               layout="NCHW", return_indices=False, device="cpu"):
    """2-D max pooling, as torch.nn.functional.max_pool2d.

    Parameters
    ----------
    x : ndarray (N, C, H, W) for "NCHW" or (N, H, W, C) for "NHWC"; 3-D is unbatched
        ((C, H, W), or (H, W, C) with layout="NHWC": a photo as image libraries hold
        it); 2-D is one gray image (H, W) and gives 2-D output. An NCHW input that looks
        channels-last, e.g. (480, 640, 3), is pooled as given (480 channels) with a
        UserWarning that suggests layout="NHWC".
    kernel_size, dilation : int or (h, w), positive.
    stride : int or (h, w); None (default) means kernel_size.
    padding : int or (h, w), at most half the kernel size; padding is never the maximum.
    ceil_mode : round the output size up (the last window starting inside the input or
        the left padding).
    return_indices : also return the position of each maximum.
    device : "cpu" (default) or "cuda": the same op on the GPU (``fastconv.cuda``).

    Returns
    -------
    y : ndarray (N, C, H_out, W_out) / (N, H_out, W_out, C), dtype of x, with
        H_out = floor((H + 2 p_h - d_h (k_h - 1) - 1) / s_h) + 1 (ceil with ceil_mode).
    indices : int64 ndarray, shape of y: flat index h*W + w of the maximum in the plane of
        (n, c). The first maximum in row-major window order wins ties; a NaN is the
        maximum (the last NaN wins, as in torch). A window wholly in the padding (possible
        only with dilation) gives -inf and index -1.

    Notes
    -----
    Runs ``_max_kernels._max_pool_planes`` (NCHW) / ``_max_pool_nhwc``; 2x2 windows with
    stride 2 and no padding (NCHW) run ``_max_pool_2x2_planes``, which skips the indices
    when they are not returned.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.arange(9.0).reshape(1, 1, 3, 3)
    >>> fastconv.max_pool2d(x, 2, stride=1)[0, 0]
    array([[4., 5.],
           [7., 8.]])
    >>> photo = np.zeros((480, 640, 3), np.float32)      # (H, W, RGB)
    >>> fastconv.max_pool2d(photo, 2, layout="NHWC").shape
    (240, 320, 3)
    >>> fastconv.max_pool2d(photo[..., 0], 2).shape     # one gray (H, W) image
    (240, 320)
    """
    op = "max_pool2d"
    gpu = devices.gpu_op(op, device)
    if gpu is not None:
        return gpu(x, kernel_size, stride, padding, dilation, ceil_mode, layout=layout,
                   return_indices=return_indices)
    x = check_array(op, "input", x, half=True)
    if x.ndim == 2:
        return _on_plane(op, max_pool2d, x, layout, kernel_size, stride, padding, dilation,
                         ceil_mode, return_indices=return_indices)
    half, (x,) = widen(x)
    a = pool_args(op, x.shape, kernel_size, stride, padding, dilation, ceil_mode, layout)
    warn_channels_last(op, x.shape, layout)
    with_idx = check_flag(op, "return_indices", return_indices)
    kernels = KERNELS[a.layout]
    y = allocate(op, "output", a.y_shape4, x.dtype)
    scans = with_idx or kernels.max_pool_scans_indices(a)
    idx = allocate(op, "indices", y.shape if scans else (0,), np.int64)
    _run(kernels.max_pool, y.size, a, _batched(x, a.unbatched), y, idx, with_idx)
    return _as_given(a, y, idx, half=half) if with_idx else _as_given(a, y, half=half)


def max_pool2d_backward(grad_y, indices, input_shape, *, layout="NCHW", device="cpu",
                        mask=None):
    """Gradient of ``max_pool2d``: grad_y[n, c, i, j] is added at indices[n, c, i, j].

    Parameters
    ----------
    grad_y : ndarray, shape of max_pool2d's output (caller's layout).
    indices : int64 ndarray, shape of grad_y, from ``max_pool2d(..., return_indices=True)``
        (-1 marks a window without input elements; it passes no gradient).
    input_shape : shape of max_pool2d's input (same layout, 3-D when unbatched, 2-D for
        one gray image, with 2-D grad_y and indices).
    device : "cpu" (default) or "cuda": the same op on the GPU (``fastconv.cuda``).
    mask : None (default), or an array of grad_y's shape and dtype (CPU): grad_y passes
        only where it is positive. With the output of relu(max_pool2d(x)), the gradient
        of that fused pair in the same pass.

    Returns
    -------
    grad_x : ndarray of input_shape, dtype of grad_y. Runs
    ``_max_kernels._max_unpool_planes`` / ``_max_unpool_nhwc`` (one task per plane or per
    (image, channel block): no races when windows overlap).
    """
    op = "max_pool2d_backward"
    gpu = devices.gpu_op(op, device)
    if gpu is not None:
        if mask is not None:
            raise ValueError(f"{op}: mask is not supported on device='cuda'")
        return gpu(grad_y, indices, input_shape, layout=layout)
    if len(check_input_shape(op, input_shape)) == 2:
        arrays = (("grad_y", grad_y), ("indices", indices))
        if mask is None:
            return _plane_backward(op, max_pool2d_backward, input_shape, layout, arrays)
        return _plane_backward(op, _with_mask, input_shape, layout,
                               arrays + (("mask", mask),))
    s, grad_y, indices = max_unpool_inputs(op, grad_y, indices, input_shape, layout, True,
                                           check_range=False)
    if mask is not None:
        mask = _unpool_mask(op, mask, grad_y)
    half, (grad_y, mask) = widen(grad_y, mask)
    gx = allocate(op, "gradient", s.x_shape4, grad_y.dtype)
    if not grad_y.size:
        gx[...] = 0      # the kernels zero gx themselves; with no output, nothing runs
    if _run(KERNELS[s.layout].max_unpool, grad_y.size, s, _batched(grad_y, s.unbatched),
            _batched(indices, s.unbatched), gx,
            None if mask is None else _batched(mask, s.unbatched)):  # bad indices, counted
        check_indices_range(op, indices, s.h * s.w)
    return _as_given(s, gx, half=half)


def max_pool2d_codes(x, window, layout, relu: bool):
    """The autograd op's max pooling where the layer is the common one (2x2 windows,
    stride 2, no padding, dilation or partial windows: ``_max_kernels.is_2x2_stride_2``)
    and x a 4-D float32/float64 host array: (y, codes), y as ``max_pool2d`` gives it
    (relu'd with ``relu``, NaN kept) and codes (y's shape, int32) each window's winning
    tap 2a + b, half the bytes of int64 indices and no pass to make them; None for any
    other call. ``window``: max_pool2d's (kernel_size, stride, padding, dilation,
    ceil_mode), validated as there.

    >>> import numpy as np
    >>> x = np.array([[[[1.0, 5.0], [-2.0, 5.0]]]])          # NCHW (1, 1, 2, 2)
    >>> y, codes = max_pool2d_codes(x, (2, None, 0, 1, False), "NCHW", relu=False)
    >>> float(y[0, 0, 0, 0]), int(codes[0, 0, 0, 0])        # the first 5 wins
    (5.0, 1)
    """
    if not (plain_float(x) and x.ndim == 4):
        return None
    op = "max_pool2d"
    a = pool_args(op, x.shape, *window, layout)
    if not M.is_2x2_stride_2(a):
        return None
    warn_channels_last(op, x.shape, layout)
    y = allocate(op, "output", a.y_shape4, x.dtype)
    codes = allocate(op, "window codes", a.y_shape4, np.int32)
    _run(KERNELS[a.layout].max_pool_codes, y.size, a, np.ascontiguousarray(x), y, codes,
         bool(relu))
    return y, codes


def max_pool2d_codes_backward(grad_y, codes, input_shape, layout, mask=None):
    """The gradient of ``max_pool2d_codes``: grad_x (input_shape, grad_y's dtype) =
    grad_y at each window's winning tap and 0 elsewhere, grad_y passing only where
    ``mask`` (None, or the relu'd output) is positive."""
    op = "max_pool2d_backward"
    a = pool_args(op, tuple(input_shape), 2, 2, 0, 1, False, layout)
    if codes.shape != a.y_shape4 or codes.dtype != np.int32 or grad_y.shape != codes.shape:
        raise ValueError(f"{op}: grad_y {grad_y.shape} and codes {codes.shape} "
                         f"{codes.dtype} must both have the output's shape {a.y_shape4} "
                         "(codes int32, from max_pool2d_codes)")
    gy = np.ascontiguousarray(grad_y)
    if mask is not None:
        mask = np.ascontiguousarray(_unpool_mask(op, mask, gy))
    gx = allocate(op, "gradient", a.x_shape4, gy.dtype)
    if not gy.size:
        gx[...] = 0
    _run(KERNELS[a.layout].max_unpool_codes, gy.size, a, gy, codes, gx, mask)
    return gx


def _with_mask(grad_y, indices, mask, input_shape, **kwargs):
    """``max_pool2d_backward`` with the mask positional (``_plane_backward``'s arrays)."""
    return max_pool2d_backward(grad_y, indices, input_shape, mask=mask, **kwargs)


def _unpool_mask(op, mask, grad_y):
    """``mask`` checked against grad_y: an array of its shape and dtype."""
    mask = check_array(op, "mask", mask, half=True)
    if mask.shape != grad_y.shape or mask.dtype != grad_y.dtype:
        raise ValueError(f"{op}: mask must have grad_y's shape {grad_y.shape} and dtype "
                         f"{grad_y.dtype}, got {mask.shape} {mask.dtype}")
    return mask


# ------------------------------------------------------------------------------ avg pool
def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, *, layout="NCHW", device="cpu"):
    """2-D average pooling, as torch.nn.functional.avg_pool2d (no divisor_override).

    Parameters
    ----------
    x : ndarray (N, C, H, W) for "NCHW" or (N, H, W, C) for "NHWC"; 3-D is unbatched,
        2-D one gray image (H, W), as in ``max_pool2d`` (and the same warning).
    kernel_size : int or (h, w); stride : int, (h, w) or None (= kernel_size).
    padding : int or (h, w), at most half the kernel size (zeros).
    ceil_mode : round the output size up (see ``max_pool2d``).
    count_include_pad : divide by the window size including padding (clipped at the end
        of the right padding, which matters in ceil_mode) rather than by the number of
        input elements in the window.
    device : "cpu" (default) or "cuda": the same op on the GPU (``fastconv.cuda``).

    Returns
    -------
    y : ndarray (N, C, H_out, W_out) / (N, H_out, W_out, C), dtype of x,
        H_out = floor((H + 2 p_h - k_h) / s_h) + 1 (ceil with ceil_mode). Sums are
        accumulated in float64. Runs ``_avg_kernels._avg_pool_planes`` /
        ``_avg_pool_nhwc``.
    """
    op = "avg_pool2d"
    gpu = devices.gpu_op(op, device)
    if gpu is not None:
        return gpu(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                   layout=layout)
    x = check_array(op, "input", x, half=True)
    if x.ndim == 2:
        return _on_plane(op, avg_pool2d, x, layout, kernel_size, stride, padding, ceil_mode,
                         count_include_pad)
    half, (x,) = widen(x)
    a = avg_pool_args(op, x.shape, kernel_size, stride, padding, ceil_mode,
                      count_include_pad, layout)
    warn_channels_last(op, x.shape, layout)
    y = allocate(op, "output", a.y_shape4, x.dtype)
    _run(KERNELS[a.layout].avg_pool, y.size, a, _batched(x, a.unbatched), y)
    return _as_given(a, y, half=half)


def avg_pool2d_backward(grad_y, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, *, layout="NCHW",
                        device="cpu"):
    """Gradient of ``avg_pool2d`` (same arguments): each grad_y value, divided by its
    window's divisor, is added to every input element of its window.

    Returns grad_x of ``input_shape`` (caller's layout), dtype of grad_y. Runs
    ``_avg_kernels._avg_unpool_planes`` / ``_avg_unpool_nhwc``: each task owns a block of
    input rows and gathers from the windows covering them (no races when windows overlap).
    device="cuda" runs the same op on the GPU (``fastconv.cuda``).
    """
    op = "avg_pool2d_backward"
    gpu = devices.gpu_op(op, device)
    if gpu is not None:
        return gpu(grad_y, input_shape, kernel_size, stride, padding, ceil_mode,
                   count_include_pad, layout=layout)
    shape = check_input_shape(op, input_shape)
    if len(shape) == 2:
        return _plane_backward(op, avg_pool2d_backward, shape, layout, (("grad_y", grad_y),),
                               kernel_size, stride, padding, ceil_mode, count_include_pad)
    a = avg_pool_args(op, shape, kernel_size, stride, padding, ceil_mode, count_include_pad,
                      layout)
    half, (grad_y,) = widen(check_grad_y(op, grad_y, a.y_shape, half=True))
    gx = allocate(op, "gradient", a.x_shape4, grad_y.dtype)
    # (the output is at least 1x1, so grad_y is empty only when gx is)
    _run(KERNELS[a.layout].avg_unpool, gx.size, a, _batched(grad_y, a.unbatched), gx)
    return _as_given(a, gx, half=half)


# ----------------------------------------------------------------------- global average
def global_avg_pool2d(x, *, layout="NCHW", device="cpu"):
    """Mean over H and W: (N, C, H, W) -> (N, C, 1, 1), or (N, H, W, C) -> (N, 1, 1, C)
    (3-D in, 3-D out). Float64 sums. Runs ``_avg_kernels._mean_planes`` /
    ``_mean_pixels_nhwc``. device="cuda" runs the same op on the GPU (``fastconv.cuda``)."""
    op = "global_avg_pool2d"
    gpu = devices.gpu_op(op, device)
    if gpu is not None:
        return gpu(x, layout=layout)
    half, (x,) = widen(check_array(op, "input", x, half=True))
    s = global_pool_args(op, x.shape, layout)
    y = np.empty((s.n, s.c), x.dtype)
    _run(KERNELS[s.layout].mean, y.size, s, _batched(x, s.unbatched), y)
    return narrow(y.reshape(s.y_shape)) if half else y.reshape(s.y_shape)


def global_avg_pool2d_backward(grad_y, input_shape, *, layout="NCHW", device="cpu"):
    """Gradient of ``global_avg_pool2d``: grad_y / (H*W) broadcast over each plane.

    grad_y : (N, C, 1, 1) / (N, 1, 1, C) (3-D when unbatched); returns grad_x of
    ``input_shape``, dtype of grad_y. device="cuda": on the GPU (``fastconv.cuda``)."""
    op = "global_avg_pool2d_backward"
    gpu = devices.gpu_op(op, device)
    if gpu is not None:
        return gpu(grad_y, input_shape, layout=layout)
    shape = check_input_shape(op, input_shape)
    s = global_pool_args(op, shape, layout, what=f"input_shape {shape}")
    half, (grad_y,) = widen(check_grad_y(op, grad_y, s.y_shape, half=True))
    gx = allocate(op, "gradient", shape, grad_y.dtype)
    gx[...] = grad_y / grad_y.dtype.type(s.h * s.w)
    return narrow(gx) if half else gx
