"""Pointwise (1x1, stride 1, unpadded) NCHW layers as per-image BLAS products run by
numba's threads.

A pointwise layer is one product per image and group: y[n, g] = W[g] @ x[n, g] with
x[n, g] (Cg, H*W). ``_forward`` and ``_backward`` split the images over numba's threads,
each calling BLAS (numba's ``np.dot``, one BLAS thread: ``_blas.one_blas_thread``) for
its images. numba starts its threads in microseconds where a Python thread pool's
hand-over (``_blas.on_threads``) took 80 us on the shared 2-core machine: measured in one
process, the benchmark's pointwise layer (x (16, 256, 14, 14), w (64, 256, 1, 1), float32)
ran its forward in 468 us this way against 568 us through ``_blas.split_matmul``.

Examples
--------
>>> import numpy as np
>>> x = np.ones((4, 1, 3, 2), np.float32)          # (N, G, Cg, H*W)
>>> w = np.full((1, 2, 3), 0.5, np.float32)        # (G, Dg, Cg)
>>> y = np.empty((4, 1, 2, 2), np.float32)         # (N, G, Dg, H*W)
>>> forward(w, x, y, np.array([[1.0, -1.0]], np.float32), threads=2)
>>> y[:, 0, :, 0]
array([[2.5, 0.5],
       [2.5, 0.5],
       [2.5, 0.5],
       [2.5, 0.5]], dtype=float32)
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ... import _blas
from ..._runtime import parallel_guard


@njit(parallel=True, cache=True)
def _forward(w, x, y, bias, threads):
    """y[n, g] = w[g] @ x[n, g] (+ bias[g] per output channel when bias is (G, Dg); an
    empty bias adds nothing). w (G, Dg, Cg), x (N, G, Cg, HW), y (N, G, Dg, HW), all
    C-contiguous; the images split into ``threads`` runs, one per thread."""
    n, g = x.shape[0], x.shape[1]
    with_bias = bias.shape[0] == g
    for t in prange(threads):
        for i in range(n * t // threads, n * (t + 1) // threads):
            for gi in range(g):
                yi = y[i, gi]
                np.dot(w[gi], x[i, gi], yi)
                if with_bias:
                    for d in range(yi.shape[0]):
                        yi[d] += bias[gi, d]


@njit(parallel=True, cache=True)
def _backward(w, gy, x, gx, sums):
    """gx[n, g] = w[g]^T @ gy[n, g] when gx holds the N images (else it is empty and not
    written), and sums[t, g] = the sum of x[n, g] @ gy[n, g]^T (grad_W transposed,
    (Cg, Dg)) over thread t's run of images when x holds them. w (G, Dg, Cg),
    gy (N, G, Dg, HW), x and gx (N, G, Cg, HW), sums (T, G, Cg, Dg), all C-contiguous;
    the images split into T runs, one per thread; each product is added to the thread's
    sum while it is in cache."""
    n, g = gy.shape[0], gy.shape[1]
    threads = sums.shape[0]
    do_x, do_w = gx.shape[0] == n, x.shape[0] == n
    for t in prange(threads):
        lo, hi = n * t // threads, n * (t + 1) // threads
        tmp = np.empty(sums.shape[2:], sums.dtype)
        for i in range(lo, hi):
            for gi in range(g):
                if do_x:
                    np.dot(w[gi].T, gy[i, gi], gx[i, gi])
                if do_w:
                    if i == lo:
                        np.dot(x[i, gi], gy[i, gi].T, sums[t, gi])
                    else:
                        np.dot(x[i, gi], gy[i, gi].T, tmp)
                        sums[t, gi] += tmp


def threads_for(n: int, *arrays) -> int:
    """How many of numba's threads run a pointwise layer of ``n`` images here: at least
    2, or 0 where the kernels do not apply (one image or one thread; numba's BLAS not
    held to one thread, ``_blas.numba_blas_limited``; a read-only array, which would
    compile kernels of their own)."""
    threads = min(numba.get_num_threads(), n)
    if threads < 2 or not _blas.numba_blas_limited():
        return 0
    if not all(a.flags.writeable for a in arrays):
        return 0
    return threads


def forward(w, x, y, bias, threads: int) -> None:
    """``_forward`` on ``threads`` threads, numba's BLAS on one thread each. bias (G, Dg)
    or None."""
    b = np.zeros((0, 0), y.dtype) if bias is None else np.ascontiguousarray(bias, y.dtype)
    with _blas.one_blas_thread(), parallel_guard():
        _forward(w, x, y, b, threads)


def backward(w, gy, x, gx, threads: int) -> np.ndarray | None:
    """``_backward`` on ``threads`` threads: fills gx (N, G, Cg, HW) when given and
    returns grad_W transposed, (G, Cg, Dg), when x is given (else None)."""
    n, g, dg = gy.shape[:3]
    cg = w.shape[2]
    empty = np.zeros((0, g, cg, gy.shape[3]), gy.dtype)
    sums = np.empty((threads, g) + ((cg, dg) if x is not None else (0, 0)), gy.dtype)
    with _blas.one_blas_thread(), parallel_guard():
        _backward(w, gy, empty if x is None else x, empty if gx is None else gx, sums)
    return None if x is None else sums.sum(axis=0)
