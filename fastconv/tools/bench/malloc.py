"""The state of glibc's malloc in which the benchmarks time other libraries.

glibc maps arrays above an adaptive threshold (128 KiB at first) afresh on every
allocation, page-faulting them in, and raises the threshold to the size of the largest
mapped block freed so far (at most 32 MiB); it returns the heap's top to the system
once more than twice that lies free there. torch allocates its outputs and work
buffers on every call, so the arrays a process happened to free before decide how often
it faults. fastconv takes its results from a pool (``fastconv._pool``) and faults little
either way. ``settle_allocator`` puts every run in the same natural state;
``fix_malloc`` fixes the thresholds, a knob whose results are reported apart.
"""

from __future__ import annotations

import platform

import numpy as np

#: Bytes of the array ``settle_allocator`` frees: just under glibc's largest adaptive
#: mmap threshold (32 MiB on 64-bit systems; a larger freed block leaves it alone).
SETTLE_BYTES = 31 << 20


def settle_allocator() -> str:
    """Put glibc's malloc in the state of a process that has freed one large array, for
    every library timed after it, and describe it for the report. torch's stem layer
    (x (8, 3, 224, 224), w (64, 3, 7, 7)) in a fresh process faulted about 12,500 times
    a call and took 20 ms, 7.4 ms with no faults after one 30 MB numpy array had been
    freed. One free of ``SETTLE_BYTES`` raises the threshold once for the whole process;
    no malloc setting is changed. (The heap's top can still be returned to the system,
    and its pages faulted in again, when much of it lies free.)"""
    if platform.libc_ver()[0] != "glibc":
        return "system allocator"
    block = np.ones(SETTLE_BYTES // 8)       # touched, so it is really mapped
    del block
    return f"glibc malloc after one free of a {SETTLE_BYTES >> 20} MiB array"


def fix_malloc(mib: int) -> str:
    """glibc's thresholds fixed for the rest of the process: arrays up to ``mib`` MiB
    come from the heap, whose top is returned to the system only beyond 4 x ``mib`` MiB
    (neither framework then faults much); returns a description for the report.
    ``mib`` <= 0 changes nothing."""
    if mib <= 0:
        return "glibc defaults (adaptive thresholds)"
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = (libc.mallopt(m_mmap_threshold, mib << 20) == 1
              and libc.mallopt(m_trim_threshold, 4 * mib << 20) == 1)
    except (OSError, AttributeError):
        ok = False
    if not ok:
        return "defaults (mallopt unavailable)"
    return f"glibc mallopt: mmap threshold {mib} MiB, trim threshold {4 * mib} MiB"


