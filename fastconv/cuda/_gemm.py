"""Batched shared-memory GEMMs for the im2col path.

    c[z] (M x N)  =  op(a[z % a_batches]) @ op(b[z])      (or += with accumulate)

op transposes when asked. Two kernels, the same arguments and results:

- "tiled" (:func:`gemm_kernel`): each block computes one TILE x TILE tile of c[z], each
  thread one output element; operands stream through shared memory TILE columns of K at
  a time. Two shared-memory loads per multiply-add.
- "blocked" (:func:`blocked_gemm_kernel`, the default): 2-D register blocking. A block
  of T x T threads computes a (T*R) x (T*R) tile, each thread an R x R sub-tile (rows
  ty + r*T, columns tx + c*T: strided, so a warp's stores are coalesced). Per K step a
  thread loads R values of A and R of B from shared memory into registers and does R*R
  multiply-adds with them: R/2 loads per multiply-add instead of 2.

In both, no two threads write the same output element, and the tile loads are arranged so
neighbouring threads read neighbouring addresses whether or not an operand is transposed.
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


@functools.cache
def blocked_gemm_kernel(dtype: str, threads: int, reg: int, tile_k: int):
    """The register-blocked GEMM kernel: blocks of ``threads`` x ``threads`` threads, each
    thread a ``reg`` x ``reg`` sub-tile, K in steps of ``tile_k`` (all compile-time)."""
    nb_dtype = numba.from_dtype(np.dtype(dtype))
    T, R, TK = threads, reg, tile_k
    TM = T * R  # the block's tile is TM x TM
    n_threads = T * T
    shape = (TK, TM + 1)  # [k, m] and [k, n]; +1 column against bank conflicts

    @cuda.jit
    def _gemm_blocked(a, b, c, a_batches, trans_a, trans_b, accumulate):
        sa = cuda.shared.array(shape, nb_dtype)  # sa[k, m]
        sb = cuda.shared.array(shape, nb_dtype)  # sb[k, n]
        acc = cuda.local.array((R, R), nb_dtype)
        ra = cuda.local.array(R, nb_dtype)
        rb = cuda.local.array(R, nb_dtype)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * T + tx
        m0 = cuda.blockIdx.y * TM
        n0 = cuda.blockIdx.x * TM
        z = cuda.blockIdx.z
        za = z % a_batches
        m_all = c.shape[1]
        n_all = c.shape[2]
        k_all = a.shape[1] if trans_a else a.shape[2]
        zero = c.dtype.type(0)
        for r in range(R):
            for q in range(R):
                acc[r, q] = zero
        for k0 in range(0, k_all, TK):
            for e in range(tid, TK * TM, n_threads):
                if trans_a:  # a[za] is (K, M): consecutive threads along M
                    kk = e // TM
                    mi = e % TM
                else:  # a[za] is (M, K): consecutive threads along K
                    mi = e // TK
                    kk = e % TK
                k = k0 + kk
                m = m0 + mi
                v = zero
                if k < k_all and m < m_all:
                    v = a[za, k, m] if trans_a else a[za, m, k]
                sa[kk, mi] = v
                if trans_b:  # b[z] is (N, K)
                    ni = e // TK
                    kk = e % TK
                else:  # b[z] is (K, N)
                    kk = e // TM
                    ni = e % TM
                k = k0 + kk
                n = n0 + ni
                v = zero
                if k < k_all and n < n_all:
                    v = b[z, n, k] if trans_b else b[z, k, n]
                sb[kk, ni] = v
            cuda.syncthreads()
            for kk in range(TK):
                for r in range(R):
                    ra[r] = sa[kk, ty + r * T]
                    rb[r] = sb[kk, tx + r * T]
                for r in range(R):
                    for q in range(R):
                        acc[r, q] += ra[r] * rb[q]
            cuda.syncthreads()
        for r in range(R):
            m = m0 + ty + r * T
            if m < m_all:
                for q in range(R):
                    n = n0 + tx + q * T
                    if n < n_all:
                        if accumulate:
                            c[z, m, n] += acc[r, q]
                        else:
                            c[z, m, n] = acc[r, q]

    return _gemm_blocked


#: The GEMM the im2col path runs: "blocked" (register-blocked) or "tiled".
KERNEL = "blocked"
#: The blocked kernel's (threads per side, register tile side, K step): 16 x 16 threads,
#: 4 x 4 outputs each, a 64 x 64 tile per block. Not tuned on hardware.
BLOCKED = (16, 4, 8)
KERNELS = ("blocked", "tiled")


def gemm(a, b, c, *, trans_a: bool = False, trans_b: bool = False,
         accumulate: bool = False, kernel: str | None = None) -> None:
    """c[z] (=|+=) op(a[z % a.shape[0]]) @ op(b[z]) on contiguous 3-D device arrays.

    a: (Za, M, K) or (Za, K, M) with trans_a; b: (Z, K, N) or (Z, N, K) with trans_b;
    c: (Z, M, N); Z must be a multiple of Za. kernel: "blocked", "tiled" or None
    (:data:`KERNEL`).
    """
    kernel = KERNEL if kernel is None else kernel
    if kernel not in KERNELS:
        raise ValueError(f"gemm: kernel={kernel!r} is not one of {KERNELS}")
    z, m, n = c.shape
    if z == 0 or m == 0 or n == 0:
        return
    dtype = np.dtype(c.dtype).name
    if kernel == "tiled":
        tile = int(config.CUDA_GEMM_TILE)
        fn, threads = gemm_kernel(dtype, tile), tile
    else:
        threads, reg, tile_k = (int(v) for v in BLOCKED)
        fn, tile = blocked_gemm_kernel(dtype, threads, reg, tile_k), threads * reg
    grid = (-(-n // tile), -(-m // tile), z)
    fn[grid, (threads, threads)](a, b, c, a.shape[0], int(trans_a), int(trans_b),
                                 int(accumulate))
