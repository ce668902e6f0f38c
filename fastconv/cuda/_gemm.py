"""A batched, tiled shared-memory GEMM for the im2col path.

    c[z] (M x N)  =  op(a[z % a_batches]) @ op(b[z])      (or += with accumulate)

op transposes when asked. Each block computes one TILE x TILE tile of c[z]; each thread
owns one output element, so no two threads write the same place. Operands stream through
shared memory TILE columns of K at a time; the loads are arranged so neighbouring
threads read neighbouring addresses whether or not the operand is transposed.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from numba import cuda

from .. import config


@functools.cache
def gemm_kernel(dtype: str, tile: int):
    """The GEMM kernel for one dtype and tile size (shared arrays need both fixed)."""
    nb_dtype = numba.from_dtype(np.dtype(dtype))
    T = tile
    shape = (tile, tile + 1)  # +1 column avoids shared-memory bank conflicts

    @cuda.jit
    def _gemm(a, b, c, a_batches, trans_a, trans_b, accumulate):
        sa = cuda.shared.array(shape, nb_dtype)  # sa[m, k]
        sb = cuda.shared.array(shape, nb_dtype)  # sb[k, n]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        m0 = cuda.blockIdx.y * T
        n0 = cuda.blockIdx.x * T
        z = cuda.blockIdx.z
        za = z % a_batches
        m_all = c.shape[1]
        n_all = c.shape[2]
        k_all = a.shape[1] if trans_a else a.shape[2]
        zero = c.dtype.type(0)
        acc = zero
        for k0 in range(0, k_all, T):
            # A tile: element (m0 + i, k0 + j) lands in sa[i, j].
            if trans_a:  # a[za] is (K, M): threads along x read along M
                k = k0 + ty
                m = m0 + tx
                sa[tx, ty] = a[za, k, m] if (k < k_all and m < m_all) else zero
            else:  # a[za] is (M, K): threads along x read along K
                k = k0 + tx
                m = m0 + ty
                sa[ty, tx] = a[za, m, k] if (k < k_all and m < m_all) else zero
            # B tile: element (k0 + i, n0 + j) lands in sb[i, j].
            if trans_b:  # b[z] is (N, K)
                k = k0 + tx
                n = n0 + ty
                sb[tx, ty] = b[z, n, k] if (k < k_all and n < n_all) else zero
            else:  # b[z] is (K, N)
                k = k0 + ty
                n = n0 + tx
                sb[ty, tx] = b[z, k, n] if (k < k_all and n < n_all) else zero
            cuda.syncthreads()
            for kk in range(T):
                acc += sa[ty, kk] * sb[kk, tx]
            cuda.syncthreads()
        m = m0 + ty
        n = n0 + tx
        if m < m_all and n < n_all:
            if accumulate:
                c[z, m, n] += acc
            else:
                c[z, m, n] = acc

    return _gemm


def gemm(a, b, c, *, trans_a: bool = False, trans_b: bool = False,
         accumulate: bool = False) -> None:
    """c[z] (=|+=) op(a[z % a.shape[0]]) @ op(b[z]) on contiguous 3-D device arrays.

    a: (Za, M, K) or (Za, K, M) with trans_a; b: (Z, K, N) or (Z, N, K) with trans_b;
    c: (Z, M, N); Z must be a multiple of Za.
    """
    tile = int(config.CUDA_GEMM_TILE)
    z, m, n = c.shape
    if z == 0 or m == 0 or n == 0:
        return
    kernel = gemm_kernel(np.dtype(c.dtype).name, tile)
    grid = (-(-n // tile), -(-m // tile), z)
    kernel[grid, (tile, tile)](a, b, c, a.shape[0], int(trans_a), int(trans_b),
                               int(accumulate))
