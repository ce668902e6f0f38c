"""Training throughput of small CNNs: fastconv against torch, in one run.

Both train the same network (same initial weights, same batches, SGD with momentum 0.9)
in float32; the frameworks alternate in blocks of --steps steps (ABBA order over --rounds
rounds, each block after a pause of --settle seconds), or step by step with
``--interleave step``. How and why: ``fastconv.tools.bench.train``.

    python bench/train_throughput.py [--model lenet resnet-small resnet-wide]
        [--layout NCHW NHWC] [--batch B] [--steps 20] [--rounds 5] [--threads 2]
        [--numba-threads N] [--blas-threads N] [--interleave block|step] [--settle S]
        [--malloc-mb M] [--clock wall|cpu] [--profile]

Networks: lenet (LeNet-5, 1x28x28, batch 64), resnet-small (stem 16 channels, one
BasicBlock per stage of 16/32/64 channels, 1x28x28, batch 32), resnet-wide (32/64/128,
3x32x32, batch 64); --batch overrides the batch of all. NHWC runs fastconv's models
channels-last end to end and torch's in channels_last. The report ends with a table of
images/s per network and layout. torch runs with torch.set_num_threads(threads) (skipped,
with a note, if torch is not installed). Compilation (numba) is excluded by warm-up
steps. The headline rows keep glibc's malloc defaults; ``--malloc-mb M`` repeats every
case with fixed thresholds as further rows. ``--numba-threads`` and ``--blas-threads`` cap
fastconv's numba threads and numpy's BLAS threads for the whole run. ``--profile`` then
times every fastconv op of further training steps (forward and backward of each autograd
Function, the optimiser step) and prints the median milliseconds per step of each.
"""

from __future__ import annotations

import argparse

from fastconv.tools.bench import train
from fastconv.tools.bench.train_models import SPECS


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", nargs="+", choices=list(SPECS), default=["lenet"],
                    dest="models", help="networks to time (default: lenet)")
    ap.add_argument("--layout", nargs="+", choices=("NCHW", "NHWC"), default=["NCHW"],
                    dest="layouts", help="layouts to time (default: NCHW)")
    ap.add_argument("--batch", type=int, default=None,
                    help="batch size (default: the network's own)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=5, help="timed steps = rounds * steps")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--numba-threads", type=int, default=None,
                    help="numba.set_num_threads for fastconv (default: numba's)")
    ap.add_argument("--blas-threads", type=int, default=None,
                    help="cap numpy's BLAS threads (threadpoolctl; default: no cap)")
    ap.add_argument("--interleave", choices=("block", "step"), default="block",
                    help="alternate the frameworks in blocks of --steps steps (default) or "
                         "step by step")
    ap.add_argument("--settle", type=float, default=0.3,
                    help="seconds of pause before each block (default 0.3)")
    ap.add_argument("--malloc-mb", type=int, default=0,
                    help="after the headline rows (glibc's malloc defaults), repeat every "
                         "case with glibc malloc serving allocations up to this many MiB "
                         "from the heap and keeping up to 4x that free (mallopt "
                         "M_MMAP_THRESHOLD and M_TRIM_THRESHOLD); 0 (default): no repeat")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="time steps in wall time (default) or in process CPU time (with "
                         "--threads 1 --numba-threads 1 --blas-threads 1: the work done, "
                         "little changed by other processes' load)")
    ap.add_argument("--profile", action="store_true",
                    help="also print fastconv's per-op times over --steps * --rounds steps")
    args = ap.parse_args(argv)
    return train.throughput(**vars(args))


if __name__ == "__main__":
    raise SystemExit(main())
