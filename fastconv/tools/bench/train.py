"""Training throughput of LeNet-5 on 28x28 inputs: fastconv against torch, in one run.

Both train the same network (same initial weights, same batches x (batch, 1, 28, 28)
float32 with 10 classes, SGD with momentum 0.9). Steps are timed one by one; the
frameworks alternate in blocks of ``steps`` steps (ABBA order over ``rounds`` rounds), so
that load on a shared machine hits both alike, and the report gives medians and
quartiles of the step times and images/s = batch / median step time. Each block starts
after a pause (``settle`` seconds) and an untimed step: idle worker threads keep spinning
for a while after their last parallel call (right after a torch step, torch's OpenMP
thread made the next fastconv step about 2 ms slower when the frameworks alternated step
by step on 2 cores; OpenBLAS's workers spin for up to about 0.1 s), and the pause lets
them go to sleep before the other framework's block. ``interleave="step"`` keeps the
step-by-step order.

Both frameworks allocate their activations and gradients afresh every step, so glibc's
malloc decides how many of those megabytes come back as fresh pages (a page fault per
4 KiB): by default arrays above an adaptive threshold are mmap'ed and the heap top is
returned to the system, and the thresholds rise when large blocks are freed, so one
framework's frees changed the other's fault rate within one process (fastconv alone: 7.1
ms per step with the defaults, 4.2 ms with fixed thresholds). ``malloc_mb`` (default 64)
fixes the thresholds at the start of the run; 0 keeps glibc's defaults.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections import defaultdict

import numpy as np

import fastconv
from fastconv import autograd, models, optim
from fastconv.nn import functional as F

N_BATCHES = 8


def torch_lenet(torch):
    """torch's LeNet-5 with the layers of ``fastconv.models.lenet5(1, 10, 28)``."""
    tnn = torch.nn
    return tnn.Sequential(tnn.Conv2d(1, 6, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(2),
                          tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
                          tnn.Linear(400, 120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(),
                          tnn.Linear(84, 10))


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
    """Per-op median milliseconds per training step over ``steps`` steps on the batches
    xs (b, batch, 1, 28, 28) with labels ys (b, batch), and the median step time;
    printed as a table."""
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


def fix_malloc(mib: int) -> str:
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


def _step_and_eval(model, opt, loss_fn, no_grad, xs, ys):
    """(train step(i), eval forward(i)) of ``model`` on batch i % N_BATCHES of xs and ys:
    the same calls in fastconv and torch, whose modules, optimisers and tensors share
    these methods."""
    def step(i):
        opt.zero_grad()
        loss = loss_fn(model(xs[i % N_BATCHES]), ys[i % N_BATCHES])
        loss.backward()
        opt.step()
        return loss.item()

    def evaluate(i):
        with no_grad():
            model(xs[i % N_BATCHES])

    return step, evaluate


def _runners(xs, ys, threads: int):
    """{framework: (train step(i), eval forward(i))} on batch i % N_BATCHES of xs
    (N_BATCHES, batch, 1, 28, 28) and ys (N_BATCHES, batch), torch (when installed,
    ``threads`` threads) starting from fastconv's initial weights; also fastconv's model,
    its optimiser and the torch module (None)."""
    ours = models.lenet5(1, 10, 28, rng=np.random.default_rng(1))
    opt = optim.SGD(ours.parameters(), lr=0.01, momentum=0.9)
    runners = {"fastconv": _step_and_eval(ours, opt, F.cross_entropy, fastconv.no_grad,
                                          xs, ys)}
    try:
        import torch
    except ImportError:
        torch = None
        print("torch is not installed: fastconv only")
    if torch is not None:
        torch.set_num_threads(threads)
        theirs = torch_lenet(torch)
        theirs.load_state_dict({k: torch.from_numpy(v.copy())
                                for k, v in ours.state_dict().items()})
        topt = torch.optim.SGD(theirs.parameters(), lr=0.01, momentum=0.9)
        runners["torch"] = _step_and_eval(theirs, topt, torch.nn.functional.cross_entropy,
                                          torch.no_grad, torch.from_numpy(xs),
                                          torch.from_numpy(ys))
    return runners, ours, opt, torch


def _step_times(runners, kind: int, steps: int, rounds: int, interleave: str,
                settle: float) -> dict:
    """{framework: seconds of each of rounds * steps timed steps}; ``kind`` 0: training
    steps, 1: eval forwards."""
    times = {name: [] for name in runners}
    if interleave == "step":
        # the frameworks alternate step by step
        for i in range(rounds * steps):
            for name, fns in runners.items():
                t0 = time.perf_counter()
                fns[kind](i)
                times[name].append(time.perf_counter() - t0)
        return times
    # blocks of `steps` steps per framework, alternating (ABBA...) round by round so that
    # load drifts hit both alike; each block starts after a pause and one untimed step,
    # so that the other framework's idle threads have stopped spinning
    names = list(runners)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            fn = runners[name][kind]
            time.sleep(settle)
            fn(r)
            for i in range(steps):
                t0 = time.perf_counter()
                fn(r * steps + i)
                times[name].append(time.perf_counter() - t0)
    return times


def _print_setup(torch, load_before, malloc: str) -> None:
    """The machine, the libraries and their threads, the allocator setting."""
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
    print(f"memory allocator: {malloc}")


def _run(batch, steps, rounds, threads, interleave, settle, malloc, profile) -> int:
    rng = np.random.default_rng(0)
    xs = rng.random((N_BATCHES, batch, 1, 28, 28), dtype=np.float32)
    ys = rng.integers(0, 10, (N_BATCHES, batch))
    runners, ours, opt, torch = _runners(xs, ys, threads)

    # first steps: the same weights and batches give the same loss
    first = {name: step(0) for name, (step, _) in runners.items()}
    for step, ev in runners.values():              # warm-up (numba compiles, caches)
        for i in range(1, 4):
            step(i)
            ev(i)

    load_before = os.getloadavg()
    train_t = _step_times(runners, 0, steps, rounds, interleave, settle)
    eval_t = _step_times(runners, 1, steps, rounds, interleave, settle)
    _print_setup(torch, load_before, malloc)
    how = ("step by step" if interleave == "step" else
           f"in alternating blocks of {steps} steps")
    print(f"LeNet-5, 28x28x1 input, batch {batch}, float32, SGD(momentum=0.9); "
          f"{rounds * steps} timed train and eval steps per framework, "
          f"interleaved {how}")
    print("first-step loss: " + ", ".join(f"{k} {v:.6f}" for k, v in first.items()))
    print(f"{'':10s} {'train step ms (q1 / median / q3)':>34s} {'train img/s':>12s} "
          f"{'eval ms (median)':>17s} {'eval img/s':>11s}")
    for name in runners:
        q1, med, q3 = (1e3 * v for v in np.percentile(train_t[name], [25, 50, 75]))
        emed = 1e3 * np.median(eval_t[name])
        print(f"{name:10s} {q1:10.2f} / {med:8.2f} / {q3:8.2f}   {batch / med * 1e3:12.0f} "
              f"{emed:17.2f} {batch / emed * 1e3:11.0f}")
    if torch is not None:
        ratio = np.median(train_t["fastconv"]) / np.median(train_t["torch"])
        print(f"fastconv train step / torch train step (medians): {ratio:.2f}")
    if profile:
        profile_steps(ours, opt, xs, ys, rounds * steps)
    return 0


def throughput(batch: int = 64, steps: int = 20, rounds: int = 5, threads: int = 2,
               numba_threads: int | None = None, blas_threads: int | None = None,
               interleave: str = "block", settle: float = 0.3, malloc_mb: int = 64,
               profile: bool = False) -> int:
    """Time ``rounds * steps`` training steps and eval forwards per framework and print
    the report; returns 0.

    torch runs with ``torch.set_num_threads(threads)`` (skipped, with a note, if torch is
    not installed). Compilation (numba) is excluded by warm-up steps. ``numba_threads``
    and ``blas_threads`` cap fastconv's numba threads and numpy's BLAS threads for the
    whole run (None: the libraries' defaults). ``profile`` then times every fastconv op of
    further training steps (forward and backward of each autograd Function, the optimiser
    step) and prints the median milliseconds per step of each."""
    malloc = fix_malloc(malloc_mb)
    with contextlib.ExitStack() as stack:
        if blas_threads is not None:
            from threadpoolctl import threadpool_limits

            stack.enter_context(threadpool_limits(blas_threads, user_api="blas"))
        if numba_threads is not None:
            import numba

            numba.set_num_threads(numba_threads)
        return _run(batch, steps, rounds, threads, interleave, settle, malloc, profile)
