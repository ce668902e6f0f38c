"""Tiered compilation of a parallel kernel for a process's first small calls.

A parallel numba kernel takes about three times as long to compile as the same loops
without threads (numba's parfor lowering compiles the loop body into a gufunc and the
kernel around it), and with an empty cache that compile is most of the wait of a first
small call (a first (1, 3, 32, 32) conv2d: 1.1 of 1.5 s). :func:`run` therefore serves a
small call with the kernel's serial twin while the parallel kernel has no machine code
in this process nor in numba's cache, and compiles the parallel kernel for the twin's
signatures on a background thread (once per kernel and process). Once that is done,
every call runs the parallel kernel, whose threads pay even on small calls. The twin
computes exactly what the kernel computes (the same Python function), so which of the
two ran never changes a result.

numba compiles under one process-wide lock, so a foreground compile that starts while
the background one runs waits for it: the total compile time of a script is what it
was, only the first call returns sooner. The background thread is not a daemon (an
interpreter exiting mid-compile waits for it rather than tearing down LLVM under it),
and a fork waits for it too (a child must not inherit the compile lock held).
"""

from __future__ import annotations

import os
import threading

from .._runtime import parallel_guard

_lock = threading.Lock()
_threads: dict = {}  # kernel -> its background compile thread (kernels live for good)
_indexed: dict = {}  # kernel -> whether numba's cache had it at first look
_failed: set = set()  # kernels whose background compile raised


def run(kernel, twin, small: bool, *args) -> None:
    """``kernel(*args)`` (under ``parallel_guard``); but ``twin(*args)`` when the call is
    ``small`` and ``kernel`` has no compiled code in this process yet, starting its
    compile in the background."""
    if small and not kernel.overloads and kernel not in _failed and not _on_disk(kernel):
        twin(*args)
        _compile_later(kernel, twin)
        return
    with parallel_guard():
        kernel(*args)


def _on_disk(kernel) -> bool:
    """Whether numba's cache holds code of ``kernel`` (its index file exists: loading it
    is then quicker than compiling the twin). Looked up once per kernel and process."""
    found = _indexed.get(kernel)
    if found is None:
        try:
            found = os.path.exists(kernel._cache._cache_file._index_path)
        except AttributeError:  # a numba without this cache layout: assume not cached
            found = False
        _indexed[kernel] = found
    return found


def _compile_later(kernel, twin) -> None:
    with _lock:
        if kernel in _threads:
            return
        thread = threading.Thread(target=_compile, args=(kernel, list(twin.signatures)),
                                  name="fastconv-compile", daemon=False)
        _threads[kernel] = thread
    thread.start()


def _compile(kernel, signatures) -> None:
    for sig in signatures:
        try:
            kernel.compile(sig)
        except Exception:  # noqa: BLE001 - from now on calls run the kernel in the
            _failed.add(kernel)  # foreground, whose compile raises to the caller
            return


def wait() -> None:
    """Wait for the background compiles started so far (tests; before a fork)."""
    with _lock:
        threads = list(_threads.values())
    for thread in threads:
        if thread.is_alive() and thread is not threading.current_thread():
            thread.join()


os.register_at_fork(before=wait)
