"""The BLAS libraries numpy links, found through threadpoolctl (``numpy_blas``).

``_blas`` limits their threads and ``_cblas`` calls their ``cblas_?gemm``; both find the
libraries here.
"""

from __future__ import annotations

import os

import numpy as np

_libs = None           # numpy's BLAS controllers (threadpoolctl), found on first use
_knobs = None          # (get, set) of each one's thread count, found on first use


def numpy_blas() -> tuple:
    """threadpoolctl controllers of the BLAS libraries numpy links (() when unknown)."""
    global _libs
    if _libs is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _libs = ()
            return _libs
        libs = [lib for lib in ThreadpoolController().lib_controllers
                if lib.user_api == "blas"]
        own = [lib for lib in libs if bundled(lib.filepath, np)]
        _libs = tuple(own or libs)
    return _libs


def thread_knobs() -> tuple:
    """((get, set), ...): functions that read and set the thread count of each of
    ``numpy_blas``'s libraries. For an OpenBLAS on its own threads (not OpenMP's), its
    ``openblas_get_num_threads`` / ``openblas_set_num_threads`` called through ctypes
    directly (0.4 against 1.3 us for a read and two sets through threadpoolctl's
    controller, which a small product pays each time, ``_blas.one_blas_thread``); else
    the controller's own methods."""
    global _knobs
    if _knobs is None:
        _knobs = tuple(_direct_knobs(lib) or (lib.get_num_threads, lib.set_num_threads)
                       for lib in numpy_blas())
    return _knobs


def _direct_knobs(lib):
    """(get, set) of an OpenBLAS controller ``lib`` through ctypes, or None."""
    if getattr(lib, "internal_api", None) != "openblas" \
            or getattr(lib, "threading_layer", None) == "openmp":
        return None
    dynlib = getattr(lib, "dynlib", None)
    for prefix in ("", "scipy_"):
        for suffix in ("", "64_", "_64"):
            get = getattr(dynlib, f"{prefix}openblas_get_num_threads{suffix}", None)
            put = getattr(dynlib, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                return get, put
    return None


def bundled(path: str, module) -> bool:
    """Whether the library at ``path`` ships inside ``module``'s package (its own
    directory, or the ``<name>.libs`` one of a wheel)."""
    return os.path.dirname(path).startswith(os.path.join(
        os.path.dirname(os.path.dirname(module.__file__)), module.__name__))
