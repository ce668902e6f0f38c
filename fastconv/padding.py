"""Padding: :func:`pad` (torch.nn.functional.pad's rules) and its adjoint
:func:`pad_backward`.

Each padded axis is a map from output index j to a source index along that axis
(:func:`axis_map`): ``j - low`` inside the input, and at the borders the fill
("constant": no source), the mirror without repeating the edge ("reflect"), the edge
("replicate") or the wrap ("circular", which crops first, then wraps the cropped
axis). Both directions copy the contiguous middle run as one slice and then the few
border rows one at a time; the backward adds each border row's gradient onto the row it
was copied from (scatter-add), so it is exactly the adjoint of the forward.
"""

from __future__ import annotations

import numpy as np

from ._args import as_ndarray
from ._args.padfold import PadArgs, pad_args

__all__ = ["pad", "pad_backward", "pad_axes", "pad_axes_backward", "axis_map"]


def axis_map(n: int, lo: int, hi: int, mode: str) -> tuple[np.ndarray, int, int]:
    """(src, a, b) for one axis of size ``n`` padded by (lo, hi): ``src[j]`` is the input
    index output j copies (-1: the fill of "constant"), and [a, b) is the run where
    ``src[j] = j - lo`` (the input's own rows, contiguous).

    >>> axis_map(4, 2, 1, "reflect")[0]
    array([2, 1, 0, 1, 2, 3, 2])
    >>> axis_map(4, -1, 2, "circular")[0]
    array([1, 2, 3, 1, 2])
    """
    j = np.arange(n + lo + hi)
    s = j - lo
    if mode == "constant":
        src = np.where((s >= 0) & (s < n), s, -1)
    elif mode == "reflect":
        src = np.abs(s)
        src = np.where(src > n - 1, 2 * (n - 1) - src, src)
    elif mode == "replicate":
        src = np.clip(s, 0, n - 1)
    else:  # circular: crop, then wrap the cropped run [c0, c1)
        c0 = max(-lo, 0)
        m = n - c0 - max(-hi, 0)
        src = (j - max(lo, 0)) % max(m, 1) + c0
    a = min(max(lo, 0), j.size)
    b = max(a, min(n + lo, j.size))
    return src, a, b


def _axis_views(arr: np.ndarray, axis: int):
    """``arr`` with ``axis`` moved first (a view)."""
    return np.moveaxis(arr, axis, 0)


def _middle(args: PadArgs) -> tuple[tuple, tuple]:
    """(dst, src): the slices of the output and of the input that hold the input's own
    (uncropped) elements."""
    dst, src = [slice(None)] * len(args.in_shape), [slice(None)] * len(args.in_shape)
    for axis, lo, hi in args.axes:
        n = args.in_shape[axis]
        src[axis] = slice(max(-lo, 0), n - max(-hi, 0))
        dst[axis] = slice(max(lo, 0), max(lo, 0) + n + min(lo, 0) + min(hi, 0))
    return tuple(dst), tuple(src)


def pad_axes(x: np.ndarray, args: PadArgs) -> np.ndarray:
    """Apply the pad ``args`` (a :class:`~fastconv._args.padfold.PadArgs`) to ``x``.

    "constant", and any mode without crops, write the input once into the middle of the
    output; the borders of the other modes are then copied from the output itself, one
    axis after the other (a later axis copies whole rows, corners included). With crops,
    a border may come from a cropped row, so each axis is padded from the previous
    result."""
    if args.mode == "constant" or _no_crop(args):
        fill = args.mode == "constant"
        out = (np.full(args.out_shape, np.asarray(args.value).astype(x.dtype), x.dtype)
               if fill else np.empty(args.out_shape, x.dtype))
        dst, src = _middle(args)
        out[dst] = x[src]
        for axis, lo, hi in ([] if fill else args.axes):
            idx, a, b = axis_map(x.shape[axis], lo, hi, args.mode)
            o = _axis_views(out, axis)
            for j in [*range(a), *range(b, idx.size)]:
                o[j] = o[idx[j] + lo]
        return out
    for axis, lo, hi in args.axes:
        idx, a, b = axis_map(x.shape[axis], lo, hi, args.mode)
        shape = list(x.shape)
        shape[axis] = idx.size
        out = np.empty(shape, x.dtype)
        o, i = _axis_views(out, axis), _axis_views(x, axis)
        o[a:b] = i[a - lo:b - lo]
        for j in [*range(a), *range(b, idx.size)]:
            o[j] = i[idx[j]]
        x = out
    return x


def _no_crop(args: PadArgs) -> bool:
    return all(lo >= 0 and hi >= 0 for _, lo, hi in args.axes)


def pad_axes_backward(grad_y: np.ndarray, args: PadArgs) -> np.ndarray:
    """The adjoint of :func:`pad_axes`: the gradient of the input of shape
    ``args.in_shape``. Without crops, each axis's border gradients are added onto the
    rows they were copied from, in the reverse order of the forward, then the middle is
    cut out; with crops, each axis is folded back from the previous result."""
    dst, src = _middle(args)
    if args.mode == "constant":
        out = np.zeros(args.in_shape, grad_y.dtype)
        out[src] = grad_y[dst]
        return out
    if _no_crop(args):
        work = grad_y.copy()
        for axis, lo, hi in reversed(args.axes):
            idx, a, b = axis_map(args.in_shape[axis], lo, hi, args.mode)
            o = _axis_views(work, axis)
            for j in [*range(a), *range(b, idx.size)]:
                o[idx[j] + lo] += o[j]
        return np.ascontiguousarray(work[dst])
    g = grad_y
    for axis, lo, hi in reversed(args.axes):
        n = args.in_shape[axis]
        idx, a, b = axis_map(n, lo, hi, args.mode)
        shape = list(g.shape)
        shape[axis] = n
        out = np.zeros(shape, g.dtype)
        o, i = _axis_views(out, axis), _axis_views(g, axis)
        o[a - lo:b - lo] = i[a:b]
        for j in [*range(a), *range(b, idx.size)]:
            o[idx[j]] += i[j]
        g = out
    return g


def pad(input, pad, mode: str = "constant", value=None) -> np.ndarray:
    """Pad (or crop) the trailing axes of ``input``, as torch.nn.functional.pad.

    Parameters
    ----------
    input : ndarray of any shape (any numeric dtype).
    pad : flat tuple of (low, high) pairs starting from the LAST axis: (1, 1, 2, 2) pads
        the last axis by 1 and 1 and the one before by 2 and 2. Negative values crop.
    mode : "constant" (fill with ``value``; any number of trailing axes), "reflect"
        (mirror without repeating the edge; each pad < the axis size), "replicate"
        (repeat the edge) or "circular" (wrap; crops first, then each pad <= the cropped
        size). The last three pad the last 1, 2 or 3 axes of a 2-D/3-D, 3-D/4-D or
        4-D/5-D input, as torch.
    value : the fill of "constant" (None: 0), cast to the input's dtype. Other modes
        take none (or 0).

    Returns
    -------
    ndarray of the input's dtype; each padded axis has size ``size + low + high``.

    >>> x = np.arange(3.0).reshape(1, 3)
    >>> pad(x, (2, 1), mode="reflect")
    array([[2., 1., 0., 1., 2., 1.]])
    >>> pad(x, (1, -1), value=9.0)
    array([[9., 0., 1.]])
    """
    x = as_ndarray("pad", "input", input)
    return pad_axes(x, pad_args("pad", x.shape, pad, mode, value))


def pad_backward(grad_y, input_shape, pad, mode: str = "constant") -> np.ndarray:
    """The gradient of :func:`pad`'s input: the adjoint of the pad, so that
    ``sum(pad(x) * g) == sum(x * pad_backward(g, x.shape, ...))``.

    "constant" crops ``grad_y`` back (cropped input elements get 0); the other modes also
    add each border element's gradient onto the input element it was copied from.

    Parameters
    ----------
    grad_y : gradient of pad's output, of its shape.
    input_shape : shape of pad's input. ``pad`` and ``mode`` as given to :func:`pad`.

    >>> pad_backward(np.ones((1, 6)), (1, 3), (2, 1), mode="reflect")
    array([[1., 3., 2.]])
    """
    g = as_ndarray("pad_backward", "grad_y", grad_y)
    args = pad_args("pad_backward", input_shape, pad, mode)
    if g.shape != args.out_shape:
        raise ValueError(f"pad_backward: grad_y must have pad's output shape "
                         f"{args.out_shape} (input_shape {args.in_shape}, pad "
                         f"{tuple(pad)}), got {g.shape}")
    return pad_axes_backward(g, args)

