"""Large matrix products cut into blocks on numba's threads, each block on one BLAS thread.

After every multi-threaded call OpenBLAS's idle worker keeps spinning on a core for about
0.1 s (``_blas``), so in a training step, where GEMMs and numba kernels alternate, one
threaded product slows every kernel that follows: the small ResNet of the training
benchmark stepped in 65 ms with the stride-2 layers' forward GEMMs (29 million
multiply-adds each) on OpenBLAS's two threads and in 43 ms with them on one. A Python
thread pool avoids the spinning but takes ~90 us to hand a product over on the 2-core
development machine; numba's threads start in ~2 us.

:func:`product` therefore computes ``out = a @ b`` (np.matmul's batching and
broadcasting) as blocks: one per batch entry, or, with fewer entries than threads (or a
count the threads do not share evenly), each entry's output cut along its longer side
(columns or rows) into as many parts as balance the threads. A numba ``prange`` runs
the blocks, each through numpy's own ``cblas_?gemm`` (``_cblas.gemm_at``, by address:
one compiled kernel per dtype) while numpy's BLAS is held at one thread.
:func:`product_sum` adds a batch of products up (a weight gradient's per-image terms)
in one run of terms per thread.

Examples
--------
>>> import numpy as np
>>> from fastconv import _threaded_gemm
>>> a = np.arange(24.0).reshape(2, 3, 4)
>>> b = np.ones((4, 600))
>>> out = np.empty((2, 3, 600))
>>> ran = _threaded_gemm.product(a, b, out)
>>> bool(not ran or np.array_equal(out, a @ b))
True
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from . import _cblas
from ._runtime import parallel_guard

#: Products of fewer multiply-adds run on one thread (``_blas.matmul``): about 80 us of
#: work on one core, where handing half of it to a second thread (~20 us here) pays.
MIN_MACS = 1 << 22

#: Parts of an output dimension are multiples of this many elements (a cache line of
#: float32), and at least ``MIN_PART`` long.
ALIGN = 16
MIN_PART = 32


@njit(parallel=True, cache=True)
def _run(fn, beta, ops, offsets, cuts, by_cols):
    """The blocks of every batch entry's product, over numba's threads: block i is part
    i % P (P = len(cuts) - 1; rows or columns cuts[j]:cuts[j + 1] of the output) of
    entry i // P, one ``?gemm`` call, C = op(A) @ op(B) + beta * C. ``ops``: addresses
    of A, B, C, their leading dimensions, A's and B's transpose flags, m, n, k and the
    itemsize; ``offsets`` (3, E): byte offsets of each entry's matrices."""
    a, b, c, lda, ldb, ldc, ta, tb, m, n, k, item = (ops[0], ops[1], ops[2], ops[3], ops[4],
                                                     ops[5], ops[6], ops[7], ops[8], ops[9],
                                                     ops[10], ops[11])
    parts = cuts.shape[0] - 1
    for i in prange(offsets.shape[1] * parts):
        e, j = i // parts, i % parts
        lo, size = cuts[j], cuts[j + 1] - cuts[j]
        ae, be, ce = a + offsets[0, e], b + offsets[1, e], c + offsets[2, e]
        if by_cols:     # columns lo:lo + size of op(B) and of C
            be += lo * item * (1 if tb == _cblas.NO_TRANS else ldb)
            _cblas.gemm_at(fn, ta, tb, m, size, k, ae, lda, be, ldb, beta, ce + lo * item,
                           ldc)
        else:           # rows lo:lo + size of op(A) and of C
            ae += lo * item * (lda if ta == _cblas.NO_TRANS else 1)
            _cblas.gemm_at(fn, ta, tb, size, n, k, ae, lda, be, ldb, beta,
                           ce + lo * item * ldc, ldc)


def _matrix(x: np.ndarray, rows: int, cols: int):
    """(cblas transpose flag, leading dimension) reading x's last two axes, a
    (rows, cols) matrix, in place; None when its strides allow neither."""
    item = x.itemsize
    sr, sc = x.strides[-2:]
    if sc == item and sr % item == 0 and (sr >= cols * item or rows <= 1):
        return _cblas.NO_TRANS, max(sr // item, cols, 1)
    if sr == item and sc % item == 0 and (sc >= rows * item or cols <= 1):
        return _cblas.TRANS, max(sc // item, rows, 1)
    return None


def _offsets(x: np.ndarray, batch: tuple) -> np.ndarray:
    """Byte offsets of x's matrices for every entry of the batch (out's leading shape,
    which x's leading shape broadcasts to; ValueError otherwise), in np.matmul's order."""
    lead, strides = x.shape[:-2], x.strides[:-2]
    pad = len(batch) - len(lead)
    off = np.zeros(1, np.int64)
    for d, size in enumerate(batch):
        if d < pad or lead[d - pad] == 1:
            stride = 0
        elif lead[d - pad] == size:
            stride = strides[d - pad]
        else:
            raise ValueError(f"leading shape {lead} does not broadcast to {batch}")
        off = (off[:, None] + np.arange(size, dtype=np.int64) * stride).ravel()
    return off


def _bounds(size: int, parts: int) -> np.ndarray:
    """parts + 1 cut points of range(size), inner ones on ``ALIGN`` multiples."""
    inner = [(size * j // parts + ALIGN // 2) // ALIGN * ALIGN for j in range(1, parts)]
    return np.array([0, *inner, size], np.int64)


def _parts(entries: int, threads: int) -> int:
    """How many parts each of ``entries`` products is cut into for ``threads``."""
    if entries % threads == 0 or entries >= 4 * threads:
        return 1
    return threads // math.gcd(entries, threads)


def product(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> bool:
    """``np.matmul(a, b, out=out)`` on numba's threads (see the module docstring), to
    be called with numpy's BLAS held at one thread (``_blas.one_blas_thread``); False,
    with nothing written, where it does not apply: fewer than 2 threads, numpy's
    BLAS not found, dtypes other than one float32/float64 for all three, fewer than 2
    dimensions, an empty product, or strides a BLAS call cannot read in place (out's
    rows must be unit-stride)."""
    threads = numba.get_num_threads()
    if a.ndim < 2 or b.ndim < 2 or not out.flags.writeable:
        return False
    plan = _cached_plan(a, b, out, threads)
    if plan is False:
        return False
    fn, beta, ops, offsets, cuts, by_cols = plan
    ops = ops.copy()
    ops[:3] = a.ctypes.data, b.ctypes.data, out.ctypes.data
    with parallel_guard():
        _run(fn, beta, ops, offsets, cuts, by_cols)
    return True


#: product's plans by operand shapes, strides, dtypes and thread count
_plans: dict = {}


def _cached_plan(a, b, out, threads: int):
    """``_plan``, kept for the operands' shapes, strides, dtypes and ``threads``."""
    key = (a.shape, a.strides, b.shape, b.strides, out.shape, out.strides, out.dtype.char,
           a.dtype.char, b.dtype.char, threads)
    plan = _plans.get(key)
    if plan is None:
        plan = _plan(a, b, out, threads)
        if len(_plans) >= 256:
            _plans.clear()
        _plans[key] = plan
    return plan


def _plan(a, b, out, threads: int):
    """(fn, beta, ops with zero addresses, offsets, cuts, by_cols) for ``_run``, or False
    where ``product`` does not apply."""
    dt = out.dtype
    if threads < 2 or a.dtype != dt or b.dtype != dt or dt.char not in "fd":
        return False
    fn = _cblas.address(dt)
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    if fn is None or 0 in (m, k, n) or out.shape[-2:] != (m, n):
        return False
    ma, mb, mc = _matrix(a, m, k), _matrix(b, k, n), _matrix(out, m, n)
    if ma is None or mb is None or mc is None or mc[0] != _cblas.NO_TRANS:
        return False
    batch = out.shape[:-2]
    if a.ndim - 2 > len(batch) or b.ndim - 2 > len(batch):
        return False
    try:
        offsets = np.stack([_offsets(x, batch) for x in (a, b, out)])
    except ValueError:                     # shapes that do not broadcast to out's
        return False
    parts = _parts(offsets.shape[1], threads)
    by_cols = n >= m or m < parts * MIN_PART       # cut the longer side
    parts = max(1, min(parts, (n if by_cols else m) // MIN_PART))
    ops = np.array([0, 0, 0, ma[1], mb[1], mc[1], ma[0], mb[0], m, n, k, out.itemsize],
                   np.int64)
    return fn, dt.type(0), ops, offsets, _bounds(n if by_cols else m, parts), by_cols


@njit(parallel=True, cache=True)
def _run_sum(fn, zero, one, ops, offsets, runs, entries):
    """Run t of the summed products: partial t, entry j = the sum over e in
    runs[t]:runs[t + 1] of op(A[e, j]) @ op(B[e, j]), one ``?gemm`` call per e (beta 0,
    then 1), the (run, entry) pairs over numba's threads. ``ops`` as in ``_run`` with
    the partial sums' address (T, J, m, n, C-contiguous) as C; ``offsets`` (2, E * J):
    byte offsets of A[e, j] and B[e, j] at e * J + j; ``entries`` J; ``zero`` and
    ``one`` in the dtype (which picks ``?gemm``'s float type)."""
    a, b, c, lda, ldb, ta, tb, m, n, k, item = (ops[0], ops[1], ops[2], ops[3], ops[4],
                                                ops[6], ops[7], ops[8], ops[9], ops[10],
                                                ops[11])
    for i in prange((runs.shape[0] - 1) * entries):
        t, j = i // entries, i % entries
        ct = c + i * m * n * item
        for e in range(runs[t], runs[t + 1]):
            at = e * entries + j
            _cblas.gemm_at(fn, ta, tb, m, n, k, a + offsets[0, at], lda, b + offsets[1, at],
                           ldb, zero if e == runs[t] else one, ct, n)


def product_sum(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> bool:
    """``out[...] = np.matmul(a, b).sum(axis=0)`` without the (E, ...) products: a and b
    of at least 3 dimensions with one leading length E (the terms), out the shape of one
    term. The terms are cut into one run per thread, each run summed by its thread
    through ``?gemm`` calls with beta = 1 into a partial sum of its own, and the partial
    sums added in run order (the same result for the same thread count). Like
    :func:`product`: needs numpy's BLAS held at one thread; False, with nothing
    written, where it does not apply (also fewer than 2 terms)."""
    threads = numba.get_num_threads()
    if a.ndim < 3 or b.ndim < 3 or a.shape[0] != b.shape[0] or a.shape[0] < 2 \
            or not out.flags.writeable:
        return False
    terms = a.shape[0]
    plan = _cached_plan(a, b, np.broadcast_to(out, (terms,) + out.shape), threads)
    if plan is False:
        return False
    fn, zero, ops, offsets, _, _ = plan
    runs = min(threads, terms)
    cuts = np.array([terms * t // runs for t in range(runs + 1)], np.int64)
    m, n = out.shape[-2:]
    partial = np.empty((runs,) + out.shape[:-2] + (m, n), out.dtype)
    ops = ops.copy()
    ops[:3] = a.ctypes.data, b.ctypes.data, partial.ctypes.data
    with parallel_guard():
        _run_sum(fn, zero, zero + 1, ops, offsets[:2], cuts, offsets.shape[1] // terms)
    out[...] = partial[0]
    for t in range(1, runs):         # in run order
        out += partial[t]
    return True
