"""Throughput of fastconv.dask on a local cluster against one process.

Convolves a stack of images x (n, c_in, size, size) float32 with a 3x3 kernel
(c_out, c_in, 3, 3), padding 1, four ways and prints images/s and GFLOP/s:

* ``one process``: ``fastconv.conv2d`` on the whole numpy stack, numba and BLAS on all
  cores, and on one thread (the unit the workers scale);
* ``cluster, batch chunks``: ``fastconv.dask.conv2d`` on a ``local_cluster`` (one worker
  process per core by default, one numba thread each), input chunked over the batch
  only, output kept on the workers (``persist``), as when it is written to storage next;
* ``cluster, tiles``: the same with every image cut into 2 x 2 tiles (halo blocks);
* ``cluster, gather``: batch chunks, with the output sent back to this process.

The input is made on the workers and persisted before timing (as if read from storage
there), so the timings cover the convolution and, for ``gather``, the transfer.
"""

from __future__ import annotations

import json
import os
import platform
import statistics

import numpy as np

from .runner import call_times


def _best(fn, repeat: int) -> tuple[float, float]:
    """(best, median) seconds of ``repeat`` calls after a warm-up call (which compiles,
    or loads from the numba cache, in every process)."""
    times = call_times(fn, repeat)
    return min(times), statistics.median(times)


def throughput(n: int = 128, c_in: int = 16, c_out: int = 32, size: int = 128,
               batch_chunk: int = 16, workers: int | None = None, algo: str = "im2col",
               repeat: int = 3, out: str | None = None) -> dict:
    """Time the four runs, print one line each and a closing line on the set-up; returns
    (and, with ``out``, writes as JSON) the set-up and the rows (run, best_s, median_s,
    images_per_s, gflops). ``workers``: worker processes (default: one per core)."""
    import dask.array as da
    import numba
    from distributed import Client, wait
    from threadpoolctl import threadpool_limits

    import fastconv
    import fastconv.dask as fcd

    workers = workers or os.cpu_count() or 1
    shape = (n, c_in, size, size)
    w = np.random.default_rng(1).standard_normal((c_out, c_in, 3, 3)).astype(np.float32)
    flops = 2 * n * c_out * size * size * c_in * 9
    rows = []

    def record(name, best, median):
        rows.append({"run": name, "best_s": best, "median_s": median,
                     "images_per_s": n / best, "gflops": flops / best / 1e9})
        print(f"{name:<24} best {best:7.3f} s  median {median:7.3f} s  "
              f"{n / best:8.1f} images/s  {flops / best / 1e9:6.1f} GFLOP/s", flush=True)

    def one_process(threads):
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        numba.set_num_threads(threads)
        with threadpool_limits(threads):
            return _best(lambda: fastconv.conv2d(x, w, padding=1, algo=algo), repeat)

    cores = numba.config.NUMBA_NUM_THREADS
    record(f"one process, {cores} thr", *one_process(cores))
    record("one process, 1 thread", *one_process(1))
    numba.set_num_threads(cores)

    with fcd.local_cluster(n_workers=workers, threads_per_worker=1,
                           dashboard_address=":0") as cluster, Client(cluster) as client:
        batch = da.random.default_rng(0).standard_normal(
            shape, dtype=np.float32, chunks=(batch_chunk, c_in, size, size))
        batch = batch.persist()
        half = (size + 1) // 2
        tiles = batch.rechunk((batch_chunk, c_in, half, half)).persist()
        wait([batch, tiles])

        runs = iter(range(1, 1 << 30))

        def conv(xd):
            # a new bias each run gives new keys: the scheduler cannot hand back a
            # result it still holds from the previous run
            bias = np.full(c_out, next(runs) * 1e-3, np.float32)
            return fcd.conv2d(xd, w, bias, padding=1, algo=algo)

        def on_workers(xd):
            def run():
                y = conv(xd).persist()
                wait(y)
                del y
            return run

        record("cluster, batch chunks", *_best(on_workers(batch), repeat))
        record("cluster, 2x2 tiles", *_best(on_workers(tiles), repeat))
        record("cluster, gather", *_best(lambda: conv(batch).compute(), repeat))
        threads = client.run(lambda: os.environ.get("NUMBA_NUM_THREADS"))

    info = {"shape": shape, "weight": w.shape, "algo": algo, "batch_chunk": batch_chunk,
            "workers": workers, "numba_threads_per_worker": sorted(set(threads.values())),
            "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
            "machine": platform.processor() or platform.machine(), "results": rows}
    if out:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as f:
            json.dump(info, f, indent=1)
    print(f"{workers} workers x 1 thread, numba threads per worker "
          f"{info['numba_threads_per_worker']}; {os.cpu_count()} cores; load average "
          f"{', '.join(f'{v:.2f}' for v in info['load_average'])}"
          + (f"; written to {out}" if out else ""))
    return info
