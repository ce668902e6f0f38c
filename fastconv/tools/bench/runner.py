"""The CPU benchmark: every (layer, algorithm) pair and the other libraries timed on the
same arrays, each measurement checked for other processes' load.

Every time is the median of repeated calls after an untimed warm-up call (which also
compiles), with malloc in a settled state (``malloc.settle_allocator``). The direct
("naive") algorithm is slow on large layers: when one image takes longer than
``naive_budget / repeats``, it runs on fewer images and the time is scaled to the full
batch (``Result.batch`` says how many images ran; tables mark it with *).

For each shape the SGEMM rate of the GEMM im2col actually issues (its tile shape) is
measured in the same run, so "share of SGEMM" compares like with like on a machine whose
speed drifts (shared cores, turbo).
"""

from __future__ import annotations

import os
import platform
import time

import numpy as np

import fastconv
from fastconv._timing import median_time
from fastconv.layout import NHWC

from . import engine
from .load import measured
from .malloc import settle_allocator
from .report import Report, Result, relate, shape_fields, summarize
from .suites import ALGOS, EXTRAS, NHWC_FROM_NCHW, Shape


def call_times(fn, repeat: int, warmup: bool = True) -> list[float]:
    """Seconds taken by each of ``repeat`` calls of ``fn()``, after one untimed call
    (which also compiles) unless ``warmup`` is False."""
    if warmup:
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def sgemm_gflops(m: int, k: int, n: int, dtype=np.float32, batch: int = 1,
                 repeats: int = 5) -> float:
    """GFLOP/s of numpy's matmul (m, k) @ (batch, k, n), median of ``repeats`` runs."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((batch, k, n)).astype(dtype)
    out = np.empty((batch, m, n), dtype)
    t = median_time(lambda: np.matmul(a, b, out=out), repeats=repeats)
    return 2.0 * m * k * n * batch / t / 1e9


def _torch():
    """The torch module, or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def _torch_runner(shape: Shape, x, w, backward: bool, layout: str = "NCHW"):
    """torch.nn.functional.conv2d (conv_transpose2d for a transposed layer) on the same
    arrays; NHWC ones as torch's channels_last tensors (the weight made channels_last
    once, untimed), so torch runs its NHWC path; with ``backward`` with a bias
    (``_bias``) and autograd's backward of all three."""
    torch = _torch()
    if torch is None or x.dtype not in (np.float32, np.float64):
        return None
    import numba

    torch.set_num_threads(numba.get_num_threads())
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    if layout == "NHWC":
        xt = xt.permute(0, 3, 1, 2)                       # (N, C, H, W), channels_last
        wt = wt.permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
    kw = shape.kwargs()
    op = getattr(torch.nn.functional, shape.op)
    if not backward:
        def run():
            with torch.inference_mode():
                op(xt, wt, **kw)
        return run
    xg = xt.clone().requires_grad_(True)
    wg = wt.clone().requires_grad_(True)
    bg = torch.from_numpy(_bias(shape, x.dtype)).requires_grad_(True)
    gy = torch.from_numpy(np.random.default_rng(1).standard_normal(
        shape.y_shape(x.dtype, x.shape[0])).astype(x.dtype))
    if layout == "NHWC":
        gy = gy.contiguous(memory_format=torch.channels_last)

    def run_bw():
        xg.grad = wg.grad = bg.grad = None
        op(xg, wg, bg, **kw).backward(gy)
    return run_bw


def _bias(shape: Shape, dtype) -> np.ndarray:
    """The bias of a layer timed with its backward (both libraries: all three gradients,
    the bias's a sum of grad_y per channel)."""
    return np.random.default_rng(2).standard_normal(shape.c_out).astype(dtype)


def _scipy_runner(name: str, shape: Shape, x, w, layout: str = "NCHW"):
    """scipy.signal's ``name`` ("scipy.fftconvolve" or "scipy.correlate") image by image
    on a single-channel layer (x (n, 1, h, w), w (1, 1, k, k), or NHWC / HWIO); None for
    other layers."""
    if not shape.single_channel():
        return None
    import scipy.signal as ss

    if layout == "NHWC":  # one channel: the same planes
        x, w = NHWC.to_canonical_view(x), NHWC.weight_to_canonical_view(w)
    k = w[0, 0]
    if name == "scipy.fftconvolve":
        flipped = np.ascontiguousarray(k[::-1, ::-1])  # correlation = convolution, flipped

        def run():
            for img in x[:, 0]:
                ss.fftconvolve(img, flipped, mode="valid")
        return run

    def run_corr():
        for img in x[:, 0]:
            ss.correlate(img, k, mode="valid", method="auto")
    return run_corr


def _fastconv_runner(shape: Shape, algo: str, x, w, backward: bool, layout: str = "NCHW"):
    """fastconv's conv2d (conv_transpose2d for a transposed layer) with ``algo`` on x
    (n, c, h, w) and w (c_out, c // groups, k, k) (or NHWC / HWIO); with ``backward``
    with a bias (``_bias``, as torch's runner) and followed by its ``*_backward`` of a
    fixed random grad_y (the output's shape): all three gradients."""
    kw = dict(shape.kwargs(), layout=layout)
    op = getattr(fastconv, shape.op)
    if not backward:
        return lambda: op(x, w, algo=algo, **kw)
    op_backward = getattr(fastconv, shape.op + "_backward")
    gy = np.random.default_rng(1).standard_normal(
        shape.y_shape(x.dtype, x.shape[0])).astype(x.dtype)
    if layout == "NHWC":
        gy = np.ascontiguousarray(gy.transpose(NHWC_FROM_NCHW))

    bias = _bias(shape, x.dtype)

    def run():
        op(x, w, bias, algo=algo, **kw)
        op_backward(gy, x, w, algo=algo, **kw)
    return run


#: Every measurement repeats its call until this many seconds have passed (at least
#: ``repeats`` calls, at most MAX_REPEATS): the median of five sub-millisecond calls right
#: after another library's or algorithm's run (its threads still spinning, caches cold)
#: moved by 1.5-2x between runs of the suite; hundreds of calls settle it.
MIN_MEASURE_SECONDS = 0.1

#: Seconds to wait after a multi-threaded SGEMM reference before the next measurement:
#: OpenBLAS's idle workers keep spinning for about 0.1 s after a product, and a layer
#: timed meanwhile loses a core (the decoder layer's conv_transpose2d, threads split
#: with one BLAS thread each: 10.1 ms right after 20 two-thread SGEMMs, 5.8 ms after
#: this pause, 5.7 ms alone).
SETTLE_SECONDS = 0.25
#: ... which follows every reference of at least this many multiply-adds m*k*n per
#: product: OpenBLAS runs smaller ones on one thread (its SMP threshold 65536 times
#: GEMM_MULTITHREAD_THRESHOLD 4) and larger ones on all of its threads, even those
#: fastconv counts as small (``_blas.is_small``, which only fastconv's own calls honour).
#: Without the pause the pointwise layer's forward, timed right after its 64x256x196
#: reference, took 1.02 ms instead of 0.55 ms.
THREADED_REFERENCE_MACS = 4 * 65536
MAX_REPEATS = 200


def _time_scaled(make, x, n: int, repeats: int, max_time: float, budget: float
                 ) -> tuple[float, int]:
    """Time ``make(x[:b])()`` on b <= n images; b shrinks when one image is too slow."""
    b = n
    if budget and n > 1:
        one = make(x[:1])
        one()  # compile
        t0 = time.perf_counter()
        one()
        t1 = time.perf_counter() - t0
        b = max(1, min(n, int(budget / max(repeats, 1) / max(t1, 1e-9))))
    secs = median_time(make(x[:b]), repeats=repeats, max_time=max_time,
                       min_time=MIN_MEASURE_SECONDS, max_repeats=MAX_REPEATS)
    return secs * n / b, b


def _maker(algo: str, shape: Shape, x, w, backward: bool, layout: str):
    """``make(xb)`` -> a call of ``algo`` on the images ``xb`` (a leading slice of x), or
    None when ``algo`` is not timed on this layer (not applicable, torch not installed,
    scipy on a multi-channel layer or backward)."""
    if algo in ALGOS:
        if not engine.applies(algo, shape.args(x.dtype, layout=layout), shape.transposed):
            return None  # Winograd: 3x3 stride-1 layers only
        return lambda xb: _fastconv_runner(shape, algo, xb, w, backward, layout)
    if algo == "torch":
        if _torch_runner(shape, x[:1], w, backward, layout) is None:
            return None
        return lambda xb: _torch_runner(shape, xb, w, backward, layout)
    if backward or _scipy_runner(algo, shape, x[:1], w, layout) is None:
        return None
    return lambda xb: _scipy_runner(algo, shape, xb, w, layout)


def environment(backward: bool = False, layout: str = "NCHW", extras=EXTRAS,
                allocator: str | None = None) -> dict:
    """What the numbers were measured on: ``fastconv info``'s fields, torch's version and
    threads (None when not installed), the CPU, numba's threads, OPENBLAS_CORETYPE (None
    when unset), the pass, the layout, the other libraries to be timed (``extras``) and
    the allocator's state (``allocator``, e.g. ``malloc.fix_malloc``'s description;
    default: ``malloc.settle_allocator``'s)."""
    import numba

    from .. import info

    data = info.collect()
    torch = _torch()
    data["torch"] = torch.__version__ if torch else None
    data["torch_threads"] = torch.get_num_threads() if torch else None
    data["machine"] = platform.machine()
    data["cpu"] = engine.cpu_name()
    data["numba_threads"] = numba.get_num_threads()
    data["openblas_coretype_env"] = os.environ.get("OPENBLAS_CORETYPE")
    data["backward"] = backward
    data["layout"] = layout
    data["extras"] = list(extras)
    data["allocator"] = allocator or settle_allocator()
    return data


def run(shapes, algos=ALGOS, *, suite: str = "custom", extras=EXTRAS, dtype=np.float32,
        repeats: int = 5, max_time: float = 5.0, naive_budget: float = 2.0,
        backward: bool = False, wait_idle: float = 0.0, runs: int = 1, progress=None,
        report: Report | None = None, layout: str = "NCHW") -> Report:
    """Time every (shape, algorithm) pair and the extras that apply.

    ``layout``: "NCHW" (OIHW weights) or "NHWC" (HWIO weights, torch channels_last).

    Returns a Report (appended to ``report`` when given). ``progress`` wraps the job
    iterator (e.g. tqdm). ``naive_budget`` caps the seconds spent on the direct algorithm
    per shape by running it on fewer images (0: always the full batch). Every result
    records the CPU share other processes took while it was measured
    (``Result.other_load``; multi-threaded BLAS slows down many times when a core is
    taken). ``wait_idle`` > 0: before each measurement wait up to that many seconds for
    an idle machine, and measure again (up to twice, after waiting again) when others
    took more than ``LOAD_THRESHOLD`` of the CPU meanwhile. ``runs`` > 1: go through all
    measurements that many times and keep, for each, the run with the smallest median
    (the least disturbed one, the same rule for every library; the SGEMM reference too).
    """
    if report is None:
        report = Report(environment(backward, layout, extras))
    settle_allocator()
    jobs = [(r, s, a) for r in range(max(runs, 1)) for s in shapes
            for a in tuple(algos) + tuple(extras)]
    arrays: dict = {}
    best: dict = {}        # (shape name, algo) -> (secs, images, load)
    gemm: dict = {}        # shape name -> {m, k, n, count, gflops, other_load}
    gemm_runs: set = set()  # (run, shape name) whose SGEMM was measured
    for run_, shape, algo in (progress(jobs) if progress else jobs):
        if shape.name not in arrays:
            # keep one shape's arrays alive
            arrays = {shape.name: shape.arrays(dtype, layout=layout)}
        if (run_, shape.name) not in gemm_runs:
            gemm_runs.add((run_, shape.name))
            m, k, n, count = engine.im2col_gemm(shape, dtype, layout)
            gf, load = measured(lambda m=m, k=k, n=n, c=count: sgemm_gflops(
                m, k, n, dtype, batch=min(c, 4)), wait_idle)
            if m * k * n >= THREADED_REFERENCE_MACS:
                time.sleep(SETTLE_SECONDS)
            old = gemm.get(shape.name)
            if old is None or gf > old["gflops"]:
                gemm[shape.name] = {"m": m, "k": k, "n": n, "count": count, "gflops": gf,
                                    "other_load": load}
        x, w = arrays[shape.name]
        make = _maker(algo, shape, x, w, backward, layout)
        if make is None:
            continue
        budget = naive_budget if algo == "naive" else 0.0
        (secs, b), load = measured(
            lambda make=make, x=x, n=shape.n, budget=budget: _time_scaled(
                make, x, n, repeats, max_time, budget), wait_idle)
        key = (shape.name, algo)
        if key not in best or secs < best[key][0]:
            best[key] = (secs, b, load)
    new: list[Result] = []
    for shape in shapes:
        report.gemm[f"{suite}/{shape.name}"] = gemm[shape.name]
        report.shapes[f"{suite}/{shape.name}"] = shape_fields(shape)
        gemm_rate = gemm[shape.name]["gflops"]
        for algo in tuple(algos) + tuple(extras):
            if (shape.name, algo) not in best:
                continue
            secs, b, load = best[(shape.name, algo)]
            flops = shape.flops() * (3 if backward else 1)
            chosen = None
            if algo == "auto":  # what conv2d (and conv2d_backward) ran
                chosen = engine.auto_choice(shape.args(dtype, layout=layout), backward,
                                            shape.transposed)
            gf = flops / secs / 1e9
            new.append(Result(suite, shape.name, algo, secs, gf, b, shape.n, chosen,
                              share_of_gemm=gf / gemm_rate, backward=backward,
                              other_load=load))
    relate(new)
    report.results.extend(new)
    report.summary = summarize(report.results)
    return report
