"""Result arrays of repeating shapes reused instead of allocated afresh.

A training step allocates the same activations and gradients every step, each a few
megabytes, and frees them by the end of it. glibc's malloc hands most of that memory
back to the system and maps it again on the next step, a page fault for every 4 KiB
touched (on the small ResNet's step about 3,600 faults and 7 ms of system time). The
pool keeps the arrays it hands out (C-contiguous, at least ``MIN_BYTES``) and gives
one again, for the same shape and dtype, once nothing but the pool refers to it: no
variable, container or view holds it (a view refers to the array it was made from).
That is read from the reference count, compared with the count of an array nobody
else holds (measured once, ``_FREE_REFS``), under a lock. The pool holds at most
``config.POOL_BYTES``; beyond that, free arrays of other shapes are let go first, and
if that is not enough the new array is an ordinary one.

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

_lock = threading.Lock()
_arrays: dict[tuple, list[np.ndarray]] = {}   # (shape, dtype) -> the arrays handed out
_held = [0]                                   # bytes in the pool


def _refs_in_scan(arrays) -> int:
    """The reference count of each array as a scan sees it (``_take``'s loop)."""
    for a in arrays:
        return sys.getrefcount(a)
    return 0


#: An array that only the pool's list holds, seen from inside a scan.
_FREE_REFS = _refs_in_scan([np.empty(0)])


def _take(arrays):
    """The first array of ``arrays`` nothing else holds, or None."""
    for a in arrays:
        if sys.getrefcount(a) == _FREE_REFS:
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
    of that shape and dtype is free, else new (and kept by the pool when it fits)."""
    shape = tuple(map(int, shape))
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES or config.POOL_BYTES <= 0:
        return np.empty(shape, dtype)
    key = (shape, dtype.str)
    with _lock:
        arrays = _arrays.setdefault(key, [])
        a = _take(arrays)
        if a is not None:
            return a
        if _held[0] + nbytes > config.POOL_BYTES:
            _release(nbytes)
            arrays = _arrays.setdefault(key, [])
        a = np.empty(shape, dtype)
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
