"""The record of a 1-D or 3-D convolution (conv1d, conv3d): canonical arguments, checks.

:class:`ConvNdArgs` holds the channels-first view of the problem (NCW / NCDHW, weights
OIW / OIDHW) whatever the caller's layout: per-axis stride, dilation and (low, high)
padding, the output size and the dtype. conv2d keeps its own record
(:class:`fastconv._args.ConvArgs`) on its speed-critical path. Errors name the op, the
rule and the values, in conv2d's words.

Examples
--------
>>> a = conv_nd_args_from_shapes("conv3d", (2, 4, 8, 8, 8), (6, 4, 3, 3, 3), rank=3,
...                              padding=1)
>>> a.out, a.padding
((8, 8, 8), ((1, 1), (1, 1), (1, 1)))
>>> conv_nd_args_from_shapes("conv1d", (2, 4, 5), (6, 4, 3), rank=1, groups=3)
Traceback (most recent call last):
...
ValueError: conv1d: groups=3 must divide C_in=4
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .. import layout as _layout
from .checks import (
    _is_int,
    batched_grad_y,
    check_array,
    check_channels,
    check_groups,
    check_kernel_fits,
    check_same_dtype,
    padding_per_axis,
    same_padding,
)
from .conv import conv_output_size

AXIS_NAMES = {1: ("width",), 3: ("depth", "height", "width")}
AXIS_LETTERS = {1: "w", 3: "d, h, w"}


@dataclass(frozen=True)
class ConvNdArgs:
    """A conv1d / conv3d problem in canonical (channels-first) terms."""

    n: int
    c_in: int
    size: tuple[int, ...]               # input spatial sizes (W,) or (D, H, W)
    c_out: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]  # (low, high) per spatial axis
    groups: int
    out: tuple[int, ...]                # output spatial sizes
    layout: str
    dtype: np.dtype
    unbatched: bool = False

    @property
    def rank(self) -> int:
        return len(self.size)

    @property
    def dims(self) -> _layout.Layout:
        return _layout.LAYOUTS_BY_RANK[self.rank][self.layout]

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (self.n, self.c_in, *self.size)

    @property
    def w_shape(self) -> tuple[int, ...]:
        return (self.c_out, self.c_in // self.groups, *self.kernel)

    @property
    def y_shape(self) -> tuple[int, ...]:
        return (self.n, self.c_out, *self.out)

    @property
    def x_layout_shape(self) -> tuple[int, ...]:
        return self.dims.shape(self.n, self.c_in, *self.size)

    @property
    def y_layout_shape(self) -> tuple[int, ...]:
        return self.dims.shape(self.n, self.c_out, *self.out)

    @property
    def flops(self) -> int:
        """Multiply-adds counted as 2 FLOPs, bias excluded."""
        return (2 * self.n * self.c_out * math.prod(self.out) * (self.c_in // self.groups)
                * math.prod(self.kernel))

    def with_batch(self, n: int) -> ConvNdArgs:
        return replace(self, n=n)


def tuple_arg(op: str, name: str, value, rank: int, *, minimum: int) -> tuple[int, ...]:
    """An int or a sequence of ``rank`` ints, each >= minimum, as a ``rank``-tuple."""
    if _is_int(value):
        vals = (int(value),) * rank
    elif isinstance(value, (tuple, list)) and all(_is_int(v) for v in value):
        if len(value) != rank:
            raise ValueError(f"{op}: {name}={tuple(value)!r} must be an int or {rank} ints "
                             f"({AXIS_LETTERS[rank]}), got {len(value)} values")
        vals = tuple(int(v) for v in value)
    else:
        raise TypeError(f"{op}: {name}={value!r} must be an int or a tuple of {rank} ints "
                        f"({AXIS_LETTERS[rank]})")
    if any(v < minimum for v in vals):
        rule = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{op}: {name}={value!r} must be {rule}")
    return vals


def padding_nd(op: str, padding, kernel, dilation, stride) -> tuple[tuple[int, int], ...]:
    """Canonical (low, high) padding per axis from an int, ``rank`` ints, ``rank``
    (low, high) pairs, a (low, high) pair for 1-D, 'valid' or 'same' (stride 1)."""
    rank = len(kernel)
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * rank
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(f"{op}: padding='same' requires stride 1, got "
                                 f"stride={stride}")
            return tuple(same_padding(k, r) for k, r in zip(kernel, dilation, strict=True))
        raise ValueError(f"{op}: padding={padding!r} is not understood; acceptable words are "
                         "'valid' and 'same'")
    if rank == 1 and isinstance(padding, (tuple, list)) and len(padding) == 2 \
            and all(_is_int(p) for p in padding):
        padding = (tuple(padding),)          # conv1d's (low, high)
    if (isinstance(padding, (tuple, list)) and len(padding) == rank
            and all(isinstance(p, (tuple, list)) for p in padding)):
        return padding_per_axis(op, padding, AXIS_NAMES[rank])
    return tuple((p, p) for p in tuple_arg(op, "padding", padding, rank, minimum=0))


def conv_nd_args_from_shapes(op: str, x_shape, w_shape, *, rank: int, stride=1, padding=0,
                             dilation=1, groups=1, layout=None,
                             dtype=np.float32) -> ConvNdArgs:
    """Validate a conv1d (``rank`` 1) or conv3d (``rank`` 3) problem given by shapes in
    the caller's layout (the channels-first one when ``layout`` is None)."""
    dims = _layout.get(op, layout or ("NCW" if rank == 1 else "NCDHW"), rank)
    x_shape = tuple(int(s) for s in x_shape)
    w_shape = tuple(int(s) for s in w_shape)
    if len(x_shape) not in (rank + 1, rank + 2):
        raise ValueError(f"{op}: input must be {rank + 2}-D (batched) or {rank + 1}-D "
                         f"(unbatched) in layout {dims.name}, got {len(x_shape)}-D shape "
                         f"{x_shape}")
    unbatched = len(x_shape) == rank + 1
    n, c_in, *size = dims.canonical_shape((1,) + x_shape if unbatched else x_shape)
    if len(w_shape) != rank + 2:
        raise ValueError(f"{op}: weight must be {rank + 2}-D ({dims.weight} for layout "
                         f"{dims.name}), got {len(w_shape)}-D shape {w_shape}")
    c_out, c_in_g, *kernel = dims.canonical_weight_shape(w_shape)
    groups = check_groups(op, groups)
    stride_ = tuple_arg(op, "stride", stride, rank, minimum=1)
    dilation_ = tuple_arg(op, "dilation", dilation, rank, minimum=1)
    if min(kernel) < 1:
        raise ValueError(f"{op}: kernel size must be positive, got "
                         f"{'x'.join(map(str, kernel))}")
    check_channels(op, c_in, c_out, c_in_g, groups)
    pad = padding_nd(op, padding, kernel, dilation_, stride_)
    check_kernel_fits(op, AXIS_NAMES[rank], size, kernel, dilation_, pad)
    out = tuple(conv_output_size(s, k, st, *p, r)
                for s, k, st, p, r in zip(size, kernel, stride_, pad, dilation_, strict=True))
    return ConvNdArgs(n, c_in, tuple(size), c_out, tuple(kernel), stride_, dilation_, pad,
                      groups, out, dims.name, np.dtype(dtype), unbatched)


def conv_nd_arrays(op, x, w, bias, stride, padding, dilation, groups, layout, *, rank,
                   check_input=check_array, half=True):
    """Validate conv1d / conv3d arrays and arguments (float16 accepted when ``half``, as
    conv2d's on the CPU; the GPU front end passes False); returns (x, w, bias,
    ConvNdArgs) with x batched (an unbatched input gets a unit batch axis, a view)."""
    x = check_input(op, "input", x, half)
    w = check_array(op, "weight", w, half)
    if bias is not None:
        bias = check_array(op, "bias", bias, half)
    dtype = check_same_dtype(op, input=x, weight=w, bias=bias)
    args = conv_nd_args_from_shapes(op, x.shape, w.shape, rank=rank, stride=stride,
                                    padding=padding, dilation=dilation, groups=groups,
                                    layout=layout, dtype=dtype)
    if bias is not None and bias.shape != (args.c_out,):
        raise ValueError(f"{op}: bias must have shape (C_out,) = ({args.c_out},), got "
                         f"{bias.shape}")
    return (x[None] if args.unbatched else x), w, bias, args


def check_grad_y(op: str, grad_y, args: ConvNdArgs, half: bool = True):
    """``grad_y`` (checked, of the input's dtype) with the forward output's shape, batched;
    ValueError naming the expected shape otherwise. ``half`` as in :func:`conv_nd_arrays`."""
    return batched_grad_y(op, check_array(op, "grad_y", grad_y, half), args, op[:6])
