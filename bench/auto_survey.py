"""How often ``algo="auto"`` runs the fastest algorithm, on random layers.

Each layer (float32, forward, one process) is planned, then every algorithm that
applies is timed as a user calls it (a warm-up call, then the best of ``--calls`` calls;
one call for those over 50 ms; the direct algorithm skipped where its model time is
over 20x the best model time). Reports the share of layers where auto's choice took at
most 1.1x the fastest's time, the median, 90th and 95th percentile and worst of that
ratio, and the layers auto missed. ``--runs R`` times every layer R times over and keeps
each algorithm's best (a shared machine's slow moments fall out).

    python bench/auto_survey.py [--kind survey|fft] [--layers 200] [--seed 0]
                                [--runs 2] [--calls 3] [--json out.json]

Kinds: ``survey`` (1-32 images, 1-64 channels, 16-128 pixels, kernels 1-7, stride 1-2,
'same' padding, both layouts), ``fft`` (1-8 images, 1-16 channels, 64-256 pixels,
kernels 5-15, valid or 'same': where the FFT and im2col compete).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import fastconv
from fastconv._args import conv_args_from_shapes
from fastconv.tools.bench.runner import call_times

ALGORITHMS = ("naive", "im2col", "fft", "winograd")


def random_layer(rng, kind: str) -> dict:
    """One layer of ``kind`` (see the module docstring)."""
    while True:
        if kind == "survey":
            n, ci, co = (int(rng.choice(v)) for v in ([1, 2, 8, 32], [1, 3, 8, 16, 64],
                                                     [1, 2, 8, 32, 64]))
            h, k, s = (int(rng.choice(v)) for v in ([16, 32, 64, 128], [1, 3, 5, 7],
                                                   [1, 1, 2]))
            pad = k // 2
            if n * max(ci, co) * h * h > 4e6:
                continue
        else:
            n, ci, co = (int(rng.choice(v)) for v in ([1, 2, 4, 8], [1, 3, 8, 16],
                                                     [1, 4, 8, 16]))
            h, k = int(rng.choice([64, 128, 256])), int(rng.choice([5, 7, 9, 11, 15]))
            s, pad = 1, int(rng.choice([0, k // 2]))
            if n * max(ci, co) * h * h > 2e6 or ci == co == 1:
                continue
        layout = str(rng.choice(["NCHW", "NHWC"]))
        return dict(n=n, ci=ci, co=co, h=h, k=k, stride=s, padding=pad, layout=layout)


def shapes(layer: dict):
    n, ci, co, h, k = (layer[key] for key in ("n", "ci", "co", "h", "k"))
    if layer["layout"] == "NCHW":
        return (n, ci, h, h), (co, ci, k, k)
    return (n, h, h, ci), (k, k, ci, co)


def best_ms(fn, calls: int) -> float:
    """Best of ``calls`` timed calls after a warm-up one; one timed call over 50 ms."""
    first = call_times(fn, 1)[0]
    if first > 0.05:
        return first * 1e3
    return min([first] + call_times(fn, calls - 1, warmup=False)) * 1e3


def time_layer(layer: dict, rng, calls: int, backward: bool = False) -> dict:
    """{algorithm: best ms} for the algorithms that apply, and auto's plan (of the
    forward, or with ``backward`` of conv2d_backward's three gradients)."""
    xs, ws = shapes(layer)
    kw = dict(stride=layer["stride"], padding=layer["padding"], layout=layer["layout"])
    plan = fastconv.plan(xs, ws, backward=backward, **kw)
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    op, operands = fastconv.conv2d, (x, w)
    if backward:
        y_shape = conv_args_from_shapes("conv2d", xs, ws, **kw).y_layout_shape
        gy = rng.standard_normal(y_shape).astype(np.float32)
        op, operands = fastconv.conv2d_backward, (gy, x, w)
    low = min(plan.estimates.values())
    times = {}
    for algo in ALGORITHMS:
        est = plan.estimates.get(algo)
        if est is None or (algo == "naive" and est > 20 * low and est > 5e-5):
            continue
        times[algo] = best_ms(lambda a=algo: op(*operands, algo=a, **kw), calls)
    return dict(layer, auto=plan.algorithm, times=times)


def auto_ratio(row: dict) -> float:
    """auto's time over the fastest algorithm's."""
    return row["times"][row["auto"]] / min(row["times"].values())


def summary(rows: list) -> str:
    ratios = np.array([auto_ratio(r) for r in rows])
    return (f"{len(rows)} layers: auto within 10% of the fastest on "
            f"{100 * np.mean(ratios <= 1.1):.1f}%; auto / fastest median "
            f"{np.median(ratios):.2f}, p90 {np.percentile(ratios, 90):.2f}, p95 "
            f"{np.percentile(ratios, 95):.2f}, worst {ratios.max():.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kind", choices=("survey", "fft"), default="survey")
    ap.add_argument("--layers", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--backward", action="store_true",
                    help="time conv2d_backward against auto's backward plan")
    ap.add_argument("--json", default=None, help="write every layer's times here")
    args = ap.parse_args(argv)
    layer_rng = np.random.default_rng(args.seed)
    layers = [random_layer(layer_rng, args.kind) for _ in range(args.layers)]
    rows = None
    for _ in range(args.runs):
        data_rng = np.random.default_rng(args.seed + 1)
        run = [time_layer(layer, data_rng, args.calls, args.backward) for layer in layers]
        rows = run if rows is None else [
            dict(old, times={a: min(t, new["times"][a]) for a, t in old["times"].items()})
            for old, new in zip(rows, run, strict=True)]
    print(summary(rows))
    for r in rows:
        ratio = auto_ratio(r)
        if ratio > 1.1:
            fastest = min(r["times"], key=r["times"].get)
            print(f"  {r['layout']} {r['n']}x{r['ci']}->{r['co']} {r['h']}x{r['h']} "
                  f"k{r['k']} s{r['stride']} p{r['padding']}: auto {r['auto']} "
                  f"{ratio:.2f}x {fastest}'s time")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
