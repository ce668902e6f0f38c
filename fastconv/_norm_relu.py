"""A batch norm's fused ReLU in both layouts' kernels: the normalised value the forward
stores, and how the backward finds where that ReLU passed its gradient.

The backward passes grad_y where the ReLU's output y = max(v, 0) was positive, v = (x -
mean) * scale + shift (scale = weight * invstd, shift = bias; float64, rounded once to
x's dtype when stored). It learns where in one of two ways (``relu``):

* ``OUTPUT``: from y, an array like x (``batch_norm_backward(relu_output=y)``);
* ``REDONE``: from x, recomputing v with the forward's scale and shift and rounding it
  as the forward's store did (``_lanes.as_stored``), which reads one array fewer in
  both of the backward's passes (a third of what a pass reads besides grad_y's pixels:
  2 x 1.6 MB less on a (32, 28, 28, 16) layer).

``normalised`` is the one expression of v in every kernel that stores or recomputes it,
so a recomputed v is the stored one bit for bit (the vector kernels of the NHWC layout
use ``normalised_lanes`` and ``gated_lanes``: explicit vector operations, one fused
multiply-add).

>>> import numpy as np
>>> x = np.array([1.0, -1.0])
>>> [bool(passes(x[i], 0.0, 2.0, 0.5, x)) for i in range(2)]    # v = 2.5, -1.5
[True, False]
"""

from __future__ import annotations

from numba import njit

from . import _lanes

#: ``relu`` values: no ReLU after the batch norm; its gradient from its output; from x.
NONE, OUTPUT, REDONE = 0, 1, 2


@njit(inline="always")
def normalised(x, mean, scale, shift):
    """v = (x - mean) * scale + shift in float64 (x a float32 or float64 value)."""
    return (x - mean) * scale + shift


@njit(inline="always")
def output(x, mean, scale, shift, relu, r, with_res):
    """What a forward kernel stores (float64, rounded by the store): ``normalised(x,
    ...)``, plus the residual value r with ``with_res``, then max(., 0) with ``relu``
    (NaN kept)."""
    v = normalised(x, mean, scale, shift)
    if with_res:
        v += r
    return 0.0 if relu and v <= 0.0 else v


@njit(inline="always")
def normalised_lanes(dx, scale, shift):
    """``normalised`` on float64 vectors, given dx = x - mean: one fused multiply-add."""
    return _lanes.fma_lanes(shift, dx, scale)


@njit(inline="always")
def passes(x, mean, scale, shift, like):
    """Whether the ReLU after the batch norm passed x's gradient: v = ``normalised(x,
    ...)`` rounded to the dtype of the array ``like`` (x's) is positive (NaN: no)."""
    return _lanes.as_stored(like, normalised(x, mean, scale, shift)) > 0.0


@njit(inline="always")
def gated(g, relu, m, x, mean, scale, shift, like):
    """g, or 0.0 where the fused ReLU did not pass it: relu ``NONE`` always g; ``OUTPUT``
    where m (the ReLU's output) > 0; ``REDONE`` where ``passes(x, ...)``."""
    if relu == OUTPUT:
        return g if m > 0.0 else 0.0
    if relu == REDONE:
        return g if passes(x, mean, scale, shift, like) else 0.0
    return g


@njit(inline="always")
def gated_lanes(g, relu, mask, o, dx, scale, shift, like):
    """``gated`` on float64 vectors: g, 0 in the lanes where the fused ReLU did not pass
    it (``OUTPUT``: mask[o : o + k] (flat) its output; ``REDONE``: recomputed from dx =
    x - mean with the vectors scale and shift, as stored in the flat array ``like``)."""
    if relu == OUTPUT:
        return _lanes.where_positive(g, _lanes.load_f64(mask, o))
    if relu == REDONE:
        return _lanes.where_positive(g, _lanes.as_stored(like, normalised_lanes(dx, scale,
                                                                                shift)))
    return g
