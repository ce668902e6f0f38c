"""NHWC <-> NCHW copies for the algorithms that compute in NCHW (direct, Winograd).

numpy's ``np.ascontiguousarray(x.transpose(0, 3, 1, 2))`` copies on one thread with one
side strided by C: on a (64, 32, 32, 32) float32 batch it took 2.4 ms one way and 5.4 ms
back into an NHWC array. Per image the layouts are the two orders of a (H*W, C) matrix,
so the copy is a batched transpose, done here in cache-sized blocks on all threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .._runtime import parallel_guard
from ._common import U

#: Rows and columns of one transposed block (two float32 blocks fit in 8 KiB of L1).
BLOCK = 32


@njit(parallel=True, cache=True)
def _swap_last2(src, dst):
    """dst[b, s, r] = src[b, r, s] for src (B, R, S) and dst (B, S, R), both contiguous.

    One task per (b, block of BLOCK rows of src); within it, BLOCK x BLOCK blocks, so the
    strided side of each block stays in cache (writes contiguous: the other order, with
    strided writes, was up to 2x slower). Flat arrays and unsigned offsets: no
    negative-index checks in the inner loop."""
    nb, r_all, s_all = src.shape
    fs = src.reshape(src.size)
    fd = dst.reshape(dst.size)
    plane = U(r_all * s_all)
    strips = (r_all + BLOCK - 1) // BLOCK
    for task in prange(nb * strips):
        b = task // strips
        r0 = (task % strips) * BLOCK
        rn = U(min(r0 + BLOCK, r_all) - r0)
        base = U(b) * plane
        for s0 in range(0, s_all, BLOCK):
            sn = U(min(s0 + BLOCK, s_all) - s0)
            for si in range(sn):
                d0 = base + (U(s0) + si) * U(r_all) + U(r0)
                s_col = base + U(r0) * U(s_all) + U(s0) + si
                for ri in range(rn):
                    fd[d0 + ri] = fs[s_col + ri * U(s_all)]


def to_nchw(x: np.ndarray) -> np.ndarray:
    """A new C-contiguous (N, C, H, W) copy of an (N, H, W, C) array."""
    n, h, w, c = x.shape
    out = np.empty((n, c, h, w), x.dtype)
    if out.size:
        with parallel_guard():
            _swap_last2(np.ascontiguousarray(x).reshape(n, h * w, c), out.reshape(n, c, h * w))
    return out


def write_nhwc(src: np.ndarray, dst: np.ndarray) -> None:
    """dst (N, H, W, C)[...] = src (N, C, H, W) transposed."""
    n, c, h, w = src.shape
    if src.size and src.flags.c_contiguous and dst.flags.c_contiguous:
        with parallel_guard():
            _swap_last2(src.reshape(n, c, h * w), dst.reshape(n, h * w, c))
    else:
        dst[...] = src.transpose(0, 2, 3, 1)
