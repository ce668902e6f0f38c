"""conv1d's im2col at stride 1 through conv3d's windowed unfold.

A stride-1 conv1d is the conv3d of the volume (N, C, 1, 1, W): there the padded grid is
the padded signal itself, every column row of a chunk is one contiguous run of it
(``fastconv.algos.conv3d.window``), and the chunks' columns stay in cache for their
GEMMs; conv2d's im2col on the unit-height image writes the whole (C_in k, W_out)
column matrix of an image first (295 MB for the 8-signal, 64-channel, 16000-sample
audio layer) and reads it back from memory. This path serves NCW float32 / float64
problems whose algorithm (given, or conv2d's choice for "auto") is "im2col".

>>> import numpy as np
>>> from fastconv._args.conv_nd import conv_nd_args_from_shapes
>>> a = conv_nd_args_from_shapes("conv1d", (1, 1, 5), (1, 1, 3), rank=1, padding=1,
...                              dtype=np.float64)
>>> y = forward(np.arange(5.0).reshape(1, 1, 5), np.array([[[1.0, 0.0, -1.0]]]), None, a)
>>> y
array([[[-1., -2., -2., -2.,  3.]]])
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ._memory import allocate
from .algos.conv3d import window


def as_volume(a):
    """The conv3d record of 1-D problem ``a``: depth and height 1."""
    return replace(a, size=(1, 1, *a.size), kernel=(1, 1, *a.kernel),
                   stride=(1, 1, *a.stride), dilation=(1, 1, *a.dilation),
                   padding=((0, 0), (0, 0), *a.padding),
                   out=(1, 1, *a.out), layout="NCDHW")


def applies(a, choice: str) -> bool:
    """Whether 1-D problem ``a`` run by algorithm ``choice`` takes this path."""
    return (choice == "im2col" and a.layout == "NCW" and a.n > 0
            and a.dtype in (np.float32, np.float64) and window.applies(as_volume(a)))


def _volume(t):
    return np.ascontiguousarray(t)[:, :, None, None, :]


def forward(x, w, bias, a):
    """conv1d of NCW ``x`` (N, C_in, W) with ``w`` (C_out, C_in/G, k): (N, C_out, W_out).

    The 1-D grid is the output itself (no dropped positions), so each chunk's GEMM
    writes straight into the output and the bias is added while the chunk is in cache:
    no grid buffer, no copy of it, no separate bias pass (the audio layer: a 32 MB pass
    fewer each)."""
    v = as_volume(a)
    y = allocate("conv1d", "output", (a.n, a.c_out, a.out[0]), a.dtype)
    xs, wm = np.ascontiguousarray(x), np.ascontiguousarray(w).reshape(a.c_out, -1)
    window.on_images(v, lambda _k, images, _split: _forward(xs, wm, bias, v, y, images))
    return y


def _forward(x, wm, bias, v, y, images) -> None:
    """Images ``images`` of ``y`` (N, C_out, W_out) from ``x`` (N, C_in, W)."""
    _, _, _, length = window.geometry(v)
    groups = window.group_slices(v)
    width = y.shape[2]
    for b in images:
        xp = window.padded(v, x[b][:, None, None, :], length)
        for p0, p1, cols in window.columns(v, xp, width):
            yc = y[b, :, p0:p1]
            for rows, ds in groups:
                np.matmul(wm[ds], cols[rows], out=yc[ds])
            if bias is not None:
                yc += bias[:, None]


def backward(gy, x, w, a, needs):
    """(grad_x, grad_w, grad_bias) of conv1d, None where ``needs`` says not wanted."""
    v = as_volume(a)
    op = "conv1d_backward"
    gx = allocate(op, "input gradient", v.x_shape, a.dtype) if needs[0] else None
    gw = allocate(op, "weight gradient", v.w_shape, a.dtype) if needs[1] else None
    if gx is not None or gw is not None:
        window.backward(_volume(gy), _volume(x), _volume(w), v, gx, gw)
    gb = gy.sum(axis=(0, 2), dtype=np.float64).astype(a.dtype) if needs[2] else None
    return (None if gx is None else gx[:, :, 0, 0, :],
            None if gw is None else gw[:, :, 0, 0, :], gb)
