"""The transformed kernel U = G w G^T (``_KERNELS[m][0]``), and the kernel whose
correlation with grad_y gives grad_x."""

from __future__ import annotations

import numpy as np

from ... import _pool
from .._common import guarded
from .tiling import _KERNELS, transformed


def transform_kernel(w_oihw: np.ndarray, groups: int, m: int) -> np.ndarray:
    """(C_out, Cg, 3, 3) -> (G, (m+2)^2, Dg, Cg), contiguous."""
    c_out, cg = w_oihw.shape[:2]
    u = _pool.aligned_empty((groups, transformed(m), c_out // groups, cg), w_oihw.dtype)
    guarded(_KERNELS[m][0])(np.ascontiguousarray(w_oihw), u)
    return u


def _grad_x_kernel(w_oihw: np.ndarray, groups: int) -> np.ndarray:
    """The kernel whose correlation with grad_y gives grad_x: (C_in, Dg, 3, 3) with
    k[g*Cg + c, d, a, b] = w[g*Dg + d, c, 2 - a, 2 - b]."""
    c_out, cg = w_oihw.shape[:2]
    dg = c_out // groups
    k = w_oihw.reshape(groups, dg, cg, 3, 3)[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(k).reshape(groups * cg, dg, 3, 3)
