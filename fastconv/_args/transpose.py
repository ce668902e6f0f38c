"""The conv_transpose2d record: the transposed problem and the conv2d problem beneath it.

A transposed convolution is conv2d's input gradient: its input plays conv2d's grad_y,
its output conv2d's input, and the weight is the same array (torch's (C_in, C_out/groups,
kh, kw) is conv2d's OIHW weight of the problem whose output has C_in channels). The
record holds that conv2d problem (``conv``, a :class:`ConvArgs`) and the transposed
output size. Errors name the op, the rule and the values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import layout as _layout
from .checks import (
    activation_dims,
    batched_grad_y,
    check_array,
    check_groups,
    check_layout,
    check_same_dtype,
    layout_hint,
    pair,
)
from .conv import ConvArgs, conv_args_from_shapes


def transpose_output_size(n: int, k: int, stride: int, padding: int, output_padding: int,
                          dilation: int) -> int:
    """(n - 1)*stride - 2*padding + dilation*(k - 1) + output_padding + 1."""
    return (n - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1


@dataclass(frozen=True)
class TransposeArgs:
    """A conv_transpose2d problem (canonical NCHW terms; sizes of the transposed op).

    ``conv`` is the conv2d problem whose input gradient the op computes: input (N,
    C_out, reach_h, reach_w), output (N, C_in, H, W), padding (p, p_bottom) per axis.
    output_padding extends the output at the bottom / right into what the padding
    would crop; conv2d's size rule takes up to stride - 1 extra rows by itself, more
    by a smaller bottom padding p_bottom = max(0, p - output_padding + stride - 1) (at
    most p), and rows past even that no input reaches: ``reach_h`` / ``reach_w`` leave
    them out (they get only the bias). ``conv`` is None when no input reaches any
    output."""

    n: int
    c_in: int
    h: int
    w: int
    c_out: int
    h_out: int
    w_out: int
    reach_h: int
    reach_w: int
    layout: str
    dtype: np.dtype
    unbatched: bool
    conv: ConvArgs | None

    @property
    def dims(self) -> _layout.Layout:
        return _layout.LAYOUTS[self.layout]

    @property
    def y_layout_shape(self) -> tuple[int, ...]:
        """The (batched) output shape in the caller's layout."""
        return self.dims.shape(self.n, self.c_out, self.h_out, self.w_out)

    @property
    def cropped(self) -> bool:
        """Whether the output has rows or columns past what conv2d's problem covers."""
        return (self.reach_h, self.reach_w) != (self.h_out, self.w_out)


def transpose_args_from_shapes(op: str, x_shape, w_shape, stride=1, padding=0,
                               output_padding=0, groups=1, dilation=1, layout="NCHW",
                               dtype=np.float32) -> TransposeArgs:
    """Validate a conv_transpose2d problem given by shapes in the caller's layout: x
    (N, C_in, H, W) / (N, H, W, C_in) or 3-D unbatched, w (C_in, C_out/groups, kh, kw)
    for NCHW, (kh, kw, C_out/groups, C_in) for NHWC.

    >>> a = transpose_args_from_shapes("op", (16, 64, 28, 28), (64, 32, 4, 4), 2, 1)
    >>> a.y_layout_shape, a.conv.x_shape
    ((16, 32, 56, 56), (16, 32, 56, 56))
    >>> transpose_args_from_shapes("op", (1, 1, 4, 4), (1, 1, 3, 3), 2, 0, 2)
    Traceback (most recent call last):
    ...
    ValueError: op: output_padding=2 must be smaller than stride=2 or dilation=1 (height)
    """
    layout = check_layout(op, layout)
    x_shape = tuple(int(s) for s in x_shape)
    w_shape = tuple(int(s) for s in w_shape)
    n, c_in, h, w, unbatched = activation_dims(op, x_shape, layout)
    dims = _layout.LAYOUTS[layout]
    if len(w_shape) != 4:
        want = "(C_in, C_out/groups, kh, kw)" if dims.is_canonical else \
            "(kh, kw, C_out/groups, C_in)"
        raise ValueError(f"{op}: weight must be 4-D {want} for layout {layout}, got "
                         f"{len(w_shape)}-D shape {w_shape}")
    w_in, c_out_g, kh, kw = dims.canonical_weight_shape(w_shape)
    groups = check_groups(op, groups)
    stride_ = pair(op, "stride", stride, minimum=1)
    dilation_ = pair(op, "dilation", dilation, minimum=1)
    if isinstance(padding, str):
        raise ValueError(f"{op}: padding={padding!r} must be an int or a pair (h, w); "
                         "the words 'valid' and 'same' are for conv2d")
    pad = pair(op, "padding", padding, minimum=0)
    out_pad = pair(op, "output_padding", output_padding, minimum=0)
    hint = layout_hint(x_shape, layout)
    if kh < 1 or kw < 1:
        raise ValueError(f"{op}: kernel size must be positive, got {kh}x{kw}")
    if c_in % groups:
        raise ValueError(f"{op}: groups={groups} must divide C_in={c_in}{hint}")
    if w_in != c_in:
        raise ValueError(f"{op}: weight {w_shape} holds filters for {w_in} input channels "
                         f"but the input has C_in={c_in}{hint}")
    c_out = c_out_g * groups
    sizes = []
    for axis, i, size, k in (("height", 0, h, kh), ("width", 1, w, kw)):
        s, p, op_, r = stride_[i], pad[i], out_pad[i], dilation_[i]
        if op_ >= s and op_ >= r:
            raise ValueError(f"{op}: output_padding={output_padding!r} must be smaller than "
                             f"stride={s} or dilation={r} ({axis})")
        out = transpose_output_size(size, k, s, p, op_, r)
        if out < 1:
            raise ValueError(f"{op}: output {axis} (size - 1)*stride - 2*padding + "
                             f"dilation*(k - 1) + output_padding + 1 = ({size} - 1)*{s} - "
                             f"2*{p} + {r}*({k} - 1) + {op_} + 1 = {out} must be positive")
        # conv2d maps `reach` rows with padding (p, p_hi) onto `size` rows: floor((reach
        # + p + p_hi - r*(k-1) - 1) / s) + 1 = size needs 0 <= op_ - unreached + p_hi - p < s
        p_hi = min(p, max(0, p - op_ + s - 1))
        sizes.append((out, out - max(0, op_ - p - s + 1), (p, p_hi)))
    (h_out, reach_h, pad_h), (w_out, reach_w, pad_w) = sizes
    conv = None
    if min(reach_h, reach_w, h, w) >= 1:   # else no input reaches the output
        x_conv = dims.shape(n, c_out, reach_h, reach_w)
        conv = conv_args_from_shapes(op, x_conv, w_shape, stride_, (pad_h, pad_w),
                                     dilation_, groups, layout, dtype)
        assert (conv.h_out, conv.w_out) == (h, w), (conv, h, w)
    return TransposeArgs(n, c_in, h, w, c_out, h_out, w_out, reach_h, reach_w, layout,
                         np.dtype(dtype), unbatched, conv)



def transpose_arrays(op: str, x, w, bias, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, layout="NCHW", half: bool = False):
    """Validate conv_transpose2d's arrays and arguments; returns (x 4-D, w, bias,
    :class:`TransposeArgs`). ``half``: float16 arrays are accepted (the CPU front end);
    the GPU front end passes zero-byte stand-ins of its device arrays.

    >>> x, w, b, a = transpose_arrays("op", np.ones((2, 3, 3)), np.ones((2, 1, 2, 2)),
    ...                               np.ones(1))
    >>> x.shape, a.y_layout_shape
    ((1, 2, 3, 3), (1, 1, 4, 4))
    >>> transpose_arrays("op", np.ones((1, 2, 3, 3)), np.ones((2, 1, 2, 2)), np.ones(2))
    Traceback (most recent call last):
    ...
    ValueError: op: bias must have shape (C_out,) = (1,), got (2,)
    """
    x = check_array(op, "input", x, half)
    w = check_array(op, "weight", w, half)
    if bias is not None:
        bias = check_array(op, "bias", bias, half)
    dtype = check_same_dtype(op, input=x, weight=w, bias=bias)
    a = transpose_args_from_shapes(op, x.shape, w.shape, stride, padding, output_padding,
                                   groups, dilation, layout, dtype)
    if bias is not None and bias.shape != (a.c_out,):
        raise ValueError(f"{op}: bias must have shape (C_out,) = ({a.c_out},), got "
                         f"{bias.shape}")
    return (x[None] if a.unbatched else x), w, bias, a


def transpose_grad_y(op: str, grad_y, x, w, a: TransposeArgs, half: bool = False):
    """grad_y of conv_transpose2d_backward validated against the op's output (its
    shape, 3-D when x is 3-D; the dtype of x and w); returned 4-D.

    >>> _, w, _, a = transpose_arrays("op", np.ones((1, 2, 3, 3)), np.ones((2, 1, 2, 2)),
    ...                               None)
    >>> transpose_grad_y("op", np.ones((1, 1, 3, 3)), np.ones((1, 2, 3, 3)), w, a)
    Traceback (most recent call last):
    ...
    ValueError: op: grad_y must have shape (1, 1, 4, 4) (the conv_transpose2d output), ...
    """
    grad_y = check_array(op, "grad_y", grad_y, half)
    check_same_dtype(op, input=x, weight=w, grad_y=grad_y)
    return batched_grad_y(op, grad_y, a, "conv_transpose2d")
