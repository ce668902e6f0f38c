"""The benchmark's results and what is made of them: the Result and Report records,
the per-suite summary, the markdown tables printed by ``fastconv bench``, and the
report files (results.json, results.md and the plots)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field

from .load import LOAD_THRESHOLD
from .plots import plot

FOOTNOTE = ("(*) direct algorithm timed on fewer images (shown) and scaled to the batch; "
            "(!N%) other processes used N% of the machine's CPU while this was measured")


@dataclass
class Result:
    """One measurement: ``algo`` on layer ``shape`` of ``suite``, median ``seconds`` per
    call on the whole batch of ``n`` images (forward, or forward + backward)."""

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
        """Timed on fewer images than the batch and scaled to it."""
        return self.batch < self.n

    def as_dict(self) -> dict:
        """The fields and ``scaled``, as results.json holds them."""
        d = asdict(self)
        d["scaled"] = self.scaled
        return d


@dataclass
class Report:
    """Everything one ``fastconv bench`` measured: the machine (``info``, see
    ``environment``), the results, the SGEMM reference of each layer and the summary."""

    info: dict
    results: list[Result] = field(default_factory=list)
    # "suite/shape" -> {m, k, n, count, gflops, other_load}
    gemm: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """results.json: info, gemm, summary and the results as dicts."""
        return {"info": self.info, "gemm": self.gemm, "summary": self.summary,
                "results": [r.as_dict() for r in self.results]}


def relate(results: list[Result]) -> None:
    """Fill in each result's speed-up over naive and time over torch on its shape (when
    those were measured among ``results``)."""
    naive = {r.shape: r.seconds for r in results if r.algo == "naive"}
    torch = {r.shape: r.seconds for r in results if r.algo == "torch"}
    for r in results:
        if r.shape in naive:
            r.speedup_vs_naive = naive[r.shape] / r.seconds
        if r.shape in torch:
            r.vs_torch = r.seconds / torch[r.shape]


def _geomean(values) -> float | None:
    """Geometric mean of the positive values; None when there are none."""
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
    """``v`` formatted with ``spec``, or ``none`` for None."""
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
    """The summary (``summarize``'s dict) as markdown bullet points per suite."""
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
    """Two lines on the machine the numbers come from: BLAS, threads, torch, CPU, layout."""
    return (f"BLAS: {info.get('blas')}\n"
            f"OPENBLAS_CORETYPE={info.get('openblas_coretype_env')}; numba threading layer "
            f"{info.get('threading_layer')}, {info.get('numba_threads')} threads; torch "
            f"{info.get('torch')} ({info.get('torch_threads')} threads); CPU {info.get('cpu')}"
            f"; layout {info.get('layout', 'NCHW')}")


def write(report: Report, out_dir: str) -> list[str]:
    """results.json, results.md and the PNG plots under ``out_dir``; returns the paths."""
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


