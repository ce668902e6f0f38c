"""Numba set-up that must happen before the first kernel compiles.

* Threading layer: fastconv is called from many Python threads and from forked
  workers, so it wants TBB (thread- and fork-safe). pip's ``tbb`` wheel puts
  ``libtbb.so.12`` in ``<prefix>/lib``, which the loader does not search, so it is
  preloaded here. Without TBB, omp (thread-safe) and then workqueue are used; with
  workqueue, concurrent parallel calls would abort the process, so ``parallel_guard``
  serialises them.
* Cache: kernels use ``cache=True``. Numba refuses to import such modules when no
  cache location is writable, so when ``NUMBA_CACHE_DIR`` is unset and the package
  directory is read-only, the cache goes to ``config.CACHE_DIR/numba``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
import warnings

from . import config

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


def _writable_dir(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def _package_dirs():
    """The package's directories (numba caches a kernel beside its source file)."""
    for root, dirs, _ in os.walk(_PKG_DIR):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        yield root


def _choose_cache_dir() -> None:
    """Make sure numba has a writable cache location (set before numba is imported)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    if all(_writable_dir(os.path.join(d, "__pycache__")) for d in _package_dirs()):
        return
    fallback = os.path.join(config.CACHE_DIR, "numba")
    if _writable_dir(fallback):
        os.environ["NUMBA_CACHE_DIR"] = fallback
        return
    # Nothing writable: numba would fail to import our modules. A fresh temporary dir
    # keeps everything working (compiled once per process) and says so once.
    import atexit
    import shutil
    import tempfile

    tmp = tempfile.mkdtemp(prefix="fastconv-numba-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    os.environ["NUMBA_CACHE_DIR"] = tmp
    warnings.warn(
        "fastconv: no writable numba cache directory (package dir read-only, "
        f"{fallback} not writable); kernels are compiled once per process",
        RuntimeWarning,
        stacklevel=3,
    )


def _tbb_available() -> bool:
    """Preload pip's libtbb if present; True when numba can use the TBB layer."""
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        lib = os.path.join(prefix, "lib", "libtbb.so.12")
        if os.path.exists(lib):
            try:
                ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                continue
            break
    try:
        from numba.np.ufunc import tbbpool  # noqa: F401
    except Exception:  # ImportError, or OSError when the library version is wrong
        return False
    return True


def _omp_available() -> bool:
    try:
        from numba.np.ufunc import omppool  # noqa: F401
    except Exception:
        return False
    return True


def _choose_threading_layer() -> str:
    import numba

    user = os.environ.get("NUMBA_THREADING_LAYER")
    if user:
        return user
    for layer in config.THREADING_LAYER_PREFERENCE:
        if layer == "tbb" and _tbb_available():
            break
        if layer == "omp" and _omp_available():
            break
    else:
        layer = "workqueue"
    numba.config.THREADING_LAYER = layer
    return layer


_choose_cache_dir()
REQUESTED_THREADING_LAYER = _choose_threading_layer()

_workqueue_lock = threading.Lock()


def threading_layer() -> str:
    """The numba threading layer in use (or requested, before the first parallel call)."""
    import numba

    try:
        return numba.threading_layer()
    except ValueError:  # no parallel function has run yet
        return REQUESTED_THREADING_LAYER


def parallel_guard():
    """Context for calling a parallel kernel: a lock under workqueue, nothing otherwise."""
    if REQUESTED_THREADING_LAYER == "workqueue":
        return _workqueue_lock
    return contextlib.nullcontext()
