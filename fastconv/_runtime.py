"""Numba set-up that must happen before the first kernel compiles.

* Threading layer: fastconv is called from many Python threads and from forked
  workers, so it wants TBB (thread- and fork-safe). pip's ``tbb`` wheel puts
  ``libtbb.so.12`` in ``<prefix>/lib``, which the loader does not search, so it is
  preloaded here. Without TBB, omp (thread-safe) and then workqueue are used; with
  workqueue, concurrent parallel calls would abort the process, so ``parallel_guard``
  serialises them.
* Cache: kernels use ``cache=True``. One cache serves every way of running fastconv
  (the CLI, the tests, a user's scripts, from any checkout or install): numba's
  ``NUMBA_CACHE_DIR`` when set, else ``config.CACHE_DIR/numba/<sources>`` (the user's
  cache directory, never the package directory), where ``<sources>`` is a hash of
  fastconv's kernel modules (``source_fingerprint``): numba checks only the file a
  kernel is written in, so a kernel that calls or inlines a helper of another module
  would keep running the helper's old code after an upgrade or an edit. The
  ``KEEP_CACHES`` most recently used of those directories are kept, older ones removed.
  When none is writable, a temporary directory is used and one warning says so (numba
  refuses to import cached kernels without a writable location).
* First use: the first time a kernel of fastconv actually compiles (not found in the
  cache) in a process, one line on stderr says so (``NOTICE``), unless
  ``config.QUIET`` (``FASTCONV_QUIET=1``). It listens to numba's compile event, which
  numba raises only for a real compile, so a compiled or cached kernel costs nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import shutil
import sys
import threading
import warnings

from . import config

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))

#: The line written to stderr when a kernel compiles for the first time in a process.
NOTICE = "fastconv: compiling kernels for first use (cached afterwards)\u2026"


def _writable_dir(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def _set_cache_dir(path: str) -> None:
    os.environ["NUMBA_CACHE_DIR"] = path
    if "numba" in sys.modules:  # imported before fastconv: numba read its config already
        sys.modules["numba"].config.CACHE_DIR = path


def cache_dir() -> str:
    """numba's cache directory in use (``NUMBA_CACHE_DIR``, set at import)."""
    return os.environ.get("NUMBA_CACHE_DIR", "")


#: Kernel caches of other sources (older versions, other checkouts) kept beside the one
#: in use, the most recently used first.
KEEP_CACHES = 3
#: Entries of ``config.CACHE_DIR/numba`` that ``_prune_caches`` may remove: source
#: hashes, and the per-directory caches numba wrote there before them ("im2col_<sha1>").
_CACHE_ENTRY = re.compile(r"[0-9a-f]{16}|\w+_[0-9a-f]{40}")


def source_fingerprint(root: str = _PKG_DIR) -> str:
    """A hash of the modules under ``root`` that use numba (their paths and contents):
    the name of the kernel cache these sources compile into.

    >>> len(source_fingerprint()), source_fingerprint() == source_fingerprint()
    (16, True)
    """
    digest = hashlib.sha1()
    for path, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            with open(os.path.join(path, name), "rb") as f:
                data = f.read()
            if b"numba" in data:
                digest.update(os.path.relpath(os.path.join(path, name), root).encode())
                digest.update(data)
    return digest.hexdigest()[:16]


def _prune_caches(root: str, current: str, keep: int = KEEP_CACHES) -> None:
    """Remove the entries of ``root`` other than ``current`` and the ``keep`` most
    recently used (by modification time; ``current`` is touched first)."""
    with contextlib.suppress(OSError):
        os.utime(os.path.join(root, current))
        entries = [e for e in os.scandir(root) if e.is_dir() and e.name != current
                   and _CACHE_ENTRY.fullmatch(e.name)]
        entries.sort(key=lambda e: e.stat().st_mtime, reverse=True)
        for entry in entries[keep:]:
            shutil.rmtree(entry.path, ignore_errors=True)


def _choose_cache_dir() -> None:
    """Make sure numba has a writable cache location (set before numba is imported)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    root = os.path.join(config.CACHE_DIR, "numba")
    fingerprint = source_fingerprint()
    default = os.path.join(root, fingerprint)
    if _writable_dir(default):
        _prune_caches(root, fingerprint)
        _set_cache_dir(default)
        return
    # Nothing writable: numba would fail to import our modules. A fresh temporary dir
    # keeps everything working (compiled once per process) and says so once.
    import atexit
    import shutil
    import tempfile

    tmp = tempfile.mkdtemp(prefix="fastconv-numba-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    _set_cache_dir(tmp)
    warnings.warn(
        f"fastconv: no writable numba cache directory ({default} not writable); kernels "
        "are compiled once per process",
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
        # numba's own choices that try TBB first need pip's libtbb preloaded too
        # (else "tbb" and "safe" fail at the first parallel call)
        if user.lower() not in ("omp", "workqueue"):
            _tbb_available()
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


class _FirstCompile:
    """numba listener: writes ``NOTICE`` once, at the first compile of a fastconv kernel.

    numba raises "numba:compile" only when a signature is neither compiled nor in the
    cache, and never on a call that finds its kernel, so the hot path is untouched.
    """

    def __init__(self):
        self.shown = False
        self.compiles = 0  # fastconv kernels compiled in this process (not from the cache)
        self.hooks = []    # called (no arguments) at each such compile, before it runs

    def on_start(self, event) -> None:
        dispatcher = (event.data or {}).get("dispatcher")
        func = getattr(dispatcher, "py_func", None)
        if not getattr(func, "__module__", "").startswith(__package__ + "."):
            return  # the user's own numba functions
        self.compiles += 1
        for hook in tuple(self.hooks):
            hook()
        if self.shown:
            return
        self.shown = True
        if not config.QUIET:
            print(NOTICE, file=sys.stderr, flush=True)

    def on_end(self, event) -> None:
        pass


def _listen_for_compiles() -> _FirstCompile:
    from numba.core import event

    listener = type("FirstCompileListener", (_FirstCompile, event.Listener), {})()
    event.register("numba:compile", listener)
    return listener


_choose_cache_dir()
REQUESTED_THREADING_LAYER = _choose_threading_layer()
FIRST_COMPILE = _listen_for_compiles()

_workqueue_lock = threading.Lock()
#: ``parallel_guard``'s context outside workqueue: one shared no-op (stateless, so any
#: number of threads and nested blocks may hold it), not a new one per kernel call.
_NO_GUARD = contextlib.nullcontext()


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
    return _NO_GUARD


def guarded(kernel):
    """``kernel`` (a parallel numba kernel) as a function that calls it under
    ``parallel_guard``: concurrent parallel calls abort the process under numba's
    workqueue layer. Outside workqueue, where the guard does nothing, ``kernel`` itself
    (``guarded(kernel)(...)`` costs a layer's call one Python call, ``with
    parallel_guard():`` three). Serial twins running on ``_blas.on_threads`` take no
    guard (it would serialise them)."""
    if REQUESTED_THREADING_LAYER != "workqueue":
        return kernel

    def call(*args):
        with parallel_guard():
            return kernel(*args)
    return call
