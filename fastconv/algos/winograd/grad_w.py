"""The weight gradient in the Winograd domain: the adjoint of F(m x m, 3x3).

y = A^T [(G w G^T) * (B^T d B)] A is linear in w, so its adjoint gives the weight
gradient of one tile: grad_w += G^T [(A gy A^T) * (B^T d B)] G, with gy the tile's m x m
block of grad_y. Summed over channels and tiles: per entry e of the (m+2) x (m+2)
transforms, GW[e] (Dg, Cg) = sum over tiles of Yt[e] (Dg, tiles) @ V[e]^T, one GEMM per
entry as in the forward, then grad_w[d, c] = G^T GW[:, d, c] G.

The tile size is the forward's (``tiling.tile_size``, ``config.WINOGRAD_TILE``):
F(4x4, 3x3) by default, F(2x2, 3x3) (``_grad_transform`` here; F(4x4, 3x3)'s in
``grad_w4``) as the more accurate variant. F(4x4, 3x3) transforms 2.25 instead of 4
values per input and output-gradient element and its 36 GEMMs sum over 4x fewer tiles:
weight gradient alone, float32, NCHW, F(4x4) / F(2x2) time 0.71 on the bench suite's
cifar (64 x 32 x 32 x 32, 32 -> 32 channels), resnet_56 and resnet_28 layers and 1.0 on
resnet_14 (2 threads; 0.72, 0.73, 0.71, 0.94 on one), for a float32 error of about 7e-6
of the largest gradient instead of 7e-7 (im2col: 4e-7), the forward's own trade.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ... import _blas, config
from ..._runtime import guarded
from .._common import U, serial_twin, view, workspace
from .grad_w4 import GT4, _grad_transform4
from .tasks import _task_count, _task_plane
from .tiling import (
    _KERNELS,
    _SERIAL,
    chunk_planes,
    per_thread,
    problem,
    thread_runs,
    transformed,
)


@njit(inline="always")
def _a2(g0, g1):
    """A g for F(2x2, 3x3): A = (A^T)^T = [[1, 0], [1, 1], [1, -1], [0, -1]]."""
    return g0, g0 + g1, g0 - g1, -g1


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _grad_transform(gy, p, dg, cols, d0, r0, r1, th, tw):
    """gy (N, C_out, Ho, Wo) -> p (16, Dg*cols + pad): the transformed output-gradient
    tiles of F(2x2, 3x3), p[4*a + b, d*cols + (r - r0)*tw + j] = (A g A^T)[a, b] for the
    2x2 block g of grad_y channel d0 + d at tile (r, j), zero beyond Ho, Wo. One task per
    (channel, image) of the chunk."""
    _, _, ho, wo = gy.shape
    width = 2 * tw
    for task in prange(_task_count(dg, r0, r1, th)):
        d, n, ra, rb, plane = _task_plane(gy, task, d0, r0, r1, th)
        rows = np.zeros((2, width), dtype=gy.dtype)
        t = np.empty((4, width), dtype=gy.dtype)
        for r in range(ra, rb):
            i0 = 2 * (r - n * th)
            for i in range(2):
                if i0 + i < ho:
                    rows[i, :wo] = plane[i0 + i]
                else:
                    rows[i, :] = 0
            g0, g1 = rows[0], rows[1]
            t0, t1, t2, t3 = t[0], t[1], t[2], t[3]
            for q in range(U(width)):  # A down the columns
                o = _a2(g0[q], g1[q])
                t0[q] = o[0]
                t1[q] = o[1]
                t2[q] = o[2]
                t3[q] = o[3]
            k0 = U(d * cols + (r - r0) * tw)
            for a in range(4):  # A along the rows
                ta = t[a]
                o0, o1, o2, o3 = p[4 * a], p[4 * a + 1], p[4 * a + 2], p[4 * a + 3]
                for j in range(U(tw)):
                    o = _a2(ta[U(2) * j], ta[U(2) * j + U(1)])
                    o0[k0 + j] = o[0]
                    o1[k0 + j] = o[1]
                    o2[k0 + j] = o[2]
                    o3[k0 + j] = o[3]


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _weight_from_transform(gw, gt, grad_w, o0):
    """grad_w[o0 + d, c] = G^T gw[:, d, c] G (3x3) for gw (alpha^2, Dg, Cg) and G^T
    gt (3, alpha) in float64; one task per output channel, the input channels innermost
    (contiguous loads)."""
    alpha = gt.shape[1]
    dg, cg = gw.shape[1], gw.shape[2]
    for d in prange(dg):
        left = np.zeros((3, alpha, cg))      # G^T gw, per input channel
        for i in range(3):
            for a in range(alpha):
                coef = gt[i, a]
                if coef == 0.0:
                    continue
                for b in range(alpha):
                    src = gw[alpha * a + b, d]
                    dst = left[i, b]
                    for c in range(cg):
                        dst[c] += coef * src[c]
        out = grad_w[o0 + d]
        for i in range(3):
            for j in range(3):
                acc = np.zeros(cg)
                for b in range(alpha):
                    coef = gt[j, b]
                    if coef == 0.0:
                        continue
                    src = left[i, b]
                    for c in range(cg):
                        acc[c] += coef * src[c]
                for c in range(cg):
                    out[c, i, j] = acc[c]


#: G^T (3 x 4) of F(2x2, 3x3), float64.
_GT2 = np.array([[1, 0.5, 0.5, 0], [0, 0.5, -0.5, 0], [0, 0.5, 0.5, 1]])

#: The output-gradient transform and G^T of F(m x m, 3x3) per tile size m.
_GRAD_KERNELS = {2: (_grad_transform, _GT2), 4: (_grad_transform4, GT4)}
#: The output-gradient transforms compiled without threads (``tiling.per_thread``).
_GRAD_SERIAL = {m: serial_twin(kernels[0]) for m, kernels in _GRAD_KERNELS.items()}


def _grad_w_nchw(gy, x, grad_w, pads, groups, m) -> None:
    """grad_w (C_out, Cg, 3, 3) from gy (N, C_out, Ho, Wo) and x (N, C_in, H, W), both
    contiguous, with F(m x m, 3x3) (m 2 or 4): per chunk of tile rows and group,
    the input and output-gradient transforms and the (m+2)^2 GEMMs Yt[e] @ V[e]^T, summed
    over chunks. Narrow layers split their tile rows over the threads as the forward
    does (``drivers._run_nchw``), each thread summing its own chunks; the threads' sums
    are added in thread order (the same result on every call)."""
    th, tw, cg, dg, threads, rows = problem(x.shape, gy.shape, groups, m, x.itemsize)
    split = per_thread(cg, dg)
    gt = _GRAD_KERNELS[m][1]
    input_transform = _SERIAL[m][0] if split else guarded(_KERNELS[m][1])
    grad_transform = _GRAD_SERIAL[m] if split else guarded(_GRAD_KERNELS[m][0])
    matmul = np.matmul if split else _blas.split_matmul
    pt, pl = pads
    runs = thread_runs(x.shape[0] * th, threads)     # threads: 1 unless split
    # the sums in workspaces: fresh (G, (m+2)^2, Dg, Cg) arrays were page faults on every
    # call (2.4 MB each at 128 channels; 128 -> 128 at 8x8, 8 images: 4.2 ms a call)
    shape = (threads, groups, transformed(m), dg, cg)
    totals = view(workspace("winograd.grad_w.totals", math.prod(shape), x.dtype), shape)

    def run(k):
        total = totals[k]
        part = view(workspace("winograd.grad_w.part", math.prod(shape[2:]), x.dtype),
                    shape[2:])
        lo, hi = runs[k]
        first = True
        for r0, r1, cols, (v, v_planes), (yt, yt_planes) in chunk_planes(
                hi, rows, tw, cg, dg, m, x.dtype, lo):
            for g in range(groups):
                input_transform(x, v_planes, cg, cols, g * cg, r0, r1, th, tw, pt, pl)
                grad_transform(gy, yt_planes, dg, cols, g * dg, r0, r1, th, tw)
                if first:           # the first chunk's products are the sums so far
                    matmul(yt, v.transpose(0, 2, 1), out=total[g])
                else:
                    matmul(yt, v.transpose(0, 2, 1), out=part)
                    total[g] += part
            first = False
        if first:                   # no tile rows in this run
            total[...] = 0

    if split:
        _blas.on_threads(run, threads)
    else:
        run(0)
    total = totals[0]
    for k in range(1, threads):
        total += totals[k]
    for g in range(groups):
        guarded(_weight_from_transform)(total[g], gt, grad_w, g * dg)
