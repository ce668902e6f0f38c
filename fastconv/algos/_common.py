"""Helpers shared by the algorithm modules."""

from __future__ import annotations

import threading
import types

import numpy as np
from numba import njit, uint64

from .. import _pool, config

#: Index type for the inner loops of kernels. numba handles a negative signed index by
#: wrapping it (``a[-1]``), and that per-element check stops LLVM from vectorising the
#: loop; offsets cast with ``U`` are unsigned, so the check disappears (a copy loop over
#: a 56-wide row ran at 4 GB/s with signed and 35 GB/s with unsigned offsets, one core).
#: Only cast values known to be >= 0, and keep both operands of +, * unsigned (uint64
#: with int64 gives float64 in numba).
U = uint64


@njit(inline="always")
def scalar_only(last, end) -> bool:
    """``last >= end``: for a loop over strided reads whose last index ``last`` is known
    to lie below ``end``, a second exit (``if scalar_only(...): break``) that is never
    taken. LLVM does not vectorise a loop with two exits; without it, it turns reads 4
    elements apart into gathers (``vgatherqps``), which ran the F(4x4, 3x3) input
    transform 1.7-2.2x slower than scalar code (2-core AMD EPYC, AVX-512)."""
    return last >= end


@njit(inline="always")
def valid_range(n_out: int, offset: int, stride: int, size: int) -> tuple[int, int]:
    """Indices t in [lo, hi) with 0 <= t*stride + offset < size, clipped to [0, n_out)."""
    # t*stride + offset >= 0  <=>  t >= ceil(-offset / stride)
    lo = 0 if offset >= 0 else (-offset + stride - 1) // stride
    # t*stride + offset <= size - 1  <=>  t <= floor((size - 1 - offset) / stride)
    top = size - 1 - offset
    hi = 0 if top < 0 else min(top // stride + 1, n_out)
    return min(lo, hi), hi


def interior_columns(a) -> tuple[int, int]:
    """The output columns j_lo <= j < j_hi of the conv ``a`` whose whole kernel row lies
    inside the image's columns (the others reach into the left or right padding)."""
    (sw, rw), pl = (a.stride[1], a.dilation[1]), a.padding[1][0]
    j_lo = min(a.w_out, (pl + sw - 1) // sw)
    return j_lo, max(j_lo, min(a.w_out, (a.w + pl - (a.kw - 1) * rw - 1) // sw + 1))


def serial_twin(kernel):
    """The parallel numba kernel ``kernel`` compiled without threads (its other options
    kept), for work that Python threads share out (``_blas.on_threads``) or calls too
    early for the parallel kernel (``algos.tiered``). The twin releases the GIL
    (``nogil``): a numba function holds it for its whole call otherwise, and the
    threads' calls would take turns instead of overlapping.

    numba's on-disk cache keys a kernel by module, name, first line and signature, not
    by its options: a twin compiled from the same Python function would share the
    kernel's cache entries, and whichever was compiled last would be loaded for both
    (a parallel kernel running on one thread). So the twin is compiled from a copy of the
    function named ``<name>_serial``, which the cache keeps apart."""
    f = kernel.py_func
    copy = types.FunctionType(f.__code__, f.__globals__, f.__name__ + "_serial",
                              f.__defaults__, f.__closure__)
    copy.__qualname__ = f.__qualname__ + "_serial"
    copy.__doc__ = f.__doc__
    options = {k: v for k, v in kernel.targetoptions.items()
               if k not in ("parallel", "nopython")}
    return njit(cache=True, nogil=True, **options)(copy)


def geometry(args) -> tuple[int, int, int, int, int, int]:
    """(s_h, s_w, p_top, p_left, r_h, r_w) of a conv2d record: the stride, the leading
    padding and the dilation, in the order the kernels take them."""
    return (args.stride[0], args.stride[1], args.padding[0][0], args.padding[1][0],
            args.dilation[0], args.dilation[1])


def read_only(a: np.ndarray) -> np.ndarray:
    """A read-only view of ``a`` (``a`` itself when it already is): kernels that never
    write their input take it so, and then compile one variant for read-only inputs (a
    memory-mapped dataset) and writable ones alike (tens of seconds each)."""
    if not a.flags.writeable:
        return a
    out = a.view()
    out.flags.writeable = False
    return out


def view(a: np.ndarray, shape) -> np.ndarray:
    """``a`` reshaped without copying (raises if a copy would be needed)."""
    v = a.view()
    v.shape = shape
    return v


# ------------------------------------------------------------------ cached workspaces
_local = threading.local()


def workspace(slot: str, size: int, dtype) -> np.ndarray:
    """A 1-D scratch array of ``size`` elements, reused across calls in this thread.

    Fresh multi-megabyte buffers cost a page fault per 4 KiB page on first touch (about
    0.5 ms for 8 MiB); keeping one buffer per (thread, slot, dtype) avoids that. The
    buffer only grows, so a thread holds at most the largest tile it has used per slot.
    The caller must not keep the view beyond its own call (the next call reuses it).
    Its data starts on a cache line (``fastconv._pool.aligned_empty``).
    """
    dtype = np.dtype(dtype)
    cache = getattr(_local, "buffers", None)
    if cache is None:
        cache = _local.buffers = {}
    key = (slot, dtype.char)
    buf = cache.get(key)
    if buf is None or buf.size < size:
        if size * dtype.itemsize > config.WORKSPACE_CACHE_BYTES:
            return _pool.aligned_empty(size, dtype)  # too big to keep: a one-off buffer
        buf = cache[key] = _pool.aligned_empty(size, dtype)
    return buf[:size]
