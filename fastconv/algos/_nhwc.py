"""NHWC <-> NCHW copies for the algorithms that compute in NCHW (direct, Winograd).

numpy's copy of a transposed view (``np.ascontiguousarray`` of ``NHWC.to_canonical_view``)
runs on one thread with one side strided by C: on a (64, 32, 32, 32) float32 batch it
took 2.4 ms one way and 5.4 ms back into an NHWC array. Per image the layouts are the two
orders of a (H*W, C) matrix, so the copy is a batched transpose, done here in cache-sized
blocks on all threads.

``nchw_copy``, ``nchw_target``, ``write_back`` (activations) and ``oihw_target``,
``write_weight_back`` (weight gradients) are what those algorithms call: they pick the
copy for the caller's layout from one table (``_TO_NCHW``, ``_FROM_NCHW``) or its
``Layout`` record, and do nothing for an array that already is a C-contiguous NCHW one.
``write_nhwc`` and ``write_nchw`` copy an activation into a given array of the other
layout (an NCHW layer computed channels last: ``winograd.drivers.on_nhwc_copies``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .._runtime import parallel_guard
from ..layout import NHWC, Layout
from ._common import U

#: Rows and columns of one transposed block (two float32 blocks fit in 8 KiB of L1).
BLOCK = 32
#: Source rows this many bytes apart (or a multiple) fall into few cache sets: a block's
#: strided reads then evict each other, and ``swap_last2`` stages each block through a
#: contiguous tile where there are at least ``STAGED_MIN_ROWS`` rows:
#: (2, 32, 16384) float32 0.89 -> 0.28 ms, (64, 32, 1024) 1.8 -> 0.58, (16, 64, 4096)
#: 3.6 -> 2.0, (32, 32, 512) 0.22 -> 0.13 (2-core AMD EPYC); other shapes ran 1.1-4x
#: slower staged ((64, 64, 256) 0.16 -> 0.25, (8, 50176, 3) 0.21 -> 0.83).
STAGED_ROW_BYTES = 2048
STAGED_MIN_ROWS = 16


def swap_last2(src: np.ndarray, dst: np.ndarray) -> None:
    """dst[b, s, r] = src[b, r, s] for src (B, R, S) and dst (B, S, R), both contiguous,
    on numba's threads (``_swap``; staged for rows a multiple of ``STAGED_ROW_BYTES``
    apart).

    >>> src = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    >>> dst = np.empty((1, 3, 2), np.float32)
    >>> swap_last2(src, dst)
    >>> dst[0].tolist()
    [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]
    """
    _, r_all, s_all = src.shape
    staged = (s_all * src.itemsize) % STAGED_ROW_BYTES == 0 and r_all >= STAGED_MIN_ROWS
    with parallel_guard():
        _swap(src, dst, staged)


@njit(parallel=True, cache=True)
def _swap(src, dst, staged):
    """``swap_last2``: one task per (b, block of BLOCK rows of src); within it, BLOCK x
    BLOCK blocks, so the strided side of each block stays in cache (writes contiguous:
    the other order, with strided writes, was up to 2x slower). ``staged``: each block
    read row by row into a contiguous tile first and written from there, the strided
    reads within the tile, whose rows lie in distinct cache sets. Flat arrays and
    unsigned offsets: no negative-index checks in the inner loops."""
    nb, r_all, s_all = src.shape
    fs = src.reshape(src.size)
    fd = dst.reshape(dst.size)
    plane = U(r_all * s_all)
    strips = (r_all + BLOCK - 1) // BLOCK
    unused = np.empty((0, BLOCK), src.dtype)
    for task in prange(nb * strips):
        b = task // strips
        r0 = (task % strips) * BLOCK
        rn = U(min(r0 + BLOCK, r_all) - r0)
        base = U(b) * plane
        tile = np.empty((BLOCK, BLOCK), src.dtype) if staged else unused
        for s0 in range(0, s_all, BLOCK):
            sn = U(min(s0 + BLOCK, s_all) - s0)
            if staged:
                for ri in range(rn):
                    row = base + (U(r0) + ri) * U(s_all) + U(s0)
                    for si in range(sn):
                        tile[ri, si] = fs[row + si]
            for si in range(sn):
                d0 = base + (U(s0) + si) * U(r_all) + U(r0)
                if staged:
                    for ri in range(rn):
                        fd[d0 + ri] = tile[ri, si]
                else:
                    s_col = base + U(r0) * U(s_all) + U(s0) + si
                    for ri in range(rn):
                        fd[d0 + ri] = fs[s_col + ri * U(s_all)]


def to_nchw(x: np.ndarray) -> np.ndarray:
    """A new C-contiguous (N, C, H, W) copy of an (N, H, W, C) array."""
    out = np.empty(NHWC.canonical_shape(x.shape), x.dtype)
    if out.size:
        n, c, h, w = out.shape
        swap_last2(np.ascontiguousarray(x).reshape(n, h * w, c), out.reshape(n, c, h * w))
    return out


def write_nhwc(src: np.ndarray, dst: np.ndarray) -> None:
    """dst (N, H, W, C)[...] = src (N, C, H, W) transposed."""
    n, c, h, w = src.shape
    if src.size and src.flags.c_contiguous and dst.flags.c_contiguous:
        swap_last2(src.reshape(n, c, h * w), dst.reshape(n, h * w, c))
    else:
        dst[...] = NHWC.from_canonical_view(src)


def write_nchw(src: np.ndarray, dst: np.ndarray) -> None:
    """dst (N, C, H, W)[...] = src (N, H, W, C) transposed (``write_nhwc``'s other
    way)."""
    n, h, w, c = src.shape
    if src.size and src.flags.c_contiguous and dst.flags.c_contiguous:
        swap_last2(src.reshape(n, h * w, c), dst.reshape(n, c, h * w))
    else:
        dst[...] = NHWC.to_canonical_view(src)


def _write_nchw(src: np.ndarray, dst: np.ndarray) -> None:
    dst[...] = src


#: Per layout: a C-contiguous NCHW copy of an activation (the array itself when it is one)
#: and the copy of an NCHW result into an activation of that layout.
_TO_NCHW = {"NCHW": np.ascontiguousarray, "NHWC": to_nchw}
_FROM_NCHW = {"NCHW": _write_nchw, "NHWC": write_nhwc}


def nchw_copy(x: np.ndarray, dims: Layout) -> np.ndarray:
    """``x`` (layout ``dims``) as a C-contiguous NCHW array: x itself when it already is
    one, else a copy."""
    return _TO_NCHW[dims.name](x)


def nchw_target(out: np.ndarray, dims: Layout) -> np.ndarray:
    """The NCHW array to compute ``out`` (layout ``dims``) into: ``out`` itself for NCHW
    (the callers' outputs are C-contiguous), else a new array for ``write_back``."""
    return out if dims.is_canonical else np.empty(dims.canonical_shape(out.shape), out.dtype)


def write_back(y: np.ndarray, out: np.ndarray, dims: Layout) -> None:
    """out[...] = y, an NCHW result from ``nchw_target``, in out's layout ``dims``
    (nothing to do when y is out)."""
    if y is not out:
        _FROM_NCHW[dims.name](y, out)


def oihw_target(grad_w: np.ndarray, dims: Layout) -> np.ndarray:
    """The OIHW array to compute the weight gradient ``grad_w`` (layout ``dims``) into:
    ``grad_w`` itself for OIHW (C-contiguous), else a new array for ``write_weight_back``."""
    if dims.is_canonical:
        return grad_w
    return np.empty(dims.canonical_weight_shape(grad_w.shape), grad_w.dtype)


def write_weight_back(gw: np.ndarray, grad_w: np.ndarray, dims: Layout) -> None:
    """grad_w[...] = gw, an OIHW weight gradient, in grad_w's layout ``dims`` (nothing to
    do when gw is grad_w)."""
    if gw is not grad_w:
        grad_w[...] = dims.weight_from_canonical_view(gw)
