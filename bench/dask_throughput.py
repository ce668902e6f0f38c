"""Throughput of fastconv.dask on a local cluster against one process.

Convolves a stack of images (default 128 x 16 x 128 x 128 float32, 3x3 kernel to 32
channels, padding 1) in one process (all threads, one thread) and on a local cluster
(batch chunks, 2 x 2 tiles, batch chunks gathered back) and prints images/s and GFLOP/s;
the runs are described in ``fastconv.tools.bench.dask``. On a real cluster only the
scheduler address changes: ``Client("tcp://scheduler:8786")`` instead of
``Client(local_cluster(...))``; see the README, "Scale-out with Dask".

Run: ``python bench/dask_throughput.py [--n 128] [--workers 2] [--repeat 3]``.
Results also go to bench/results/dask_throughput.json.
"""

from __future__ import annotations

import argparse
import os

from fastconv.tools.bench import dask


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=128, help="images in the stack")
    p.add_argument("--c-in", type=int, default=16)
    p.add_argument("--c-out", type=int, default=32)
    p.add_argument("--size", type=int, default=128, help="image height and width")
    p.add_argument("--batch-chunk", type=int, default=16, help="images per dask block")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--algo", default="im2col")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "dask_throughput.json"))
    a = p.parse_args(argv)
    dask.throughput(n=a.n, c_in=a.c_in, c_out=a.c_out, size=a.size,
                    batch_chunk=a.batch_chunk, workers=a.workers, algo=a.algo,
                    repeat=a.repeat, out=a.out)


if __name__ == "__main__":
    main()
