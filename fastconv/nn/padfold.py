"""Differentiable pad, unfold and fold, their layers (torch.nn's names), and the
padding-mode helper of the convolution layers (:func:`padded_input`).

``pad``'s gradient is :func:`fastconv.pad_backward` (the adjoint of the pad);
``unfold``'s gradient is ``fold`` and ``fold``'s is ``unfold``.
"""

from __future__ import annotations

import numpy as np  # noqa: F401  (the examples use it)

from .._args import pair, same_padding
from .._args.checks import _is_int
from .._args.padfold import PadArgs, axis_pad_args, pad_args
from ..autograd import Function, Tensor
from ..fold import fold as _fold
from ..fold import unfold as _unfold
from ..padding import pad_axes, pad_axes_backward
from .module import Module

__all__ = ["pad", "unfold", "fold", "padded_input", "PADDING_MODES", "Unfold", "Fold",
           "ZeroPad2d", "ConstantPad2d", "ReflectionPad2d", "ReplicationPad2d"]

#: The ``padding_mode`` values of the convolution layers (torch's).
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


class PadFunction(Function):
    @staticmethod
    def forward(ctx, x, args: PadArgs = None):
        ctx.args = args
        return pad_axes(x, args)

    @staticmethod
    def backward(ctx, g):
        return pad_axes_backward(g, ctx.args)


def pad(input, pad, mode: str = "constant", value=None) -> Tensor:
    """Pad or crop the trailing axes (see :func:`fastconv.pad` for the rules); the
    gradient is :func:`fastconv.pad_backward`.

    >>> pad(np.ones((1, 2)), (1, 0), value=5.0).numpy()
    array([[5., 1., 1.]])
    """
    x = _tensor(input)
    return PadFunction.apply(x, args=pad_args("pad", x.shape, pad, mode, value))


class UnfoldFunction(Function):
    @staticmethod
    def forward(ctx, x, kernel_size=1, dilation=1, padding=0, stride=1):
        ctx.args = (kernel_size, dilation, padding, stride)
        ctx.size = x.shape[-2:]
        return _unfold(x, *ctx.args)

    @staticmethod
    def backward(ctx, g):
        return _fold(g, ctx.size, *ctx.args)


class FoldFunction(Function):
    @staticmethod
    def forward(ctx, cols, output_size=1, kernel_size=1, dilation=1, padding=0, stride=1):
        ctx.args = (kernel_size, dilation, padding, stride)
        return _fold(cols, output_size, *ctx.args)

    @staticmethod
    def backward(ctx, g):
        return _unfold(g, *ctx.args)


def unfold(input, kernel_size, dilation=1, padding=0, stride=1) -> Tensor:
    """Sliding blocks (N, C, H, W) -> (N, C*kh*kw, L) (see :func:`fastconv.unfold`); the
    gradient is ``fold``.

    >>> unfold(np.ones((1, 1, 3, 3)), 2).shape
    (1, 4, 4)
    """
    return UnfoldFunction.apply(input, kernel_size=kernel_size, dilation=dilation,
                                padding=padding, stride=stride)


def fold(input, output_size, kernel_size, dilation=1, padding=0, stride=1) -> Tensor:
    """Sum blocks back (N, C*kh*kw, L) -> (N, C, H, W) (see :func:`fastconv.fold`); the
    gradient is ``unfold``.

    >>> fold(np.ones((1, 4, 4)), 3, 2).shape
    (1, 1, 3, 3)
    """
    return FoldFunction.apply(input, output_size=output_size, kernel_size=kernel_size,
                              dilation=dilation, padding=padding, stride=stride)


# --------------------------------------------------------------------- conv padding modes
def check_padding_mode(op: str, padding_mode) -> str:
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"{op}: padding_mode={padding_mode!r} is not known; acceptable "
                         f"values are {', '.join(map(repr, PADDING_MODES))}")
    return padding_mode


def _spatial_axes(op: str, ndim: int, layout, spatial_dims: int) -> list[int]:
    """The spatial axes of an activation of ``ndim`` axes (batched or not) in ``layout``,
    a name of N, C and ``spatial_dims`` spatial letters with C second or last."""
    ok = (isinstance(layout, str) and len(layout) == spatial_dims + 2
          and layout[0] == "N" and "C" in (layout[1], layout[-1]))
    if not ok:
        raise ValueError(f"{op}: layout={layout!r} is not a layout of {spatial_dims} spatial "
                         "axes with C second or last (e.g. 'NCHW', 'NHWC')")
    if ndim not in (spatial_dims + 1, spatial_dims + 2):
        raise ValueError(f"{op}: input must be {spatial_dims + 2}-D (batched) or "
                         f"{spatial_dims + 1}-D (unbatched) in layout {layout}, got {ndim}-D")
    last = ndim - 1 if layout[-1] == "C" else ndim
    return list(range(last - spatial_dims, last))


def padding_per_axis(op: str, padding, spatial_dims: int, kernel_size=None,
                     dilation=1) -> list[tuple[int, int]]:
    """``padding`` as (low, high) per spatial axis: an int, one int or (low, high) pair
    per axis, or "valid" / "same" ("same" needs ``kernel_size``; floor half before).

    >>> padding_per_axis("op", (1, (0, 2)), 2)
    [(1, 1), (0, 2)]
    """
    if padding == "valid":
        return [(0, 0)] * spatial_dims
    if padding == "same":
        ks = (kernel_size,) * spatial_dims if _is_int(kernel_size) else tuple(kernel_size)
        ds = (dilation,) * spatial_dims if _is_int(dilation) else tuple(dilation)
        return [same_padding(k, d) for k, d in zip(ks, ds, strict=True)]
    items = (padding,) * spatial_dims if _is_int(padding) else padding
    if not isinstance(items, (tuple, list)) or len(items) != spatial_dims:
        raise ValueError(f"{op}: padding={padding!r} must be an int, 'valid', 'same' or "
                         f"{spatial_dims} values (an int or a (low, high) pair per axis)")
    out = []
    for p in items:
        lo, hi = (p, p) if _is_int(p) else pair(op, "padding", p, minimum=0)
        if lo < 0 or hi < 0:
            raise ValueError(f"{op}: padding={padding!r} must be non-negative")
        out.append((int(lo), int(hi)))
    return out


def padded_input(x, padding_mode: str, padding, spatial_dims: int, layout: str = "NCHW", *,
                 kernel_size=None, dilation=1, op: str = "Conv") -> tuple:
    """(input, conv_padding) for a convolution layer with ``padding_mode``.

    "zeros" returns ``x`` and ``padding`` unchanged (the convolution pads with zeros).
    Any other mode ("reflect", "replicate", "circular") pads ``x``'s spatial axes by
    ``padding`` in that mode (differentiably, with :func:`pad`'s per-mode limits) and
    returns the padded input with conv_padding 0, as torch's ``_ConvNd``.

    Parameters
    ----------
    x : Tensor or array, ``(N, C, *spatial)`` or unbatched ``(C, *spatial)``; with a
        channels-last ``layout`` (e.g. "NHWC") ``(N, *spatial, C)`` or
        ``(*spatial, C)``.
    padding : an int, one int or (low, high) pair per spatial axis, or "valid" /
        "same" (then ``kernel_size`` and ``dilation`` give the amount).
    spatial_dims : number of spatial axes (2 for Conv2d).
    op : the layer's name in error messages.

    >>> y, p = padded_input(np.ones((1, 1, 2, 2)), "replicate", 1, 2)
    >>> y.shape, p
    ((1, 1, 4, 4), 0)
    """
    check_padding_mode(op, padding_mode)
    if padding_mode == "zeros":
        return x, padding
    x = _tensor(x)
    axes = _spatial_axes(op, x.ndim, layout, spatial_dims)
    pairs = padding_per_axis(op, padding, spatial_dims, kernel_size, dilation)
    args = axis_pad_args(op, x.shape, [(a, lo, hi) for a, (lo, hi) in
                                       zip(axes, pairs, strict=True)],
                         padding_mode)
    return PadFunction.apply(x, args=args), 0


# ---------------------------------------------------------------------------------- layers
class Unfold(Module):
    """Sliding blocks (N, C, H, W) -> (N, C*kh*kw, L); see :func:`fastconv.unfold`."""

    def __init__(self, kernel_size, dilation=1, padding=0, stride=1):
        super().__init__()
        self.kernel_size, self.dilation = kernel_size, dilation
        self.padding, self.stride = padding, stride

    def forward(self, x):
        return unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, dilation={self.dilation}, "
                f"padding={self.padding}, stride={self.stride}")


class Fold(Unfold):
    """Sum blocks back (N, C*kh*kw, L) -> (N, C, H, W); see :func:`fastconv.fold`."""

    def __init__(self, output_size, kernel_size, dilation=1, padding=0, stride=1):
        super().__init__(kernel_size, dilation, padding, stride)
        self.output_size = output_size

    def forward(self, x):
        return fold(x, self.output_size, self.kernel_size, self.dilation, self.padding,
                    self.stride)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, {super().extra_repr()}"


class _Pad2d(Module):
    """Pad the last two axes by ``padding``: an int for all four sides or (left, right,
    top, bottom); the input is (N, C, H, W) or (C, H, W)."""

    mode = "constant"

    def __init__(self, padding):
        super().__init__()
        name = type(self).__name__
        if _is_int(padding):
            padding = (int(padding),) * 4
        if not (isinstance(padding, (tuple, list)) and len(padding) == 4
                and all(_is_int(p) for p in padding)):
            raise ValueError(f"{name}: padding={padding!r} must be an int or 4 ints "
                             "(left, right, top, bottom)")
        self.padding = tuple(int(p) for p in padding)

    def forward(self, x):
        return pad(x, self.padding, self.mode, getattr(self, "value", None))

    def extra_repr(self) -> str:
        return f"{self.padding}"


class ConstantPad2d(_Pad2d):
    """Pad H and W with ``value``; (left, right, top, bottom) or an int.

    >>> ConstantPad2d((1, 0, 0, 0), 7.0)(np.zeros((1, 1, 1, 1))).numpy()
    array([[[[7., 0.]]]])
    """

    def __init__(self, padding, value: float):
        super().__init__(padding)
        self.value = value

    def extra_repr(self) -> str:
        return f"padding={self.padding}, value={self.value}"


class ZeroPad2d(ConstantPad2d):
    """Pad H and W with zeros; (left, right, top, bottom) or an int."""

    def __init__(self, padding):
        super().__init__(padding, 0.0)

    def extra_repr(self) -> str:
        return f"{self.padding}"


class ReflectionPad2d(_Pad2d):
    """Pad H and W with their mirror (without repeating the edge; each pad < the size)."""

    mode = "reflect"


class ReplicationPad2d(_Pad2d):
    """Pad H and W by repeating the edge pixels."""

    mode = "replicate"
