"""Result arrays of repeating shapes reused instead of allocated afresh.

A training step allocates the same activations and gradients every step, each a few
megabytes, and frees them by the end of it. glibc's malloc hands most of that memory
back to the system and maps it again on the next step, a page fault for every 4 KiB
touched (on the small ResNet's step about 3,600 faults and 7 ms of system time). The
pool keeps the arrays it hands out (C-contiguous, at least ``MIN_BYTES``) and gives
one again, for the same shape and dtype, once nothing but the pool refers to it: no
variable, container or view holds it (a view refers to the array's buffer: arrays
from ``MIN_BYTES`` on are views of a byte buffer, their data aligned to ``ALIGN``).
That is read from the reference counts of the array and of its buffer, compared with
those of an array nobody else holds (measured once, ``_FREE_REFS``), under a lock. The
pool holds at most ``config.POOL_BYTES``; beyond that, free arrays of other shapes are
let go first, and if that is not enough the new array is an unpooled one.

>>> import numpy as np
>>> a = empty((256, 256), np.float32)
>>> a.fill(1.0)
>>> addr = a.ctypes.data
>>> del a                                  # nothing holds it: the next one reuses it
>>> b = empty((256, 256), np.float32)
>>> b.ctypes.data == addr
True
>>> c = empty((256, 256), np.float32)      # b is held: a new array
>>> c.ctypes.data == b.ctypes.data
False
"""

from __future__ import annotations

import math
import sys
import threading

import numpy as np

from . import config

#: Arrays smaller than this come from malloc's arenas without page faults: not pooled.
MIN_BYTES = 64 * 1024
#: Bytes the data of an array of at least ``MIN_BYTES`` is aligned to, pooled or not: a
#: cache line, so that kernels may write whole lines past the caches
#: (``_lanes.store_stream``; malloc's large blocks start 16 bytes past a page boundary).
ALIGN = 64

_lock = threading.Lock()
_arrays: dict[tuple, list[np.ndarray]] = {}   # (shape, dtype) -> the arrays handed out
_held = [0]                                   # bytes in the pool


def aligned_empty(shape, dtype) -> np.ndarray:
    """``np.empty(shape, dtype)`` whose data starts on an ``ALIGN``-byte boundary: a view
    of a byte buffer, which is its ``base`` and the base of every view made from it.
    (numpy's own arrays of more than a few KB start 16 bytes past one.)"""
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else \
        tuple(map(int, shape))
    dtype = np.dtype(dtype)
    buf = np.empty(math.prod(shape) * dtype.itemsize + ALIGN, np.uint8)
    return np.ndarray(shape, dtype, buf, -buf.ctypes.data % ALIGN)


def aligned(a: np.ndarray) -> np.ndarray:
    """``a`` C-contiguous, writable and with its data on an ``ALIGN``-byte boundary: ``a``
    itself where it is, else a copy (a read-only operand would compile numba kernels of
    its own). For operands that kernels read a whole vector register at a time
    over and over (packed weights): a vector that straddles two cache lines costs two
    loads. (6 x 4-register tiles of (896, 576) @ (576, 128), one core of a 2-core Intel
    Xeon: 179 GFLOP/s with the right operand on a cache line, 156-158 16 bytes past one.)
    """
    if a.flags.c_contiguous and a.flags.writeable and a.ctypes.data % ALIGN == 0:
        return a
    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


def _refs_in_scan(arrays) -> tuple[int, int]:
    """The reference counts of each array and of its buffer as a scan sees them
    (``_take``'s loop)."""
    for a in arrays:
        return sys.getrefcount(a), sys.getrefcount(a.base)
    return 0, 0


#: An array that only the pool's list holds, and its buffer that only the array holds,
#: seen from inside a scan.
_FREE_REFS, _FREE_BUFFER_REFS = _refs_in_scan([aligned_empty((1,), np.dtype(np.float32))])


def _take(arrays):
    """The first array of ``arrays`` nothing else holds, or None. A view of a pooled
    array refers to its buffer, not to it (numpy makes a view's base the array that
    owns the memory): both counts are looked at."""
    for a in arrays:
        if sys.getrefcount(a) == _FREE_REFS and sys.getrefcount(a.base) == _FREE_BUFFER_REFS:
            return a
    return None


def _release(nbytes: int) -> None:
    """Let free arrays go (those nobody holds) until ``nbytes`` more fit the budget."""
    for key in list(_arrays):
        arrays = _arrays[key]
        while _held[0] + nbytes > config.POOL_BYTES:
            a = _take(arrays)
            if a is None:
                break
            del arrays[next(i for i, b in enumerate(arrays) if b is a)]   # not ==
            _held[0] -= a.nbytes
        if not arrays:
            del _arrays[key]
        if _held[0] + nbytes <= config.POOL_BYTES:
            return


def empty(shape, dtype) -> np.ndarray:
    """``np.empty(shape, dtype)`` (C-contiguous, uninitialised), from the pool where one
    of that shape and dtype is free, else new (and kept by the pool when it fits); from
    ``MIN_BYTES`` on, its data aligned to ``ALIGN`` bytes."""
    shape = tuple(map(int, shape))
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES:
        return np.empty(shape, dtype)
    if config.POOL_BYTES <= 0:
        return aligned_empty(shape, dtype)
    key = (shape, dtype.str)
    with _lock:
        arrays = _arrays.setdefault(key, [])
        a = _take(arrays)
        if a is not None:
            return a
        if _held[0] + nbytes > config.POOL_BYTES:
            _release(nbytes)
            arrays = _arrays.setdefault(key, [])
        a = aligned_empty(shape, dtype)
        if _held[0] + nbytes <= config.POOL_BYTES:
            arrays.append(a)
            _held[0] += nbytes
        return a


def held_bytes() -> int:
    """Bytes of the arrays the pool keeps (free or handed out)."""
    return _held[0]


def clear() -> None:
    """Let every array go (those still held elsewhere stay valid, just not pooled)."""
    with _lock:
        _arrays.clear()
        _held[0] = 0
