"""Pointwise (1x1, stride 1, unpadded) NCHW layers as per-image BLAS products run by
numba's threads.

A pointwise layer is one product per image and group: y[n, g] = W[g] @ x[n, g] with
x[n, g] (Cg, H*W). ``_forward`` and ``_backward`` split the images over numba's threads,
each calling numpy's BLAS (``fastconv._cblas``, on one BLAS thread:
``_blas.one_blas_thread``) for its images. numba starts its threads in microseconds where
a Python thread pool's hand-over (``_blas.on_threads``) took 80 us on the shared 2-core
machine: measured in one process, the benchmark's pointwise layer
(x (16, 256, 14, 14), w (64, 256, 1, 1), float32) ran its forward in 468 us this way
(with numba's own ``np.dot``, scipy's BLAS) against 568 us through
``_blas.split_matmul``, and in 437 us with numpy's BLAS called directly.

Examples
--------
>>> import numpy as np
>>> x = np.ones((4, 1, 3, 2), np.float32)          # (N, G, Cg, H*W)
>>> w = np.full((1, 2, 3), 0.5, np.float32)        # (G, Dg, Cg)
>>> y = np.empty((4, 1, 2, 2), np.float32)         # (N, G, Dg, H*W)
>>> bias = np.array([[1.0, -1.0]], np.float32)     # (G, Dg)
>>> if available(x.dtype):
...     forward(w, x, y, bias, threads=2)
... else:                                          # numpy's BLAS not found
...     y[...] = np.matmul(w, x) + bias[..., None]
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

from ... import _blas, _cblas
from ..._cblas import NO_TRANS, TRANS, gemm
from ..._runtime import parallel_guard


@njit(parallel=True, cache=True)
def _forward(fn, w, x, y, bias, threads):
    """y[n, g] = w[g] @ x[n, g] (+ bias[g] per output channel when bias is (G, Dg); an
    empty bias adds nothing) with the cblas ``?gemm`` at ``fn``. w (G, Dg, Cg),
    x (N, G, Cg, HW), y (N, G, Dg, HW), all C-contiguous; the images split into
    ``threads`` runs, one per thread."""
    n, g, cg, hw = x.shape
    dg = w.shape[1]
    with_bias = bias.shape[0] == g
    for t in prange(threads):
        for i in range(n * t // threads, n * (t + 1) // threads):
            for gi in range(g):
                yi = y[i, gi]
                gemm(fn, NO_TRANS, NO_TRANS, dg, hw, cg, w[gi], cg, x[i, gi], hw, 0.0, yi, hw)
                if with_bias:
                    for d in range(dg):
                        yi[d] += bias[gi, d]


@njit(parallel=True, cache=True)
def _backward(fn, w, gy, x, gx, sums):
    """gx[n, g] = w[g]^T @ gy[n, g] when gx holds the N images (else it is empty and not
    written), and sums[t, g] = the sum of x[n, g] @ gy[n, g]^T (grad_W transposed,
    (Cg, Dg)) over thread t's run of images when x holds them, with the cblas ``?gemm``
    at ``fn``. w (G, Dg, Cg), gy (N, G, Dg, HW), x and gx (N, G, Cg, HW),
    sums (T, G, Cg, Dg), all C-contiguous; the images split into T runs, one per thread;
    each product is added to the thread's sum by the GEMM itself (beta = 1)."""
    n, g, dg, hw = gy.shape
    cg = w.shape[2]
    threads = sums.shape[0]
    do_x, do_w = gx.shape[0] == n, x.shape[0] == n
    for t in prange(threads):
        lo, hi = n * t // threads, n * (t + 1) // threads
        for i in range(lo, hi):
            for gi in range(g):
                if do_x:
                    gemm(fn, TRANS, NO_TRANS, cg, hw, dg, w[gi], cg, gy[i, gi], hw, 0.0,
                         gx[i, gi], hw)
                if do_w:
                    gemm(fn, NO_TRANS, TRANS, cg, dg, hw, x[i, gi], hw, gy[i, gi], hw,
                         0.0 if i == lo else 1.0, sums[t, gi], dg)


def available(dtype) -> bool:
    """Whether the kernels can run in ``dtype`` (numpy's BLAS found: ``_cblas.address``)."""
    return _cblas.address(dtype) is not None


def threads_for(n: int, *arrays) -> int:
    """How many of numba's threads run a pointwise layer of ``n`` images in the arrays'
    dtype: at least 2, or 0 where the kernels do not apply (one image or one thread;
    numpy's BLAS not found, ``available``; a read-only array, which would compile
    kernels of their own)."""
    threads = min(numba.get_num_threads(), n)
    if threads < 2 or not available(arrays[0].dtype):
        return 0
    if not all(a.flags.writeable for a in arrays):
        return 0
    return threads


def forward(w, x, y, bias, threads: int) -> None:
    """``_forward`` on ``threads`` threads, numpy's BLAS on one thread each. bias (G, Dg)
    or None; needs ``available(y.dtype)``."""
    b = np.zeros((0, 0), y.dtype) if bias is None else np.ascontiguousarray(bias, y.dtype)
    with _blas.one_blas_thread(), parallel_guard():
        _forward(_cblas.address(y.dtype), w, x, y, b, threads)


def backward(w, gy, x, gx, threads: int) -> np.ndarray | None:
    """``_backward`` on ``threads`` threads: fills gx (N, G, Cg, HW) when given and
    returns grad_W transposed, (G, Cg, Dg), when x is given (else None); needs
    ``available(gy.dtype)``."""
    n, g, dg = gy.shape[:3]
    cg = w.shape[2]
    threads = max(1, min(threads, n))         # every thread's run holds an image
    empty = np.zeros((0, g, cg, gy.shape[3]), gy.dtype)
    sums = np.empty((threads, g) + ((cg, dg) if x is not None else (0, 0)), gy.dtype)
    with _blas.one_blas_thread(), parallel_guard():
        _backward(_cblas.address(gy.dtype), w, gy, empty if x is None else x,
                  empty if gx is None else gx, sums)
    return None if x is None else sums.sum(axis=0)
