"""The records of pad and of unfold / fold: canonical arguments and their checks.

``pad`` follows torch.nn.functional.pad: a flat tuple of (low, high) pairs starting
from the last axis, negative values crop, and the modes "constant", "reflect",
"replicate" and "circular" with torch's limits. ``unfold`` / ``fold`` follow
torch.nn.functional.unfold / fold. Errors name the op, the rule and the values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import _is_int, pair

PAD_MODES = ("constant", "reflect", "replicate", "circular")


@dataclass(frozen=True)
class PadArgs:
    """A pad in canonical form: ``axes`` holds (axis, low, high) per padded axis (axis
    counted from 0, low/high negative to crop); ``value`` is the fill of "constant"."""

    in_shape: tuple[int, ...]
    axes: tuple[tuple[int, int, int], ...]
    mode: str
    value: float
    out_shape: tuple[int, ...]


def check_pad_mode(op: str, mode) -> str:
    if mode not in PAD_MODES:
        raise ValueError(f"{op}: mode={mode!r} is not known; acceptable modes are "
                         f"{', '.join(map(repr, PAD_MODES))}")
    return mode


def _check_value(op: str, mode: str, value) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{op}: value={value!r} must be a number")
    if mode != "constant" and value != 0:
        raise ValueError(f"{op}: mode={mode!r} takes no fill value, got value={value!r} "
                         "(only mode 'constant' fills)")
    return value


def _flat_pairs(op: str, pad) -> list[tuple[int, int]]:
    """torch's flat pad tuple as (low, high) pairs, last axis first."""
    if not isinstance(pad, (tuple, list)) or not all(_is_int(p) for p in pad):
        raise TypeError(f"{op}: pad={pad!r} must be a tuple of ints (low, high pairs "
                        "starting from the last axis)")
    if len(pad) % 2:
        raise ValueError(f"{op}: pad={tuple(pad)!r} must have an even length (a (low, high) "
                         f"pair per axis), got {len(pad)} values")
    return [(int(pad[i]), int(pad[i + 1])) for i in range(0, len(pad), 2)]


def pad_args(op: str, shape, pad, mode="constant", value=None) -> PadArgs:
    """The record of ``pad(x, pad, mode, value)`` for an input of ``shape``.

    "constant" pads any of the trailing axes (at most ndim pairs); the other modes pad
    the trailing 1, 2 or 3 axes of an input with one or two more axes (2-D or 3-D for one
    pair, 3-D or 4-D for two, 4-D or 5-D for three), as torch."""
    mode = check_pad_mode(op, mode)
    value = _check_value(op, mode, value)
    shape = tuple(int(s) for s in shape)
    pairs = _flat_pairs(op, pad)
    k, nd = len(pairs), len(shape)
    if mode == "constant" and k > nd:
        raise ValueError(f"{op}: pad={tuple(pad)!r} pads {k} axes but the input of shape "
                         f"{shape} has {nd}")
    if mode != "constant" and (k not in (1, 2, 3) or nd not in (k + 1, k + 2)):
        raise ValueError(f"{op}: mode={mode!r} pads the last 1, 2 or 3 axes of a 2-D/3-D, "
                         "3-D/4-D or 4-D/5-D input (1, 2 or 3 pairs); got "
                         f"{len(pad)} pad values for a {nd}-D input of shape {shape}")
    axes = [(nd - 1 - i, lo, hi) for i, (lo, hi) in enumerate(pairs)]
    return axis_pad_args(op, shape, axes[::-1], mode, value)


def axis_pad_args(op: str, shape, axes, mode: str, value=0.0) -> PadArgs:
    """The record of a pad given per axis: ``axes`` a sequence of (axis, low, high).
    Checks each axis against ``mode``'s limits (torch's):

    - every mode: the padded size ``size + low + high`` is >= 0 (>= 1 for "reflect" and
      "replicate", which need a non-empty axis to copy from);
    - "reflect": low < size and high < size (a mirror without repeating the edge);
    - "circular": crops first, then wraps the cropped axis at most once: each positive
      pad <= the cropped size.
    """
    shape = tuple(int(s) for s in shape)
    out = list(shape)
    canon = []
    for axis, lo, hi in axes:
        n = shape[axis]
        size = n + lo + hi
        where = f"pad ({lo}, {hi}) of axis {axis} (size {n})"
        if size < (1 if mode in ("reflect", "replicate") else 0):
            raise ValueError(f"{op}: {where} of an input of shape {shape} leaves {size} "
                             "elements; mode " + (f"{mode!r} needs at least 1"
                                                  if mode in ("reflect", "replicate")
                                                  else f"{mode!r} needs at least 0"))
        if mode == "reflect" and (lo >= n or hi >= n):
            raise ValueError(f"{op}: mode 'reflect' needs each pad < the axis size; got "
                             f"{where} of an input of shape {shape}")
        if mode == "circular":
            cropped = n + min(lo, 0) + min(hi, 0)
            if max(lo, 0) > cropped or max(hi, 0) > cropped:
                raise ValueError(f"{op}: mode 'circular' wraps at most once: each pad must be "
                                 f"<= the (cropped) axis size {cropped}; got {where} of an "
                                 f"input of shape {shape}")
        out[axis] = size
        canon.append((axis, lo, hi))
    return PadArgs(shape, tuple(canon), mode, value, tuple(out))


# ---------------------------------------------------------------------------- unfold/fold
@dataclass(frozen=True)
class FoldArgs:
    """An unfold / fold problem: the image (n, c, h, w), the window (kh, kw), stride,
    padding and dilation pairs, and the block grid (h_blocks, w_blocks), L = their
    product. ``unbatched``: the caller's array has no batch axis."""

    n: int
    c: int
    h: int
    w: int
    kh: int
    kw: int
    dilation: tuple[int, int]
    padding: tuple[int, int]
    stride: tuple[int, int]
    h_blocks: int
    w_blocks: int
    unbatched: bool

    @property
    def image_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.w)

    @property
    def cols_shape(self) -> tuple[int, int, int]:
        return (self.n, self.c * self.kh * self.kw, self.h_blocks * self.w_blocks)

    def kernel_params(self) -> tuple[int, ...]:
        """(w_blocks, s_h, s_w, p_top, p_left, r_h, r_w, kh, kw): the arguments of the
        im2col unfold / fold kernels after (x, cols, n0, i0)."""
        return (self.w_blocks, *self.stride, *self.padding, *self.dilation, self.kh,
                self.kw)


def _window(op: str, spatial, kernel_size, dilation, padding, stride):
    """(kernel, dilation, padding, stride, blocks) pairs; ValueError when an axis has
    no block."""
    kernel = pair(op, "kernel_size", kernel_size, minimum=1)
    dil = pair(op, "dilation", dilation, minimum=1)
    pad = pair(op, "padding", padding, minimum=0)
    st = pair(op, "stride", stride, minimum=1)
    blocks = tuple((n + 2 * p - r * (k - 1) - 1) // s + 1
                   for n, k, r, p, s in zip(spatial, kernel, dil, pad, st, strict=True))
    if min(blocks) < 1:
        raise ValueError(f"{op}: spatial size {tuple(spatial)} with kernel_size={kernel}, "
                         f"dilation={dil}, padding={pad}, stride={st} gives "
                         f"{blocks[0]} x {blocks[1]} blocks; each must be at least 1")
    return kernel, dil, pad, st, blocks


def unfold_args(op: str, shape, kernel_size, dilation=1, padding=0, stride=1) -> FoldArgs:
    """The record of ``unfold(x, ...)`` for x of ``shape`` (N, C, H, W) or (C, H, W)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (3, 4):
        raise ValueError(f"{op}: input must be 4-D (N, C, H, W) or 3-D (C, H, W), got "
                         f"{len(shape)}-D shape {shape}")
    unbatched = len(shape) == 3
    n, c, h, w = (1,) + shape if unbatched else shape
    k, r, p, s, b = _window(op, (h, w), kernel_size, dilation, padding, stride)
    return FoldArgs(n, c, h, w, *k, r, p, s, *b, unbatched)


def fold_args(op: str, shape, output_size, kernel_size, dilation=1, padding=0,
              stride=1) -> FoldArgs:
    """The record of ``fold(cols, output_size, ...)`` for cols of ``shape``
    (N, C*kh*kw, L) or (C*kh*kw, L); L must equal the block count of output_size."""
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"{op}: input must be 3-D (N, C*kh*kw, L) or 2-D (C*kh*kw, L), "
                         f"got {len(shape)}-D shape {shape}")
    unbatched = len(shape) == 2
    n, ckk, length = (1,) + shape if unbatched else shape
    hw = pair(op, "output_size", output_size, minimum=1)
    k, r, p, s, b = _window(op, hw, kernel_size, dilation, padding, stride)
    if ckk % (k[0] * k[1]):
        raise ValueError(f"{op}: input's axis of size {ckk} (shape {shape}) must be "
                         f"divisible by kernel_size {k[0]} x {k[1]} = {k[0] * k[1]}")
    if length != b[0] * b[1]:
        raise ValueError(f"{op}: input has L={length} blocks (shape {shape}) but "
                         f"output_size={hw} with kernel_size={k}, dilation={r}, "
                         f"padding={p}, stride={s} gives {b[0]} x {b[1]} = {b[0] * b[1]}")
    return FoldArgs(n, ckk // (k[0] * k[1]), *hw, *k, r, p, s, *b, unbatched)
