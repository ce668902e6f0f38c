"""F(2x2, 3x3) transforms: the kernel (``_kernel_transform``), input and output
transforms of the package docstring's G, B^T and A^T (4x4 tiles, 2x2 output blocks).

The input and output transforms read and write the transformed tiles as planes: a 2-D
array (16, rows*cols + PLANE_PAD) whose row e is entry e of every tile, the tiles of
channel c at columns c*cols .. c*cols + cols - 1 (``tiling._planes``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ... import config
from .._common import U
from .tasks import _padded_row, _store_rows, _task_count, _task_plane


@njit(inline="always")
def _gk2(k, tmp, c, half):
    """tmp[4*a + b, c] = (G k G^T)[a, b] for one 3x3 kernel k, F(2x2, 3x3)'s G (in k's
    dtype: it only adds and halves)."""
    for a in range(4):  # row a of G k, then times G^T
        if a == 0:
            t0, t1, t2 = k[0, 0], k[0, 1], k[0, 2]
        elif a == 3:
            t0, t1, t2 = k[2, 0], k[2, 1], k[2, 2]
        else:
            sign = 1 if a == 1 else -1
            t0 = half * (k[0, 0] + sign * k[1, 0] + k[2, 0])
            t1 = half * (k[0, 1] + sign * k[1, 1] + k[2, 1])
            t2 = half * (k[0, 2] + sign * k[1, 2] + k[2, 2])
        tmp[4 * a, c] = t0
        tmp[4 * a + 1, c] = half * (t0 + t1 + t2)
        tmp[4 * a + 2, c] = half * (t0 - t1 + t2)
        tmp[4 * a + 3, c] = t2


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _kernel_transform(w, u):
    """w (C_out, Cg, 3, 3) -> u (G, 16, Dg, Cg): u[g, 4*a + b, d, c] = (G w G^T)[a, b]
    for w[g*Dg + d, c]. One task per output channel; its 16 x Cg values are formed in a
    local buffer and stored row by row (``tasks._store_rows``)."""
    c_out, cg = w.shape[0], w.shape[1]
    half = w.dtype.type(0.5)
    for o in prange(c_out):
        tmp = np.empty((16, cg), dtype=u.dtype)
        for c in range(cg):
            _gk2(w[o, c], tmp, c, half)
        _store_rows(u, o, tmp)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _input_transform(x, v, cg, cols, c0, r0, r1, th, tw, pt, pl):
    """x (N, C, H, W) -> v, 16 flat planes of Cg*cols (+ padding) elements: the
    transformed 4x4 input tiles of channels c0.. for global tile rows r0..r1 (tile row r:
    image r // th, output rows 2*(r % th) and the next; cols = (r1-r0)*tw).
    v[4*a + b, c*cols + (r - r0)*tw + j] = (B^T d B)[a, b] for the tile
    d = x[n, c0 + c, 2i - pt : 2i - pt + 4, 2j - pl : 2j - pl + 4] (zero outside).

    One task per (channel, image) covered by the chunk. Each tile row is first copied,
    with its zero padding, into four buffer rows; the column transform B^T then runs
    along whole rows and the row transform B reads them with stride 2, so both loops
    vectorise."""
    wd = x.shape[3]
    wp = 2 * tw + 2  # input columns the tile row reads
    lo = min(pl, wp)
    hi = min(wp, pl + wd)
    for task in prange(_task_count(cg, r0, r1, th)):
        c, n, ra, rb, img = _task_plane(x, task, c0, r0, r1, th)
        buf = np.empty((4, wp), dtype=x.dtype)
        t = np.empty((4, wp), dtype=x.dtype)
        for r in range(ra, rb):
            top = 2 * (r - n * th) - pt
            for a in range(4):
                _padded_row(img, top + a, buf[a], lo, hi, pl)
            b0, b1, b2, b3 = buf[0], buf[1], buf[2], buf[3]
            t0, t1, t2, t3 = t[0], t[1], t[2], t[3]
            for q in range(U(wp)):  # B^T along the columns
                t0[q] = b0[q] - b2[q]
                t1[q] = b1[q] + b2[q]
                t2[q] = b2[q] - b1[q]
                t3[q] = b1[q] - b3[q]
            k0 = U(c * cols + (r - r0) * tw)
            for a in range(4):  # B along the rows
                ta = t[a]
                d0 = v[4 * a]
                d1 = v[4 * a + 1]
                d2 = v[4 * a + 2]
                d3 = v[4 * a + 3]
                for j in range(U(tw)):
                    q = U(2) * j
                    e0 = ta[q]
                    e1 = ta[q + U(1)]
                    e2 = ta[q + U(2)]
                    e3 = ta[q + U(3)]
                    d0[k0 + j] = e0 - e2
                    d1[k0 + j] = e1 + e2
                    d2[k0 + j] = e2 - e1
                    d3[k0 + j] = e1 - e3


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _output_transform(m, y, dg, cols, d0, r0, r1, th, tw, bias, has_bias, flags):
    """m, 16 flat planes of Dg*cols (+ padding) elements (the GEMM results, tile (r, j) of
    channel d at d*cols + (r - r0)*tw + j) -> y (N, C_out, Ho, Wo), channels d0..: the 2x2
    output block A^T m A of every tile (plus bias[d0 + d] when has_bias), cut at the last row/column
    when Ho or Wo is odd. One task per (output channel, image) covered by the chunk;
    flags[task] is set when the task wrote a NaN or an infinity."""
    _, _, ho, wo = y.shape
    for task in prange(_task_count(dg, r0, r1, th)):
        d, n, ra, rb, out = _task_plane(y, task, d0, r0, r1, th)
        add = bias[d0 + d] if has_bias else y.dtype.type(0)
        bad = 0  # outputs that are NaN or +-Inf
        u = np.empty((8, tw), dtype=m.dtype)
        rows = np.empty((2, 2 * tw), dtype=m.dtype)
        for r in range(ra, rb):
            k0 = U(d * cols + (r - r0) * tw)
            for a in range(4):  # A along the rows: (m0 + m1 + m2, m1 - m2 - m3)
                s0 = m[4 * a]
                s1 = m[4 * a + 1]
                s2 = m[4 * a + 2]
                s3 = m[4 * a + 3]
                ua = u[2 * a]
                ub = u[2 * a + 1]
                for j in range(U(tw)):
                    e1 = s1[k0 + j]
                    e2 = s2[k0 + j]
                    ua[j] = s0[k0 + j] + e1 + e2
                    ub[j] = e1 - e2 - s3[k0 + j]
            u00, u01, u10, u11 = u[0], u[1], u[2], u[3]
            u20, u21, u30, u31 = u[4], u[5], u[6], u[7]
            top, bottom = rows[0], rows[1]
            for j in range(U(tw)):  # A^T along the columns, interleaved into two rows
                q = U(2) * j
                top[q] = u00[j] + u10[j] + u20[j] + add
                top[q + U(1)] = u01[j] + u11[j] + u21[j] + add
                bottom[q] = u10[j] - u20[j] - u30[j] + add
                bottom[q + U(1)] = u11[j] - u21[j] - u31[j] + add
            i = 2 * (r - n * th)
            dst = out[i]
            for q in range(U(wo)):
                dst[q] = top[q]
                bad += not math.isfinite(top[q])
            if i + 1 < ho:
                dst = out[i + 1]
                for q in range(U(wo)):
                    dst[q] = bottom[q]
                    bad += not math.isfinite(bottom[q])
        flags[task] = bad > 0
