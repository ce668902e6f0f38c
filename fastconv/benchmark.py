"""Benchmark API: time conv2d per algorithm on layer shapes, beside SGEMM, torch and scipy.

Used by ``fastconv bench``, the pytest-benchmark suite in bench/ and the notebooks.

Every time is the median of repeated calls after an untimed warm-up call (which also
compiles). The direct ("naive") algorithm is slow on large layers: when one image takes
longer than ``naive_budget / repeats``, it runs on fewer images and the time is scaled
to the full batch (``Result.batch`` says how many images ran; tables mark it with *).

For each shape the SGEMM rate of the GEMM im2col actually issues (its tile shape) is
measured in the same run, so "share of SGEMM" compares like with like on a machine whose
speed drifts (shared cores, turbo).
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ._timing import median_time
from .conv import conv2d

ALGOS = ("naive", "im2col", "fft", "winograd", "auto")
FOOTNOTE = ("(*) direct algorithm timed on fewer images (shown) and scaled to the batch; "
            "(!N%) other processes used N% of the machine's CPU while this was measured")
EXTRAS = ("torch", "scipy.fftconvolve", "scipy.correlate")
#: Axis orders taking the suite's NCHW input and OIHW weight to NHWC and HWIO.
NHWC_FROM_NCHW = (0, 2, 3, 1)
HWIO_FROM_OIHW = (2, 3, 1, 0)


@dataclass(frozen=True)
class Shape:
    """One conv layer: input (n, c, h, w) -> c_out channels, k x k kernel (NCHW)."""

    name: str
    n: int
    c: int
    h: int
    w: int
    c_out: int
    k: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1

    def kwargs(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups)

    def args(self, dtype=np.float32, n: int | None = None, layout: str = "NCHW"):
        from ._args import conv_args_from_shapes

        x_shape = (self.n if n is None else n, self.c, self.h, self.w)
        w_shape = (self.c_out, self.c // self.groups, self.k, self.k)
        if layout == "NHWC":
            x_shape = tuple(x_shape[i] for i in NHWC_FROM_NCHW)
            w_shape = tuple(w_shape[i] for i in HWIO_FROM_OIHW)
        return conv_args_from_shapes("bench", x_shape, w_shape, layout=layout, dtype=dtype,
                                     **self.kwargs())

    def arrays(self, dtype=np.float32, seed: int = 0, layout: str = "NCHW"):
        """(x, w): NCHW / OIHW, or NHWC / HWIO (contiguous) with ``layout="NHWC"``; the
        same numbers either way."""
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((self.n, self.c, self.h, self.w), dtype=np.float32)
        w = rng.standard_normal((self.c_out, self.c // self.groups, self.k, self.k),
                                dtype=np.float32)
        if layout == "NHWC":
            x = np.ascontiguousarray(x.transpose(NHWC_FROM_NCHW))
            w = np.ascontiguousarray(w.transpose(HWIO_FROM_OIHW))
        return x.astype(dtype, copy=False), w.astype(dtype, copy=False)

    def out_hw(self) -> tuple[int, int]:
        a = self.args()
        return a.h_out, a.w_out

    def flops(self) -> int:
        return self.args().flops

    def single_channel(self) -> bool:
        """A plain 2-D filtering problem that scipy.signal can run (valid, stride 1)."""
        return (self.c == self.c_out == self.groups == 1 and self.stride == 1
                and self.dilation == 1 and self.padding == 0)


DEFAULT_SUITE = (
    Shape("lenet_c1", 64, 1, 28, 28, 6, 5),
    Shape("lenet_c2", 64, 6, 12, 12, 16, 5),
    Shape("cifar", 64, 32, 32, 32, 32, 3, padding=1),
    Shape("resnet_56", 16, 64, 56, 56, 64, 3, padding=1),
    Shape("resnet_28", 16, 128, 28, 28, 128, 3, padding=1),
    Shape("resnet_14", 16, 256, 14, 14, 256, 3, padding=1),
    Shape("stride2", 16, 64, 56, 56, 128, 3, stride=2, padding=1),
    Shape("pointwise", 16, 256, 14, 14, 64, 1),
    Shape("depthwise", 16, 128, 56, 56, 128, 3, padding=1, groups=128),
    Shape("stem", 8, 3, 224, 224, 64, 7, stride=2, padding=3),
    Shape("dilated", 16, 64, 56, 56, 64, 3, padding=2, dilation=2),
    Shape("bigkernel", 1, 1, 512, 512, 1, 31),
)

#: The default suite's layers with smaller batches (a few minutes on 2 cores).
QUICK_SUITE = tuple(
    Shape(s.name, max(1, s.n // 4), s.c, s.h, s.w, s.c_out, s.k, s.stride, s.padding,
          s.dilation, s.groups) for s in DEFAULT_SUITE)

#: One 256x256 single-channel image, kernel sizes 1..31 ("valid"): where FFT overtakes.
KERNEL_SWEEP = tuple(Shape(f"k{k}", 1, 1, 256, 256, 1, k) for k in range(1, 32))

#: Tiny shapes for the test suite (seconds).
TINY_SUITE = (
    Shape("tiny_conv", 2, 3, 12, 12, 4, 3, padding=1),
    Shape("tiny_dw", 2, 4, 10, 10, 4, 3, padding=1, groups=4),
    Shape("tiny_k5", 1, 1, 24, 24, 1, 5),
)

SUITES = {"default": DEFAULT_SUITE, "quick": QUICK_SUITE, "kernel-sweep": KERNEL_SWEEP,
          "tiny": TINY_SUITE}


def sgemm_gflops(m: int, k: int, n: int, dtype=np.float32, batch: int = 1,
                 repeats: int = 5) -> float:
    """GFLOP/s of numpy's matmul (m, k) @ (batch, k, n), median of ``repeats`` runs."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((batch, k, n)).astype(dtype)
    out = np.empty((batch, m, n), dtype)
    t = median_time(lambda: np.matmul(a, b, out=out), repeats=repeats)
    return 2.0 * m * k * n * batch / t / 1e9


def im2col_gemm(shape: Shape, dtype=np.float32, layout: str = "NCHW"
                ) -> tuple[int, int, int, int]:
    """(M, K, N, count): the GEMMs im2col issues for ``shape``: ``count`` products
    (M x K) @ (K x N). NCHW: weights @ columns per image, band and group (per tile and
    group for image-last tiles); NHWC: columns (tile pixels) @ weights per tile and group."""
    from .algos import im2col

    a = shape.args(dtype, layout=layout)
    g = a.groups
    m, cg = a.c_out // g, a.c_in // g
    t = im2col.tiling(a)
    tiles = math.ceil(a.n / t.images) * math.ceil(a.h_out / t.band)
    if layout == "NHWC":
        return a.n * a.h_out * a.w_out // tiles, cg * a.kh * a.kw, m, tiles * g
    if im2col.is_pointwise(a):
        return m, cg, a.h * a.w, a.n * g
    gemms = tiles if t.image_last else tiles * t.images  # image-last: one GEMM per tile
    return m, cg * a.kh * a.kw, a.n * a.h_out * a.w_out // gemms, gemms * g


@dataclass
class Result:
    suite: str
    shape: str
    algo: str
    seconds: float
    gflops: float
    batch: int                          # images actually run (time scaled when < n)
    n: int
    chosen: str | None = None           # auto: the algorithm it ran
    speedup_vs_naive: float | None = None
    share_of_gemm: float | None = None
    vs_torch: float | None = None       # seconds / torch's seconds
    backward: bool = False
    other_load: float | None = None     # CPU share other processes used meanwhile

    @property
    def scaled(self) -> bool:
        return self.batch < self.n

    def as_dict(self) -> dict:
        d = asdict(self)
        d["scaled"] = self.scaled
        return d


@dataclass
class Report:
    info: dict
    results: list[Result] = field(default_factory=list)
    gemm: dict = field(default_factory=dict)       # shape -> {m, k, n, count, gflops}
    summary: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"info": self.info, "gemm": self.gemm, "summary": self.summary,
                "results": [r.as_dict() for r in self.results]}


# --------------------------------------------------------------------- runners
def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _torch_runner(shape: Shape, x, w, backward: bool, layout: str = "NCHW"):
    """torch.nn.functional.conv2d on the same arrays; NHWC ones as torch's channels_last
    tensors (the weight made channels_last once, untimed), so torch runs its NHWC path."""
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
    if not backward:
        def run():
            with torch.inference_mode():
                torch.nn.functional.conv2d(xt, wt, **kw)
        return run
    xg = xt.clone().requires_grad_(True)
    wg = wt.clone().requires_grad_(True)
    a = shape.args(x.dtype)
    gy = torch.from_numpy(np.random.default_rng(1).standard_normal(
        a.y_shape).astype(x.dtype))
    if layout == "NHWC":
        gy = gy.contiguous(memory_format=torch.channels_last)

    def run_bw():
        xg.grad = wg.grad = None
        torch.nn.functional.conv2d(xg, wg, **kw).backward(gy)
    return run_bw


def _scipy_runner(name: str, shape: Shape, x, w, layout: str = "NCHW"):
    if not shape.single_channel():
        return None
    import scipy.signal as ss

    if layout == "NHWC":  # one channel: the same planes
        x, w = x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1)
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
    kw = dict(shape.kwargs(), layout=layout)
    if not backward:
        return lambda: conv2d(x, w, algo=algo, **kw)
    import fastconv

    a = shape.args(x.dtype, n=x.shape[0])
    gy = np.random.default_rng(1).standard_normal(a.y_shape).astype(x.dtype)
    if layout == "NHWC":
        gy = np.ascontiguousarray(gy.transpose(NHWC_FROM_NCHW))

    def run():
        conv2d(x, w, algo=algo, **kw)
        fastconv.conv2d_backward(gy, x, w, algo=algo, **kw)
    return run


# --------------------------------------------------------------- machine load
def _cpu_ticks() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot (Linux), else None."""
    import os

    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return (total - idle) / hz, total / hz


def _own_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class LoadMeter:
    """Share of the machine's CPU time used by *other* processes between start() and
    stop() (0: idle apart from us, 1: every core busy with others). None off Linux."""

    def start(self):
        self._m, self._own = _cpu_ticks(), _own_cpu()
        return self

    def stop(self) -> float | None:
        m1, own1 = _cpu_ticks(), _own_cpu()
        if self._m is None or m1 is None:
            return None
        total = m1[1] - self._m[1]
        if total <= 0:
            return None
        others = (m1[0] - self._m[0]) - (own1 - self._own)
        return float(min(max(others / total, 0.0), 1.0))


#: Other processes' CPU share above which a measurement counts as disturbed: 2-thread
#: BLAS waits for its slower thread, so a few percent of stolen time can double a GEMM.
LOAD_THRESHOLD = 0.03


def wait_until_idle(timeout: float, threshold: float = LOAD_THRESHOLD,
                    window: float = 1.0) -> bool:
    """Wait up to ``timeout`` seconds for a ``window`` in which other processes use at
    most ``threshold`` of the CPU; True when one came (always True off Linux)."""
    end = time.perf_counter() + timeout
    while True:
        meter = LoadMeter().start()
        time.sleep(window)
        load = meter.stop()
        if load is None or load <= threshold:
            return True
        if time.perf_counter() >= end:
            return False


def _measured(measure, wait_idle: float):
    """(measure(), CPU share of other processes meanwhile). With ``wait_idle`` > 0: wait
    for an idle machine first, and measure again (at most twice more) when others took
    more than ``LOAD_THRESHOLD``."""
    attempts = 3 if wait_idle > 0 else 1
    for attempt in range(attempts):
        if wait_idle > 0:
            wait_until_idle(wait_idle)
        meter = LoadMeter().start()
        value = measure()
        load = meter.stop()
        if load is None or load <= LOAD_THRESHOLD or attempt == attempts - 1:
            break
    return value, load


#: Every measurement repeats its call until this many seconds have passed (at least
#: ``repeats`` calls, at most MAX_REPEATS): the median of five sub-millisecond calls right
#: after another library's or algorithm's run (its threads still spinning, caches cold)
#: moved by 1.5-2x between runs of the suite; hundreds of calls settle it.
MIN_MEASURE_SECONDS = 0.1
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


def environment(backward: bool = False, layout: str = "NCHW") -> dict:
    """What the numbers were measured on."""
    import os

    import numba

    from . import info

    data = info.collect()
    torch = _torch()
    data["torch"] = torch.__version__ if torch else None
    data["torch_threads"] = torch.get_num_threads() if torch else None
    data["machine"] = platform.machine()
    data["cpu"] = _cpu()
    data["numba_threads"] = numba.get_num_threads()
    data["openblas_coretype_env"] = os.environ.get("OPENBLAS_CORETYPE")
    data["backward"] = backward
    data["layout"] = layout
    return data


def _cpu() -> str:
    from .tools.calibrate import cpu_name

    return cpu_name()


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
    from . import autotune

    if report is None:
        report = Report(environment(backward))
    jobs = [(r, s, a) for r in range(max(runs, 1)) for s in shapes
            for a in tuple(algos) + tuple(extras)]
    it = progress(jobs) if progress else jobs
    arrays: dict = {}
    best: dict = {}   # (shape name, algo) -> (secs, images, load)
    gemm: dict = {}   # shape name -> dict
    for _run, shape, algo in it:
        if shape.name not in arrays:
            # keep one shape's arrays alive
            arrays = {shape.name: shape.arrays(dtype, layout=layout)}
        if (_run, shape.name) not in gemm:
            m, k, n, count = im2col_gemm(shape, dtype, layout)
            gf, load = _measured(lambda m=m, k=k, n=n, c=count: sgemm_gflops(
                m, k, n, dtype, batch=min(c, 4)), wait_idle)
            gemm[(_run, shape.name)] = True
            old = gemm.get(shape.name)
            if old is None or gf > old["gflops"]:
                gemm[shape.name] = {"m": m, "k": k, "n": n, "count": count, "gflops": gf,
                                    "other_load": load}
        x, w = arrays[shape.name]
        a = shape.args(dtype, layout=layout)
        if algo in autotune.ALGORITHMS and algo not in autotune.applicable(a):
            continue  # Winograd: 3x3 stride-1 layers only
        if algo in ALGOS:
            def make(xb, algo=algo, shape=shape, w=w):
                return _fastconv_runner(shape, algo, xb, w, backward, layout)
        elif algo == "torch":
            if _torch_runner(shape, x[:1], w, backward, layout) is None:
                continue

            def make(xb, shape=shape, w=w):
                return _torch_runner(shape, xb, w, backward, layout)
        else:
            if backward or _scipy_runner(algo, shape, x[:1], w, layout) is None:
                continue

            def make(xb, algo=algo, shape=shape, w=w):
                return _scipy_runner(algo, shape, xb, w, layout)
        budget = naive_budget if algo == "naive" else 0.0
        (secs, b), load = _measured(
            lambda make=make, x=x, n=shape.n, budget=budget: _time_scaled(
                make, x, n, repeats, max_time, budget), wait_idle)
        key = (shape.name, algo)
        if key not in best or secs < best[key][0]:
            best[key] = (secs, b, load)
    new: list[Result] = []
    for shape in shapes:
        report.gemm[f"{suite}/{shape.name}"] = gemm[shape.name]
        gemm_rate = gemm[shape.name]["gflops"]
        for algo in tuple(algos) + tuple(extras):
            if (shape.name, algo) not in best:
                continue
            secs, b, load = best[(shape.name, algo)]
            flops = shape.flops() * (3 if backward else 1)
            chosen = None
            if algo == "auto":  # what conv2d (and conv2d_backward) ran
                a = shape.args(dtype, layout=layout)
                chosen = (autotune.backward_choice(a, "auto", True) if backward
                          else autotune.plan_for(a).algorithm)
            gf = flops / secs / 1e9
            new.append(Result(suite, shape.name, algo, secs, gf, b, shape.n, chosen,
                              share_of_gemm=gf / gemm_rate, backward=backward,
                              other_load=load))
    _relate(new)
    report.results.extend(new)
    report.summary = summarize(report.results)
    return report


def _relate(results: list[Result]) -> None:
    naive = {r.shape: r.seconds for r in results if r.algo == "naive"}
    torch = {r.shape: r.seconds for r in results if r.algo == "torch"}
    for r in results:
        if r.shape in naive:
            r.speedup_vs_naive = naive[r.shape] / r.seconds
        if r.shape in torch:
            r.vs_torch = r.seconds / torch[r.shape]


def _geomean(values) -> float | None:
    values = [v for v in values if v is not None and v > 0]
    if not values:
        return None
    return float(math.exp(sum(math.log(v) for v in values) / len(values)))


def summarize(results: list[Result]) -> dict:
    """Per suite: auto/torch geometric mean, how often auto ran the fastest algorithm,
    im2col's share of SGEMM and speed-up over naive on the resnet shapes, FFT against
    scipy and torch on single-channel shapes."""
    out = {}
    for suite in dict.fromkeys(r.suite for r in results):
        rs = [r for r in results if r.suite == suite]
        by = {(r.shape, r.algo): r for r in rs}
        shapes = list(dict.fromkeys(r.shape for r in rs))
        s: dict = {}
        s["auto_vs_torch_geomean"] = _geomean(
            by[(sh, "auto")].vs_torch for sh in shapes if (sh, "auto") in by)
        picks = []
        for sh in shapes:
            times = {a: by[(sh, a)].seconds for a in ("naive", "im2col", "fft", "winograd")
                     if (sh, a) in by}
            if len(times) < 3 or (sh, "auto") not in by:
                continue
            fastest = min(times, key=times.get)
            chosen = by[(sh, "auto")].chosen
            if chosen not in times:  # its choice was not among the algorithms timed
                continue
            picks.append({"shape": sh, "fastest": fastest, "chosen": chosen,
                          "ratio": times[chosen] / times[fastest]})
        if picks:
            s["auto_picks"] = picks
            s["auto_picked_fastest"] = sum(p["chosen"] == p["fastest"] for p in picks)
            s["auto_candidates"] = len(picks)
            s["auto_worst_ratio"] = max(p["ratio"] for p in picks)
        resnet = [sh for sh in shapes if sh.startswith("resnet_")]
        s["im2col_share_of_gemm"] = {sh: by[(sh, "im2col")].share_of_gemm for sh in resnet
                                     if (sh, "im2col") in by}
        s["im2col_vs_naive"] = {sh: by[(sh, "im2col")].speedup_vs_naive for sh in resnet
                                if (sh, "im2col") in by}
        fftcmp = {}
        for sh in shapes:
            if (sh, "fft") in by and (sh, "scipy.fftconvolve") in by:
                f = by[(sh, "fft")].seconds
                fftcmp[sh] = {"fft_ms": 1e3 * f,
                              "scipy_over_fft": by[(sh, "scipy.fftconvolve")].seconds / f,
                              "torch_over_fft": (by[(sh, "torch")].seconds / f
                                                 if (sh, "torch") in by else None)}
        s["fft_single_channel"] = fftcmp
        s["measured_under_load"] = [
            {"shape": r.shape, "algo": r.algo, "other_load": r.other_load} for r in rs
            if r.other_load is not None and r.other_load > LOAD_THRESHOLD]
        out[suite] = s
    return out


# ----------------------------------------------------------------------- output
def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def format_table(results: list[Result]) -> str:
    """A markdown table of results (one row per shape and algorithm)."""
    lines = ["| shape | algo | median ms | GFLOP/s | x naive | share of SGEMM | / torch |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        algo = r.algo + (f" ({r.chosen})" if r.chosen else "")
        ms = f"{1e3 * r.seconds:.3f}" + (f"* ({r.batch}/{r.n})" if r.scaled else "")
        if r.other_load is not None and r.other_load > LOAD_THRESHOLD:
            ms += f" !{100 * r.other_load:.0f}%"
        share = None if r.share_of_gemm is None else 100 * r.share_of_gemm
        lines.append(f"| {r.shape} | {algo} | {ms} | {r.gflops:.1f} | "
                     f"{_fmt(r.speedup_vs_naive, '.1f')} | {_fmt(share, '.0f')}% | "
                     f"{_fmt(r.vs_torch, '.2f')} |")
    return "\n".join(lines)


def format_overview(results: list[Result]) -> str:
    """One row per shape: median ms of every algorithm side by side, auto's choice, and
    auto / torch (a markdown table)."""
    shapes = list(dict.fromkeys(r.shape for r in results))
    algos = list(dict.fromkeys(r.algo for r in results))
    by = {(r.shape, r.algo): r for r in results}
    head = " | ".join(algos)
    lines = [f"| shape | {head} | auto / torch |", "|---|" + "---:|" * (len(algos) + 1)]
    for sh in shapes:
        cells = []
        for a in algos:
            r = by.get((sh, a))
            if r is None:
                cells.append("-")
                continue
            ms = 1e3 * r.seconds
            cell = (f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}")
            cell += "*" if r.scaled else ""
            if r.chosen:
                cell += f" ({r.chosen})"
            if r.other_load is not None and r.other_load > LOAD_THRESHOLD:
                cell += f" !{100 * r.other_load:.0f}%"
            cells.append(cell)
        auto = by.get((sh, "auto"))
        ratio = _fmt(auto.vs_torch if auto else None, ".2f")
        lines.append(f"| {sh} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def format_summary(summary: dict) -> str:
    lines = []
    for suite, s in summary.items():
        lines.append(f"**{suite}**")
        g = s.get("auto_vs_torch_geomean")
        if g is not None:
            lines.append(f"- auto / torch, geometric mean of time ratios: {g:.3f}")
        if "auto_candidates" in s:
            lines.append(f"- auto ran the measured-fastest algorithm on "
                         f"{s['auto_picked_fastest']}/{s['auto_candidates']} shapes; worst "
                         f"time of its choice / fastest: {s['auto_worst_ratio']:.2f}")
            misses = [p for p in s["auto_picks"] if p["chosen"] != p["fastest"]]
            for p in misses:
                lines.append(f"  - {p['shape']}: chose {p['chosen']}, fastest {p['fastest']} "
                             f"({p['ratio']:.2f}x)")
        for sh, v in s.get("im2col_share_of_gemm", {}).items():
            lines.append(f"- {sh}: im2col at {100 * v:.0f}% of its GEMM's SGEMM rate, "
                         f"{_fmt(s['im2col_vs_naive'].get(sh), '.0f')}x naive")
        loaded = s.get("measured_under_load", [])
        if loaded:
            worst = max(loaded, key=lambda v: v["other_load"])
            lines.append(f"- {len(loaded)} measurements ran while other processes used more "
                         f"than {100 * LOAD_THRESHOLD:.0f}% of the CPU (worst "
                         f"{100 * worst['other_load']:.0f}%: {worst['shape']} {worst['algo']})")
        for sh, v in s.get("fft_single_channel", {}).items():
            lines.append(f"- {sh}: fft {v['fft_ms']:.3f} ms; scipy.fftconvolve / fft = "
                         f"{v['scipy_over_fft']:.2f}; torch / fft = "
                         f"{_fmt(v['torch_over_fft'], '.1f')}")
        lines.append("")
    return "\n".join(lines)


def format_header(info: dict) -> str:
    return (f"BLAS: {info.get('blas')}\n"
            f"OPENBLAS_CORETYPE={info.get('openblas_coretype_env')}; numba threading layer "
            f"{info.get('threading_layer')}, {info.get('numba_threads')} threads; torch "
            f"{info.get('torch')} ({info.get('torch_threads')} threads); CPU {info.get('cpu')}"
            f"; layout {info.get('layout', 'NCHW')}")


def write(report: Report, out_dir: str) -> list[str]:
    """results.json, results.md and the PNG plots under ``out_dir``; returns the paths."""
    import json
    import os

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    p = os.path.join(out_dir, "results.json")
    with open(p, "w") as f:
        json.dump(report.as_dict(), f, indent=2)
    paths.append(p)
    p = os.path.join(out_dir, "results.md")
    with open(p, "w") as f:
        f.write("# fastconv bench\n\n```\n" + format_header(report.info) + "\n```\n\n")
        for suite in dict.fromkeys(r.suite for r in report.results):
            rs = [r for r in report.results if r.suite == suite]
            f.write(f"## {suite}\n\nMedian ms per call:\n\n{format_overview(rs)}\n\n")
            f.write(format_table(rs) + "\n\n")
        f.write(FOOTNOTE + "\n\n")
        f.write("## Summary\n\n" + format_summary(report.summary) + "\n")
    paths.append(p)
    paths.extend(plot(report, out_dir))
    return paths


def plot(report: Report, out_dir: str) -> list[str]:
    """Per-shape bars of time per algorithm (one PNG per suite) and, for the kernel
    sweep, time against kernel size. Returns the paths ([] without matplotlib)."""
    import os

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    paths = []
    for suite in dict.fromkeys(r.suite for r in report.results):
        rs = [r for r in report.results if r.suite == suite]
        shapes = list(dict.fromkeys(r.shape for r in rs))
        algos = list(dict.fromkeys(r.algo for r in rs))
        by = {(r.shape, r.algo): r.seconds for r in rs}
        if suite == "kernel-sweep":
            fig, ax = plt.subplots(figsize=(8, 5))
            ks = [int(s[1:]) for s in shapes]
            for algo in algos:
                pts = [(k, 1e3 * by[(s, algo)]) for k, s in zip(ks, shapes, strict=True)
                       if (s, algo) in by]
                if pts:
                    style = "--" if algo not in ALGOS else ("o-" if algo != "auto" else ":")
                    ax.plot(*zip(*pts, strict=True), style, label=algo, markersize=3)
            ax.set_yscale("log")
            ax.set_xlabel("kernel size k (k x k, 256x256 single-channel image, valid)")
            ax.set_ylabel("median time (ms)")
            ax.set_title("naive vs im2col vs FFT against kernel size")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
            p = os.path.join(out_dir, "kernel_sweep.png")
        else:
            fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(shapes)), 5))
            width = 0.8 / max(len(algos), 1)
            for i, algo in enumerate(algos):
                xs = [j + i * width for j, s in enumerate(shapes) if (s, algo) in by]
                ys = [1e3 * by[(s, algo)] for s in shapes if (s, algo) in by]
                ax.bar(xs, ys, width, label=algo)
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))])
            ax.set_xticklabels(shapes, rotation=30, ha="right")
            ax.set_yscale("log")
            ax.set_ylabel("median time (ms)")
            ax.set_title(f"fastconv bench: {suite} suite")
            ax.grid(True, axis="y", which="both", alpha=0.3)
            ax.legend(fontsize=8, ncol=2)
            p = os.path.join(out_dir, f"shapes_{suite}.png")
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths
