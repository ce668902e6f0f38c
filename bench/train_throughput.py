"""Training throughput of LeNet-5 on 28x28 inputs: fastconv against torch, in one run.

Both train the same network (same initial weights, same batches, SGD with momentum 0.9)
in float32. Steps are timed one by one; the frameworks alternate in blocks of --steps
steps (ABBA order over --rounds rounds), so that load on a shared machine hits both
alike, and the report gives medians and quartiles of the step times and images/s =
batch / median step time. Each block starts after a pause (--settle seconds) and an
untimed step: idle worker threads keep spinning for a while after their last parallel
call (right after a torch step, torch's OpenMP thread made the next fastconv step about
2 ms slower when the frameworks alternated step by step on 2 cores; OpenBLAS's workers
spin for up to about 0.1 s), and the pause lets them go to sleep before the other
framework's block. ``--interleave step`` keeps the step-by-step order.

Both frameworks allocate their activations and gradients afresh every step, so glibc's
malloc decides how many of those megabytes come back as fresh pages (a page fault per
4 KiB): by default arrays above an adaptive threshold are mmap'ed and the heap top is
returned to the system, and the thresholds rise when large blocks are freed, so one
framework's frees changed the other's fault rate within one process (fastconv alone: 7.1
ms per step with the defaults, 4.2 ms with fixed thresholds). ``--malloc-mb`` (default
64) fixes the thresholds at the start of the run; 0 keeps glibc's defaults.

    python bench/train_throughput.py [--batch 64] [--steps 20] [--rounds 5] [--threads 2]
        [--numba-threads N] [--blas-threads N] [--interleave block|step] [--settle S]
        [--malloc-mb M] [--profile]

torch runs with torch.set_num_threads(threads) (skipped, with a note, if torch is not
installed). Compilation (numba) is excluded by warm-up steps. ``--numba-threads`` and
``--blas-threads`` cap fastconv's numba threads and numpy's BLAS threads for the whole run
(default: the libraries' defaults). ``--profile`` then times every fastconv op of further
training steps (forward and backward of each autograd Function, the optimiser step) and
prints the median milliseconds per step of each, with the same thread settings.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time
from collections import defaultdict

import numpy as np

import fastconv
from fastconv import autograd, models, optim
from fastconv.nn import functional as F


def _torch_lenet(torch):
    tnn = torch.nn
    return tnn.Sequential(tnn.Conv2d(1, 6, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(2),
                          tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
                          tnn.Linear(400, 120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(),
                          tnn.Linear(84, 10))


def _quartiles(times):
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    return q1, med, q3


def _functions():
    """Every autograd.Function subclass defined so far."""
    out, todo = [], [autograd.Function]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in out:
                out.append(sub)
                todo.append(sub)
    return out


@contextlib.contextmanager
def op_timers(acc):
    """Adds the seconds spent in each op to ``acc`` ('fwd Conv2d', 'bwd Conv2d', ...) while
    active: Function.apply (the forward and the graph recording) and each backward."""
    original_apply = autograd.Function.__dict__["apply"]
    originals = {cls: cls.__dict__["backward"] for cls in _functions()
                 if "backward" in cls.__dict__}

    def apply(cls, *inputs, **options):
        t0 = time.perf_counter()
        out = original_apply.__func__(cls, *inputs, **options)
        acc["fwd " + cls.__name__] += time.perf_counter() - t0
        return out

    def timed_backward(cls, fn):
        def backward(ctx, g):
            t0 = time.perf_counter()
            out = fn(ctx, g)
            acc["bwd " + cls.__name__] += time.perf_counter() - t0
            return out
        return staticmethod(backward)

    autograd.Function.apply = classmethod(apply)
    for cls, bw in originals.items():
        cls.backward = timed_backward(cls, bw.__func__)
    try:
        yield acc
    finally:
        autograd.Function.apply = original_apply
        for cls, bw in originals.items():
            cls.backward = bw


def profile_steps(model, opt, xs, ys, steps):
    """Per-op median milliseconds per training step over ``steps`` steps, and the median
    step time; printed as a table."""
    per_step = defaultdict(list)
    n_batches = len(xs)
    for i in range(steps):
        acc = defaultdict(float)
        with op_timers(acc):
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = F.cross_entropy(model(xs[i % n_batches]), ys[i % n_batches])
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            opt.step()
            t3 = time.perf_counter()
        acc["forward (all ops)"] = t1 - t0
        acc["backward (all ops)"] = t2 - t1
        acc["optimiser step"] = t3 - t2
        acc["step"] = t3 - t0
        for k, v in acc.items():
            per_step[k].append(v)
    total = np.median(per_step["step"])
    print(f"fastconv per-op profile, {steps} steps (median ms per step; the op timers add "
          "a few microseconds per op):")
    for k in sorted(per_step, key=lambda k: -np.median(per_step[k])):
        med = np.median(per_step[k])
        print(f"  {k:26s} {1e3 * med:8.3f} ms {100 * med / total:6.1f} %")


def _fix_malloc(mib: int) -> str:
    """Fixed glibc malloc thresholds for the run (see the module docstring); returns a
    description for the report."""
    if mib <= 0:
        return "glibc defaults (adaptive thresholds)"
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = (libc.mallopt(m_mmap_threshold, mib << 20) == 1
              and libc.mallopt(m_trim_threshold, 4 * mib << 20) == 1)
    except (OSError, AttributeError):
        ok = False
    if not ok:
        return "defaults (mallopt unavailable)"
    return f"glibc mallopt: mmap threshold {mib} MiB, trim threshold {4 * mib} MiB"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=5, help="timed steps = rounds * steps")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--numba-threads", type=int, default=None,
                    help="numba.set_num_threads for fastconv (default: numba's)")
    ap.add_argument("--blas-threads", type=int, default=None,
                    help="cap numpy's BLAS threads (threadpoolctl; default: no cap)")
    ap.add_argument("--interleave", choices=("block", "step"), default="block",
                    help="alternate the frameworks in blocks of --steps steps (default) or "
                         "step by step")
    ap.add_argument("--settle", type=float, default=0.3,
                    help="seconds of pause before each block (default 0.3)")
    ap.add_argument("--malloc-mb", type=int, default=64,
                    help="glibc malloc: serve allocations up to this many MiB from the heap "
                         "and keep up to 4x that free (mallopt M_MMAP_THRESHOLD and "
                         "M_TRIM_THRESHOLD); 0 keeps glibc's adaptive defaults")
    ap.add_argument("--profile", action="store_true",
                    help="also print fastconv's per-op times over --steps * --rounds steps")
    args = ap.parse_args(argv)
    args.malloc = _fix_malloc(args.malloc_mb)
    with contextlib.ExitStack() as stack:
        if args.blas_threads is not None:
            from threadpoolctl import threadpool_limits

            stack.enter_context(threadpool_limits(args.blas_threads, user_api="blas"))
        if args.numba_threads is not None:
            import numba

            numba.set_num_threads(args.numba_threads)
        return _run(args)


def _run(args) -> int:

    rng = np.random.default_rng(0)
    n_batches = 8
    xs = rng.random((n_batches, args.batch, 1, 28, 28), dtype=np.float32)
    ys = rng.integers(0, 10, (n_batches, args.batch))

    ours = models.lenet5(1, 10, 28, rng=np.random.default_rng(1))
    opt = optim.SGD(ours.parameters(), lr=0.01, momentum=0.9)

    def our_step(i):
        opt.zero_grad()
        loss = F.cross_entropy(ours(xs[i % n_batches]), ys[i % n_batches])
        loss.backward()
        opt.step()
        return loss.item()

    def our_eval(i):
        with fastconv.no_grad():
            ours(xs[i % n_batches])

    runners = {"fastconv": (our_step, our_eval)}
    try:
        import torch
    except ImportError:
        torch = None
        print("torch is not installed: fastconv only")
    if torch is not None:
        torch.set_num_threads(args.threads)
        theirs = _torch_lenet(torch)
        theirs.load_state_dict({k: torch.from_numpy(v.copy())
                                for k, v in ours.state_dict().items()})
        topt = torch.optim.SGD(theirs.parameters(), lr=0.01, momentum=0.9)
        txs, tys = torch.from_numpy(xs), torch.from_numpy(ys)

        def torch_step(i):
            topt.zero_grad()
            loss = torch.nn.functional.cross_entropy(theirs(txs[i % n_batches]),
                                                     tys[i % n_batches])
            loss.backward()
            topt.step()
            return loss.item()

        def torch_eval(i):
            with torch.no_grad():
                theirs(txs[i % n_batches])

        runners["torch"] = (torch_step, torch_eval)

    # first steps: the same weights and batches give the same loss
    first = {name: step(0) for name, (step, _) in runners.items()}
    for step, ev in runners.values():              # warm-up (numba compiles, caches)
        for i in range(1, 4):
            step(i)
            ev(i)

    train_t = {name: [] for name in runners}
    eval_t = {name: [] for name in runners}
    load_before = os.getloadavg()
    for kind, times in ((0, train_t), (1, eval_t)):
        if args.interleave == "step":
            # the frameworks alternate step by step
            for i in range(args.rounds * args.steps):
                for name, fns in runners.items():
                    t0 = time.perf_counter()
                    fns[kind](i)
                    times[name].append(time.perf_counter() - t0)
            continue
        # blocks of --steps steps per framework, alternating (ABBA...) round by round so
        # that load drifts hit both alike; each block starts after a pause and one
        # untimed step, so that the other framework's idle threads have stopped spinning
        names = list(runners)
        for r in range(args.rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                fn = runners[name][kind]
                time.sleep(args.settle)
                fn(r)
                for i in range(args.steps):
                    t0 = time.perf_counter()
                    fn(r * args.steps + i)
                    times[name].append(time.perf_counter() - t0)

    import numba
    from threadpoolctl import threadpool_info

    blas = "; ".join(f"{i['internal_api']} {i.get('version')} {i.get('architecture')} "
                     f"{i['num_threads']} threads" for i in threadpool_info()
                     if i["user_api"] == "blas")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"1-minute load average {load_before[0]:.2f} before the timed steps, "
          f"{os.getloadavg()[0]:.2f} after")
    print(f"fastconv {fastconv.__version__}: numba {numba.__version__} "
          f"({numba.threading_layer()}, {numba.get_num_threads()} threads); BLAS: {blas}")
    if torch is not None:
        print(f"torch {torch.__version__}: {torch.get_num_threads()} threads")
    print(f"memory allocator: {args.malloc}")
    how = ("step by step" if args.interleave == "step" else
           f"in alternating blocks of {args.steps} steps")
    print(f"LeNet-5, 28x28x1 input, batch {args.batch}, float32, SGD(momentum=0.9); "
          f"{args.rounds * args.steps} timed train and eval steps per framework, "
          f"interleaved {how}")
    print("first-step loss: " + ", ".join(f"{k} {v:.6f}" for k, v in first.items()))
    print(f"{'':10s} {'train step ms (q1 / median / q3)':>34s} {'train img/s':>12s} "
          f"{'eval ms (median)':>17s} {'eval img/s':>11s}")
    for name in runners:
        q1, med, q3 = (1e3 * v for v in _quartiles(train_t[name]))
        emed = 1e3 * np.median(eval_t[name])
        print(f"{name:10s} {q1:10.2f} / {med:8.2f} / {q3:8.2f}   {args.batch / med * 1e3:12.0f} "
              f"{emed:17.2f} {args.batch / emed * 1e3:11.0f}")
    if torch is not None:
        ratio = np.median(train_t["fastconv"]) / np.median(train_t["torch"])
        print(f"fastconv train step / torch train step (medians): {ratio:.2f}")
    if args.profile:
        profile_steps(ours, opt, xs, ys, args.rounds * args.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
