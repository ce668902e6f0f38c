"""A thread-safe shared-memory allocator for numba's CUDA simulator.

The simulator runs each GPU thread of a block as a Python thread and gives the block's
threads one numpy array per ``cuda.shared.array`` call site, kept in a dict keyed by
(file, line). It looks the key up and inserts a new array without a lock, so when two
threads of a launch's first block reach the allocation together, each can create its
own array: one thread then works on a private copy that the others never write, and the
GEMM tile (or reduction) it belongs to comes out wrong. That happened once in CI: one wrong
output element, y[0, 0, 0, 0], of an im2col conv2d (rare; widening the window with a
sleep in numpy.empty makes every launch fail, see tests/cuda/test_simulator.py).

:func:`install` replaces the allocator with one that does the lookup and insert under a
lock; everything else (keying by call site, dynamic shared memory, the error for
``alignment``) is the simulator's own behaviour. On a GPU nothing is changed.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

_LOCK = threading.Lock()
_installed = False


def install() -> bool:
    """Make the simulator's shared-array allocation atomic (once per process).

    Returns True when the allocator is (now) the locked one, False when this numba has no
    simulator allocator of the expected form (then nothing is changed).
    """
    global _installed
    if _installed:
        return True
    try:
        from numba.cuda.simulator import kernelapi
    except ImportError:
        return False
    shared_cls = getattr(kernelapi, "FakeCUDAShared", None)
    original = getattr(shared_cls, "array", None)
    # The simulator's own type modules (numba-cuda has its own copies of numba's).
    nb_types = getattr(kernelapi, "types", None)
    numpy_support = getattr(kernelapi, "numpy_support", None)
    if original is None or nb_types is None or numpy_support is None:
        return False

    def numpy_dtype(dtype):
        if isinstance(dtype, nb_types.Type):
            return numpy_support.as_dtype(dtype)
        return np.dtype(dtype)

    def array(self, shape, dtype, alignment=None):
        allocations = getattr(self, "_allocations", None)
        if alignment is not None or shape == 0 or not isinstance(allocations, dict):
            # Unsupported alignment (the simulator raises), dynamic shared memory (one
            # buffer made up front: no race) or an unknown layout: the simulator's code.
            return original(self, shape, dtype, alignment)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with _LOCK:
            res = allocations.get(key)
            if res is None:
                res = np.empty(shape, numpy_dtype(dtype))
                allocations[key] = res
        return res

    array.__doc__ = original.__doc__
    shared_cls.array = array
    _installed = True
    return True

