"""torch-style ``dim`` arguments checked and turned into numpy axes.

Used by the Tensor methods and by ``fastconv.nn.functional``; every function raises a
TypeError or ValueError that names the bad argument.
"""

from __future__ import annotations

import math
import numbers


def dim_index(d, ndim: int) -> int:
    """The axis (0 <= axis < ndim) that ``d`` names in an ``ndim``-D tensor; negative
    ``d`` counts from the end. A 0-D tensor accepts 0 and -1, as in torch."""
    if not isinstance(d, numbers.Integral):
        raise TypeError(f"dim={d!r} must be an int")
    if not -max(ndim, 1) <= d < max(ndim, 1):
        raise ValueError(f"dim={d} is out of range for a {ndim}-D tensor")
    return int(d) % max(ndim, 1)


def reduction_axes(dim, axis, ndim: int):
    """Canonical reduction axes: a sorted tuple, or None for all axes.

    ``dim`` (torch's name) or ``axis`` (numpy's), not both: None, an int or a sequence
    of ints, each checked by :func:`dim_index`; an axis named twice is an error.
    """
    if dim is not None and axis is not None:
        raise TypeError("pass either dim or axis, not both")
    d = dim if dim is not None else axis
    if d is None:
        return None
    ds = (d,) if isinstance(d, numbers.Integral) else tuple(d)
    out = tuple(sorted({dim_index(x, ndim) for x in ds}))
    if len(out) != len(ds):
        raise ValueError(f"dim={d!r} repeats an axis")
    return out


def permutation_axes(dims, ndim: int) -> tuple:
    """``dims`` as non-negative axes, checked to be a permutation of range(ndim)."""
    axes = tuple(dim_index(d, ndim) for d in dims)
    if sorted(axes) != list(range(ndim)):
        raise ValueError(f"permute: dims={tuple(dims)} is not a permutation of the {ndim} axes")
    return axes


def flat_shape(shape, start_dim: int, end_dim: int) -> tuple:
    """``shape`` with axes start_dim..end_dim (inclusive) merged into one, e.g.
    (N, C, H, W) with 1, -1 -> (N, C*H*W); the shape () becomes (1,)."""
    if len(shape) == 0:
        return (1,)
    s, e = dim_index(start_dim, len(shape)), dim_index(end_dim, len(shape))
    if s > e:
        raise ValueError(f"flatten: start_dim={start_dim} comes after end_dim={end_dim}")
    return tuple(shape[:s]) + (int(math.prod(shape[s:e + 1])),) + tuple(shape[e + 1:])
