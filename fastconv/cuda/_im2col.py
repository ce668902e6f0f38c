"""The im2col path's GEMMs for any spatial rank (conv2d, conv3d): per batch chunk, an
unfold kernel fills the column buffer, the blocked GEMM of ``_gemm`` multiplies per
group, and for the input gradient a fold kernel gathers the column gradient back.

A problem describes itself by an :class:`Unfolding`: its sizes (taps per input channel,
output positions per image) and the launchers of its unfold and fold kernels. Column
buffer: (C_in*taps, nc*positions), row (c, tap), column (image, position), viewed as
(groups, C_in/groups*taps, nc*positions) for the GEMMs; activations are contiguous
channels-first arrays viewed as (N, C, positions or input volume).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numba import cuda

from .. import config
from . import _conv_kernels as K
from ._device import launch
from ._gemm import gemm


@dataclass(frozen=True)
class Unfolding:
    """One convolution problem as the im2col path sees it.

    ``unfold(x, cols, n0)`` fills cols (C_in*taps, nc*positions) from images n0 ..
    n0 + nc - 1 of x; ``fold(cols, gx, n0, nc)`` sets those images of gx to the sums of
    the column entries that read each of their elements (the adjoint)."""

    n: int
    c_in: int
    c_out: int
    groups: int
    taps: int
    positions: int
    dtype: np.dtype
    unfold: Callable
    fold: Callable

    @property
    def kdim(self) -> int:
        """The GEMMs' inner size per group: C_in/groups * taps."""
        return self.c_in // self.groups * self.taps

    def chunk(self) -> int:
        """Images per chunk: the column buffer stays within config.WORKSPACE_BYTES (at
        least one image)."""
        per_image = self.c_in * self.taps * self.positions * np.dtype(self.dtype).itemsize
        return int(max(1, min(self.n, config.WORKSPACE_BYTES // max(per_image, 1))))

    def chunks(self):
        """(n0, nc, cols): each chunk's first image, size and a fresh column buffer."""
        step = self.chunk()
        for n0 in range(0, self.n, step):
            nc = min(step, self.n - n0)
            yield n0, nc, cuda.device_array((self.c_in * self.taps, nc * self.positions),
                                            self.dtype)


def forward(x, w, bias, has_bias, y, u: Unfolding) -> None:
    """y (N, C_out, ...) = per group w (C_out/g, kdim) @ cols, per batch chunk, plus the
    bias when ``has_bias``."""
    g, p = u.groups, u.positions
    w3 = w.reshape((g, u.c_out // g, u.kdim))
    y3 = y.reshape((u.n, u.c_out, p))
    for n0, nc, cols in u.chunks():
        u.unfold(x, cols, n0)
        yt = cuda.device_array((u.c_out, nc * p), u.dtype)
        gemm(w3, cols.reshape((g, u.kdim, nc * p)), yt.reshape((g, u.c_out // g, nc * p)))
        launch(K._cnhw_to_y, yt.size, yt, bias, has_bias, y3, n0)


def backward(gy, x, w, gx, gw, u: Unfolding) -> None:
    """grad_x into gx (N, C_in, ...) and grad_w into gw (C_out, C_in/g, ...), per batch
    chunk: grad_w += grad_y^T @ cols^T and grad_cols = w^T @ grad_y^T per group, then the
    fold; either of gx, gw may be None (not computed: without gw no unfold of x)."""
    g, p = u.groups, u.positions
    w3 = w.reshape((g, u.c_out // g, u.kdim))
    gw3 = gw.reshape((g, u.c_out // g, u.kdim)) if gw is not None else None
    gy3 = gy.reshape((u.n, u.c_out, p))
    for n0, nc, cols in u.chunks():
        gyt = cuda.device_array((u.c_out, nc * p), u.dtype)
        launch(K._y_to_cnhw, gyt.size, gy3, gyt, n0)
        gyt3 = gyt.reshape((g, u.c_out // g, nc * p))
        cols3 = cols.reshape((g, u.kdim, nc * p))
        if gw is not None:
            u.unfold(x, cols, n0)
            # grad_w[g] += grad_y^T[g] (Dg x P) @ cols[g]^T (P x K); chunks run in order.
            gemm(gyt3, cols3, gw3, trans_b=True, accumulate=n0 > 0)
        if gx is None:
            continue
        # grad_cols[g] = w[g]^T (K x Dg) @ grad_y^T[g] (Dg x P), into the same buffer.
        gemm(w3, gyt3, cols3, trans_a=True)
        u.fold(cols, gx, n0, nc)
