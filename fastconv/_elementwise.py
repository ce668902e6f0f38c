"""Element-wise kernels of the autograd layer (ReLU, and the residual add + ReLU), one
pass each.

``np.maximum(a, 0)`` runs at about a quarter of memory speed (its loop handles NaN per
element), and the ReLU gradient ``g * (a > 0)`` makes a boolean temporary and a casting
multiply; these serial loops vectorise and take about a third of the time (0.028 vs
0.11 ms forward, 0.04 vs 0.085 ms backward for a (64, 6, 28, 28) float32 array, one
core). They are serial: a parallel launch costs more than the work at these sizes.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import _pool, config

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


@njit(cache=True, fastmath=config.FASTMATH)
def _relu(a, y):
    """y = a where a > 0, else 0; NaN stays NaN (as np.maximum(a, 0)). 1-D arrays."""
    zero = a.dtype.type(0)
    for i in range(a.size):
        v = a[i]
        y[i] = zero if v <= zero else v


@njit(cache=True, fastmath=config.FASTMATH)
def _relu_backward(g, y, gx):
    """gx = g where y > 0, else 0 (y: the ReLU output). 1-D arrays."""
    zero = gx.dtype.type(0)
    for i in range(g.size):
        gx[i] = g[i] if y[i] > zero else zero


@njit(cache=True, fastmath=config.FASTMATH)
def _add_relu(a, b, y):
    """y = max(a + b, 0) (NaN stays NaN). 1-D arrays of one dtype."""
    zero = y.dtype.type(0)
    for i in range(a.size):
        v = a[i] + b[i]
        y[i] = zero if v <= zero else v


def _flat(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1)


def relu(a: np.ndarray) -> np.ndarray:
    """max(a, 0) as a new array (NaN propagates); float32/float64 through ``_relu``,
    other dtypes through numpy."""
    if a.dtype not in _FLOATS:
        return np.maximum(a, 0)
    y = _pool.empty(a.shape, a.dtype)
    _relu(_flat(a), y.reshape(-1))
    return y


def relu_backward(g: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The ReLU gradient: g where the output y is positive, else 0 (NaN outputs pass
    nothing). g and y have one shape; the result has g's dtype."""
    if g.dtype not in _FLOATS or y.dtype not in _FLOATS:
        return g * (y > 0)
    gx = _pool.empty(g.shape, g.dtype)
    _relu_backward(_flat(g), _flat(y), gx.reshape(-1))
    return gx


def add_relu(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """max(a + b, 0) as a new array in one pass (NaN propagates): a residual connection
    and the ReLU after it; a and b of one shape. float32/float64 arrays of one dtype
    through ``_add_relu``, other dtypes through numpy (promotion)."""
    if a.dtype != b.dtype or a.dtype not in _FLOATS:
        return relu(np.asarray(a + b))
    y = _pool.empty(a.shape, a.dtype)
    _add_relu(_flat(a), _flat(b), y.reshape(-1))
    return y
