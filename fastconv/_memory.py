"""Allocation of results: fail with a clear MemoryError before any work is done."""

from __future__ import annotations

import functools
import math
import os

import numpy as np

from . import _pool


@functools.cache
def physical_memory_bytes() -> int | None:
    """Total physical memory of the machine, or None where it cannot be read (read once)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def allocate(op: str, what: str, shape, dtype) -> np.ndarray:
    """``np.empty(shape, dtype)`` (from ``fastconv._pool`` where one of that shape is
    free), or a MemoryError naming the op, the shape and the size.

    Sizes above the machine's physical memory are refused up front: on Linux such an
    allocation may succeed lazily and the process be killed later, mid-computation."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(map(int, shape)) * dtype.itemsize
    total = physical_memory_bytes()
    if total is not None and nbytes > total:
        raise MemoryError(f"{op}: the {what} of shape {tuple(shape)} ({dtype}) needs "
                          f"{_human(nbytes)}, more than this machine's {_human(total)} of memory")
    try:
        return _pool.empty(shape, dtype)
    except MemoryError:
        raise MemoryError(f"{op}: the {what} of shape {tuple(shape)} ({dtype}) needs "
                          f"{_human(nbytes)}, which cannot be allocated") from None


def _human(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{nbytes} B"
        nbytes /= 1024
    return f"{nbytes} B"  # pragma: no cover
