"""numpy's own BLAS called from numba kernels: ``gemm``, one ``cblas_?gemm`` call.

numba's ``np.dot`` calls scipy's BLAS; numpy's wheels bundle a newer OpenBLAS of their
own, which ran the pointwise layer's per-image products (64 x 256 x 196, float32, one
thread) 18% faster (411 against 484 us for 8 images). ``address(dtype)`` finds
``cblas_sgemm`` / ``cblas_dgemm`` in the library numpy links (through threadpoolctl and
ctypes) and ``gemm`` calls it from nopython code by that address (passed in as an
integer, so kernels that use it stay cacheable). The integers go as 64-bit values: right
for the ILP64 library numpy bundles, and read correctly (low halves of their 64-bit
argument slots) by an LP64 one on x86-64 and AArch64. A product checked against numpy
at first use guards the binding; where anything is missing, ``address`` is None.

Examples
--------
>>> import numpy as np
>>> from fastconv import _cblas
>>> a = np.arange(6.0).reshape(2, 3)
>>> b = np.ones((3, 2))
>>> fn = _cblas.address(a.dtype)
>>> bool(fn is None or np.array_equal(_cblas.call(fn, a, b), a @ b))
True
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ._blas_libs import bundled, numpy_blas

#: cblas enums
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
_NAMES = ("scipy_cblas_{}gemm64_", "cblas_{}gemm64_", "cblas_{}gemm")

_lock = threading.Lock()
_found: dict = {}


def _gemm_codegen(dt, by_address: bool):
    """numba codegen of one ``?gemm`` call in float type ``dt``; the matrices (arguments
    6, 8 and 11) are arrays, or integer addresses when ``by_address``."""
    def codegen(context, builder, signature, args):
        at = signature.args
        flt = context.get_value_type(dt)
        i32, i64 = ir.IntType(32), ir.IntType(64)
        ptr = flt.as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, i64, i64, i64, flt, ptr, i64,
                                               ptr, i64, flt, ptr, i64])

        def int64(i):
            return context.cast(builder, args[i], at[i], types.int64)

        def matrix(i):
            if by_address:
                return builder.inttoptr(int64(i), ptr)
            arr = context.make_array(at[i])(context, builder, args[i])
            return builder.bitcast(arr.data, ptr)

        f = builder.inttoptr(int64(0), fnty.as_pointer())
        builder.call(f, [i32(ROW_MAJOR), builder.trunc(int64(1), i32),
                         builder.trunc(int64(2), i32), int64(3), int64(4), int64(5),
                         context.get_constant(dt, 1.0), matrix(6), int64(7), matrix(8),
                         int64(9), context.cast(builder, args[10], at[10], dt), matrix(11),
                         int64(12)])
        return context.get_dummy_value()

    return codegen


@intrinsic
def gemm(typingctx, fn, trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """C = op(A) @ op(B) + beta * C (row-major; op transposes for ``TRANS``) through the
    cblas ``?gemm`` at address ``fn``: A (m, k), B (k, n), C (m, n) given as arrays whose
    data starts at the matrix (leading dimensions lda, ldb, ldc, in elements)."""
    sig = types.void(fn, trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc)
    return sig, _gemm_codegen(c.dtype, by_address=False)


@intrinsic
def gemm_at(typingctx, fn, trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """``gemm`` with the matrices given by address (integers) instead of arrays: the
    float type comes from ``beta`` (float32 or float64). The caller keeps the arrays
    alive and in bounds; kernels built on it compile once per dtype."""
    sig = types.void(fn, trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc)
    return sig, _gemm_codegen(beta, by_address=True)


@njit(cache=True)
def _product(fn, a, b, c):
    gemm(fn, NO_TRANS, NO_TRANS, a.shape[0], b.shape[1], a.shape[1], a, a.shape[1], b,
         b.shape[1], 0.0, c, c.shape[1])


def call(fn: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b (2-D, C-contiguous, one dtype) through the cblas ``?gemm`` at ``fn``."""
    c = np.empty((a.shape[0], b.shape[1]), a.dtype)
    _product(fn, np.ascontiguousarray(a), np.ascontiguousarray(b), c)
    return c


def address(dtype) -> int | None:
    """The address of numpy's ``cblas_sgemm`` (float32) or ``cblas_dgemm`` (float64),
    checked once on a small product; None where it is not found or the check fails."""
    dtype = np.dtype(dtype)
    with _lock:
        if dtype not in _found:
            _found[dtype] = _find(dtype)
        return _found[dtype]


def _find(dtype: np.dtype) -> int | None:
    letter = {np.dtype(np.float32): "s", np.dtype(np.float64): "d"}.get(dtype)
    own = [lib for lib in numpy_blas() if bundled(lib.filepath, np)]
    if letter is None or not own:
        return None
    try:
        lib = ctypes.CDLL(own[0].filepath)
    except OSError:
        return None
    for name in _NAMES:
        fn = getattr(lib, name.format(letter), None)
        if fn is not None:
            addr = ctypes.cast(fn, ctypes.c_void_p).value
            a = np.arange(12, dtype=dtype).reshape(3, 4) - 5
            b = np.arange(8, dtype=dtype).reshape(4, 2) / 2
            return addr if np.array_equal(call(addr, a, b), a @ b) else None
    return None
