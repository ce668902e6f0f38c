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
    # "suite/shape" -> {N, C_in, H, W, C_out, kernel, stride, padding, dilation, groups}
    shapes: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """results.json: info, gemm, summary, shapes and the results as dicts."""
        return {"info": self.info, "gemm": self.gemm, "summary": self.summary,
                "shapes": self.shapes, "results": [r.as_dict() for r in self.results]}


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
def _fmt(v, spec: str, none: str = "n/a") -> str:
    """``v`` formatted with ``spec``, or ``none`` for None."""
    return none if v is None else format(v, spec)


def _columns(rows: list[list[str]], head: list[str], align: str) -> str:
    """A markdown table of ``rows`` under ``head`` keeping only the columns where some
    row has a value (not ""); ``align[i]`` is "l" or "r" for column i."""
    keep = [i for i in range(len(head)) if any(row[i] for row in rows)]
    lines = ["| " + " | ".join(head[i] for i in keep) + " |",
             "|" + "|".join("---" if align[i] == "l" else "---:" for i in keep) + "|"]
    lines += ["| " + " | ".join(row[i] for i in keep) + " |" for row in rows]
    return "\n".join(lines)


def format_table(results: list[Result]) -> str:
    """A markdown table of results (one row per shape and algorithm); the ratio columns
    appear only when some result has them (x naive without naive, / torch without
    torch are left out)."""
    rows = []
    for r in results:
        algo = r.algo + (f" ({r.chosen})" if r.chosen else "")
        ms = f"{1e3 * r.seconds:.3f}" + (f"* ({r.batch}/{r.n})" if r.scaled else "")
        if r.other_load is not None and r.other_load > LOAD_THRESHOLD:
            ms += f" !{100 * r.other_load:.0f}%"
        share = "" if r.share_of_gemm is None else f"{100 * r.share_of_gemm:.0f}%"
        rows.append([r.shape, algo, ms, f"{r.gflops:.1f}", _fmt(r.speedup_vs_naive, ".1f", ""),
                     share, _fmt(r.vs_torch, ".2f", "")])
    return _columns(rows, ["shape", "algo", "median ms", "GFLOP/s", "x naive",
                           "share of SGEMM", "/ torch"], "llrrrrr")


def format_overview(results: list[Result]) -> str:
    """One row per shape: median ms of every algorithm side by side (n/a where it does
    not apply), auto's choice, and auto / torch when torch was timed (markdown)."""
    shapes = list(dict.fromkeys(r.shape for r in results))
    algos = list(dict.fromkeys(r.algo for r in results))
    by = {(r.shape, r.algo): r for r in results}
    rows = []
    for sh in shapes:
        cells = [sh]
        for a in algos:
            r = by.get((sh, a))
            if r is None:
                cells.append("n/a")
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
        cells.append(_fmt(auto.vs_torch if auto else None, ".2f", ""))
        rows.append(cells)
    return _columns(rows, ["shape", *algos, "auto / torch"], "l" + "r" * (len(algos) + 1))


SHAPE_FIELDS = ("N", "C_in", "H", "W", "C_out", "kernel", "stride", "padding", "dilation",
                "groups")


def shape_fields(shape) -> dict:
    """A ``Shape``'s layer as the report names it: N, C_in, H, W, C_out, kernel, stride,
    padding, dilation, groups."""
    fields = dict(zip(SHAPE_FIELDS, (shape.n, shape.c, shape.h, shape.w, shape.c_out,
                                     shape.k, shape.stride, shape.padding, shape.dilation,
                                     shape.groups), strict=True))
    if getattr(shape, "transposed", False):
        fields["op"] = shape.op
    return fields


def format_shapes(report: Report, suite: str) -> str:
    """The layers of ``suite`` (markdown): input N x C_in x H x W, C_out output channels,
    a kernel x kernel kernel, stride, padding, dilation, groups."""
    rows = [[key.split("/", 1)[1], *(str(d[f]) for f in SHAPE_FIELDS)]
            for key, d in report.shapes.items() if key.split("/", 1)[0] == suite]
    if not rows:
        return ""
    return _columns(rows, ["shape", *SHAPE_FIELDS], "l" + "r" * len(SHAPE_FIELDS))


def format_suite(report: Report, suite: str) -> str:
    """One suite's part of the report: the overview, the full table and the layers."""
    rs = [r for r in report.results if r.suite == suite]
    text = (f"{suite}: median ms per call\n\n{format_overview(rs)}\n\n{suite}: every "
            f"measurement\n\n{format_table(rs)}")
    shapes = format_shapes(report, suite)
    if shapes:
        text += f"\n\n{suite}: the layers (input N x C_in x H x W)\n\n{shapes}"
    return text


def legend(results: list[Result]) -> str:
    """What the tables' marks and ratios mean, for those that appear in ``results``."""
    lines = ["Legend:",
             "- median ms: median time of one call on the whole batch (lower is faster); "
             "GFLOP/s: the direct formula's multiply-adds x 2 / time"]
    if any(r.scaled for r in results):
        lines.append("- (*) direct algorithm timed on fewer images (shown) and scaled to "
                     "the batch")
    if any(r.other_load is not None and r.other_load > LOAD_THRESHOLD for r in results):
        lines.append("- (!N%) other processes used N% of the machine's CPU while this was "
                     "measured")
    if any(r.chosen for r in results):
        lines.append("- auto (name): the algorithm algo='auto' ran")
    pairs = {(r.shape, r.algo) for r in results}
    if len(pairs) < len({r.shape for r in results}) * len({r.algo for r in results}):
        lines.append("- n/a: not applicable to that layer (Winograd: 3x3 stride-1 only; "
                     "scipy: single-channel, forward only)")
    if any(r.speedup_vs_naive is not None for r in results):
        lines.append("- x naive: the direct algorithm's time / this time (above 1: faster "
                     "than direct)")
    if any(r.share_of_gemm is not None for r in results):
        lines.append("- share of SGEMM: GFLOP/s / the rate numpy's SGEMM reaches on the "
                     "GEMM im2col issues for that layer (measured in the same run). Above "
                     "100% is possible for FFT, Winograd and scipy.fftconvolve: they do "
                     "fewer multiplications than the direct formula counts")
    if any(r.vs_torch is not None for r in results):
        lines.append("- / torch, auto / torch: this time / torch's time on the same arrays; "
                     "below 1 means fastconv is faster, above 1 torch is faster")
    return "\n".join(lines)


def format_summary(summary: dict) -> str:
    """The summary (``summarize``'s dict) as markdown bullet points per suite."""
    lines = []
    for suite, s in summary.items():
        lines.append(f"**{suite}**")
        g = s.get("auto_vs_torch_geomean")
        if g is not None:
            lines.append(f"- auto / torch, geometric mean of time ratios: {g:.3f} ("
                         f"{'fastconv' if g < 1 else 'torch'} faster on average; below 1 "
                         "means fastconv is faster)")
        if "auto_candidates" in s:
            lines.append(f"- auto ran the measured-fastest algorithm on "
                         f"{s['auto_picked_fastest']}/{s['auto_candidates']} shapes; worst "
                         f"time of its choice / fastest: {s['auto_worst_ratio']:.2f}")
            misses = [p for p in s["auto_picks"] if p["chosen"] != p["fastest"]]
            for p in misses:
                lines.append(f"  - {p['shape']}: chose {p['chosen']}, fastest {p['fastest']} "
                             f"({p['ratio']:.2f}x)")
        for sh, v in s.get("im2col_share_of_gemm", {}).items():
            vs_naive = s["im2col_vs_naive"].get(sh)
            lines.append(f"- {sh}: im2col at {100 * v:.0f}% of its GEMM's SGEMM rate"
                         + ("" if vs_naive is None else f", {vs_naive:.0f}x naive"))
        loaded = s.get("measured_under_load", [])
        if loaded:
            worst = max(loaded, key=lambda v: v["other_load"])
            lines.append(f"- {len(loaded)} measurements ran while other processes used more "
                         f"than {100 * LOAD_THRESHOLD:.0f}% of the CPU (worst "
                         f"{100 * worst['other_load']:.0f}%: {worst['shape']} {worst['algo']})")
        for sh, v in s.get("fft_single_channel", {}).items():
            torch = v["torch_over_fft"]
            lines.append(f"- {sh}: fft {v['fft_ms']:.3f} ms; scipy.fftconvolve / fft = "
                         f"{v['scipy_over_fft']:.2f}"
                         + ("" if torch is None else f"; torch / fft = {torch:.1f}")
                         + " (above 1: fastconv's fft is faster)")
        lines.append("")
    return "\n".join(lines)


def _peers(info: dict) -> str:
    """Which other libraries were timed, in words (never "None")."""
    extras = info.get("extras")
    timed = set(extras) if extras is not None else {"torch", "scipy.fftconvolve"}
    parts = []
    if not info.get("torch"):
        parts.append("torch not installed")
    elif "torch" in timed:
        parts.append(f"torch {info['torch']} ({info.get('torch_threads') or '?'} threads)")
    else:
        parts.append(f"torch {info['torch']} installed, not timed")
    scipy = info.get("scipy") or "?"
    if timed & {"scipy.fftconvolve", "scipy.correlate"}:
        parts.append(f"scipy {scipy} (single-channel layers)")
    else:
        parts.append(f"scipy {scipy} not timed")
    return ", ".join(parts)


def format_header(info: dict) -> str:
    """Two lines on the machine the numbers come from: BLAS, threads, the libraries
    compared, CPU, layout, allocator (missing entries in words: "unset", "unknown")."""
    def known(key, missing="unknown"):
        v = info.get(key)
        return missing if v is None or v == "" else v

    return (f"BLAS: {known('blas')}\n"
            f"OPENBLAS_CORETYPE={known('openblas_coretype_env', 'unset')}; numba threading "
            f"layer {known('threading_layer')}, {known('numba_threads')} threads; compared "
            f"with: {_peers(info)}; CPU {known('cpu')}; layout {info.get('layout', 'NCHW')}; "
            f"allocator: {known('allocator')}")


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
            f.write(f"## {suite}\n\n{format_suite(report, suite)}\n\n")
        f.write(legend(report.results) + "\n\n")
        f.write("## Summary\n\n" + format_summary(report.summary) + "\n")
    paths.append(p)
    paths.extend(plot(report, out_dir))
    return paths


