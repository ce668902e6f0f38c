"""Benchmark API: time conv2d per algorithm on layer shapes, beside the SGEMM rate.

Used by ``fastconv bench``, the pytest-benchmark suite in bench/ and the notebooks.
Times are medians of repeated calls after a warm-up call (which also compiles).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from .conv import conv2d


@dataclass(frozen=True)
class Shape:
    """One conv layer: input (n, c, h, w) -> c_out channels, k x k kernel."""

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

    def arrays(self, dtype=np.float32, seed: int = 0):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((self.n, self.c, self.h, self.w)).astype(dtype)
        w = rng.standard_normal((self.c_out, self.c // self.groups, self.k, self.k)).astype(dtype)
        return x, w

    def out_hw(self) -> tuple[int, int]:
        eff = self.dilation * (self.k - 1) + 1
        return tuple((s + 2 * self.padding - eff) // self.stride + 1 for s in (self.h, self.w))

    def flops(self) -> int:
        ho, wo = self.out_hw()
        return 2 * self.n * self.c_out * ho * wo * (self.c // self.groups) * self.k * self.k

    def gemm_shape(self) -> tuple[int, int, int]:
        """(M, K, N) of the per-image im2col GEMM: (C_out/g) x (C/g*k*k) x (Ho*Wo)."""
        ho, wo = self.out_hw()
        return (self.c_out // self.groups, self.c // self.groups * self.k * self.k, ho * wo)


QUICK_SUITE = (
    Shape("lenet_c1", 64, 1, 28, 28, 6, 5),
    Shape("cifar", 16, 32, 32, 32, 32, 3, padding=1),
    Shape("resnet_56", 4, 64, 56, 56, 64, 3, padding=1),
    Shape("bigkernel", 1, 1, 256, 256, 1, 31),
)


def median_time(fn, *, repeats: int = 5, min_time: float = 0.0, max_time: float = 10.0) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after one warm-up call.

    Stops early when ``max_time`` seconds have been spent; repeats further (up to 4x) while
    the total is below ``min_time``."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        spent = time.perf_counter() - start
        if len(times) >= repeats and (spent >= min_time or len(times) >= 4 * repeats):
            break
        if spent >= max_time:
            break
    return float(np.median(times))


def sgemm_gflops(m: int, k: int, n: int, dtype=np.float32, batch: int = 1) -> float:
    """GFLOP/s of numpy's matmul on (batch, m, k) @ (k, n), median of a few runs."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((batch, k, n)).astype(dtype)
    out = np.empty((batch, m, n), dtype)
    t = median_time(lambda: np.matmul(a, b, out=out), repeats=5)
    return 2.0 * m * k * n * batch / t / 1e9


@dataclass
class Result:
    shape: str
    algo: str
    seconds: float
    gflops: float
    speedup_vs_naive: float | None = None
    share_of_gemm: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def run(shapes, algos=("naive", "im2col", "fft"), *, dtype=np.float32, repeats: int = 3,
        max_time: float = 5.0, progress=None) -> list[Result]:
    """Time ``conv2d`` for each shape and algorithm; ``progress`` wraps the job iterator."""
    jobs = [(s, a) for s in shapes for a in algos]
    it = progress(jobs) if progress else jobs
    results: list[Result] = []
    arrays = {}
    gemm = {}
    for shape, algo in it:
        if shape.name not in arrays:
            arrays[shape.name] = shape.arrays(dtype)
            m, k, n = shape.gemm_shape()
            gemm[shape.name] = sgemm_gflops(m, k, n, dtype, batch=min(shape.n, 4))
        x, w = arrays[shape.name]
        secs = median_time(lambda: conv2d(x, w, algo=algo, **shape.kwargs()),
                           repeats=repeats, max_time=max_time)
        gf = shape.flops() / secs / 1e9
        results.append(Result(shape.name, algo, secs, gf, share_of_gemm=gf / gemm[shape.name]))
    naive = {r.shape: r.seconds for r in results if r.algo == "naive"}
    for r in results:
        if r.shape in naive:
            r.speedup_vs_naive = naive[r.shape] / r.seconds
    return results


def format_table(results: list[Result]) -> str:
    """A markdown table of results."""
    lines = ["| shape | algo | median ms | GFLOP/s | x naive | share of SGEMM |",
             "|---|---|---:|---:|---:|---:|"]
    for r in results:
        sp = f"{r.speedup_vs_naive:.1f}" if r.speedup_vs_naive else "-"
        share = f"{100 * r.share_of_gemm:.0f}%" if r.share_of_gemm is not None else "-"
        lines.append(f"| {r.shape} | {r.algo} | {1e3 * r.seconds:.2f} | {r.gflops:.1f} | {sp} | "
                     f"{share} |")
    return "\n".join(lines)
