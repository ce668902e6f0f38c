"""Matrix products through numpy's BLAS on one BLAS thread, large ones split over numba's
threads.

A multi-threaded BLAS call waits for all of its threads. When the machine is busy, a
thread that is not scheduled stalls the call for a whole scheduler time slice: on the
shared 2-core development machine a (64, 400) @ (400, 120) float32 product (a LeNet
linear layer) took 80 us median but 24 ms at the 90th percentile with 2 OpenBLAS threads,
and 84 us at both with one. After a multi-threaded call, OpenBLAS's idle worker also
keeps spinning on a core (about 0.1 s of CPU time after each call here), which slows the
numba kernels that follow: a
LeNet training step took 7.3 ms with the linear layers on two BLAS threads and 5.2 ms on
one, and 4.7 vs 3.5 ms when the forward convolutions' GEMMs (7.5 and 15.4 million
multiply-adds) ran on one thread too. :func:`matmul` therefore never lets numpy's BLAS
start its own threads where it can avoid it: products of fewer than
``_threaded_gemm.MIN_MACS`` multiply-adds run on one BLAS thread, larger ones in blocks
on numba's threads with one BLAS thread each (``_threaded_gemm.product``; numpy's BLAS
threads only where that does not apply and the product is larger than
``config.SMALL_GEMM_MACS``). numpy's BLAS is limited through threadpoolctl (without it,
nothing is limited).

The limit is process-wide while any small product runs: a large product started by
another Python thread at that moment runs on one thread too (correct, only slower).
Nested and concurrent small products share the limit through a counter, and the last one
to finish restores the previous thread counts.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import _small_gemm, _threaded_gemm, config
from ._blas_libs import thread_knobs as _thread_knobs

_lock = threading.Lock()
_active = 0            # small products running now (all threads)
_saved: tuple = ()     # thread counts to restore when the last one ends


class one_blas_thread:
    """Context manager: numpy's BLAS uses one thread inside (see the module docstring)."""

    __slots__ = ()

    def __enter__(self):
        global _active, _saved
        knobs = _thread_knobs()
        with _lock:
            if _active == 0 and knobs:
                _saved = tuple(get() for get, _ in knobs)
                for _, put in knobs:
                    put(1)
            _active += 1
        return self

    def __exit__(self, *exc):
        global _active
        with _lock:
            _active -= 1
            if _active == 0:
                for (_, put), n in zip(_thread_knobs(), _saved, strict=False):
                    put(n)
        return False


def limit_for(macs: int):
    """A context in which numpy's BLAS uses one thread when ``macs`` multiply-adds count
    as small (``config.SMALL_GEMM_MACS``), and a no-op context otherwise: for a caller
    that runs products of about that size through code it does not own."""
    return one_blas_thread() if macs <= config.SMALL_GEMM_MACS else _NO_LIMIT


#: ``limit_for``'s context for large products: one shared no-op (stateless).
_NO_LIMIT = contextlib.nullcontext()


def is_small(m: int, k: int, n: int, batch: int = 1) -> bool:
    """Whether a (batch of) (m, k) @ (k, n) product counts as small."""
    return batch * m * k * n <= config.SMALL_GEMM_MACS


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``np.matmul(a, b, out=out)`` for operands of 2 or more dimensions, on one BLAS thread
    when the product is small (:func:`is_small`), else in register tiles on numba's
    threads where the host runs them faster (``_small_gemm.tiled_product``), else cut
    into blocks on numba's threads, one BLAS thread each (``_threaded_gemm.product``;
    numpy's BLAS threads where that does not apply). Outer products (K = 1) run in
    ``_small_gemm.outer``."""
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    if k == 1:
        # OpenBLAS's GEMM took 2.8-3.6x numpy's multiply's time on (784-10000, 1) @ (1,
        # 144-200) (an NHWC input gradient of one output channel: 38 -> 12 ms), and the
        # multiply 8-10x _small_gemm.outer's on tall products of few columns
        return _small_gemm.outer(a, b, out)
    batch = max(a.size // max(m * k, 1), b.size // max(k * n, 1))
    if batch * m * k * n < _threaded_gemm.MIN_MACS:
        with one_blas_thread():
            return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (m, n),
                       np.result_type(a, b))
    if _small_gemm.tiled_product(a, b, out):
        return out
    with one_blas_thread():
        if _threaded_gemm.product(a, b, out):
            return out
        if is_small(m, k, n, batch):
            return np.matmul(a, b, out=out)
    return np.matmul(a, b, out=out)


def thread_matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``np.matmul(a, b, out=out)`` for a caller that already is one of several threads
    (``on_threads``, one BLAS thread each; no numba kernel inside): outer products (K =
    1) as numpy's broadcast multiply, which ran BLAS's GEMM on them 5-15x faster (a 1x1
    layer's grad_x of one output channel, one 256 x 256 image: 0.09 against 0.006 ms;
    Winograd's chunks of one input channel: 1 -> 8 channels at 64 x 64, batch 32, 2.0-2.9
    against 1.2 ms for the whole layer)."""
    if a.shape[-1] == 1:
        return np.multiply(a, b, out=out)
    return np.matmul(a, b, out=out)


def matmul_sum(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[...] = np.matmul(a, b).sum(axis=0)`` term by term (no (E, ...) temporary):
    one run of terms per numba thread when the products are not small
    (``_threaded_gemm.product_sum``), else on one BLAS thread in the calling thread."""
    terms, (m, k), n = a.shape[0], a.shape[-2:], b.shape[-1]
    if terms == 1:
        return matmul(a[0], b[0], out=out)
    with one_blas_thread():
        if out.size // max(m * n, 1) * terms * m * k * n >= _threaded_gemm.MIN_MACS \
                and _threaded_gemm.product_sum(a, b, out):
            return out
        np.matmul(a[0], b[0], out=out)
        tmp = np.empty_like(out)
        for i in range(1, terms):
            out += np.matmul(a[i], b[i], out=tmp)
    return out


# ------------------------------------------------------- batches split over threads
_pool: ThreadPoolExecutor | None = None
_pool_key: tuple = ()
_pool_lock = threading.Lock()


def _helpers(count: int) -> ThreadPoolExecutor:
    """A pool of ``count`` helper threads, made anew after a fork or a change of count
    (a forked child inherits the pool object but not its threads)."""
    global _pool, _pool_key
    key = (os.getpid(), count)
    with _pool_lock:
        if _pool is None or _pool_key != key:
            _pool = ThreadPoolExecutor(count, thread_name_prefix="fastconv-gemm")
            _pool_key = key
        return _pool


def split_matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``np.matmul(a, b, out=out)`` for a batch of independent products
    (E, m, k) @ (E, k, n) (or a shared (m, k) left operand), the batch split over as
    many threads as numba uses, each product on one BLAS thread: on numba's threads
    (``_threaded_gemm.product``), or where that does not apply on Python threads
    (``on_threads``). Batches of narrow products (``_small_gemm.applies``: K and N at
    most 64) run in SIMD registers on numba's threads instead, outer products (K = 1)
    in ``_small_gemm.outer``.

    On the 2-core machine a Winograd F(2x2, 3x3) prototype ran the four dense 3x3 layers
    of the benchmark suite 10-22% faster this way than with one 2-thread BLAS call: no
    product waits for a second BLAS thread, and OpenBLAS's idle worker does not spin
    against the numba kernels that follow (see the module docstring). Small batches
    (``is_small``) run in the calling thread."""
    import numba

    batch = b.shape[0]
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    if k == 1:      # outer products, as in ``matmul`` (1.3-2x faster than the split GEMMs)
        return _small_gemm.outer(a, b, out)
    threads = min(numba.get_num_threads(), batch)
    if batch * m * k * n >= _threaded_gemm.MIN_MACS and _small_gemm.applies(a, b, out):
        _small_gemm.product(a, b, out)
        return out
    with one_blas_thread():
        if threads <= 1 or batch * m * k * n < _threaded_gemm.MIN_MACS:
            return np.matmul(a, b, out=out)
        if _threaded_gemm.product(a, b, out):
            return out
        if is_small(m, k, n, batch):
            return np.matmul(a, b, out=out)
    bounds = [batch * t // threads for t in range(threads + 1)]

    def part(t: int) -> None:
        lo, hi = bounds[t], bounds[t + 1]
        np.matmul(a if a.ndim == 2 else a[lo:hi], b[lo:hi], out=out[lo:hi])

    on_threads(part, threads)
    return out


def on_threads(part, threads: int) -> None:
    """Run ``part(k)`` for k = 0 .. threads - 1 at once: k = 0 in the calling thread, the
    others on helper threads, numpy's BLAS on one thread meanwhile; exceptions propagate."""
    with one_blas_thread():
        futures = [_helpers(threads - 1).submit(part, k) for k in range(1, threads)]
        part(0)
        for f in futures:
            f.result()


class Runs:
    """``count`` contiguous runs of ``n`` items (images), handed out in order to whichever
    thread of :func:`on_threads` asks next: a thread that a busy machine holds back takes
    fewer runs, instead of the others waiting for its fixed share (the decoder layer's
    conv_transpose2d, one image a run, 5.9-8.4 against 7.8-8.8 ms with another process on
    the second core). Each run's index comes with it, so results kept per run and added
    in run order come out the same whichever thread took which.

    Examples
    --------
    >>> runs = Runs(5, 2)
    >>> runs.claim(), runs.claim(), runs.claim()
    ((0, range(0, 2)), (1, range(2, 5)), None)
    """

    __slots__ = ("_bounds", "_next")

    def __init__(self, n: int, count: int):
        count = max(1, min(count, n))
        self._bounds = [n * j // count for j in range(count + 1)]
        self._next = iter(range(count))      # next() on it is atomic under the GIL

    def claim(self) -> tuple[int, range] | None:
        """(index, items) of the next run no thread has taken, None when all are."""
        j = next(self._next, None)
        return None if j is None else (j, range(self._bounds[j], self._bounds[j + 1]))
