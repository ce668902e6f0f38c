"""Training throughput of LeNet-5 on 28x28 inputs: fastconv against torch, in one run.

Both train the same network (same initial weights, same batches, SGD with momentum 0.9)
in float32; the frameworks alternate in blocks of --steps steps (ABBA order over --rounds
rounds, each block after a pause of --settle seconds), or step by step with
``--interleave step``; ``--malloc-mb`` fixes glibc's malloc thresholds for the run. How
and why: ``fastconv.tools.bench.train``.

    python bench/train_throughput.py [--batch 64] [--steps 20] [--rounds 5] [--threads 2]
        [--numba-threads N] [--blas-threads N] [--interleave block|step] [--settle S]
        [--malloc-mb M] [--profile]

torch runs with torch.set_num_threads(threads) (skipped, with a note, if torch is not
installed). Compilation (numba) is excluded by warm-up steps. ``--numba-threads`` and
``--blas-threads`` cap fastconv's numba threads and numpy's BLAS threads for the whole run
(default: the libraries' defaults). ``--profile`` then times every fastconv op of further
training steps (forward and backward of each autograd Function, the optimiser step) and
prints the median milliseconds per step of each, with the same thread settings.
"""

from __future__ import annotations

import argparse

from fastconv.tools.bench import train


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
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
    ap.add_argument("--malloc-mb", type=int, default=64,
                    help="glibc malloc: serve allocations up to this many MiB from the heap "
                         "and keep up to 4x that free (mallopt M_MMAP_THRESHOLD and "
                         "M_TRIM_THRESHOLD); 0 keeps glibc's adaptive defaults")
    ap.add_argument("--profile", action="store_true",
                    help="also print fastconv's per-op times over --steps * --rounds steps")
    args = ap.parse_args(argv)
    return train.throughput(**vars(args))


if __name__ == "__main__":
    raise SystemExit(main())
