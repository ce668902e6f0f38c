"""Average and global average pooling kernels and their gradients, NCHW planes and NHWC
images (torch's divisor rules), with float64 sums.

Plane kernels work on (P = N*C, H, W) views, one task per (plane, block of output rows)
forward and per (plane, block of input rows) backward; NHWC kernels on (N, H, W, C)
images, one task per (image, output row) forward and per (image, input row) backward.
The gradients gather into the input rows a task owns from the windows that cover them.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import config
from ._common import n_blocks, task_block, window_row


# Row helpers, run by ``_common.window_row`` (a literal stride 1 or 2 in the common
# cases); unsigned indices, as ``_max_kernels._max_taps``.
@njit(inline="always")
def _sum_taps(xrow, acc, j_lo, j_hi, off, sw):
    """acc[j] += xrow[j*sw + off] for one tap over an output row."""
    us, uoff = np.uint64(sw), np.uint64(off)
    for j in range(j_lo, j_hi):
        uj = np.uint64(j)
        acc[uj] += xrow[uj * us + uoff]


@njit(inline="always")
def _spread_taps(g, grow, j_lo, j_hi, off, sw):
    """grow[j*sw + off] += g[j] for one tap over an output row."""
    us, uoff = np.uint64(sw), np.uint64(off)
    for j in range(j_lo, j_hi):
        uj = np.uint64(j)
        grow[uj * us + uoff] += g[uj]


@njit(inline="always")
def _avg_window(o, s, p, k, size):
    """Rows [lo, hi) of window o read from the input, and its extent for the divisor with
    count_include_pad (clipped at the end of the right padding, as torch)."""
    start = o * s - p
    end = min(start + k, size + p)
    return max(start, 0), min(end, size), end - start


@njit(inline="always")
def _inv_col_divisors(inv, sw, pw, kw, wd, include_pad):
    """inv[j] = 1 / (column extent of window j), 0 for an empty window. The divisor of
    window (i, j) is (row extent) * (column extent) under both counting rules."""
    for j in range(inv.size):
        c0, c1, ew = _avg_window(j, sw, pw, kw, wd)
        n = ew if include_pad else c1 - c0
        inv[j] = 1.0 / n if n > 0 and c0 < c1 else 0.0


@njit(inline="always")
def _plane_task(task, rows, extent, wo, cols, include_pad):
    """(plane, first row, end row, a float64 row buffer, the column divisors'
    reciprocals) of a task over blocks of ``rows`` of ``extent`` rows per plane; cols =
    (s_w, p_w, k_w, W)."""
    p, lo, hi = task_block(task, rows, extent)
    inv = np.empty(wo, np.float64)
    _inv_col_divisors(inv, cols[0], cols[1], cols[2], cols[3], include_pad)
    return p, lo, hi, np.empty(wo, np.float64), inv


@njit(inline="always")
def _row_divisor(i, sh, ph, kh, h, include_pad):
    """(r0, r1, 1 / row extent) of output row i's windows: the input rows r0..r1 they
    cover, and the reciprocal of the row factor of their divisors (0 when empty)."""
    r0, r1, eh = _avg_window(i, sh, ph, kh, h)
    n_rows = eh if include_pad else r1 - r0
    return r0, r1, 1.0 / n_rows if n_rows > 0 and r0 < r1 else 0.0


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _avg_pool_planes(x, y, kh, kw, sh, sw, ph, pw, include_pad, rows):
    """x (P, H, W) -> y (P, Ho, Wo); one task per (plane, block of ``rows`` output rows).
    Each output row is summed in float64 by sweeping the input rows and column taps of
    its windows, then scaled by the reciprocal of each window's divisor."""
    n_planes, h, wd = x.shape
    _, ho, wo = y.shape
    for task in prange(n_planes * n_blocks(ho, rows)):
        p, i0, i1, acc, inv = _plane_task(task, rows, ho, wo, (sw, pw, kw, wd), include_pad)
        for i in range(i0, i1):
            r0, r1, inv_r = _row_divisor(i, sh, ph, kh, h, include_pad)
            acc[:] = 0.0
            for r in range(r0, r1):
                window_row(_sum_taps, x[p, r], acc, kw, pw, 1, sw, wd, wo)
            yrow = y[p, i]
            for j in range(wo):
                yrow[j] = acc[j] * inv[j] * inv_r


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _avg_pool_nhwc(x, y, kh, kw, sh, sw, ph, pw, include_pad):
    """x (N, H, W, C) -> y (N, Ho, Wo, C); one task per (image, output row)."""
    n_img, h, wd, c_all = x.shape
    _, ho, wo, _ = y.shape
    for task in prange(n_img * ho):
        n = task // ho
        i = task % ho
        acc = np.empty(c_all, np.float64)
        r0, r1, eh = _avg_window(i, sh, ph, kh, h)
        for j in range(wo):
            c0, c1, ew = _avg_window(j, sw, pw, kw, wd)
            count = eh * ew if include_pad else (r1 - r0) * (c1 - c0)
            acc[:] = 0.0
            for r in range(r0, r1):
                for col in range(c0, c1):
                    px = x[n, r, col]
                    for c in range(c_all):
                        acc[c] += px[c]
            out = y[n, i, j]
            if count > 0 and r0 < r1 and c0 < c1:
                for c in range(c_all):
                    out[c] = acc[c] / count
            else:
                out[:] = 0


@njit(inline="always")
def _covering_rows(r, sh, ph, kh, ho):
    """Output rows [lo, hi) whose windows contain input row r:
    i*sh - ph <= r < i*sh - ph + kh."""
    lo = max(0, -((kh - 1 - r - ph) // sh))
    hi = min(ho, (r + ph) // sh + 1)
    return lo, max(lo, hi)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _avg_unpool_planes(gy, gx, kh, kw, sh, sw, ph, pw, include_pad, rows):
    """gx (P, H, W), fully written, from grad_y (P, Ho, Wo): one task per (plane, block of
    ``rows`` input rows). Each input row is zeroed, then gathers grad_y / divisor from the
    output rows whose windows cover it, spread over each window's columns."""
    n_planes, h, wd = gx.shape
    _, ho, wo = gy.shape
    for task in prange(n_planes * n_blocks(h, rows)):
        p, r_start, r_end, g, inv = _plane_task(task, rows, h, wo, (sw, pw, kw, wd),
                                                include_pad)
        for r in range(r_start, r_end):
            grow = gx[p, r]
            grow[:] = 0
            i_lo, i_hi = _covering_rows(r, sh, ph, kh, ho)
            for i in range(i_lo, i_hi):
                inv_r = _row_divisor(i, sh, ph, kh, h, include_pad)[2]
                gyrow = gy[p, i]
                for j in range(wo):
                    g[j] = gyrow[j] * inv[j] * inv_r
                window_row(_spread_taps, g, grow, kw, pw, 1, sw, wd, wo)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _avg_unpool_nhwc(gy, gx, kh, kw, sh, sw, ph, pw, include_pad):
    """gx (N, H, W, C), fully written; one task per (image, input row), which is zeroed
    and gathers from the output rows whose windows cover it."""
    n_img, h, wd, c_all = gx.shape
    _, ho, wo, _ = gy.shape
    for task in prange(n_img * h):
        n = task // h
        r = task % h
        line = gx[n, r]
        line[:] = 0
        i_lo, i_hi = _covering_rows(r, sh, ph, kh, ho)
        for i in range(i_lo, i_hi):
            r0, r1, eh = _avg_window(i, sh, ph, kh, h)
            n_rows = eh if include_pad else r1 - r0
            for j in range(wo):
                c0, c1, ew = _avg_window(j, sw, pw, kw, wd)
                count = n_rows * (ew if include_pad else c1 - c0)
                if count <= 0 or c0 >= c1:
                    continue
                scale = 1.0 / count
                g = gy[n, i, j]
                for col in range(c0, c1):
                    px = line[col]
                    for c in range(c_all):
                        px[c] += g[c] * scale


# ----------------------------------------------------------------------- global average
@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _mean_planes(x, y):
    """y[p] = mean of x[p, :] for x (P, H*W), float64 sums; one task per plane."""
    n_planes, m = x.shape
    for p in prange(n_planes):
        acc = 0.0
        for k in range(m):
            acc += x[p, k]
        y[p] = acc / m


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _mean_pixels_nhwc(x, y, acc):
    """y[n, c] = mean over pixels of x (N, H*W, C); one task per image, its float64
    sums in acc[n] (N, C) (scratch, any values), the channels innermost so they run as
    SIMD lanes. (One task per (image, block of 16 channels), each allocating its sums,
    took 66 against 31 us on (32, 7, 7, 64), 279 against 70 us on (64, 8, 8, 128).)"""
    n_img, m, c_all = x.shape
    for n in prange(n_img):
        a = acc[n]
        a[:] = 0.0
        for k in range(m):
            for c in range(c_all):
                a[c] += x[n, k, c]
        for c in range(c_all):
            y[n, c] = a[c] / m
