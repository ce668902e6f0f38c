"""The benchmark's plots: time per algorithm and shape, and time against kernel size."""

from __future__ import annotations

import os

from .suites import ALGOS

#: Legend entries of the plots: what each series is (times: lower is faster).
LABELS = {"naive": "naive (direct formula)", "im2col": "im2col (unfold + SGEMM)",
          "fft": "fft", "winograd": "winograd (3x3 only)", "auto": "auto (fastconv's choice)",
          "torch": "torch (reference)", "scipy.fftconvolve": "scipy.fftconvolve",
          "scipy.correlate": "scipy.correlate"}
LEGEND_TITLE = "median ms, lower is faster"


def plot(report, out_dir: str) -> list[str]:
    """Per-shape bars of time per algorithm (one PNG per suite) and, for the kernel
    sweep, time against kernel size, from a ``Report``'s results. Returns the paths ([]
    without matplotlib)."""
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
                    ax.plot(*zip(*pts, strict=True), style, label=LABELS.get(algo, algo),
                            markersize=3)
            ax.set_yscale("log")
            ax.set_xlabel("kernel size k (k x k, 256x256 single-channel image, valid)")
            ax.set_ylabel("median time (ms)")
            ax.set_title("naive vs im2col vs FFT against kernel size")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(title=LEGEND_TITLE)
            p = os.path.join(out_dir, "kernel_sweep.png")
        else:
            fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(shapes)), 5))
            width = 0.8 / max(len(algos), 1)
            for i, algo in enumerate(algos):
                xs = [j + i * width for j, s in enumerate(shapes) if (s, algo) in by]
                ys = [1e3 * by[(s, algo)] for s in shapes if (s, algo) in by]
                ax.bar(xs, ys, width, label=LABELS.get(algo, algo))
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))])
            ax.set_xticklabels(shapes, rotation=30, ha="right")
            ax.set_yscale("log")
            ax.set_ylabel("median time (ms)")
            ax.set_title(f"fastconv bench: {suite} suite (layers: see results.md)")
            ax.grid(True, axis="y", which="both", alpha=0.3)
            ax.legend(fontsize=8, ncol=2, title=LEGEND_TITLE, title_fontsize=8)
            p = os.path.join(out_dir, f"shapes_{suite}.png")
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths
