"""Argument canonicalisation: every public op turns its arguments into one frozen record.

The record holds the NCHW view of the problem (whatever the caller's layout), the
per-axis stride, dilation and (low, high) padding, the output size and the dtype. The
output-size law is the pure function :func:`conv_output_size`. Errors name the op, the
rule and the values.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

LAYOUTS = ("NCHW", "NHWC")
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
DEVICES = ("cpu", "cuda")


def conv_output_size(n: int, k: int, stride: int, pad_lo: int, pad_hi: int, dilation: int) -> int:
    """Output length along one axis: floor((n + p_lo + p_hi - r*(k-1) - 1) / s) + 1."""
    return (n + pad_lo + pad_hi - dilation * (k - 1) - 1) // stride + 1


def same_padding(k: int, dilation: int) -> tuple[int, int]:
    """'same' padding for one axis: r*(k-1) zeros in total, floor of half before."""
    total = dilation * (k - 1)
    return total // 2, total - total // 2


# ----------------------------------------------------------------------------- checks
def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_layout(op: str, layout) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"{op}: layout={layout!r} is not supported; acceptable layouts are "
                         f"{', '.join(repr(x) for x in LAYOUTS)}")
    return layout


def check_device(op: str, device) -> str:
    if device not in DEVICES:
        raise ValueError(f"{op}: device={device!r} is not supported; acceptable devices are "
                         f"{', '.join(repr(x) for x in DEVICES)}")
    return device


def check_array(op: str, name: str, a) -> np.ndarray:
    """An ndarray of float32/float64 (TypeError otherwise); views are accepted."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{op}: {name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype not in DTYPES:
        raise TypeError(f"{op}: {name} has dtype {a.dtype}; accepted dtypes are float32 and "
                        "float64")
    return a


def check_same_dtype(op: str, **arrays) -> np.dtype:
    dtypes = {name: a.dtype for name, a in arrays.items() if a is not None}
    if len(set(dtypes.values())) > 1:
        listing = ", ".join(f"{k}={v}" for k, v in dtypes.items())
        raise TypeError(f"{op}: inputs must share one dtype (float32 or float64), got {listing}")
    return next(iter(dtypes.values()))


def pair(op: str, name: str, value, *, minimum: int) -> tuple[int, int]:
    """An int or a length-2 sequence of ints, each >= minimum, as an (h, w) pair."""
    if _is_int(value):
        vals = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and all(_is_int(v) for v in value):
        if len(value) != 2:
            raise ValueError(f"{op}: {name}={tuple(value)!r} must be an int or a pair (h, w), "
                             f"got {len(value)} values")
        vals = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{op}: {name}={value!r} must be an int or a pair of ints (h, w)")
    for v in vals:
        if v < minimum:
            rule = "positive" if minimum == 1 else f">= {minimum}"
            raise ValueError(f"{op}: {name}={value!r} must be {rule}")
    return vals


def padding_pairs(op: str, padding, kernel: tuple[int, int], dilation: tuple[int, int],
                  stride: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Canonical ((top, bottom), (left, right)) padding."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"{op}: padding='same' requires stride 1, got stride={stride}")
            return same_padding(kernel[0], dilation[0]), same_padding(kernel[1], dilation[1])
        raise ValueError(f"{op}: padding={padding!r} is not understood; acceptable words are "
                         "'valid' and 'same'")
    if (isinstance(padding, (tuple, list)) and len(padding) == 2
            and all(isinstance(p, (tuple, list)) for p in padding)):
        out = []
        for axis, p in zip(("height", "width"), padding, strict=True):
            if len(p) != 2 or not all(_is_int(v) for v in p):
                raise ValueError(f"{op}: padding={padding!r}: each axis needs a pair of ints "
                                 f"(low, high), got {p!r} for {axis}")
            if p[0] < 0 or p[1] < 0:
                raise ValueError(f"{op}: padding={padding!r} must be non-negative")
            out.append((int(p[0]), int(p[1])))
        return out[0], out[1]
    ph, pw = pair(op, "padding", padding, minimum=0)
    return (ph, ph), (pw, pw)


def check_groups(op: str, groups) -> int:
    if not _is_int(groups):
        raise TypeError(f"{op}: groups={groups!r} must be an int")
    if groups < 1:
        raise ValueError(f"{op}: groups={groups} must be positive")
    return int(groups)


# ------------------------------------------------------------------------------- conv
@dataclass(frozen=True)
class ConvArgs:
    """A conv2d problem in canonical form (NCHW / OIHW terms, whatever the layout)."""

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

    def with_batch(self, n: int) -> ConvArgs:
        from dataclasses import replace

        return replace(self, n=n)


def conv_args_from_shapes(op: str, x_shape, w_shape, stride=1, padding=0, dilation=1,
                          groups=1, layout="NCHW", dtype=np.float32) -> ConvArgs:
    """Validate a conv2d problem given by shapes in the caller's layout."""
    check_layout(op, layout)
    x_shape = tuple(int(s) for s in x_shape)
    w_shape = tuple(int(s) for s in w_shape)
    if len(x_shape) not in (3, 4):
        raise ValueError(f"{op}: input must be 4-D (batched) or 3-D (unbatched) in layout "
                         f"{layout}, got {len(x_shape)}-D shape {x_shape}")
    if len(w_shape) != 4:
        wl = "OIHW" if layout == "NCHW" else "HWIO"
        raise ValueError(f"{op}: weight must be 4-D ({wl} for layout {layout}), got "
                         f"{len(w_shape)}-D shape {w_shape}")
    unbatched = len(x_shape) == 3
    if unbatched:
        x_shape = (1,) + x_shape
    if layout == "NCHW":
        n, c_in, h, w = x_shape
        c_out, c_in_g, kh, kw = w_shape
    else:
        n, h, w, c_in = x_shape
        kh, kw, c_in_g, c_out = w_shape
    groups = check_groups(op, groups)
    stride_ = pair(op, "stride", stride, minimum=1)
    dilation_ = pair(op, "dilation", dilation, minimum=1)
    if kh < 1 or kw < 1:
        raise ValueError(f"{op}: kernel size must be positive, got {kh}x{kw}")
    if c_in % groups:
        raise ValueError(f"{op}: groups={groups} must divide C_in={c_in}")
    if c_out % groups:
        raise ValueError(f"{op}: groups={groups} must divide C_out={c_out}")
    if c_in_g * groups != c_in:
        raise ValueError(f"{op}: weight has {c_in_g} input channels per group but input has "
                         f"C_in={c_in} with groups={groups} (expected {c_in // groups})")
    pad = padding_pairs(op, padding, (kh, kw), dilation_, stride_)
    h_out = conv_output_size(h, kh, stride_[0], *pad[0], dilation_[0])
    w_out = conv_output_size(w, kw, stride_[1], *pad[1], dilation_[1])
    for axis, size, k, r, p in (("height", h, kh, dilation_[0], pad[0]),
                                ("width", w, kw, dilation_[1], pad[1])):
        eff = r * (k - 1) + 1
        if eff > size + p[0] + p[1]:
            raise ValueError(f"{op}: kernel {axis} {eff} (k={k}, dilation={r}) is larger than "
                             f"the padded input {axis} {size + p[0] + p[1]} "
                             f"(size {size} + padding {p[0]}+{p[1]})")
    return ConvArgs(n, c_in, h, w, c_out, kh, kw, stride_, dilation_, pad, groups, h_out,
                    w_out, layout, np.dtype(dtype), unbatched)
