"""Dask worker preload: cap BLAS threads to the worker's share of the cores.

Used by :func:`fastconv.dask.local_cluster`; on a real cluster start workers with
``dask worker tcp://scheduler:8786 --preload fastconv.dask.worker`` (or export
``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS`` before starting them). The limit is
``OPENBLAS_NUM_THREADS`` from the worker's environment (see :func:`worker_env`).
"""

from __future__ import annotations

import os


def dask_setup(worker) -> None:
    """Apply the BLAS thread limit to the libraries already loaded (numpy's OpenBLAS)."""
    limit = os.environ.get("OPENBLAS_NUM_THREADS")
    if not limit:
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # without threadpoolctl, BLAS keeps distributed's default (1)
        return
    threadpool_limits(limits=int(limit), user_api="blas")
