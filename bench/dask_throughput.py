"""Throughput of fastconv.dask on a local cluster against one process.

Convolves a stack of images (default 128 x 16 x 128 x 128 float32, 3x3 kernel to 32
channels, padding 1) four ways and prints images/s and GFLOP/s:

* ``one process``: ``fastconv.conv2d`` on the whole numpy stack, numba and BLAS on all
  cores, and on one thread (the unit the workers scale);
* ``cluster, batch chunks``: ``fastconv.dask.conv2d`` on a ``local_cluster`` (one worker
  process per core by default, one numba thread each), input chunked over the batch
  only, output kept on the workers (``persist``), as when it is written to storage next;
* ``cluster, tiles``: the same with every image cut into 2 x 2 tiles (halo blocks);
* ``cluster, gather``: batch chunks, with the output sent back to this process.

The input is made on the workers and persisted before timing (as if read from storage
there), so the timings cover the convolution and, for ``gather``, the transfer.
On a real cluster only the scheduler address changes: ``Client("tcp://scheduler:8786")``
instead of ``Client(local_cluster(...))``; see the README, "Scale-out with Dask".

Run: ``python bench/dask_throughput.py [--n 128] [--workers 2] [--repeat 3]``.
Results also go to bench/results/dask_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np


def _best(fn, repeat):
    fn()  # warm-up: compiles (or loads from the numba cache) in every process
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


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

    import dask.array as da
    import numba
    from distributed import Client, wait
    from threadpoolctl import threadpool_limits

    import fastconv
    import fastconv.dask as fcd

    shape = (a.n, a.c_in, a.size, a.size)
    w = np.random.default_rng(1).standard_normal((a.c_out, a.c_in, 3, 3)).astype(np.float32)
    flops = 2 * a.n * a.c_out * a.size * a.size * a.c_in * 9
    rows = []

    def record(name, best, median):
        rows.append({"run": name, "best_s": best, "median_s": median,
                     "images_per_s": a.n / best, "gflops": flops / best / 1e9})
        print(f"{name:<24} best {best:7.3f} s  median {median:7.3f} s  "
              f"{a.n / best:8.1f} images/s  {flops / best / 1e9:6.1f} GFLOP/s", flush=True)

    def one_process(threads):
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        numba.set_num_threads(threads)
        with threadpool_limits(threads):
            return _best(lambda: fastconv.conv2d(x, w, padding=1, algo=a.algo), a.repeat)

    cores = numba.config.NUMBA_NUM_THREADS
    record(f"one process, {cores} thr", *one_process(cores))
    record("one process, 1 thread", *one_process(1))
    numba.set_num_threads(cores)

    with fcd.local_cluster(n_workers=a.workers, threads_per_worker=1,
                           dashboard_address=":0") as cluster, Client(cluster) as client:
        batch = da.random.default_rng(0).standard_normal(
            shape, dtype=np.float32, chunks=(a.batch_chunk, a.c_in, a.size, a.size))
        batch = batch.persist()
        half = (a.size + 1) // 2
        tiles = batch.rechunk((a.batch_chunk, a.c_in, half, half)).persist()
        wait([batch, tiles])

        runs = iter(range(1, 1 << 30))

        def conv(xd):
            # a new bias each run gives new keys: the scheduler cannot hand back a
            # result it still holds from the previous run
            bias = np.full(a.c_out, next(runs) * 1e-3, np.float32)
            return fcd.conv2d(xd, w, bias, padding=1, algo=a.algo)

        def on_workers(xd):
            def run():
                y = conv(xd).persist()
                wait(y)
                del y
            return run

        record("cluster, batch chunks", *_best(on_workers(batch), a.repeat))
        record("cluster, 2x2 tiles", *_best(on_workers(tiles), a.repeat))
        record("cluster, gather", *_best(lambda: conv(batch).compute(), a.repeat))
        workers = client.run(lambda: os.environ.get("NUMBA_NUM_THREADS"))

    info = {"shape": shape, "weight": w.shape, "algo": a.algo, "batch_chunk": a.batch_chunk,
            "workers": a.workers, "numba_threads_per_worker": sorted(set(workers.values())),
            "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
            "machine": platform.processor() or platform.machine(), "results": rows}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(info, f, indent=1)
    print(f"{a.workers} workers x 1 thread, numba threads per worker "
          f"{info['numba_threads_per_worker']}; {os.cpu_count()} cores; load average "
          f"{', '.join(f'{v:.2f}' for v in info['load_average'])}; written to {a.out}")


if __name__ == "__main__":
    main()
