"""``fastconv bench --device cuda``: conv2d on the GPU, checked against the CPU and timed.

For each layer shape (``Shape`` records of the bench suites: ``name``, ``arrays(dtype)``,
``kwargs()``, ``flops()``) and each CUDA algorithm, the GPU result is compared with the
CPU's (``fastconv.conv2d(algo="naive")``, the direct algorithm; relative error; float32
passes at <= 1e-4) and the call is timed with the arrays already on the device: a
warm-up call (which also compiles), then the median of ``repeats`` calls, each followed
by ``cuda.synchronize()``. Host-device copies are not timed. The CPU side is the direct
algorithm because it compiles in seconds: auto's or im2col's first calls on a fresh
machine compile CPU kernels for minutes (a GPU machine's first run timed out there).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from fastconv.cuda import CudaUnavailableError, require
from fastconv.cuda._device import env_summary

from .runner import call_times

TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


def rel_error(got, want) -> float:
    """max |got - want| / max |want| (the absolute error when want is all zeros)."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    err = float(np.max(np.abs(got - want))) if want.size else 0.0
    return err / scale if scale > 0 else err


def run_cuda_bench(shapes, progress=None, *, algos=("naive", "im2col"), dtype=np.float32,
                   repeats: int = 5) -> list[dict]:
    """One row per (shape, algo): correctness against the CPU and GFLOP/s on the GPU.

    Rows: shape, algo, seconds (median), gflops, rel_error (vs the CPU), ok (rel_error
    within TOLERANCE). Raises CudaUnavailableError without a usable GPU.
    """
    cuda = require("fastconv bench")
    from fastconv import conv2d as cpu_conv2d
    from fastconv.cuda import conv2d

    jobs = [(s, a) for s in shapes for a in algos]
    rows: list[dict] = []
    cache: dict = {}
    for shape, algo in (progress(jobs) if progress else jobs):
        if shape.name not in cache:
            x, w = shape.arrays(dtype)
            cache.clear()  # one shape's arrays on the device at a time
            cache[shape.name] = (cuda.to_device(x), cuda.to_device(w),
                                 cpu_conv2d(x, w, algo="naive", **shape.kwargs()))
        dx, dw, want = cache[shape.name]

        def call(dx=dx, dw=dw, algo=algo, shape=shape):
            out = conv2d(dx, dw, algo=algo, **shape.kwargs())
            cuda.synchronize()
            return out

        err = rel_error(call().copy_to_host(), want)  # also the warm-up call
        secs = float(np.median(call_times(call, max(1, repeats), warmup=False)))
        rows.append({"shape": shape.name, "algo": algo, "seconds": secs,
                     "gflops": shape.flops() / secs / 1e9 if secs > 0 else float("nan"),
                     "rel_error": err, "ok": err <= TOLERANCE[np.dtype(dtype)]})
    return rows


def format_cuda_table(rows: list[dict]) -> str:
    """A markdown table of run_cuda_bench rows."""
    lines = ["| shape | algo | median ms | GFLOP/s | rel. error vs CPU | ok |",
             "|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['shape']} | cuda/{r['algo']} | {1e3 * r['seconds']:.3f} | "
                     f"{r['gflops']:.1f} | {r['rel_error']:.1e} | "
                     f"{'yes' if r['ok'] else 'NO'} |")
    return "\n".join(lines)


def cli_main(shapes, progress=None, out: str | None = None) -> int:
    """The body of ``fastconv bench --device cuda``; returns the exit status.

    Without a usable GPU (or under the simulator) it prints why and how to fix it (no
    traceback) and returns 2; it returns 1 when a GPU result disagrees with the CPU."""
    env = env_summary()
    if env["simulator"]:
        print("fastconv bench: NUMBA_ENABLE_CUDASIM=1 runs the kernels in numba's CUDA "
              "simulator, which would take hours on the suite's shapes and measure nothing "
              "about a GPU; unset it to bench a real GPU", file=sys.stderr)
        return 2
    try:
        require("fastconv bench")
        print(f"CUDA device: {env.get('device')} (compute capability "
              f"{env.get('compute_capability')})")
        rows = run_cuda_bench(shapes, progress)
    except CudaUnavailableError as exc:
        print(exc, file=sys.stderr)
        return 2
    table = format_cuda_table(rows)
    print(table)
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "cuda_results.json"), "w") as f:
            json.dump({"cuda": env, "results": rows}, f, indent=2)
        with open(os.path.join(out, "cuda_results.md"), "w") as f:
            f.write(table + "\n")
        print(f"wrote {out}/cuda_results.json and cuda_results.md")
    bad = [r for r in rows if not r["ok"]]
    if bad:
        print(f"fastconv bench: {len(bad)} GPU result(s) disagree with the CPU", file=sys.stderr)
        return 1
    return 0
