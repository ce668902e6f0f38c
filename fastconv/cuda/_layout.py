"""Device-side layout changes: every compute kernel works on contiguous NCHW arrays.

NHWC activations and HWIO weights are permuted into NCHW / OIHW copies on the device
(``_permute4``), strided inputs are made contiguous the same way, and results are
permuted back. This costs one pass over the data and keeps every compute kernel to a
single layout. Every permutation comes from the :mod:`fastconv.layout` records.
"""

from __future__ import annotations

from numba import cuda

from ..layout import LAYOUTS, Layout
from ._device import launch


@cuda.jit(device=True)
def _pick(q, i0, i1, i2, i3):
    """i_q: the index along axis q (0..3)."""
    if q == 0:
        return i0
    if q == 1:
        return i1
    if q == 2:
        return i2
    return i3


@cuda.jit
def _permute4(src, dst, q0, q1, q2, q3):
    """dst (contiguous) [i0, i1, i2, i3] = src[i_q0, i_q1, i_q2, i_q3]; any src strides.

    q_a is the dst axis that src axis a goes to (the inverse of numpy's transpose order).
    """
    d1, d2, d3 = dst.shape[1], dst.shape[2], dst.shape[3]
    total = dst.shape[0] * d1 * d2 * d3
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        i3 = t % d3
        r = t // d3
        i2 = r % d2
        r = r // d2
        i1 = r % d1
        i0 = r // d1
        dst[i0, i1, i2, i3] = src[_pick(q0, i0, i1, i2, i3), _pick(q1, i0, i1, i2, i3),
                                  _pick(q2, i0, i1, i2, i3), _pick(q3, i0, i1, i2, i3)]


@cuda.jit
def _copy3(src, dst):
    """dst (contiguous) = src (3-D, any strides)."""
    d1, d2 = dst.shape[1], dst.shape[2]
    total = dst.shape[0] * d1 * d2
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        i2 = t % d2
        r = t // d2
        dst[r // d1, r % d1, i2] = src[r // d1, r % d1, i2]


@cuda.jit
def _copy5(src, dst):
    """dst (contiguous) = src (5-D, any strides)."""
    d1, d2, d3, d4 = dst.shape[1], dst.shape[2], dst.shape[3], dst.shape[4]
    for t in range(cuda.grid(1), dst.shape[0] * d1 * d2 * d3 * d4, cuda.gridsize(1)):
        i4 = t % d4
        r = t // d4
        i3 = r % d3
        r //= d3
        i2 = r % d2
        r //= d2
        dst[r // d1, r % d1, i2, i3, i4] = src[r // d1, r % d1, i2, i3, i4]


@cuda.jit
def _copy2(src, dst):
    """dst (contiguous) = src (2-D, any strides)."""
    d1 = dst.shape[1]
    for t in range(cuda.grid(1), dst.shape[0] * d1, cuda.gridsize(1)):
        dst[t // d1, t % d1] = src[t // d1, t % d1]


@cuda.jit
def _copy1(src, dst):
    """dst (contiguous) = src (1-D, any stride)."""
    for t in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[t] = src[t]


@cuda.jit
def _fill(a, value):
    """a (1-D) = value."""
    for t in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
        a[t] = value


def _record(layout) -> Layout:
    """The :class:`fastconv.layout.Layout` record of ``layout`` (a record or its name,
    already validated by the caller)."""
    return layout if isinstance(layout, Layout) else LAYOUTS[layout]


def permute(d, perm):
    """A contiguous copy of the 4-D device array ``d`` laid out as ``d.transpose(perm)``:
    axis k of the result is axis perm[k] of ``d`` (numpy's order; the layout records'
    permutations are in this order)."""
    perm = tuple(perm)
    dest = [0] * 4  # for each axis of d, the result axis it goes to
    for k, a in enumerate(perm):
        dest[a] = k
    out = cuda.device_array(tuple(d.shape[a] for a in perm), d.dtype)
    launch(_permute4, out.size, d, out, *dest)
    return out


def contiguous(d):
    """``d`` itself when C-contiguous, else a contiguous device copy (1-D to 5-D)."""
    if d.is_c_contiguous():
        return d
    if d.ndim == 4:
        return permute(d, range(4))
    copy = {1: _copy1, 2: _copy2, 3: _copy3, 5: _copy5}.get(d.ndim)
    if copy is None:
        raise AssertionError(f"contiguous: {d.ndim}-D device array")  # callers validate ndim
    out = cuda.device_array(d.shape, d.dtype)
    launch(copy, out.size, d, out)
    return out


def batched(d):
    """A contiguous 4-D view of a 3-D (unbatched) or 4-D device array."""
    d = contiguous(d)
    return d.reshape((1,) + tuple(d.shape)) if d.ndim == 3 else d


def to_nchw(d, layout):
    """Contiguous (N, C, H, W) copy or view of a 3-D or 4-D activation in ``layout`` (a
    :class:`~fastconv.layout.Layout` or its name; a 3-D array gets N = 1)."""
    lay = _record(layout)
    d = batched(d)
    return d if lay.is_canonical else permute(d, lay.to_canonical)


def from_nchw(d, layout, unbatched: bool = False):
    """The (N, C, H, W) result ``d`` in ``layout``'s order, e.g. (N, H, W, C) for NHWC;
    without the N axis (3-D) when ``unbatched``."""
    lay = _record(layout)
    if not lay.is_canonical:
        d = permute(d, lay.from_canonical)
    return d.reshape(tuple(d.shape[1:])) if unbatched else d


def weight_to_oihw(d, layout):
    """Contiguous (O, I, kh, kw) copy or view of a weight in ``layout``'s weight order
    (OIHW for NCHW, HWIO for NHWC)."""
    lay = _record(layout)
    d = contiguous(d)
    return d if lay.is_canonical else permute(d, lay.weight_to_canonical)


def weight_from_oihw(d, layout):
    """The (O, I, kh, kw) weight (gradient) ``d`` in ``layout``'s weight order."""
    lay = _record(layout)
    return d if lay.is_canonical else permute(d, lay.weight_from_canonical)


def zeros(shape, dtype):
    """A zero-filled device array of ``shape`` (an int or a tuple)."""
    out = cuda.device_array(shape, dtype)
    launch(_fill, out.size, out.reshape(out.size), out.dtype.type(0))
    return out
