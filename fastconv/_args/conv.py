"""The conv2d record: canonical arguments, the output-size law and the array checks.

The record holds the NCHW view of the problem (whatever the caller's layout), the
per-axis stride, dilation and (low, high) padding, the output size and the dtype. The
output-size law is the pure function :func:`conv_output_size`. Errors name the op, the
rule and the values.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np

from .. import layout as _layout
from .checks import (
    activation_dims,
    check_array,
    check_channels,
    check_groups,
    check_kernel_fits,
    check_layout,
    check_same_dtype,
    layout_hint,
    padding_pairs,
    pair,
)
from .memo import HashOnce, remembered


def conv_output_size(n: int, k: int, stride: int, pad_lo: int, pad_hi: int, dilation: int) -> int:
    """Output length along one axis: floor((n + p_lo + p_hi - r*(k-1) - 1) / s) + 1."""
    return (n + pad_lo + pad_hi - dilation * (k - 1) - 1) // stride + 1


@dataclass(frozen=True)
class ConvArgs(HashOnce):
    """A conv2d problem in canonical form (NCHW / OIHW terms, whatever the layout).
    Its layout record and layout shapes are worked out on first use and kept (the
    kernels' drivers ask for them on every call of a layer)."""

    n: int
    c_in: int
    h: int
    w: int
    c_out: int
    kh: int
    kw: int
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]  # ((top, bottom), (left, right))
    groups: int
    h_out: int
    w_out: int
    layout: str
    dtype: np.dtype
    unbatched: bool = False
    __hash__ = HashOnce.__hash__

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c_in, self.h, self.w)

    @property
    def w_shape(self) -> tuple[int, int, int, int]:
        return (self.c_out, self.c_in // self.groups, self.kh, self.kw)

    @property
    def y_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c_out, self.h_out, self.w_out)

    @property
    def flops(self) -> int:
        """Multiply-adds counted as 2 FLOPs, bias excluded."""
        return 2 * self.n * self.c_out * self.h_out * self.w_out * (self.c_in // self.groups) \
            * self.kh * self.kw

    @functools.cached_property
    def dims(self) -> _layout.Layout:
        """The caller's layout as a record (permutations and shape rules)."""
        return _layout.LAYOUTS[self.layout]

    @functools.cached_property
    def x_layout_shape(self) -> tuple[int, ...]:
        """The (batched) input shape in the caller's layout."""
        return self.dims.shape(self.n, self.c_in, self.h, self.w)

    @functools.cached_property
    def w_layout_shape(self) -> tuple[int, ...]:
        """The weight shape in the caller's layout (OIHW or HWIO)."""
        return self.dims.weight_shape(self.c_out, self.c_in // self.groups, self.kh, self.kw)

    @functools.cached_property
    def y_layout_shape(self) -> tuple[int, ...]:
        """The (batched) output shape in the caller's layout."""
        return self.dims.shape(self.n, self.c_out, self.h_out, self.w_out)

    def with_batch(self, n: int) -> ConvArgs:
        return replace(self, n=n)

    @functools.cached_property
    def grad_x_problem(self) -> ConvArgs:
        """grad_x as a forward problem at stride 1: grad_y correlated with the flipped
        kernel, the channels swapped, padding d*(k-1) - p (exact for a stride-1 layer;
        a strided one's grad_x runs it over the input's phases).

        >>> a = conv_args_from_shapes("conv2d", (2, 1, 9, 9), (16, 1, 3, 3), padding=1)
        >>> g = a.grad_x_problem
        >>> (g.c_in, g.c_out, g.x_shape, g.y_shape, g.padding)
        (16, 1, (2, 16, 9, 9), (2, 1, 9, 9), ((1, 1), (1, 1)))
        """
        (pt, pb), (pl, pr) = self.padding
        eh, ew = self.dilation[0] * (self.kh - 1), self.dilation[1] * (self.kw - 1)
        return replace(self, c_in=self.c_out, c_out=self.c_in, h=self.h_out, w=self.w_out,
                       h_out=self.h, w_out=self.w, stride=(1, 1),
                       padding=((eh - pt, eh - pb), (ew - pl, ew - pr)))

    @functools.cached_property
    def memory_twin(self) -> ConvArgs:
        """The canonical-layout problem whose arrays lie in memory as this one's: a
        channels-last problem of one input and one output channel is its NCHW twin (x
        (N, H, W, 1) is (N, 1, H, W), the HWIO weight (KH, KW, 1, 1) is OIHW (1, 1, KH,
        KW): transposed views, no copy), and runs as one (``fastconv.autotune``). The
        problem itself otherwise.

        >>> a = conv_args_from_shapes("conv2d", (2, 9, 9, 1), (3, 3, 1, 1), layout="NHWC")
        >>> a.memory_twin.layout, a.memory_twin.y_layout_shape
        ('NCHW', (2, 1, 7, 7))
        """
        if self.dims.is_canonical or self.c_in != 1 or self.c_out != 1:
            return self
        return replace(self, layout=self.dims.canonical)


@remembered
def conv_args_from_shapes(op: str, x_shape, w_shape, stride=1, padding=0, dilation=1,
                          groups=1, layout="NCHW", dtype=np.float32) -> ConvArgs:
    """Validate a conv2d problem given by shapes in the caller's layout (remembered: the
    same problem validates once, ``memo.remembered``)."""
    return _validate_shapes(op, x_shape, w_shape, stride, padding, dilation, groups, layout,
                            dtype)


def _validate_shapes(op, x_shape, w_shape, stride, padding, dilation, groups, layout,
                     dtype) -> ConvArgs:
    check_layout(op, layout)
    x_shape = tuple(int(s) for s in x_shape)
    w_shape = tuple(int(s) for s in w_shape)
    n, c_in, h, w, unbatched = activation_dims(op, x_shape, layout)
    if len(w_shape) != 4:
        wl = _layout.LAYOUTS[layout].weight
        raise ValueError(f"{op}: weight must be 4-D ({wl} for layout {layout}), got "
                         f"{len(w_shape)}-D shape {w_shape}" + (
                             " (a 2-D (kh, kw) weight needs a 2-D (H, W) input)"
                             if len(w_shape) == 2 else ""))
    dims = _layout.LAYOUTS[layout]
    c_out, c_in_g, kh, kw = dims.canonical_weight_shape(w_shape)
    groups = check_groups(op, groups)
    stride_ = pair(op, "stride", stride, minimum=1)
    dilation_ = pair(op, "dilation", dilation, minimum=1)
    if kh < 1 or kw < 1:
        raise ValueError(f"{op}: kernel size must be positive, got {kh}x{kw}")
    hint = layout_hint(x_shape, layout)
    check_channels(op, c_in, c_out, c_in_g, groups, hint)
    pad = padding_pairs(op, padding, (kh, kw), dilation_, stride_)
    h_out = conv_output_size(h, kh, stride_[0], *pad[0], dilation_[0])
    w_out = conv_output_size(w, kw, stride_[1], *pad[1], dilation_[1])
    check_kernel_fits(op, ("height", "width"), (h, w), (kh, kw), dilation_, pad, hint)
    return ConvArgs(n, c_in, h, w, c_out, kh, kw, stride_, dilation_, pad, groups, h_out,
                    w_out, layout, np.dtype(dtype), unbatched)


def conv_arrays(op, x, w, bias, stride, padding, dilation, groups, layout,
                check_input=check_array, half=False):
    """Validate conv2d's arrays and arguments; returns (x, w, bias, ConvArgs) with x 4-D.

    ``check_input(op, name, x)`` validates the input (an ndarray by default; the Dask
    front end passes its own check for dask arrays, the GPU front end one for device
    arrays). ``half``: float16 arrays are accepted (the CPU front end)."""
    x = check_input(op, "input", x, half) if half else check_input(op, "input", x)
    w = check_array(op, "weight", w, half)
    if bias is not None:
        bias = check_array(op, "bias", bias, half)
    dtype = check_same_dtype(op, input=x, weight=w, bias=bias)
    args = conv_args_from_shapes(op, x.shape, w.shape, stride, padding, dilation, groups,
                                 layout, dtype)
    check_bias_shape(op, None if bias is None else bias.shape, args)
    if args.unbatched:
        x = x[None]
    return x, w, bias, args


def check_bias_shape(op: str, bias_shape, args: ConvArgs) -> None:
    """ValueError unless the bias shape is None (no bias) or (C_out,) of problem ``args``."""
    if bias_shape is not None and bias_shape != (args.c_out,):
        raise ValueError(f"{op}: bias must have shape (C_out,) = ({args.c_out},), got "
                         f"{bias_shape}")
