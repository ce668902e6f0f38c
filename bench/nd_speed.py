"""conv3d, conv_transpose2d and conv1d bench layers: a path before and after a change
against torch, one process, CPU time (the machine is shared: wall time is noise;
``--wall`` for it), the contenders alternating in blocks, best of rounds.

    NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \\
        python bench/nd_speed.py conv3d [--rounds 3]

Prints, forward and forward+backward, each contender's best milliseconds and torch's
time over each (1.0: as fast as torch).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np

import fastconv

CLOCK = time.process_time


def _best(fn, repeats=3):
    fn()
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return min(times) * 1e3


@contextlib.contextmanager
def _patched(obj, name, value):
    saved = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, saved)


def _conv3d():
    """old: im2col (the windowed unfold at stride 1); new: "auto" (Winograd here)."""
    rng = np.random.default_rng(0)
    x = rng.random((4, 16, 32, 32, 32), np.float32)
    w = rng.random((32, 16, 3, 3, 3), np.float32)
    kw = dict(padding=1)

    def run(new, backward):
        algo = "auto" if new else "im2col"

        def fn():
            y = fastconv.conv3d(x, w, **kw, algo=algo)
            if backward:
                fastconv.conv3d_backward(np.ones_like(y), x, w, **kw, algo=algo)
        return fn
    return x, w, kw, run, "conv3d"


def _conv1d():
    from fastconv import conv1d_window
    rng = np.random.default_rng(0)
    x = rng.random((8, 64, 16000), np.float32)
    w = rng.random((64, 64, 9), np.float32)
    kw = dict(padding=4)

    def run(new, backward):
        def fn():
            ctx = contextlib.nullcontext() if new else _patched(
                conv1d_window, "applies", lambda *a, **k: False)
            with ctx:
                y = fastconv.conv1d(x, w, **kw)
                if backward:
                    fastconv.conv1d_backward(np.ones_like(y), x, w, **kw)
        return fn
    return x, w, kw, run, "conv1d"


def _decoder():
    rng = np.random.default_rng(0)
    x = rng.random((16, 64, 28, 28), np.float32)
    w = rng.random((64, 32, 4, 4), np.float32)
    kw = dict(stride=2, padding=1)

    def run(new, backward):
        def fn():
            y = fastconv.conv_transpose2d(x, w, **kw)
            if backward:
                fastconv.conv_transpose2d_backward(np.ones_like(y), x, w, **kw)
        return fn
    return x, w, kw, run, "conv_transpose2d"


LAYERS = {"conv3d": _conv3d, "conv1d": _conv1d, "decoder": _decoder}


def _torch(name, x, w, kw, backward):
    import torch
    torch.set_num_threads(1)
    tx = torch.from_numpy(x).requires_grad_()
    tw = torch.from_numpy(w).requires_grad_()
    op = getattr(torch.nn.functional, name)

    def fn():
        y = op(tx, tw, **kw)
        if backward:
            y.backward(torch.ones_like(y))
    return fn


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("layer", choices=sorted(LAYERS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--wall", action="store_true",
                        help="wall-clock time instead of the process's CPU time")
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.perf_counter if args.wall else time.process_time
    x, w, kw, run, torch_name = LAYERS[args.layer]()
    for backward in (False, True):
        fns = {"old": run(False, backward), "new": run(True, backward),
               "torch": _torch(torch_name, x, w, kw, backward)}
        best = {k: _best(f) for k, f in fns.items()}
        for _ in range(args.rounds - 1):
            for k, f in fns.items():
                best[k] = min(best[k], _best(f))
        ratios = ", ".join(f"torch/{k} {best['torch'] / best[k]:.2f}" for k in ("old", "new"))
        times = ", ".join(f"{k} {v:.1f} ms" for k, v in best.items())
        print(f"{args.layer} {'fwd+bwd' if backward else 'fwd'}: {times}; {ratios}")


if __name__ == "__main__":
    main()
