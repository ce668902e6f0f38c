"""fastconv's ``algo="auto"`` against torch, layer by layer, alternating the two.

    python bench/vs_torch.py [--backward] [--cpu] [--rounds N] [SHAPE ...]

The layers of ``fastconv bench --suite default`` (or those named), NCHW float32; with
``--backward`` conv2d then conv2d_backward against torch's forward and autograd backward.
Each round times fastconv, then torch, best of repeated calls for at least 0.05 s; the
table keeps each one's best round and the geometric mean of the time ratios.

Wall-clock times (the default) need a quiet machine: on a shared one a multi-threaded
call waits for every thread it starts. ``--cpu`` times process CPU time instead, and is
meant with one thread everywhere (``NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1``; torch is
set to numba's thread count), where it measures the work done whatever else runs.
"""

from __future__ import annotations

import argparse
import math
import time

import numba


def _best(call, clock, seconds: float = 0.05) -> float:
    best, start = float("inf"), time.perf_counter()
    while True:
        t0 = clock()
        call()
        best = min(best, clock() - t0)
        if time.perf_counter() - start > seconds:
            return best


def main(argv=None) -> int:
    from fastconv.tools.bench.runner import _fastconv_runner, _torch_runner
    from fastconv.tools.bench.suites import DEFAULT_SUITE

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("shapes", nargs="*", help="layer names (default: all)")
    p.add_argument("--backward", action="store_true", help="forward + backward")
    p.add_argument("--cpu", action="store_true", help="process CPU time, not wall time")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    args = p.parse_args(argv)
    clock = time.process_time if args.cpu else time.perf_counter
    print(f"numba threads {numba.get_num_threads()}, "
          f"{'CPU' if args.cpu else 'wall'} time, ms")
    ratios = []
    for shape in DEFAULT_SUITE:
        if args.shapes and shape.name not in args.shapes:
            continue
        x, w = shape.arrays()
        runs = {"fastconv": _fastconv_runner(shape, "auto", x, w, args.backward),
                "torch": _torch_runner(shape, x, w, args.backward)}
        if runs["torch"] is None:
            print("torch is not installed")
            return 1
        best = dict.fromkeys(runs, float("inf"))
        for f in runs.values():
            f()  # compile, warm up
        for _ in range(args.rounds):
            for name, f in runs.items():
                best[name] = min(best[name], _best(f, clock))
        ratios.append(best["fastconv"] / best["torch"])
        print(f"{shape.name:10s} fastconv {best['fastconv'] * 1e3:9.3f}  torch "
              f"{best['torch'] * 1e3:9.3f}  ratio {ratios[-1]:.2f}", flush=True)
    if ratios:
        mean = math.exp(sum(map(math.log, ratios)) / len(ratios))
        print(f"geometric mean of the ratios {mean:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
