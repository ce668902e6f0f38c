"""The BLAS libraries numpy links, found through threadpoolctl (``numpy_blas``).

``_blas`` limits their threads and ``_cblas`` calls their ``cblas_?gemm``; both find the
libraries here.
"""

from __future__ import annotations

import os

import numpy as np

_libs = None           # numpy's BLAS controllers (threadpoolctl), found on first use


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


def bundled(path: str, module) -> bool:
    """Whether the library at ``path`` ships inside ``module``'s package (its own
    directory, or the ``<name>.libs`` one of a wheel)."""
    return os.path.dirname(path).startswith(os.path.join(
        os.path.dirname(os.path.dirname(module.__file__)), module.__name__))
