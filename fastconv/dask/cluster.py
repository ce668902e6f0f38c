"""Worker processes that share the cores without oversubscribing them.

Each dask worker thread that runs a fastconv block calls numba's parallel kernels and
BLAS, which start their own threads. With P worker processes of T threads on C cores,
each of those threads gets max(1, C // (P*T)) numba and BLAS threads: one process per
core gives numba threads = 1; fewer, fatter processes split the cores between them.

numba reads ``NUMBA_NUM_THREADS`` once, at import, so it is set in the worker's
environment before anything imports numba. numpy (and its OpenBLAS) is already loaded
when a distributed worker applies its environment, so ``fastconv.dask.worker`` (a
dask preload) applies the BLAS limit with threadpoolctl at worker start-up.
``NUMBA_CACHE_DIR`` is passed through, so workers load the compiled kernels from the
same cache instead of compiling them again.
"""

from __future__ import annotations

import os


def worker_env(n_workers: int, threads_per_worker: int = 1, cores: int | None = None) -> dict:
    """Environment variables for worker processes (a dict of str -> str).

    ``NUMBA_NUM_THREADS``, ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``,
    ``MKL_NUM_THREADS`` and ``FASTCONV_FFT_WORKERS`` are each
    max(1, cores // (n_workers * threads_per_worker)); ``NUMBA_CACHE_DIR`` is this
    process's numba cache directory when one is set.
    """
    for name, value in (("n_workers", n_workers), ("threads_per_worker", threads_per_worker)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"worker_env: {name}={value!r} must be a positive int")
    cores = cores or os.cpu_count() or 1
    per_thread = str(max(1, cores // (n_workers * threads_per_worker)))
    env = {var: per_thread for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS",
                                       "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                       "FASTCONV_FFT_WORKERS")}
    cache = os.environ.get("NUMBA_CACHE_DIR")
    if cache:
        env["NUMBA_CACHE_DIR"] = os.path.abspath(cache)
    return env


def local_cluster(n_workers: int = 2, threads_per_worker: int = 1, **kwargs):
    """A ``dask.distributed.LocalCluster`` of worker processes set up for fastconv.

    Parameters
    ----------
    n_workers : worker processes (default 2).
    threads_per_worker : dask threads per worker (default 1: one block at a time, each
        using all of the worker's share of the cores).
    **kwargs : passed to ``LocalCluster`` (e.g. ``dashboard_address=":0"``,
        ``memory_limit``). ``env`` entries override those of :func:`worker_env`.

    Returns
    -------
    cluster : ``LocalCluster`` (use ``distributed.Client(cluster)``; close both when
        done, or use them as context managers).

    Examples
    --------
    >>> from distributed import Client
    >>> import fastconv.dask as fcd
    >>> with fcd.local_cluster(n_workers=2) as cluster, Client(cluster):   # doctest: +SKIP
    ...     y = fcd.conv2d(x, w, padding=1).compute()
    """
    from distributed import LocalCluster

    env = {**worker_env(n_workers, threads_per_worker), **kwargs.pop("env", {})}
    preload = list(kwargs.pop("preload", [])) + ["fastconv.dask.worker"]
    return LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                        processes=True, env=env, preload=preload, **kwargs)
