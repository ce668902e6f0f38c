"""Time from a fresh interpreter to the first conv2d result, with numba's cache warm and
cold.

Each run is a new process: it records the time just before ``import fastconv`` and after
the first ``conv2d`` returns (an 8-channel 3x3 layer on x (1, 3, 32, 32) float32,
algo="auto"), and the whole process's wall time is measured from outside too. Cold: an
empty NUMBA_CACHE_DIR (every kernel the call needs compiles). Warm: the same directory
again.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import time
t0 = time.perf_counter()
import numpy as np
import fastconv
t1 = time.perf_counter()
x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
w = np.random.default_rng(1).standard_normal((8, 3, 3, 3)).astype(np.float32)
y = fastconv.conv2d(x, w, padding=1)
t2 = time.perf_counter()
assert y.shape == (1, 8, 32, 32)
print(t1 - t0, t2 - t0)
"""


def one_run(cache_dir: str) -> dict:
    """One fresh interpreter with NUMBA_CACHE_DIR=``cache_dir``: seconds to import, to
    import and return the first conv2d, and of the whole process."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                         text=True, check=True)
    wall = time.perf_counter() - start
    imp, first = (float(v) for v in out.stdout.split())
    return {"import_s": imp, "import_and_first_conv_s": first, "process_wall_s": wall}


def measure(runs: int = 5) -> dict:
    """One cold run in an empty cache directory, then ``runs`` warm runs in it: {"cold",
    "warm_median" (per field), "warm_runs"}."""
    with tempfile.TemporaryDirectory(prefix="fastconv-startup-") as cache:
        cold = one_run(cache)
        warm = [one_run(cache) for _ in range(runs)]
    med = {k: statistics.median(r[k] for r in warm) for k in warm[0]}
    return {"cold": cold, "warm_median": med, "warm_runs": warm}


def format_result(result: dict) -> str:
    """``measure``'s result as two lines: cold cache, warm cache (median)."""
    runs = len(result["warm_runs"])
    return "\n".join(
        f"{label}: import {r['import_s']:.3f} s, import + first conv2d "
        f"{r['import_and_first_conv_s']:.3f} s, whole process {r['process_wall_s']:.3f} s"
        for label, r in (("cold cache", result["cold"]),
                         (f"warm cache (median of {runs})", result["warm_median"])))
