"""Helpers shared by the algorithm modules."""

from __future__ import annotations

from numba import njit


@njit(inline="always")
def valid_range(n_out: int, offset: int, stride: int, size: int) -> tuple[int, int]:
    """Indices t in [lo, hi) with 0 <= t*stride + offset < size, clipped to [0, n_out)."""
    # t*stride + offset >= 0  <=>  t >= ceil(-offset / stride)
    lo = 0 if offset >= 0 else (-offset + stride - 1) // stride
    # t*stride + offset <= size - 1  <=>  t <= floor((size - 1 - offset) / stride)
    top = size - 1 - offset
    hi = 0 if top < 0 else min(top // stride + 1, n_out)
    return min(lo, hi), hi
