"""Timings of the backward passes, pooling and batch norm.

    python bench/conv_backward_pool_norm.py [--batch 32] [--repeat 9] [--threads N]

On x of shape (batch, 64, 56, 56) float32, NCHW:
(a) conv2d_backward time / conv2d time for im2col (3x3, 64 -> 64, padding 1);
(b) max_pool2d 2x2 stride 2, avg_pool2d 2x2 stride 2 and batch_norm (training), forward
    and backward, fastconv against plain-NumPy versions (fastconv.tools.bench.baselines).
Every result is checked against its counterpart before anything is timed. Each timing is
the median of --repeat calls after one warm-up call (compilation excluded); the machine's
BLAS, threading layer and load are printed with the numbers. ``--threads N`` caps both
numba's and BLAS's threads at N for the whole run; on a shared machine a multi-threaded
BLAS call waits whenever one of its threads is not scheduled, so compare runs only at the
same setting and load. The measurements: ``fastconv.tools.bench.ops``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # this checkout's fastconv

from fastconv.tools.bench import ops  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--threads", type=int, default=None,
                    help="cap numba and BLAS threads (default: leave both as they are)")
    args = ap.parse_args(argv)
    return ops.measure(batch=args.batch, repeat=args.repeat, threads=args.threads)


if __name__ == "__main__":
    main()
