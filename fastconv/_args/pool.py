"""The pooling records: canonical arguments, the output-size law and the checks of max,
average and global average pooling and their gradients (torch's rules).

Output size per axis (:func:`pool_output_size`): floor((n + 2p - r*(k-1) - 1) / s) + 1,
or the ceiling with ``ceil_mode``, where the last window must then start inside the input
or the left padding. Padding may be at most half the kernel size.

A record holds the problem in NCHW terms whatever the caller's layout; its shape
properties give the arrays' shapes back in the caller's layout (through the
:class:`fastconv.layout.Layout` record). Errors name the op, the rule and the values.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .. import layout as _layout
from .checks import (
    activation_dims,
    as_ndarray,
    check_array,
    check_flag,
    check_layout,
    layout_hint,
    pair,
)
from .memo import remembered


def pool_output_size(n: int, k: int, stride: int, pad: int, dilation: int,
                     ceil_mode: bool) -> int:
    """Output length along one axis: floor((n + 2p - r*(k-1) - 1) / s) + 1, or the ceiling
    with ``ceil_mode`` unless that last window would start in the right padding."""
    span = n + 2 * pad - dilation * (k - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= n + pad:
        out -= 1  # the last window would start in the right padding
    return out


@dataclass(frozen=True)
class PoolShapes:
    """The sizes of a pooling problem in NCHW terms: input (n, c, h, w), output
    (n, c, h_out, w_out), the caller's ``layout`` and whether its arrays are 3-D
    (``unbatched``, n = 1)."""

    n: int
    c: int
    h: int
    w: int
    h_out: int
    w_out: int
    layout: str
    unbatched: bool

    @property
    def dims(self) -> _layout.Layout:
        """The caller's layout as a record (permutations and shape rules)."""
        return _layout.LAYOUTS[self.layout]

    def _shape(self, h: int, w: int, batched: bool) -> tuple[int, ...]:
        s = self.dims.shape(self.n, self.c, h, w)
        return s[1:] if self.unbatched and not batched else s

    @property
    def x_shape(self) -> tuple[int, ...]:
        """The input shape in the caller's layout (3-D when unbatched)."""
        return self._shape(self.h, self.w, False)

    @property
    def y_shape(self) -> tuple[int, ...]:
        """The output shape in the caller's layout (3-D when unbatched)."""
        return self._shape(self.h_out, self.w_out, False)

    @property
    def x_shape4(self) -> tuple[int, int, int, int]:
        """The input shape in the caller's layout with its batch axis (always 4-D)."""
        return self._shape(self.h, self.w, True)

    @property
    def y_shape4(self) -> tuple[int, int, int, int]:
        """The output shape in the caller's layout with its batch axis (always 4-D)."""
        return self._shape(self.h_out, self.w_out, True)


@dataclass(frozen=True)
class PoolArgs(PoolShapes):
    """A max or average pooling problem: the sizes and the (h, w) pairs of the window.

    ``count_include_pad`` is average pooling's divisor rule (max pooling ignores it)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    ceil_mode: bool
    count_include_pad: bool = True

    @property
    def max_geometry(self) -> tuple[int, ...]:
        """(kh, kw, sh, sw, ph, pw, rh, rw): the max-pooling kernels' window arguments."""
        return (*self.kernel, *self.stride, *self.padding, *self.dilation)

    @property
    def avg_geometry(self) -> tuple:
        """(kh, kw, sh, sw, ph, pw, count_include_pad): the average-pooling kernels'
        window arguments (the dilation is always 1)."""
        return (*self.kernel, *self.stride, *self.padding, self.count_include_pad)


@remembered
def pool_args(op: str, shape, kernel_size, stride=None, padding=0, dilation=1,
              ceil_mode=False, layout="NCHW") -> PoolArgs:
    """Validate a pooling problem given by the input shape (4-D, or 3-D unbatched) in the
    caller's layout; stride None means kernel_size (remembered, ``memo.remembered``)."""
    check_layout(op, layout)
    n, c, h, w, unbatched = activation_dims(op, shape, layout)
    kernel = pair(op, "kernel_size", kernel_size, minimum=1)
    stride_ = kernel if stride is None else pair(op, "stride", stride, minimum=1)
    pad = pair(op, "padding", padding, minimum=0)
    dil = pair(op, "dilation", dilation, minimum=1)
    ceil_mode = check_flag(op, "ceil_mode", ceil_mode)
    if pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
        raise ValueError(f"{op}: padding={padding!r} must be at most half the kernel size "
                         f"{kernel_size!r}")
    h_out = pool_output_size(h, kernel[0], stride_[0], pad[0], dil[0], ceil_mode)
    w_out = pool_output_size(w, kernel[1], stride_[1], pad[1], dil[1], ceil_mode)
    if h_out < 1 or w_out < 1:
        raise ValueError(f"{op}: output size {h_out}x{w_out} is too small: input {h}x{w}, "
                         f"kernel {kernel[0]}x{kernel[1]}, stride {stride_}, padding {pad}, "
                         f"dilation {dil}{layout_hint(shape, layout)}")
    return PoolArgs(n=n, c=c, h=h, w=w, h_out=h_out, w_out=w_out, layout=layout,
                    unbatched=unbatched, kernel=kernel, stride=stride_, padding=pad,
                    dilation=dil, ceil_mode=ceil_mode)


def avg_pool_args(op: str, shape, kernel_size, stride, padding, ceil_mode, count_include_pad,
                  layout) -> PoolArgs:
    """:func:`pool_args` of an average pooling (dilation 1) with its divisor rule."""
    a = pool_args(op, shape, kernel_size, stride, padding, 1, ceil_mode, layout)
    return replace(a, count_include_pad=check_flag(op, "count_include_pad", count_include_pad))


def global_pool_args(op: str, shape, layout, what: str = "input") -> PoolShapes:
    """The sizes of a global average pooling of an input of ``shape`` (output 1x1);
    ``what`` names the input in the error when it has no pixels."""
    check_layout(op, layout)
    n, c, h, w, unbatched = activation_dims(op, shape, layout)
    if h * w == 0:
        raise ValueError(f"{op}: {what} has no pixels (H={h}, W={w}); the mean is undefined")
    return PoolShapes(n, c, h, w, 1, 1, layout, unbatched)


def check_input_shape(op: str, input_shape) -> tuple[int, ...]:
    """A gradient's ``input_shape`` as a tuple of non-negative ints."""
    try:
        shape = tuple(int(s) for s in input_shape)
    except TypeError:
        raise TypeError(f"{op}: input_shape={input_shape!r} must be a tuple of ints") from None
    if any(s < 0 for s in shape):
        raise ValueError(f"{op}: input_shape={shape} must not have negative sizes")
    return shape


def check_grad_y(op: str, grad_y, want, half: bool = False) -> np.ndarray:
    """``grad_y``, a float array (float16 too when ``half``) of the pooling output's shape
    ``want``."""
    grad_y = check_array(op, "grad_y", grad_y, half)
    if grad_y.shape != tuple(want):
        raise ValueError(f"{op}: grad_y must have shape {tuple(want)} (the pooling output), "
                         f"got {grad_y.shape}")
    return grad_y


def max_unpool_args(op: str, grad_y, indices, input_shape, layout) -> PoolShapes:
    """The sizes of :func:`max_unpool_inputs` (its checks, without the arrays)."""
    return max_unpool_inputs(op, grad_y, indices, input_shape, layout)[0]


def max_unpool_inputs(op: str, grad_y, indices, input_shape, layout, half: bool = False,
                      check_range: bool = True):
    """The checks of ``max_pool2d_backward``: grad_y (float16 too when ``half``) and its
    int64 ``indices`` (flat positions h*W + w in [0, H*W), or -1) against
    ``input_shape``; returns (sizes, grad_y, indices), both plain ndarrays (array-likes
    converted). ``check_range`` False leaves the values of the indices to the caller
    (the CPU kernels count those out of range, and the op raises
    :func:`check_indices_range`'s error)."""
    check_layout(op, layout)
    shape = check_input_shape(op, input_shape)
    n, c, h, w, unbatched = activation_dims(op, shape, layout)
    grad_y = check_array(op, "grad_y", grad_y, half)
    if grad_y.ndim != len(shape):
        raise ValueError(f"{op}: grad_y is {grad_y.ndim}-D but input_shape {shape} is "
                         f"{len(shape)}-D")
    gn, gc, ho, wo, _ = activation_dims(op, grad_y.shape, layout)
    if (gn, gc) != (n, c):
        raise ValueError(f"{op}: grad_y of shape {grad_y.shape} does not match input_shape "
                         f"{shape}: batch and channel sizes must agree ({layout})")
    indices = as_ndarray(op, "indices", indices)
    if indices.dtype != np.int64:
        raise TypeError(f"{op}: indices has dtype {indices.dtype}; expected int64 (as "
                        "returned by max_pool2d(..., return_indices=True))")
    if indices.shape != grad_y.shape:
        raise ValueError(f"{op}: indices must have the shape of grad_y {grad_y.shape}, got "
                         f"{indices.shape}")
    if check_range:
        check_indices_range(op, indices, h * w)
    return PoolShapes(n, c, h, w, ho, wo, layout, unbatched), grad_y, indices


def check_indices_range(op: str, indices, plane: int) -> None:
    """ValueError unless every index lies in [0, plane) or is -1."""
    if indices.size and (indices.min() < -1 or indices.max() >= plane):
        raise ValueError(f"{op}: indices must lie in [0, H*W) = [0, {plane}) (or be -1), "
                         f"got values from {indices.min()} to {indices.max()}")
