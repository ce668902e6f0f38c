"""Element-wise kernels of the autograd layer (ReLU, the residual add + ReLU, and the
sum of two gradients), one pass each.

``np.maximum(a, 0)`` runs at about a quarter of memory speed (its loop handles NaN per
element), and the ReLU gradient ``g * (a > 0)`` makes a boolean temporary and a casting
multiply; these loops vectorise and take about a third of the time (0.028 vs 0.11 ms
forward, 0.04 vs 0.085 ms backward for a (64, 6, 28, 28) float32 array, one core).
Arrays of ``PARALLEL_MIN`` elements or more are split over numba's threads in chunks of
``CHUNK``; smaller ones run serially, where a parallel launch costs more than it saves
(the ReLU gradient of data not in cache, 2 threads: 50,000 elements 20 us serial, 24
in parallel; 400,000: 165 and 138 us; 2 million: 1.40 and 1.02 ms; the residual add +
ReLU: 100,352 elements 44 and 39 us, 200,704 (a small ResNet's 14x14x32 maps of 32
images) 85 and 58 us).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numba import uint64 as U

from . import _pool, config

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
#: The fewest elements split over the threads, and the elements of one chunk.
PARALLEL_MIN = 1 << 17
CHUNK = 1 << 14


#: The ops of ``_ranges``.
RELU, RELU_BACKWARD, ADD_RELU, ADD = range(4)


@njit(inline="always")
def _ranges(op, a, b, y, lo, hi):
    """Elements lo..hi of op: RELU y = a where a > 0, else 0, NaN kept (as
    np.maximum(a, 0)); RELU_BACKWARD y = a where b > 0, else 0 (a the gradient, b the
    ReLU's output); ADD_RELU y = max(a + b, 0), NaN kept; ADD y = a + b. Each op is a
    loop of its own (the branch is outside it), which vectorises: with unsigned bounds
    (signed ones, inside a parallel kernel, left the loops scalar with a wraparound
    check per index: 400,000 elements took 0.49 ms on 2 threads, 0.036 unsigned)."""
    zero = y.dtype.type(0)
    lo, hi = U(lo), U(hi)
    if op == RELU:
        for i in range(lo, hi):
            v = a[i]
            y[i] = zero if v <= zero else v
    elif op == RELU_BACKWARD:
        for i in range(lo, hi):
            y[i] = a[i] if b[i] > zero else zero
    elif op == ADD_RELU:
        for i in range(lo, hi):
            v = a[i] + b[i]
            y[i] = zero if v <= zero else v
    else:
        for i in range(lo, hi):
            y[i] = a[i] + b[i]


@njit(inline="always")
def relu_range(a, lo, hi):
    """a[lo:hi] = max(a, 0) in place, NaN kept (``_ranges``' RELU, its own vectorised
    loop): a fused ReLU applied by a kernel to the run it has just written (inside that
    run's own loop, the select can keep it from vectorising)."""
    _ranges(RELU, a, a, a, lo, hi)


@njit(inline="always")
def relu_gradient(g, y, masked, zero):
    """g, or zero where ``masked`` and the ReLU's output y is not positive (NaN: zero):
    a fused ReLU's gradient applied inside another op's pass (the unpooling, batch
    norm's backward), branch-free."""
    return g if not masked or y > zero else zero


@njit(cache=True, fastmath=config.FASTMATH)
def _serial(op, a, b, y):
    """``_ranges`` over all of y (1-D arrays)."""
    _ranges(op, a, b, y, 0, y.size)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _threaded(op, a, b, y):
    """``_ranges`` in chunks of ``CHUNK`` over numba's threads (1-D arrays)."""
    n = y.size
    for t in prange((n + CHUNK - 1) // CHUNK):
        _ranges(op, a, b, y, t * CHUNK, min(n, (t + 1) * CHUNK))


def _run(op: int, a, b) -> np.ndarray:
    """A new array of a's shape and dtype: ``op`` of a and b (contiguous copies where
    needed), serial or over the threads by size."""
    y = _pool.empty(a.shape, a.dtype)
    _launch(op, _flat(a), _flat(b), y.reshape(-1))
    return y


def _launch(op: int, a, b, y) -> None:
    """``op`` on flat arrays, serial or over the threads by size."""
    kernel = _threaded if y.size >= PARALLEL_MIN else _serial
    kernel(op, a, b, y)


def _flat(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1)


def relu(a: np.ndarray) -> np.ndarray:
    """max(a, 0) as a new array (NaN propagates); float32/float64 through the kernels,
    other dtypes through numpy."""
    if a.dtype not in _FLOATS:
        return np.maximum(a, 0)
    return _run(RELU, a, a)


def relu_in_place(a: np.ndarray) -> np.ndarray:
    """a = max(a, 0) in place (NaN kept), for an array the caller owns; returns a."""
    if a.dtype not in _FLOATS or not a.flags.c_contiguous:
        return np.maximum(a, 0, out=a)
    flat = a.reshape(-1)
    _launch(RELU, flat, flat, flat)
    return a


def relu_backward(g: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The ReLU gradient: g where the output y is positive, else 0 (NaN outputs pass
    nothing). g and y have one shape; the result has g's dtype."""
    if g.dtype not in _FLOATS or y.dtype not in _FLOATS:
        return g * (y > 0)
    return _run(RELU_BACKWARD, g, y)


def add_relu(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """max(a + b, 0) as a new array in one pass (NaN propagates): a residual connection
    and the ReLU after it; a and b of one shape. float32/float64 arrays of one dtype
    through the kernels, other dtypes through numpy (promotion)."""
    if a.dtype != b.dtype or a.dtype not in _FLOATS:
        return relu(np.asarray(a + b))
    return _run(ADD_RELU, a, b)


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """a + b as a new array for float32/float64 arrays of one shape and dtype (two
    gradients of one tensor, summed); None otherwise (the caller uses numpy)."""
    if a.shape != b.shape or a.dtype != b.dtype or a.dtype not in _FLOATS:
        return None
    return _run(ADD, a, b)
