"""Device-side layout changes: every compute kernel works on contiguous NCHW arrays.

NHWC inputs and HWIO weights are permuted into NCHW / OIHW copies on the device
(``_permute4``), strided inputs are made contiguous the same way, and results are
permuted back. This costs one pass over the data and keeps every compute kernel to a
single layout.
"""

from __future__ import annotations

from numba import cuda

from ._device import launch_1d

# For each SOURCE axis, the destination axis it goes to.
NHWC_TO_NCHW = (0, 2, 3, 1)
NCHW_TO_NHWC = (0, 3, 1, 2)
HWIO_TO_OIHW = (2, 3, 1, 0)
OIHW_TO_HWIO = (3, 2, 0, 1)
IDENTITY = (0, 1, 2, 3)


@cuda.jit(device=True)
def _pick(q, i0, i1, i2, i3):
    if q == 0:
        return i0
    if q == 1:
        return i1
    if q == 2:
        return i2
    return i3


@cuda.jit
def _permute4(src, dst, q0, q1, q2, q3):
    """dst (contiguous) [i0, i1, i2, i3] = src[i_q0, i_q1, i_q2, i_q3]; any src strides."""
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
def _copy1(src, dst):
    for t in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[t] = src[t]


@cuda.jit
def _fill(a, value):
    """a (1-D) = value."""
    for t in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
        a[t] = value


def permute(d, q):
    """A contiguous copy of the 4-D device array ``d`` with source axis a moved to q[a]."""
    shape = [0, 0, 0, 0]
    for a, dst_axis in enumerate(q):
        shape[dst_axis] = d.shape[a]
    out = cuda.device_array(tuple(shape), d.dtype)
    if out.size:
        blocks, threads = launch_1d(out.size)
        _permute4[blocks, threads](d, out, *q)
    return out


def contiguous(d):
    """``d`` itself when C-contiguous, else a contiguous device copy (1-D, 3-D or 4-D)."""
    if d.is_c_contiguous():
        return d
    if d.ndim == 4:
        return permute(d, IDENTITY)
    if d.ndim not in (1, 3):
        raise AssertionError(f"contiguous: {d.ndim}-D device array")  # callers validate ndim
    out = cuda.device_array(d.shape, d.dtype)
    blocks, threads = launch_1d(out.size)
    (_copy1 if d.ndim == 1 else _copy3)[blocks, threads](d, out)
    return out


def batched(d):
    """A contiguous 4-D view of a 3-D (unbatched) or 4-D device array."""
    d = contiguous(d)
    return d.reshape((1,) + tuple(d.shape)) if d.ndim == 3 else d


def to_nchw(d, layout: str):
    """Contiguous NCHW copy/view of a 3-D or 4-D activation in ``layout``."""
    d = batched(d)
    return permute(d, NHWC_TO_NCHW) if layout == "NHWC" else d


def from_nchw(d, layout: str, unbatched: bool = False):
    """The NCHW result ``d`` in the caller's layout (3-D when ``unbatched``)."""
    if layout == "NHWC":
        d = permute(d, NCHW_TO_NHWC)
    return d.reshape(tuple(d.shape[1:])) if unbatched else d


def weight_to_oihw(d, layout: str):
    d = contiguous(d)
    return permute(d, HWIO_TO_OIHW) if layout == "NHWC" else d


def weight_from_oihw(d, layout: str):
    return permute(d, OIHW_TO_HWIO) if layout == "NHWC" else d


def zeros(shape, dtype):
    """A zero-filled device array."""
    out = cuda.device_array(shape, dtype)
    if out.size:
        flat = out.reshape(out.size)
        blocks, threads = launch_1d(out.size)
        _fill[blocks, threads](flat, out.dtype.type(0))
    return out
