"""Training throughput of small CNNs (``train_models.SPECS``: LeNet-5, a small and a wide
ResNet) in NCHW or NHWC: fastconv against torch, in one run.

Both train the same network (same initial weights, same batches of float32 images with
10 classes, SGD with momentum 0.9; torch in channels_last for NHWC). Steps are timed one by one; the
frameworks alternate in blocks of ``steps`` steps (ABBA order over ``rounds`` rounds), so
that load on a shared machine hits both alike, and the report gives medians and
quartiles of the step times and images/s = batch / median step time. Each block starts
after a pause (``settle`` seconds) and an untimed step: idle worker threads keep spinning
for a while after their last parallel call (right after a torch step, torch's OpenMP
thread made the next fastconv step about 2 ms slower when the frameworks alternated step
by step on 2 cores; OpenBLAS's workers spin for up to about 0.1 s), and the pause lets
them go to sleep before the other framework's block. ``interleave="step"`` keeps the
step-by-step order.

torch allocates its activations and gradients afresh every step, so glibc's malloc
decides how many of those megabytes come back as fresh pages (a page fault per 4 KiB):
by default arrays above an adaptive threshold are mmap'ed and the heap top is returned
to the system, and the thresholds rise when large blocks are freed, so one framework's
frees change the other's fault rate within one process. fastconv takes its results
from a pool of arrays (``fastconv._pool``) and faults little after the first step;
before the pool, its frees had raised the thresholds for torch too (torch's LeNet-5
step: 0 faults beside fastconv then, about 980 in a process of its own, 770 beside the
pool; the small ResNet's 2,500, 2,300 and 3,700). Each case prints both frameworks'
faults per step. The headline rows keep glibc's defaults, as a user's program would;
``malloc_mb`` > 0 repeats every case with the thresholds fixed at that many MiB, as
separate rows (where neither framework faults much).
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import time
from collections import defaultdict

import numpy as np

import fastconv
from fastconv import autograd, optim
from fastconv.nn import functional as F

from . import malloc, train_models

N_BATCHES = 8
# the clock of the timed steps: wall time (perf_counter), or with clock="cpu" the
# process's CPU time (process_time: all threads' CPU seconds; with one thread per
# framework it is the work done, little changed by other processes' load)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_CLOCK = [time.perf_counter]


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
    xs (b, batch, *image) with labels ys (b, batch), and the median step time;
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


def _step_and_eval(model, opt, loss_fn, no_grad, xs, ys):
    """(train step(i), eval forward(i)) of ``model`` on batch i % N_BATCHES of xs and ys:
    the same calls in fastconv and torch, whose modules, optimisers and tensors share
    these methods. The eval forward runs as inference does, in eval mode (batch norm on
    its running averages, which it leaves alone) without a graph; a training step runs in
    training mode. Each switches the mode only when the other ran last, which in the
    timed blocks is their untimed first call (``_step_times``): switching every module
    took 56 us a call in fastconv and 145 in torch (the small ResNet's 33 modules), 1-3%
    of an eval forward."""
    def step(i):
        if not model.training:
            model.train()
        opt.zero_grad()
        loss = loss_fn(model(xs[i % N_BATCHES]), ys[i % N_BATCHES])
        loss.backward()
        opt.step()
        return loss.item()

    def evaluate(i):
        if model.training:
            model.eval()
        with no_grad():
            model(xs[i % N_BATCHES])

    return step, evaluate


def _runners(spec, layout: str, xs, ys, threads: int, torch):
    """{framework: (train step(i), eval forward(i))} of network ``spec`` on batch
    i % N_BATCHES of xs (N_BATCHES, batch, C, H, W) (NCHW; given in ``layout``) and ys
    (N_BATCHES, batch), torch (when installed, ``threads`` threads, channels_last for
    NHWC) starting from fastconv's initial weights; also fastconv's model and
    optimiser."""
    ours = spec.build(np.random.default_rng(1), layout)
    opt = optim.SGD(ours.parameters(), lr=0.01, momentum=0.9)
    ours_x = xs if layout == "NCHW" else np.ascontiguousarray(xs.transpose(0, 1, 3, 4, 2))
    runners = {"fastconv": _step_and_eval(ours, opt, F.cross_entropy, fastconv.no_grad,
                                          ours_x, ys)}
    if torch is not None:
        torch.set_num_threads(threads)
        theirs = train_models.torch_model(torch, spec)
        train_models.load_into_torch(torch, theirs, ours)
        tx = torch.from_numpy(xs)
        if layout == "NHWC":
            theirs = theirs.to(memory_format=torch.channels_last)
            tx = [t.contiguous(memory_format=torch.channels_last) for t in tx]
        topt = torch.optim.SGD(theirs.parameters(), lr=0.01, momentum=0.9)
        runners["torch"] = _step_and_eval(theirs, topt, torch.nn.functional.cross_entropy,
                                          torch.no_grad, tx, torch.from_numpy(ys))
    return runners, ours, opt, ours_x


def _faults() -> int:
    """Minor page faults of this process so far (fresh pages mapped by malloc)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _step_times(runners, kind: int, steps: int, rounds: int, interleave: str,
                settle: float, faults: dict | None = None) -> dict:
    """{framework: seconds of each of rounds * steps timed steps}; ``kind`` 0: training
    steps, 1: eval forwards. ``faults``: {framework: page faults per timed step}, filled
    in when given."""
    times = {name: [] for name in runners}
    counts = dict.fromkeys(runners, 0)
    if interleave == "step":
        # the frameworks alternate step by step
        for i in range(rounds * steps):
            for name, fns in runners.items():
                f0, t0 = _faults(), _CLOCK[0]()
                fns[kind](i)
                times[name].append(_CLOCK[0]() - t0)
                counts[name] += _faults() - f0
    else:
        # blocks of `steps` steps per framework, alternating (ABBA...) round by round so
        # that load drifts hit both alike; each block starts after a pause and one
        # untimed step, so that the other framework's idle threads have stopped spinning
        names = list(runners)
        for r in range(rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                fn = runners[name][kind]
                time.sleep(settle)
                fn(r)
                f0 = _faults()
                for i in range(steps):
                    t0 = _CLOCK[0]()
                    fn(r * steps + i)
                    times[name].append(_CLOCK[0]() - t0)
                counts[name] += _faults() - f0
    if faults is not None:
        faults.update({k: v / (rounds * steps) for k, v in counts.items()})
    return times


def paired_ratios(theirs, ours, steps: int) -> np.ndarray:
    """fastconv's images/s over torch's, round by round: the median of torch's step times
    in each round's block of ``steps`` over fastconv's in the same round (the two blocks
    ran one after the other, so a drift of the machine between rounds cancels); one
    ratio per round.

    >>> paired_ratios([2.0, 2.0, 4.0, 4.0], [1.0, 1.0, 1.0, 3.0], 2)
    array([2., 2.])
    """
    t = np.asarray(theirs).reshape(-1, steps)
    o = np.asarray(ours).reshape(-1, steps)
    return np.median(t, axis=1) / np.median(o, axis=1)


def _print_setup(torch, load_before) -> None:
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


def _case(spec, layout, batch, steps, rounds, threads, interleave, settle, torch,
          profile) -> dict:
    """Time one network in one layout against torch; print its detail lines and return
    {framework: (train ms median, q1, q3, eval ms median)}, with torch also "paired":
    the quartiles (q1, median, q3) of ``paired_ratios``."""
    rng = np.random.default_rng(0)
    xs = rng.random((N_BATCHES, batch, *spec.input_shape), dtype=np.float32)
    ys = rng.integers(0, 10, (N_BATCHES, batch))
    runners, ours, opt, ours_x = _runners(spec, layout, xs, ys, threads, torch)

    # first steps: the same weights and batches give the same loss
    first = {name: step(0) for name, (step, _) in runners.items()}
    for step, ev in runners.values():              # warm-up (numba compiles, caches)
        for i in range(1, 4):
            step(i)
            ev(i)
    faults = {}
    train_t = _step_times(runners, 0, steps, rounds, interleave, settle, faults)
    eval_t = _step_times(runners, 1, steps, rounds, interleave, settle)
    print(f"{spec.title} {layout}, {'x'.join(map(str, spec.input_shape))} input, batch "
          f"{batch}: first-step loss " + ", ".join(f"{k} {v:.6f}" for k, v in first.items()))
    out = {}
    for name in runners:
        q1, med, q3 = (1e3 * v for v in np.percentile(train_t[name], [25, 50, 75]))
        out[name] = (med, q1, q3, 1e3 * np.median(eval_t[name]))
        print(f"  {name:9s} train step ms q1 / median / q3 {q1:8.2f} / {med:8.2f} / {q3:8.2f};"
              f" eval ms {out[name][3]:8.2f}; page faults per step {faults[name]:.0f}")
    if "torch" in runners:
        paired = paired_ratios(train_t["torch"], train_t["fastconv"], steps)
        out["paired"] = tuple(np.percentile(paired, [25, 50, 75]))
        print("  images/s ratio round by round (the frameworks' blocks side by side) q1 / "
              "median / q3 {:.2f} / {:.2f} / {:.2f}".format(*out["paired"]))
    if profile:
        profile_steps(ours, opt, ours_x, ys, rounds * steps)
    return out


def _table(rows) -> None:
    """The report: images/s of both frameworks and their ratio per case."""
    print(f"\n{'network':18s} {'layout':6s} {'batch':>5s} {'setting':14s} "
          f"{'fastconv img/s':>14s} {'torch img/s':>12s} {'ratio':>6s} "
          f"{'rounds q1-q3':>12s} {'eval fc/torch':>13s}")
    for (title, layout, batch, setting), res in rows:
        fc = batch / res["fastconv"][0] * 1e3
        if "torch" in res:
            th = batch / res["torch"][0] * 1e3
            ev = res["torch"][3] / res["fastconv"][3]
            q1, _, q3 = res["paired"]
            tail = f"{th:12.0f} {fc / th:6.2f} {f'{q1:.2f}-{q3:.2f}':>12s} {ev:13.2f}"
        else:
            tail = f"{'-':>12s} {'-':>6s} {'-':>12s} {'-':>13s}"
        print(f"{title:18s} {layout:6s} {batch:5d} {setting:14s} {fc:14.0f} {tail}")
    print("ratio: fastconv images/s / torch images/s in training (median step times); "
          "rounds q1-q3: the quartiles of that ratio round by round (each round's two "
          "blocks side by side: how far one run's ratio can be trusted); eval fc/torch: "
          "the same ratio for inference forwards")


def _run(model_names, layouts, batch, steps, rounds, threads, interleave, settle,
         malloc_mb, profile) -> int:
    try:
        import torch
    except ImportError:
        torch = None
        print("torch is not installed: fastconv only")
    load_before = os.getloadavg()
    settings = [("glibc malloc", 0)] + ([(f"malloc {malloc_mb} MiB", malloc_mb)]
                                         if malloc_mb > 0 else [])
    rows = []
    for setting, mib in settings:
        if mib:
            print(f"memory allocator from here on: {malloc.fix_malloc(mib)}")
        for name in model_names:
            spec = train_models.SPECS[name]
            b = batch or spec.batch
            for layout in layouts:
                res = _case(spec, layout, b, steps, rounds, threads, interleave, settle,
                            torch, profile and not mib)
                rows.append(((spec.title, layout, b, setting), res))
    _print_setup(torch, load_before)
    how = ("step by step" if interleave == "step" else
           f"in alternating blocks of {steps} steps")
    print(f"float32, SGD(momentum=0.9), 10 classes; {rounds * steps} timed train and eval "
          f"steps per framework and case, interleaved {how}; torch channels_last for NHWC; "
          f"{'process CPU' if _CLOCK[0] is time.process_time else 'wall'} time")
    _table(rows)
    return 0


def throughput(models=("lenet",), layouts=("NCHW",), batch: int | None = None,
               steps: int = 20, rounds: int = 5, threads: int = 2,
               numba_threads: int | None = None, blas_threads: int | None = None,
               interleave: str = "block", settle: float = 0.3, malloc_mb: int = 0,
               profile: bool = False, clock: str = "wall") -> int:
    """Time ``rounds * steps`` training steps and eval forwards per framework, network
    (``models``: names of :data:`train_models.SPECS`) and layout, and print the report;
    returns 0.

    ``batch`` None takes each network's own batch. torch runs with
    ``torch.set_num_threads(threads)`` (skipped, with a note, if torch is not installed),
    channels_last for NHWC. Compilation (numba) is excluded by warm-up steps. The headline
    rows keep glibc's malloc defaults; ``malloc_mb`` > 0 then repeats every case with fixed
    thresholds (see the module docstring) as further rows. ``numba_threads`` and
    ``blas_threads`` cap fastconv's numba threads and numpy's BLAS threads for the whole
    run (None: the libraries' defaults). ``profile`` times every fastconv op of further
    training steps of each headline case (forward and backward of each autograd Function,
    the optimiser step) and prints the median milliseconds per step of each. ``clock``
    "cpu" times the steps in process CPU time instead of wall time (see ``CLOCKS``)."""
    if clock not in CLOCKS:
        raise ValueError(f"train throughput: clock={clock!r} must be one of "
                         f"{', '.join(CLOCKS)}")
    _CLOCK[0] = CLOCKS[clock]
    unknown = [m for m in models if m not in train_models.SPECS]
    if unknown:
        raise ValueError(f"train throughput: unknown model {unknown[0]!r}; known: "
                         f"{', '.join(train_models.SPECS)}")
    with contextlib.ExitStack() as stack:
        if blas_threads is not None:
            from threadpoolctl import threadpool_limits

            stack.enter_context(threadpool_limits(blas_threads, user_api="blas"))
        if numba_threads is not None:
            import numba

            numba.set_num_threads(numba_threads)
        return _run(models, layouts, batch, steps, rounds, threads, interleave, settle,
                    malloc_mb, profile)
