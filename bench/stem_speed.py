"""The stem, stride2 and dilated bench layers, and other input layers of image networks
(float32, algo auto, 2 threads):
before and after a change against torch, one process, wall time, the contenders
alternating in blocks, best of rounds (the machine is shared: run it on a quiet one,
and read ratios, not absolute times).

    python bench/stem_speed.py [stem stride2 dilated stem_1 rgb_5x5_s2 rgb_5x5
                                gray_7x7_s2] [--rounds 9] [--backward] [--layout NHWC]

"before" runs, in NCHW, the strided split forward through Python threads
(``im2col.split.forward_split``, in L2-sized panels) instead of the fused kernel
(``im2col.fused``), and the input layers without the row lanes kernel
(``im2col.row_lanes``: the stem then runs the direct lanes kernel); in NHWC (input
NHWC, weight HWIO; torch's tensors channels_last) the tile loop (a parallel unfold,
then one threaded GEMM) instead of the fused kernel (``im2col.fused_nhwc``; layers the
direct NHWC kernel takes, the stem on 8 images, run it on both sides); prints each
contender's best milliseconds and its time over torch's (1.0: as fast as torch).
malloc is first settled as ``fastconv bench`` does (``malloc.settle_allocator``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fastconv
from fastconv.algos.im2col import drivers, row_lanes
from fastconv.layout import LAYOUTS
from fastconv.tools.bench.malloc import settle_allocator

LAYERS = {
    "stem": ((8, 3, 224, 224), (64, 3, 7, 7), dict(stride=2, padding=3)),
    "stride2": ((16, 64, 56, 56), (128, 64, 3, 3), dict(stride=2, padding=1)),
    "dilated": ((16, 64, 56, 56), (64, 64, 3, 3), dict(padding=2, dilation=2)),
    "stem_1": ((1, 3, 224, 224), (64, 3, 7, 7), dict(stride=2, padding=3)),
    "rgb_5x5_s2": ((8, 3, 128, 128), (32, 3, 5, 5), dict(stride=2, padding=2)),
    "rgb_5x5": ((16, 3, 64, 64), (16, 3, 5, 5), dict(padding=2)),
    "gray_7x7_s2": ((4, 1, 224, 224), (64, 1, 7, 7), dict(stride=2, padding=3)),
}


def contenders(name: str, backward: bool, layout: str = "NCHW") -> dict:
    """{"before", "after", "torch"}: callables running the layer (forward, or forward
    and backward) in ``layout``."""
    import torch

    x_shape, w_shape, kw = LAYERS[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    slot = "fused_tiling"
    if layout == "NHWC":
        xt = xt.contiguous(memory_format=torch.channels_last)
        wt = wt.contiguous(memory_format=torch.channels_last)
        x = np.ascontiguousarray(x.transpose(LAYOUTS["NHWC"].from_canonical))
        w = np.ascontiguousarray(w.transpose(LAYOUTS["NHWC"].weight_from_canonical))
        slot = "fused_nhwc_tiling"
    saved, applies = getattr(drivers, slot), row_lanes.applies

    def ours(new: bool):
        def run():
            if not new:
                setattr(drivers, slot, lambda args: None)
                row_lanes.applies = lambda args: False
            try:
                y = fastconv.conv2d(x, w, layout=layout, **kw)
                if backward:
                    fastconv.conv2d_backward(np.ones_like(y), x, w, layout=layout, **kw)
            finally:
                setattr(drivers, slot, saved)
                row_lanes.applies = applies
        return run

    def theirs():
        if not backward:
            with torch.no_grad():
                torch.nn.functional.conv2d(xt, wt, **kw)
            return
        xg, wg = xt.clone().requires_grad_(), wt.clone().requires_grad_()
        y = torch.nn.functional.conv2d(xg, wg, **kw)
        y.backward(torch.ones_like(y))

    return {"before": ours(False), "after": ours(True), "torch": theirs}


def best_times(fns: dict, rounds: int, block: int = 3) -> dict:
    """Each callable's best wall time (seconds), run in alternating blocks."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for k, fn in fns.items():
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                best[k] = min(best[k], time.perf_counter() - t0)
    return best


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("layers", nargs="*", help=f"of {', '.join(LAYERS)} (default: all)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--backward", action="store_true", help="forward + backward")
    ap.add_argument("--layout", choices=("NCHW", "NHWC"), default="NCHW")
    opts = ap.parse_args()
    unknown = set(opts.layers) - set(LAYERS)
    if unknown:
        ap.error(f"unknown layers {sorted(unknown)}; choose from {', '.join(LAYERS)}")
    torch.set_num_threads(2)
    settle_allocator()
    for name in opts.layers or LAYERS:
        best = best_times(contenders(name, opts.backward, opts.layout), opts.rounds)
        what = "forward+backward" if opts.backward else "forward"
        print(f"{name} {opts.layout} {what}: " + ", ".join(
            f"{k} {v * 1e3:.2f} ms ({v / best['torch']:.2f}x torch)" for k, v in best.items()))


if __name__ == "__main__":
    main()
