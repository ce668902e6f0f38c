"""Timings of the backward passes, pooling and batch norm.

On x of shape (batch, 64, 56, 56) float32, NCHW:
(a) conv2d_backward time / conv2d time for im2col (3x3, 64 -> 64, padding 1);
(b) max_pool2d 2x2 stride 2, avg_pool2d 2x2 stride 2 and batch_norm (training), forward
    and backward, fastconv against the plain-NumPy versions in :mod:`.baselines`.
Every result is checked against its counterpart before anything is timed. Each timing is
the median of ``repeat`` calls after one warm-up call (compilation excluded); the
machine's BLAS, threading layer and load are printed with the numbers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numba
import numpy as np
import threadpoolctl

import fastconv
from fastconv._runtime import threading_layer

from . import baselines as nb
from .runner import call_times


def timed(fn, repeat):
    """(median, min) seconds of ``repeat`` calls after one warm-up call."""
    times = call_times(fn, repeat)
    return float(np.median(times)), min(times)


def check(name, got, want, rtol):
    """Exit (SystemExit) when max |got - want| / max |want| exceeds ``rtol``."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    err = np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30)
    if not err <= rtol:
        raise SystemExit(f"{name}: fastconv and the baseline disagree (rel err {err:.2e})")


def print_environment():
    """numpy, numba, where fastconv comes from, threads, threading layer, load, BLAS."""
    print(f"numpy {np.__version__}, numba {numba.__version__}, fastconv from "
          f"{Path(fastconv.__file__).parent}")
    print(f"cpus {os.cpu_count()}, numba threads {numba.get_num_threads()}, threading layer "
          f"{threading_layer()}, load average {os.getloadavg()[0]:.2f} (1 min)")
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')!r}")
    for lib in threadpoolctl.threadpool_info():
        print(f"  {lib.get('internal_api')} {lib.get('version')} kernel "
              f"{lib.get('architecture')} threads {lib.get('num_threads')} "
              f"({Path(lib.get('filepath', '')).name})")


def measure(batch: int = 32, repeat: int = 9, threads: int | None = None):
    """Check, time and print (a) and (b). ``threads``: cap both numba's and BLAS's threads
    at that many for the whole run (None: leave both as they are); on a shared machine a
    multi-threaded BLAS call waits whenever one of its threads is not scheduled, so
    compare runs only at the same setting and load."""
    if threads is not None:
        numba.set_num_threads(threads)
        with threadpoolctl.threadpool_limits(threads):
            return _run(batch, repeat)
    return _run(batch, repeat)


def _conv(x, gy, rng, r):
    """(a): check conv2d_backward (im2col) against the direct algorithm, print the
    environment, then time im2col's forward and backward."""
    shape = x.shape
    w = (rng.standard_normal((64, 64, 3, 3), np.float32) / 24).astype(np.float32)
    y = fastconv.conv2d(x, w, padding=1, algo="im2col")
    gx, gw, gb = fastconv.conv2d_backward(gy, x, w, padding=1, algo="im2col")
    gx_n, gw_n, _ = fastconv.conv2d_backward(gy[:2], x[:2], w, padding=1, algo="naive")
    check("conv2d_backward grad_x", gx[:2], gx_n, 1e-4)
    gw2 = fastconv.conv2d_backward(gy[:2], x[:2], w, padding=1, algo="im2col")[1]
    check("conv2d_backward grad_w", gw2, gw_n, 1e-4)
    print_environment()   # after the first parallel call, so the threading layer is real
    print(f"\nx {shape} float32; median (min) of {r} runs after a warm-up\n")
    flops = 2 * y.size * 64 * 9
    fwd = timed(lambda: fastconv.conv2d(x, w, padding=1, algo="im2col"), r)
    bwd = timed(lambda: fastconv.conv2d_backward(gy, x, w, padding=1, algo="im2col"), r)
    print("(a) conv 3x3 64->64 padding 1, im2col")
    print(f"    forward   {fwd[0] * 1e3:8.1f} ms ({fwd[1] * 1e3:.1f})  "
          f"{flops / fwd[0] / 1e9:6.1f} GFLOP/s")
    print(f"    backward  {bwd[0] * 1e3:8.1f} ms ({bwd[1] * 1e3:.1f})  "
          f"{2 * flops / bwd[0] / 1e9:6.1f} GFLOP/s (grad_x and grad_w, 2x the forward FLOPs)")
    print(f"    backward / forward = {bwd[0] / fwd[0]:.2f}")


def _pool_rows(x, rng):
    """(op, pass, fastconv call, NumPy call) for max and avg pooling, checked first."""
    shape = x.shape
    rows = []
    yp, idx = fastconv.max_pool2d(x, 2, return_indices=True)
    yn, arg = nb.max_pool2d(x, 2, return_argmax=True)
    check("max_pool2d", yp, yn, 0)
    gyp = rng.standard_normal(yp.shape, np.float32)
    check("max_pool2d_backward", fastconv.max_pool2d_backward(gyp, idx, shape),
          nb.max_pool2d_backward(gyp, arg, shape, 2), 0)
    rows.append(("max_pool2d 2x2/2", "forward", lambda: fastconv.max_pool2d(x, 2),
                 lambda: nb.max_pool2d(x, 2)))
    rows.append(("max_pool2d 2x2/2", "backward",
                 lambda: fastconv.max_pool2d_backward(gyp, idx, shape),
                 lambda: nb.max_pool2d_backward(gyp, arg, shape, 2)))

    check("avg_pool2d", fastconv.avg_pool2d(x, 2), nb.avg_pool2d(x, 2), 1e-6)
    check("avg_pool2d_backward", fastconv.avg_pool2d_backward(gyp, shape, 2),
          nb.avg_pool2d_backward(gyp, shape, 2), 1e-6)
    rows.append(("avg_pool2d 2x2/2", "forward", lambda: fastconv.avg_pool2d(x, 2),
                 lambda: nb.avg_pool2d(x, 2)))
    rows.append(("avg_pool2d 2x2/2", "backward",
                 lambda: fastconv.avg_pool2d_backward(gyp, shape, 2),
                 lambda: nb.avg_pool2d_backward(gyp, shape, 2)))
    return rows


def _norm_rows(x, gy, rng):
    """(op, pass, fastconv call, NumPy call) for training-mode batch norm, checked first."""
    c = x.shape[1]
    bw, bb = rng.standard_normal(c, np.float32), rng.standard_normal(c, np.float32)
    stats = [np.zeros(c, np.float32), np.ones(c, np.float32)]
    yb, mean, invstd = fastconv.batch_norm(x, *stats, bw, bb, training=True,
                                           return_stats=True)
    ybn, mean_n, invstd_n = nb.batch_norm_train(x, np.zeros(c, np.float32),
                                                np.ones(c, np.float32), bw, bb)
    check("batch_norm", yb, ybn, 1e-4)
    bgrads = fastconv.batch_norm_backward(gy, x, mean, invstd, bw)
    for name, u, v in zip(("grad_x", "grad_weight", "grad_bias"), bgrads,
                          nb.batch_norm_backward(gy, x, mean_n, invstd_n, bw), strict=True):
        check(f"batch_norm_backward {name}", u, v, 1e-3)
    return [("batch_norm (training)", "forward",
             lambda: fastconv.batch_norm(x, *stats, bw, bb, training=True, return_stats=True),
             lambda: nb.batch_norm_train(x, *stats, bw, bb)),
            ("batch_norm (training)", "backward",
             lambda: fastconv.batch_norm_backward(gy, x, mean, invstd, bw),
             lambda: nb.batch_norm_backward(gy, x, mean_n, invstd_n, bw))]


def _run(batch: int, r: int):
    rng = np.random.default_rng(0)
    shape = (batch, 64, 56, 56)
    x = rng.standard_normal(shape, np.float32)
    gy = rng.standard_normal(shape, np.float32)
    _conv(x, gy, rng, r)
    rows = _pool_rows(x, rng) + _norm_rows(x, gy, rng)
    print("\n(b) fastconv vs plain NumPy (fastconv/tools/bench/baselines.py)")
    print(f"    {'op':24s} {'pass':9s} {'fastconv ms':>12s} {'numpy ms':>12s} {'speed-up':>9s}")
    for name, direction, fast, base in rows:
        tf, tn = timed(fast, r), timed(base, r)
        print(f"    {name:24s} {direction:9s} {tf[0] * 1e3:7.2f} ({tf[1] * 1e3:5.2f})"
              f" {tn[0] * 1e3:7.2f} ({tn[1] * 1e3:5.2f}) {tn[0] / tf[0]:8.2f}x")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f} (1 min)")
