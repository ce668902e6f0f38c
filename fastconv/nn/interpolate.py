"""Resizing of 4-D activations by nearest or bilinear interpolation (torch's
F.interpolate rules), one differentiable op.

Both modes are separable: each output row (column) reads one or two input rows
(columns) with fixed weights, so the forward gathers along H, then along W, and the
backward scatters the gradient back the same way (:func:`_gather`, :func:`_scatter`).
Indices and weights are computed as torch computes them: in float32 (nearest always;
bilinear for float32 input) so that the same pixels are picked.

Examples
--------
>>> import numpy as np
>>> from fastconv.nn.interpolate import interpolate
>>> x = np.arange(4.0).reshape(1, 1, 2, 2)
>>> interpolate(x, scale_factor=2).numpy()[0, 0]
array([[0., 0., 1., 1.],
       [0., 0., 1., 1.],
       [2., 2., 3., 3.],
       [2., 2., 3., 3.]])
>>> interpolate(x, size=3, mode="bilinear", align_corners=True).numpy()[0, 0]
array([[0. , 0.5, 1. ],
       [1. , 1.5, 2. ],
       [2. , 2.5, 3. ]])
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .. import layout as _layout
from ..autograd import Function, Tensor

MODES = ("nearest", "bilinear")


def nearest_indices(n_in: int, n_out: int, scale: float | None) -> np.ndarray:
    """The input index of each of ``n_out`` outputs (torch's legacy "nearest"):
    floor(i * s) in float32 with s = 1 / scale (given scale) or n_in / n_out, clipped to
    n_in - 1; the identity when the sizes are equal, i // 2 when n_out is 2 n_in."""
    i = np.arange(n_out)
    if n_out == n_in:
        return i
    if n_out == 2 * n_in:
        return i >> 1
    s = np.float32(1.0 / scale) if scale is not None else np.float32(n_in) / np.float32(n_out)
    return np.minimum(np.floor(i.astype(np.float32) * s).astype(np.intp), n_in - 1)


def linear_weights(n_in: int, n_out: int, scale: float | None, align_corners: bool,
                   dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, w0, w1): output j = w0[j] * in[i0[j]] + w1[j] * in[i1[j]] (torch's
    linear source index: j * (n_in - 1) / (n_out - 1) with align_corners, else
    (j + 0.5) * s - 0.5 clamped at 0, s as in :func:`nearest_indices`)."""
    t = np.float64 if np.dtype(dtype) == np.float64 else np.float32   # torch's opmath type
    j = np.arange(n_out).astype(t)
    if align_corners:
        s = t(n_in - 1) / t(n_out - 1) if n_out > 1 else t(0)
        src = j * s
    else:
        s = t(1.0 / scale) if scale is not None else t(n_in) / t(n_out)
        src = np.maximum(s * (j + t(0.5)) - t(0.5), t(0))
    i0 = np.minimum(src.astype(np.intp), n_in - 1)
    i1 = i0 + (i0 < n_in - 1)
    w1 = src - i0.astype(t)
    return i0, i1, (t(1) - w1).astype(dtype), w1.astype(dtype)


def _gather(x: np.ndarray, axis: int, taps) -> np.ndarray:
    """sum over (index, weight) of x.take(index, axis) * weight (weight None: 1)."""
    shape = [1] * x.ndim
    out = None
    for idx, w in taps:
        part = x.take(idx, axis=axis)
        if w is not None:
            shape[axis] = len(w)
            part *= w.reshape(shape)
        out = part if out is None else out + part
    return out


def _scatter(g: np.ndarray, axis: int, taps, n_in: int) -> np.ndarray:
    """The adjoint of :func:`_gather`: gx.take(i, axis) receives g * weight from every
    output that read input i (summed in output order; exact for NaN and Inf)."""
    src = np.concatenate([idx for idx, _ in taps])
    dst = np.tile(np.arange(g.shape[axis]), len(taps))
    order = np.argsort(src, kind="stable")
    src, dst = src[order], dst[order]
    part = g.take(dst, axis=axis)
    if taps[0][1] is not None:
        shape = [1] * g.ndim
        shape[axis] = len(dst)
        part *= np.concatenate([w for _, w in taps])[order].reshape(shape)
    starts = np.flatnonzero(np.r_[True, src[1:] != src[:-1]])
    sums = np.add.reduceat(part, starts, axis=axis)
    used = src[starts]
    if len(used) == n_in:
        return sums
    shape = list(g.shape)
    shape[axis] = n_in
    out = np.zeros(shape, g.dtype)
    index = [slice(None)] * g.ndim
    index[axis] = used
    out[tuple(index)] = sums
    return out


class Interpolate(Function):
    """Resize the spatial axes of x (4-D in ``layout``) with per-axis ``taps``: for each
    spatial axis a list of (index, weight or None) pairs (see :func:`_gather`), empty
    for an axis that keeps its pixels."""

    @staticmethod
    def forward(ctx, x, taps, layout="NCHW"):
        lay = _layout.LAYOUTS[layout]
        ctx.taps, ctx.axes, ctx.shape = taps, lay.spatial_axes, x.shape
        y = x
        for axis, axis_taps in zip(lay.spatial_axes, taps, strict=True):
            if axis_taps:                           # no taps: the axis is kept as it is
                y = _gather(y, axis, axis_taps)
        return y.copy() if y is x else y

    @staticmethod
    def backward(ctx, g):
        for axis, axis_taps in zip(ctx.axes, ctx.taps, strict=True):
            if axis_taps:
                g = _scatter(g, axis, axis_taps, ctx.shape[axis])
        return g


def _per_axis(op: str, name: str, value, kind) -> tuple:
    """``value`` (one number or one per spatial axis) as a pair of ``kind``."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(values) != 2 or not all(isinstance(v, kind) and not isinstance(v, bool)
                                   for v in values):
        what = "an int" if kind is numbers.Integral else "a number"
        raise ValueError(f"{op}: {name}={value!r} must be {what} or a pair of them (one per "
                         "spatial axis of the 4-D input)")
    return values


def interpolate(input, size=None, scale_factor=None, mode: str = "nearest",
                align_corners: bool | None = None, recompute_scale_factor: bool | None = None,
                *, layout: str = "NCHW") -> Tensor:
    """Resize a 4-D input (N, C, H, W) (NHWC: (N, H, W, C)) to ``size`` or by
    ``scale_factor`` (torch's F.interpolate for its "nearest" and "bilinear" modes).

    Parameters
    ----------
    size : (H_out, W_out) or one int for both.
    scale_factor : a positive number or a pair; the output has floor(H * s) rows, and the
        pixels read are those of the scale s itself, unless recompute_scale_factor=True:
        then they are those of the sizes (H / H_out), as if ``size`` had been given.
    mode : "nearest" (torch's legacy nearest: floor(i * H / H_out)) or "bilinear".
    align_corners : bilinear only (None means False): whether the corner pixels of input
        and output are aligned (True) or their edges (False, half-pixel centres).
    """
    op = "interpolate"
    lay = _layout.get(op, layout)
    x = input if isinstance(input, Tensor) else Tensor(input)
    if mode not in MODES:
        raise ValueError(f"{op}: mode={mode!r} is not supported; acceptable modes are "
                         f"{', '.join(map(repr, MODES))}")
    if mode == "bilinear" and x.dtype.kind != "f":
        raise TypeError(f"{op}: mode='bilinear' needs floating-point input, got dtype "
                        f"{x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"{op}: input must be 4-D ({lay.name}), got shape {x.shape}")
    if mode == "nearest" and align_corners is not None:
        raise ValueError(f"{op}: align_corners={align_corners!r} can only be set with "
                         "mode='bilinear'")
    if (size is None) == (scale_factor is None):
        raise ValueError(f"{op}: exactly one of size and scale_factor must be given, got "
                         f"size={size!r} and scale_factor={scale_factor!r}")
    if recompute_scale_factor and size is not None:
        raise ValueError(f"{op}: recompute_scale_factor=True is only meaningful with "
                         f"scale_factor, not with size={size!r}")
    n_in = tuple(x.shape[a] for a in lay.spatial_axes)
    if size is not None:
        n_out, scales = _per_axis(op, "size", size, numbers.Integral), (None, None)
    else:
        scales = tuple(float(s) for s in _per_axis(op, "scale_factor", scale_factor,
                                                   numbers.Real))
        if not all(s > 0 and math.isfinite(s) for s in scales):
            raise ValueError(f"{op}: scale_factor={scale_factor!r} must be positive and "
                             "finite")
        n_out = tuple(math.floor(n * s) for n, s in zip(n_in, scales, strict=True))
        if recompute_scale_factor:
            scales = (None, None)
    if min(n_out) <= 0 or min(n_in) <= 0:
        raise ValueError(f"{op}: input size {n_in} and output size {tuple(n_out)} must be "
                         "positive")
    taps = []
    for n, m, s in zip(n_in, n_out, scales, strict=True):
        if mode == "nearest":
            taps.append([] if m == n else [(nearest_indices(n, m, s), None)])
        else:
            i0, i1, w0, w1 = linear_weights(n, m, s, bool(align_corners), x.dtype)
            taps.append([(i0, w0), (i1, w1)])
    return Interpolate.apply(x, taps=taps, layout=lay.name)
