"""Batches of narrow matrix products in SIMD registers: out[e] = a[e] @ b[e] for
(E, M, K) @ (E, K, N) with many rows M, and K and N at most ``MAX_INNER`` (the Winograd
stage of NHWC layers of 16-64 channels: a transformed tile's channels times the
transformed kernel).

On such products OpenBLAS runs well below its rate on square ones once the batch's
left operands outgrow the cache (it copies them into packed panels before multiplying):
(36, 1368, 32, 32) at 150-160 GFLOP/s on the 2-core development machine, against
250-260 here. Each task takes ``ROWS`` rows of one product and a block of two registers
of its columns: 6 rows x 2 registers of sums (``fastconv._lanes``), and for every k one
load of b's two registers and 6 broadcasts of a's values, read in place. The last block
of rows (of columns) ends at M (at N), overlapping the one before and writing those
outputs again with the same values. Batches that fit in cache (``MIN_BYTES``), wider
products (K or N above ``MAX_INNER``: (36, 1368, 128, 128) ran at 187 GFLOP/s here, 231
through OpenBLAS) and the orientation with few rows and long ones stay with BLAS.

The right operand is read a whole register at a time for every k: it is copied onto a
cache line first where it does not start on one (``_pool.aligned``; a register split
over two lines costs two loads).

:func:`panel_product` is the same register tiling for one larger product inside a numba
kernel's task (the fused NHWC forward's panels): 6 rows x 4 registers of sums
(``_tile4``), which needs AVX-512's 32 registers (``FOUR_REGISTER_TILES``).
:func:`tiled_product` runs it on a whole 2-D product, a run of rows per task, where the
host multiplies faster that way than OpenBLAS (``TILED_PRODUCTS``; ``_blas.matmul``
tries it first).

>>> import numpy as np
>>> from fastconv import _small_gemm
>>> rng = np.random.default_rng(0)
>>> a = rng.standard_normal((36, 2000, 16)).astype(np.float32)    # 4.6 MB
>>> b = rng.standard_normal((36, 16, 32)).astype(np.float32)
>>> out = np.empty((36, 2000, 32), np.float32)
>>> _small_gemm.applies(a, b, out)
True
>>> _small_gemm.product(a, b, out)
>>> bool(np.allclose(out, a @ b, atol=1e-5))
True
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange
from numba import uint64 as U

from . import _lanes, _pool
from ._runtime import parallel_guard

#: The largest inner dimension K and column count N taken.
MAX_INNER = 64
#: Rows of the register tile, and rows of a task (a multiple of it).
TILE_ROWS = 6
#: Rows of the one-register tile (``_tile1``: 12 sums in flight, as the two-register
#: tile's 6 x 2).
TILE_ROWS_1 = 12
ROWS = 16 * TILE_ROWS
#: Whether ``panel_product``'s 6 x 4-register tile fits the host's registers (24 sums,
#: 4 of b and a broadcast: AVX-512's 32; AVX2's 16 would spill).
FOUR_REGISTER_TILES = _lanes.WIDE

#: Whether whole products with at least 4 registers of columns run in the 4-register
#: tiles instead of through numpy's BLAS (``tiled_product``): on hosts with AVX-512 that
#: LLVM names. On a 2-core Intel Xeon (AVX-512, 2 threads, alternating in blocks, best
#: medians) (3136, 256) @ (256, 64) took 0.31-0.38 ms in tiles (one to four tasks a
#: thread) against 0.41-0.44 through OpenBLAS split over the threads, (16384, 32) @ (32,
#: 64) 0.21-0.28 against 0.36-0.44, (3136, 64) @ (64, 256) 0.37 against 0.41. On a
#: 2-core AMD EPYC (Zen 4, ``znver4``; OpenBLAS's SkylakeX kernel), the tiles' time over
#: OpenBLAS's in two runs: (3136, 256) @ (256, 64) 0.83-0.85, (16384, 32) @ (32, 64)
#: 0.81-0.85, (12544, 64) @ (64, 64) 0.82-0.84, (3136, 64) @ (64, 256) 0.87-0.96,
#: (2048, 2048) @ (2048, 64) 0.73-0.86, (1568, 576) @ (576, 128) 0.91-1.04, (3136, 128)
#: @ (128, 576) 0.95-1.04. (Zen 4 hosts were left out until then on a measurement taken
#: before right operands were put on a cache line: 114 GFLOP/s against OpenBLAS's 186.)
TILED_PRODUCTS = FOUR_REGISTER_TILES and _lanes.HOST_CPU != ""
#: The largest right operand ``tiled_product`` takes with a in rows, in bytes: every
#: tile of 6 rows reads all of it, so it has to stay in the core's L2 (1-2 MB on the
#: hosts measured). The input gradient of a 64 -> 128 3x3 layer, (3136, 128) @ (128,
#: 576) (288 KB), ran at 300-305 GFLOP/s in tiles, 255-265 through OpenBLAS (Intel).
TILED_MAX_B_BYTES = 512 << 10
#: Tasks per numba thread of ``tiled_product`` (its rows cut evenly).
TILED_TASKS_PER_THREAD = 2
#: The least size of the batch's left operands taken, in bytes: smaller batches stay
#: in the two cores' L2 through OpenBLAS's packing, which then keeps up ((36, 128, 64,
#: 64), 1.2 MB: 0.125 ms against 0.140 here; (36, 768, 32, 32), 3.5 MB: level; (36, 1000,
#: 32, 32), 4.6 MB: 0.49 against 0.32; (36, 512, 64, 64), 4.7 MB: 0.78 against 0.62).
MIN_BYTES = 4 << 20


def applies(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> bool:
    """Whether :func:`product` computes ``np.matmul(a, b, out=out)``: a (E, M, K), b
    (E, K, N) and out (E, M, N) of one float dtype, each matrix's rows contiguous and
    one after the other (any step from one matrix to the next, as in a slice of a
    larger batch), ``takes`` their sizes."""
    if not (a.ndim == b.ndim == out.ndim == 3 and a.dtype == b.dtype == out.dtype
            and a.dtype.char in "fd"):
        return False
    (e, m, k), n = a.shape, b.shape[2]
    return (b.shape[:2] == (e, k) and out.shape == (e, m, n)
            and takes(e, m, k, n, a.dtype.itemsize)
            and all(_back_to_back(x) for x in (a, b, out)))


def takes(e: int, m: int, k: int, n: int, itemsize: int) -> bool:
    """Whether a batch of ``e`` products (m, k) @ (k, n) of items of ``itemsize`` bytes
    is for :func:`product` (whatever its memory layout): K <= ``MAX_INNER``, N between
    two registers and ``MAX_INNER``, M >= 6, and left operands of ``MIN_BYTES`` or
    more."""
    lanes = _lanes.per_register(itemsize)
    return (m >= TILE_ROWS and 0 < k <= MAX_INNER and 2 * lanes <= n <= MAX_INNER
            and e * m * k * itemsize >= MIN_BYTES)


def _back_to_back(x: np.ndarray) -> bool:
    """Whether x's sub-arrays x[i] (the rows of a 2-D x, the matrices of a 3-D one) are
    each contiguous, with a whole number of items, at least a sub-array's worth, from
    one to the next (any step where there is one)."""
    item, step = x.itemsize, x.strides[0]
    inner = x.strides[-1] == item and (x.ndim == 2 or x.strides[1] == x.shape[2] * item)
    return (inner and step % item == 0
            and (step >= math.prod(x.shape[1:]) * item or x.shape[0] == 1))


def _flat(x: np.ndarray) -> tuple[np.ndarray, int]:
    """(1-D view of the items from x's first to its last, step in items from one
    sub-array to the next) of an operand ``_back_to_back`` accepts."""
    block = math.prod(x.shape[1:])
    step = x.strides[0] // x.itemsize if x.shape[0] > 1 else block
    if x.flags.c_contiguous:
        return x.reshape(-1), step
    span = (x.shape[0] - 1) * step + block
    return np.lib.stride_tricks.as_strided(x, (span,), (x.itemsize,)), step


def product(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out = a @ b for operands that :func:`applies` accepts, on numba's threads. Shapes
    the register tile cannot cover (fewer than 6 rows or two registers of columns, or
    operands that do not match) raise ValueError: the tile would write outside out."""
    lanes = _lanes.per_register(out.itemsize)
    (e, m, k), n = a.shape, b.shape[2]
    if m < TILE_ROWS or n < 2 * lanes or b.shape[:2] != (e, k) or out.shape != (e, m, n):
        raise ValueError(f"_small_gemm.product: needs (E, M, K) @ (E, K, N) -> (E, M, N) "
                         f"with M >= {TILE_ROWS} and N >= {2 * lanes}; got {a.shape} @ "
                         f"{b.shape} -> {out.shape}")
    (af, sa), (bf, sb), (cf, sc) = _flat(a), _flat(_pool.aligned(b)), _flat(out)
    with parallel_guard():
        _products(af, bf, cf, (sa, sb, sc), *a.shape, b.shape[2])


@njit(parallel=True, cache=True)
def _products(af, bf, cf, steps, e_all, m, k, n):
    """Product e of cf = af @ bf at items e*steps[0], e*steps[1], e*steps[2] of the flat
    operands, (M, K) @ (K, N) -> (M, N) row-major; one task per product, ``ROWS`` rows
    and two registers of columns (module docstring)."""
    nl = _lanes.count(cf)
    col_blocks = -(-n // (2 * nl))
    row_runs = -(-m // ROWS)
    for task in prange(e_all * row_runs * col_blocks):
        e = task // (row_runs * col_blocks)
        run = task // col_blocks % row_runs
        j = min(task % col_blocks * 2 * nl, n - 2 * nl)
        for r in range(run * ROWS, min(m, (run + 1) * ROWS), TILE_ROWS):
            i = min(r, m - TILE_ROWS)
            _tile(af, bf, cf, U(e * steps[0] + i * k), U(k), U(e * steps[1] + j), U(n),
                  U(e * steps[2] + i * n + j), k)


@njit(inline="always")
def _tile(af, bf, cf, a0, lda, b0, ldb, c0, k):
    """cf[c0 + r*ldb :][:2 registers] = sum over q < k of af[a0 + r*lda + q] *
    bf[b0 + q*ldb :][:2 registers] for the 6 rows r (ldb is also out's row length)."""
    nl = U(_lanes.count(cf))
    p00 = p01 = p10 = p11 = p20 = p21 = p30 = p31 = p40 = p41 = p50 = p51 = _lanes.zeros(cf)
    for q in range(k):
        bq = b0 + U(q) * ldb
        u0, u1 = _lanes.load(bf, bq), _lanes.load(bf, bq + nl)
        aq = a0 + U(q)
        p00, p01 = _pair(p00, p01, af[aq], u0, u1)
        p10, p11 = _pair(p10, p11, af[aq + lda], u0, u1)
        p20, p21 = _pair(p20, p21, af[aq + U(2) * lda], u0, u1)
        p30, p31 = _pair(p30, p31, af[aq + U(3) * lda], u0, u1)
        p40, p41 = _pair(p40, p41, af[aq + U(4) * lda], u0, u1)
        p50, p51 = _pair(p50, p51, af[aq + U(5) * lda], u0, u1)
    _put(cf, c0, nl, p00, p01)
    _put(cf, c0 + ldb, nl, p10, p11)
    _put(cf, c0 + U(2) * ldb, nl, p20, p21)
    _put(cf, c0 + U(3) * ldb, nl, p30, p31)
    _put(cf, c0 + U(4) * ldb, nl, p40, p41)
    _put(cf, c0 + U(5) * ldb, nl, p50, p51)


@njit(inline="always")
def _pair(v0, v1, s, u0, u1):
    """(v0 + s*u0, v1 + s*u1): one row's two registers, s broadcast."""
    return _lanes.fma(v0, s, u0), _lanes.fma(v1, s, u1)


@njit(inline="always")
def _put(cf, c, nl, v0, v1):
    """cf[c : c + 2 registers] = (v0, v1)."""
    _lanes.store(cf, c, v0)
    _lanes.store(cf, c + nl, v1)


@njit(inline="always")
def _tile1(af, bf, cf, a0, lda, b0, ldb, c0, k):
    """As ``_tile`` for one register of columns and 12 rows (products whose N is one
    register: a layer of 16 float32 output channels)."""
    p0 = p1 = p2 = p3 = p4 = p5 = p6 = p7 = p8 = p9 = p10 = p11 = _lanes.zeros(cf)
    for q in range(k):
        u = _lanes.load(bf, b0 + U(q) * ldb)
        aq = a0 + U(q)
        p0 = _lanes.fma(p0, af[aq], u)
        p1 = _lanes.fma(p1, af[aq + lda], u)
        p2 = _lanes.fma(p2, af[aq + U(2) * lda], u)
        p3 = _lanes.fma(p3, af[aq + U(3) * lda], u)
        p4 = _lanes.fma(p4, af[aq + U(4) * lda], u)
        p5 = _lanes.fma(p5, af[aq + U(5) * lda], u)
        p6 = _lanes.fma(p6, af[aq + U(6) * lda], u)
        p7 = _lanes.fma(p7, af[aq + U(7) * lda], u)
        p8 = _lanes.fma(p8, af[aq + U(8) * lda], u)
        p9 = _lanes.fma(p9, af[aq + U(9) * lda], u)
        p10 = _lanes.fma(p10, af[aq + U(10) * lda], u)
        p11 = _lanes.fma(p11, af[aq + U(11) * lda], u)
    for r, v in enumerate((p0, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11)):
        _lanes.store(cf, c0 + U(r) * ldb, v)


def tiled_product(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> bool:
    """out = a @ b for 2-D operands, on numba's threads in ``panel_product``'s tiles,
    each thread a run of rows; False, with nothing written, where it does not apply:
    a host without ``TILED_PRODUCTS``, fewer than 2 threads, other than one float32 or
    float64 dtype for all three, shapes that do not match, fewer than 4 registers of
    columns or 6 rows a task, b over ``TILED_MAX_B_BYTES``, rows that are not
    contiguous (any step between them), or out overlapping a or b.

    >>> import numpy as np
    >>> a = np.arange(96 * 8, dtype=np.float32).reshape(96, 8) % 7
    >>> b = np.ones((8, 64), np.float32)
    >>> out = np.empty((96, 64), np.float32)
    >>> ran = tiled_product(a, b, out)
    >>> bool(not ran or np.array_equal(out, a @ b))
    True
    """
    threads = numba.get_num_threads()
    if not TILED_PRODUCTS or threads < 2 or not a.ndim == b.ndim == out.ndim == 2:
        return False
    dt = out.dtype
    if dt.char not in "fd" or a.dtype != dt or b.dtype != dt or not out.flags.writeable:
        return False
    (m, k), n = a.shape, b.shape[1]
    tasks = min(TILED_TASKS_PER_THREAD * threads, m // TILE_ROWS)
    if (b.shape[0] != k or out.shape != (m, n) or k == 0 or tasks < threads
            or n < 4 * _lanes.per_register(dt.itemsize)
            or k * n * dt.itemsize > TILED_MAX_B_BYTES):
        return False
    if not all(_back_to_back(x) for x in (a, b, out)) or np.may_share_memory(out, a) \
            or np.may_share_memory(out, b):
        return False
    (af, lda), (bf, ldb), (cf, ldc) = _flat(a), _flat(_pool.aligned(b)), _flat(out)
    with parallel_guard():
        _tiled(af, lda, bf, ldb, cf, ldc, m, n, k, tasks)
    return True


@njit(parallel=True, cache=True)
def _tiled(af, lda, bf, ldb, cf, ldc, m, n, k, tasks):
    """Rows m*t//tasks to m*(t+1)//tasks of cf = af @ bf (flat row-major operands with
    row steps lda, ldb, ldc) for task t, over numba's threads; every task has at least
    ``TILE_ROWS`` rows."""
    for t in prange(tasks):
        r0 = m * t // tasks
        r1 = m * (t + 1) // tasks
        panel_product(af, r0 * lda, lda, bf, 0, ldb, cf, r0 * ldc, ldc, r1 - r0, n, k)


#: Output items a task of :func:`outer` writes (a run of whole rows).
OUTER_TASK_ITEMS = 4096
#: Outer products of fewer output rows (all batches together) or items stay with
#: numpy's multiply, whose cost is mostly a step per row, below the launch of a
#: parallel kernel (about 7 us here): (1, 1) @ (1, 65536) 5.7 us against 11.9, (4, 1)
#: @ (1, 16384) 5.8 against 10.3; (64, 1) @ (1, 1024) 16.7 against 9.6.
OUTER_MIN_ROWS = 32
OUTER_MIN_ITEMS = 16384


def outer(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``np.matmul(a, b, out=out)`` for products of K = 1, a (..., M, 1) @ (..., 1, N),
    on numba's threads, runs of whole output rows a task: numpy's broadcast multiply
    steps its inner loop once an output row, so tall products of few columns ran 8-10x
    slower ((32768, 1) @ (1, 64): 0.79 against 0.10 ms; (64, 1) @ (1, 32768) 0.19
    against 0.10; 2-core AMD EPYC). Other than one float32 or float64 dtype, more than
    one batch dimension, an out that is not the broadcast shape or that overlaps a or b,
    and small products (``OUTER_MIN_ROWS``, ``OUTER_MIN_ITEMS``): numpy's multiply.

    >>> import numpy as np
    >>> a = np.arange(3, dtype=np.float32).reshape(3, 1)
    >>> b = np.array([[1, 10]], np.float32)
    >>> outer(a, b).tolist()
    [[0.0, 0.0], [1.0, 10.0], [2.0, 20.0]]
    """
    m, n = a.shape[-2], b.shape[-1]
    rows = m * max(math.prod(a.shape[:-2]), math.prod(b.shape[:-2]))
    if rows < OUTER_MIN_ROWS or rows * n < OUTER_MIN_ITEMS:
        return np.multiply(a, b, out=out)
    shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (m, n)
    if out is None:
        out = np.empty(shape, np.result_type(a, b))
    dt = out.dtype
    if (dt.char not in "fd" or a.dtype != dt or b.dtype != dt or out.shape != shape
            or out.ndim > 3 or not out.flags.writeable or np.may_share_memory(out, a)
            or np.may_share_memory(out, b)):
        return np.multiply(a, b, out=out)
    if out.size == 0:
        return out
    left = np.ascontiguousarray(a[..., 0].reshape(-1, m))      # (1 or E, M)
    right = np.ascontiguousarray(b[..., 0, :].reshape(-1, n))  # (1 or E, N)
    with parallel_guard():
        _outer(left, right, out[None] if out.ndim == 2 else out,
               max(1, OUTER_TASK_ITEMS // max(n, 1)))
    return out


@njit(parallel=True, cache=True)
def _outer(rows, cols, out, per_task):
    """out[e, i, j] = rows[e or 0, i] * cols[e or 0, j], ``per_task`` rows a task."""
    e_all, m, n = out.shape
    each_a, each_b = rows.shape[0] > 1, cols.shape[0] > 1
    blocks = (m + per_task - 1) // per_task
    for t in prange(e_all * blocks):
        e, i0 = t // blocks, (t % blocks) * per_task
        re, ce = rows[e if each_a else 0], cols[e if each_b else 0]
        for i in range(i0, min(i0 + per_task, m)):
            v, oi = re[i], out[e, i]
            for j in range(n):
                oi[j] = v * ce[j]


@njit(inline="always")
def panel_product(af, a0, lda, bf, b0, ldb, cf, c0, ldc, m, n, k):
    """cf[c0 + i*ldc + j] = sum over q < k of af[a0 + i*lda + q] * bf[b0 + q*ldb + j]
    for i < m, j < n (row-major operands in flat arrays; m >= 6 and n >= 4 registers,
    the caller's guarantee), in 6 x 4-register tiles (``_tile4``), rows outer: a tile's
    6 rows of a stay in L1 while every block of columns of b goes by. The last tile of
    rows (of columns) ends at m (at n), overlapping the one before and writing those
    outputs again with the same values (so cf must not alias af or bf)."""
    width = 4 * _lanes.count(cf)
    for r in range(0, m, TILE_ROWS):
        i = min(r, m - TILE_ROWS)
        for jj in range(0, n, width):
            j = min(jj, n - width)
            _tile4(af, bf, cf, U(a0 + i * lda), U(lda), U(b0 + j), U(ldb),
                   U(c0 + i * ldc + j), U(ldc), k)


@njit(inline="always")
def _tile4(af, bf, cf, a0, lda, b0, ldb, c0, ldc, k, first=True):
    """cf[c0 + r*ldc :][:4 registers] = sum over q < k of af[a0 + r*lda + q] *
    bf[b0 + q*ldb :][:4 registers] for the 6 rows r: 24 sums, and for every k 4 loads
    of b and 6 broadcasts of a (24 multiply-adds for 10 loads, where ``_tile`` does 12
    for 8). first False: the sums start from cf's values instead of zero (a product
    summed over several calls). ``_tile4_at`` with rows equally spaced."""
    _tile4_at(af, (a0, a0 + lda, a0 + U(2) * lda, a0 + U(3) * lda, a0 + U(4) * lda,
                   a0 + U(5) * lda),
              bf, cf, b0, ldb,
              (c0, c0 + ldc, c0 + U(2) * ldc, c0 + U(3) * ldc, c0 + U(4) * ldc,
               c0 + U(5) * ldc), k, first)


@njit(inline="always")
def _tile4_at(af, ar, bf, cf, b0, ldb, cr, k, first=True):
    """``_tile4`` with its 6 rows anywhere: cf[cr[r] :][:4 registers] = sum over q < k
    of af[ar[r] + q] * bf[b0 + q*ldb :][:4 registers] (ar, cr: 6 offsets each; the
    indirect forwards' tiles of pixels taken across output rows)."""
    nl = U(_lanes.count(cf))
    a0, a1, a2, a3, a4, a5 = ar
    c0, c1, c2, c3, c4, c5 = cr
    if first:
        p00 = p01 = p02 = p03 = p10 = p11 = p12 = p13 = _lanes.zeros(cf)
        p20 = p21 = p22 = p23 = p30 = p31 = p32 = p33 = _lanes.zeros(cf)
        p40 = p41 = p42 = p43 = p50 = p51 = p52 = p53 = _lanes.zeros(cf)
    else:
        p00, p01, p02, p03 = _row4(cf, c0, nl)
        p10, p11, p12, p13 = _row4(cf, c1, nl)
        p20, p21, p22, p23 = _row4(cf, c2, nl)
        p30, p31, p32, p33 = _row4(cf, c3, nl)
        p40, p41, p42, p43 = _row4(cf, c4, nl)
        p50, p51, p52, p53 = _row4(cf, c5, nl)
    for q in range(k):
        bq = b0 + U(q) * ldb
        u0, u1 = _lanes.load(bf, bq), _lanes.load(bf, bq + nl)
        u2, u3 = _lanes.load(bf, bq + U(2) * nl), _lanes.load(bf, bq + U(3) * nl)
        uq = U(q)
        p00, p01, p02, p03 = _four(p00, p01, p02, p03, af[a0 + uq], u0, u1, u2, u3)
        p10, p11, p12, p13 = _four(p10, p11, p12, p13, af[a1 + uq], u0, u1, u2, u3)
        p20, p21, p22, p23 = _four(p20, p21, p22, p23, af[a2 + uq], u0, u1, u2, u3)
        p30, p31, p32, p33 = _four(p30, p31, p32, p33, af[a3 + uq], u0, u1, u2, u3)
        p40, p41, p42, p43 = _four(p40, p41, p42, p43, af[a4 + uq], u0, u1, u2, u3)
        p50, p51, p52, p53 = _four(p50, p51, p52, p53, af[a5 + uq], u0, u1, u2, u3)
    _put4(cf, c0, nl, (p00, p01, p02, p03))
    _put4(cf, c1, nl, (p10, p11, p12, p13))
    _put4(cf, c2, nl, (p20, p21, p22, p23))
    _put4(cf, c3, nl, (p30, p31, p32, p33))
    _put4(cf, c4, nl, (p40, p41, p42, p43))
    _put4(cf, c5, nl, (p50, p51, p52, p53))


@njit(inline="always")
def _put4(cf, c, nl, v):
    """cf[c : c + 4 registers] = the 4 registers v."""
    _put(cf, c, nl, v[0], v[1])
    _put(cf, c + U(2) * nl, nl, v[2], v[3])


@njit(inline="always")
def _row4(cf, c, nl):
    """The 4 registers cf[c : c + 4 registers]."""
    return (_lanes.load(cf, c), _lanes.load(cf, c + nl), _lanes.load(cf, c + U(2) * nl),
            _lanes.load(cf, c + U(3) * nl))


@njit(inline="always")
def _four(v0, v1, v2, v3, s, u0, u1, u2, u3):
    """One row's four registers plus s (broadcast) times u0..u3."""
    return (_lanes.fma(v0, s, u0), _lanes.fma(v1, s, u1), _lanes.fma(v2, s, u2),
            _lanes.fma(v3, s, u3))
