"""Tiered compilation (``algos.tiered``): a process's first small call runs a kernel's
serial twin while the parallel kernel compiles on a background thread; later calls, and
processes that find the kernel in numba's cache, run the parallel kernel."""

import os
import subprocess
import sys
import textwrap
import threading

import pytest

from fastconv.algos import tiered

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeKernel:
    """Stands in for a numba dispatcher: records calls, compiles by adding overloads."""

    def __init__(self, name, signatures=()):
        self.name, self.calls, self.compiled_on = name, [], []
        self.overloads, self.signatures = {}, list(signatures)
        self.release = threading.Event()

    def __call__(self, *args):
        self.calls.append(args)

    def compile(self, sig):
        self.release.wait(10)
        self.compiled_on.append(threading.current_thread().name)
        self.overloads[sig] = object()


@pytest.fixture
def kernels():
    kernel, twin = FakeKernel("kernel"), FakeKernel("twin", ["sig"])
    yield kernel, twin
    kernel.release.set()
    tiered.wait()


def test_small_first_calls_run_the_twin_until_the_kernel_is_compiled(kernels):
    kernel, twin = kernels
    tiered.run(kernel, twin, True, 1)
    tiered.run(kernel, twin, True, 2)       # still compiling: the twin again
    assert twin.calls == [(1,), (2,)] and kernel.calls == []
    kernel.release.set()
    tiered.wait()
    assert kernel.compiled_on == ["fastconv-compile"]   # once, in the background
    tiered.run(kernel, twin, True, 3)
    assert kernel.calls == [(3,)] and len(twin.calls) == 2


def test_large_calls_run_the_kernel_at_once(kernels):
    kernel, twin = kernels
    tiered.run(kernel, twin, False, 1)
    assert kernel.calls == [(1,)] and twin.calls == []


def test_a_failed_background_compile_sends_later_calls_to_the_kernel(kernels):
    kernel, twin = kernels

    def broken(sig):
        raise RuntimeError("cannot compile")

    kernel.compile = broken
    tiered.run(kernel, twin, True, 1)
    tiered.wait()
    tiered.run(kernel, twin, True, 2)    # the foreground call compiles (and would raise)
    assert twin.calls == [(1,)] and kernel.calls == [(2,)]


CHILD = textwrap.dedent("""
    import numpy as np
    import fastconv
    from fastconv.algos import tiered
    from fastconv.algos.im2col import unfold

    x = np.arange(2 * 5 * 6, dtype=np.float32).reshape(1, 2, 5, 6)
    w = np.ones((3, 2, 3, 3), np.float32)
    y = fastconv.conv2d(x, w, padding=1, algo="im2col")
    first = len(unfold._im2col_nchw_serial.overloads), len(unfold._im2col_nchw.overloads)
    tiered.wait()
    z = fastconv.conv2d(x, w, padding=1, algo="im2col")
    print("TWIN_THEN_KERNEL", *first, len(unfold._im2col_nchw.overloads),
          bool(np.array_equal(y, z)), float(y[0, 0, 2, 3]))
""")


def test_cold_and_warm_processes(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), PYTHONPATH=ROOT, FASTCONV_QUIET="1")

    def child():
        out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    # cold: the twin serves the first call, the kernel is compiled behind it and is then
    # used (same result); warm: the kernel comes from the cache and the twin is unused.
    # y[0, 0, 2, 3] sums x[0, :, 1:4, 2:5]: 135 in channel 0 (6r + c), 135 + 9 * 30 in 1
    assert child() == ["TWIN_THEN_KERNEL", "1", "0", "1", "True", "540.0"]
    assert child() == ["TWIN_THEN_KERNEL", "0", "1", "1", "True", "540.0"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_fork_waits_for_the_background_compile(kernels):
    kernel, twin = kernels
    tiered.run(kernel, twin, True, 1)
    threading.Timer(0.2, kernel.release.set).start()
    pid = os.fork()
    if pid == 0:   # the child leaves at once
        os._exit(0)
    os.waitpid(pid, 0)
    assert kernel.compiled_on == ["fastconv-compile"]   # done before the fork
