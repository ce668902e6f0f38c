"""Max-pooling kernels and their gradients, NCHW planes and NHWC images (torch's rules).

Plane kernels work on (P = N*C, H, W) views, one task per (plane, block of output rows);
NHWC kernels on (N, H, W, C) images, one task per (image, output row) forward and per
(image, block of channels) backward. Indices are flat positions h*W + w in the plane.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numba import uint64 as U

from .. import config
from .._elementwise import relu_gradient, relu_range
from ..algos._common import valid_range
from ._common import C_BLOCK, n_blocks, task_block, window_row


# Row helper, run by ``_common.window_row`` (a literal stride 1 or 2 in the common cases).
# Its indices are unsigned: every index is >= 0 here (uint64 arithmetic wraps back to it
# when ``off`` is negative), so numba emits no negative-index wraparound test.
@njit(inline="always")
def _max_taps(xrow, out, j_lo, j_hi, off, sw):
    """One tap over an output row, out = (yrow, krow, r*W) for input row r: yrow[j],
    krow[j] <- xrow[j*sw + off], r*W + off + j*sw when larger, NaN, or the first tap of
    the window inside the input (branch-free)."""
    yrow, krow, row_start = out
    base = row_start + off
    us, uoff = np.uint64(sw), np.uint64(off)
    for j in range(j_lo, j_hi):
        uj = np.uint64(j)
        v = xrow[uj * us + uoff]
        cur = yrow[uj]
        k = krow[uj]
        better = (v > cur) | (v != v) | (k < 0)     # k < 0: the first tap inside the input
        yrow[uj] = v if better else cur
        krow[uj] = (base + j * sw) if better else k


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _max_pool_planes(x, y, idx, kh, kw, sh, sw, ph, pw, rh, rw, rows):
    """x (P, H, W) -> y, idx (P, Ho, Wo); one task per (plane, block of ``rows`` output
    rows).

    Each output row is swept once per tap (a, b), taps in row-major window order, so every
    output sees its window row by row; the first tap inside the input sets the maximum
    and its index (as torch, even when it is -inf), then a value replaces it when larger
    or NaN (the first maximum wins ties, a NaN is the maximum). A window lying wholly in
    the padding keeps -inf and index -1."""
    n_planes, h, wd = x.shape
    _, ho, wo = y.shape
    neg_inf = y.dtype.type(-np.inf)
    for task in prange(n_planes * n_blocks(ho, rows)):
        p, i0, i1 = task_block(task, rows, ho)
        for i in range(i0, i1):
            top = i * sh - ph
            a_lo, a_hi = valid_range(kh, top, rh, h)
            yrow = y[p, i]
            krow = idx[p, i]
            yrow[:] = neg_inf
            krow[:] = -1
            for a in range(a_lo, a_hi):
                r = top + a * rh
                window_row(_max_taps, x[p, r], (yrow, krow, r * wd), kw, pw, rw, sw, wd, wo)


@njit(inline="always")
def _max_tap(v, best, code, tap):
    """One more tap of a 2x2 window: (best, code) <- (v, tap) when v is larger or NaN."""
    better = (v > best) | (v != v)
    return (v if better else best), (tap if better else code)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _max_pool_2x2_planes(x, y, idx, codes, relu, geometry, rows):
    """2x2 windows, stride 2, no padding or dilation, every window inside the input:
    x (P, H*W) -> y (P, Ho*Wo) (flat planes, geometry = (W, Ho, Wo)), relu'd with
    ``relu`` (NaN kept); where they are not empty, codes (P, Ho*Wo) int32 = the winning
    tap 2a + b of each window, and idx (P, Ho*Wo) int64 = its flat index in the plane.
    One task per (plane, block of ``rows`` output rows); a row is an offset into its
    plane (views of each row cost more than the row itself on LeNet's 5-wide maps).

    The same rule as ``_max_pool_planes`` (taps in row-major order, the first maximum
    wins, a NaN is the maximum and a later NaN replaces it), written per output element
    so that the loop over a row vectorises: the winning tap is kept as an int32 code
    0..3 (the width of a float32 lane) and turned into the int64 flat index in a second
    pass over the row."""
    wd, ho, wo = geometry
    with_idx, keep = idx.size > 0, codes.size > 0
    for task in prange(x.shape[0] * n_blocks(ho, rows)):
        p, i0, i1 = task_block(task, rows, ho)
        xp, yp = x[p], y[p]
        cp = codes[p] if keep else np.empty(ho * wo if with_idx else 0, np.int32)
        for i in range(i0, i1):
            r0, r1, o = U(2 * i * wd), U((2 * i + 1) * wd), U(i * wo)
            # (literal unsigned constants: hoisted into variables, the stride 2 is no
            # longer known to the vectoriser and the loop runs twice as long)
            if not (with_idx or keep):
                for j in range(wo):
                    k = U(j) * U(2)
                    best = xp[r0 + k]
                    best, _ = _max_tap(xp[r0 + k + U(1)], best, 0, 1)
                    best, _ = _max_tap(xp[r1 + k], best, 0, 2)
                    best, _ = _max_tap(xp[r1 + k + U(1)], best, 0, 3)
                    yp[o + U(j)] = best
            else:
                for j in range(wo):
                    k = U(j) * U(2)
                    best = xp[r0 + k]
                    code = np.int32(0)
                    best, code = _max_tap(xp[r0 + k + U(1)], best, code, np.int32(1))
                    best, code = _max_tap(xp[r1 + k], best, code, np.int32(2))
                    best, code = _max_tap(xp[r1 + k + U(1)], best, code, np.int32(3))
                    yp[o + U(j)] = best
                    cp[o + U(j)] = code
            if relu:        # a loop of its own: inside the one above, 1.4x its time
                relu_range(yp, o, o + U(wo))
            if with_idx:
                kp = idx[p]
                for j in range(wo):
                    c = np.int64(cp[o + U(j)])
                    kp[o + U(j)] = 2 * i * wd + 2 * j + (c & 1) + (c >> 1) * wd


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _max_pool_2x2_nhwc(x, y, idx, codes, relu):
    """``_max_pool_2x2_planes`` for x (N, H, W, C) -> y (N, Ho, Wo, C), codes and idx
    (N, Ho, Wo, C) (each written only where not empty): one task per (image, output
    row), the four taps of a window read channel by channel (the general NHWC kernel's
    per-pixel loop took 370 against 83 us for NCHW on LeNet's (64, 28, 28, 6) input).
    Rows are flat (W*C,) runs indexed by offsets (2-D (W, C) rows indexed [j, c] took
    1.3x the time on that input). Each input row's pair of taps is reduced first
    (``_max_tap``), then the lower row's winner replaces the upper's where it is larger
    or NaN: the result of scanning the four taps in row-major order, as the planes
    kernel does."""
    n_img, h, wd, c_all = x.shape
    _, ho, wo, _ = y.shape
    with_idx, keep = idx.size > 0, codes.size > 0
    xf = x.reshape(n_img * h, wd * c_all)
    yf = y.reshape(n_img * ho, wo * c_all)
    cf = codes.reshape(n_img * ho, wo * c_all) if keep else codes.reshape(0, 0)
    unused = np.empty(0, np.int32)   # the codes' row where neither codes nor indices
    for task in prange(n_img * ho):
        n = task // ho
        i = task % ho
        r0 = xf[n * h + 2 * i]
        r1 = xf[n * h + 2 * i + 1]
        yrow = yf[task]
        # a task allocates a row of codes only for indices without kept codes
        crow = cf[task] if keep else (np.empty(wo * c_all, np.int32) if with_idx else unused)
        for j in range(wo):
            s, o = 2 * j * c_all, j * c_all
            if not (with_idx or keep):
                for c in range(c_all):
                    b0, _ = _max_tap(r0[s + c_all + c], r0[s + c], 0, 1)
                    b1, _ = _max_tap(r1[s + c_all + c], r1[s + c], 0, 1)
                    yrow[o + c] = b1 if (b1 > b0) | (b1 != b1) else b0
                continue
            # the winning tap as an int32 code first, then the int64 indices in a
            # second pass over the row (one pass took 5x the time on 6 channels)
            for c in range(c_all):
                b0, k0 = _max_tap(r0[s + c_all + c], r0[s + c], np.int32(0), np.int32(1))
                b1, k1 = _max_tap(r1[s + c_all + c], r1[s + c], np.int32(2), np.int32(3))
                lower = (b1 > b0) | (b1 != b1)
                yrow[o + c] = b1 if lower else b0
                crow[o + c] = k1 if lower else k0
        if relu:        # a loop of its own, as in the planes kernel
            relu_range(yrow, 0, wo * c_all)
        if with_idx:
            krow = idx[n, i]
            base = 2 * i * wd
            for j in range(wo):
                for c in range(c_all):
                    k = np.int64(crow[j * c_all + c])
                    krow[j, c] = base + 2 * j + (k & 1) + (k >> 1) * wd


def is_2x2_stride_2(a) -> bool:
    """Whether the problem ``a`` (a PoolArgs) is the common pooling layer that
    ``_max_pool_2x2_planes`` runs: 2x2 windows, stride 2, no padding or dilation, no
    partial window at the edges."""
    return (a.kernel == (2, 2) and a.stride == (2, 2) and a.padding == (0, 0)
            and a.dilation == (1, 1) and a.h_out == a.h // 2 and a.w_out == a.w // 2)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _max_pool_nhwc(x, y, idx, kh, kw, sh, sw, ph, pw, rh, rw):
    """x (N, H, W, C) -> y, idx (N, Ho, Wo, C); one task per (image, output row); the
    same scan as ``_max_pool_planes``, all channels at once."""
    n_img, h, wd, c_all = x.shape
    _, ho, wo, _ = y.shape
    neg_inf = y.dtype.type(-np.inf)
    for task in prange(n_img * ho):
        n = task // ho
        i = task % ho
        top = i * sh - ph
        a_lo, a_hi = valid_range(kh, top, rh, h)
        for j in range(wo):
            left = j * sw - pw
            b_lo, b_hi = valid_range(kw, left, rw, wd)
            best = y[n, i, j]
            best_k = idx[n, i, j]
            best[:] = neg_inf
            best_k[:] = -1
            for a in range(a_lo, a_hi):
                r = top + a * rh
                for b in range(b_lo, b_hi):
                    k = r * wd + left + b * rw
                    px = x[n, r, left + b * rw]
                    for c in range(c_all):
                        v = px[c]
                        cur = best[c]
                        kc = best_k[c]
                        better = (v > cur) | (v != v) | (kc < 0)
                        best[c] = v if better else cur
                        best_k[c] = k if better else kc


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _max_unpool_planes(gy, idx, gx, mask, masked):
    """gx (P, H*W) = 0, then gx[p, idx[p, k]] += gy[p, k] for gy, idx (P, Ho*Wo); with
    ``masked``, only where mask[p, k] (mask of gy's shape) is positive: a fused ReLU's
    gradient, its output as the mask (mask is not read otherwise). One task per plane
    (windows may overlap), which zeroes its plane first (in cache for the scatter;
    numpy's fill ran on one thread); index -1 gets nothing. Returns the count of indices
    outside [0, H*W) other than -1, which get nothing either (the caller raises: checking
    them here saves two passes of numpy over the indices)."""
    n_planes, n_out = gy.shape
    hw = gx.shape[1]
    zero = gx.dtype.type(0)
    bad = 0
    for p in prange(n_planes):
        gx[p, :] = zero
        for k in range(n_out):
            t = idx[p, k]
            if 0 <= t < hw:
                gx[p, t] += relu_gradient(gy[p, k], mask[p, k], masked, zero)
            elif t != -1:
                bad += 1
    return bad


@njit(inline="always")
def _unpool_image(gy, idx, gx, c_all, mask, masked):
    """``_max_unpool_nhwc`` of one image, flat: gx = 0, then gx[idx[k*C + c]*C + c] +=
    gy[k*C + c] (LeNet's 6 and 16 channels: 2x faster than by (pixel, channel)
    indices with the zeroing a strided slice); returns the count of bad indices."""
    zero = gx.dtype.type(0)
    gx[:] = zero
    hw = gx.size // c_all
    bad = 0
    for k in range(gy.size // c_all):
        for c in range(c_all):
            e = k * c_all + c
            t = idx[e]
            if 0 <= t < hw:
                gx[t * c_all + c] += relu_gradient(gy[e], mask[e], masked, zero)
            elif t != -1:
                bad += 1
    return bad


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _max_unpool_nhwc(gy, idx, gx, mask, masked):
    """gx (N, H*W, C) = 0, then gx[n, idx[n, k, c], c] += gy[n, k, c] for gy, idx
    (N, Ho*Wo, C), with ``masked`` only where mask[n, k, c] is positive (as
    ``_max_unpool_planes``). One task per (image, block of channels), which zeroes its
    part first; a block that is the whole image goes through it flat
    (``_unpool_image``). Returns the count of bad indices, as ``_max_unpool_planes``.
    (The ReLU mask in the scatter adds 10-25% to it, against a pass of its own over
    grad_y and a new array: LeNet's pools 38 and 29 us in a training step.)"""
    n_img, n_out, c_all = gy.shape
    hw = gx.shape[1]
    zero = gx.dtype.type(0)
    n_tasks = n_img * n_blocks(c_all, C_BLOCK)
    # Each task's count in its own slot, not a reduction: on Python 3.12 numba's parallel
    # pass could not compile a reduction fed by the inlined _unpool_image ("unexpected
    # cycle in lookup()").
    bad = np.zeros(n_tasks, np.int64)
    for task in prange(n_tasks):
        n, c0, c1 = task_block(task, C_BLOCK, c_all)
        if c1 - c0 == c_all:
            flat = gy[n].size
            bad[task] = _unpool_image(gy[n].reshape(flat), idx[n].reshape(flat),
                                      gx[n].reshape(gx[n].size), c_all,
                                      mask[n].reshape(flat), masked)
            continue
        gx[n, :, c0:c1] = zero
        count = 0
        for k in range(n_out):
            for c in range(c0, c1):
                t = idx[n, k, c]
                if 0 <= t < hw:
                    gx[n, t, c] += relu_gradient(gy[n, k, c], mask[n, k, c], masked, zero)
                elif t != -1:
                    count += 1
        bad[task] = count
    return bad.sum()


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _max_unpool_2x2(gy, codes, gx, mask, masked, geometry, rows):
    """The gradient of the 2x2 kernels from their codes, either layout: gx = 0, then
    grad_y at each window's winning tap (with ``masked``, only where mask > 0: a fused
    ReLU's gradient, as ``_max_unpool_planes``). Flat images: gy, codes, mask (P, Ho*Wo*C)
    and gx (P, H*W*C), geometry = (H, W, Ho, Wo, C); NCHW planes as images of one channel
    (C = 1, P = N*C). One task per (image, block of ``rows`` output rows), which owns the
    input rows of its windows (and, for the last block, the rows below every window):
    the windows do not overlap. (Writing each window's four values at once instead of
    zeroing and scattering ran 2x slower on NCHW planes.)"""
    h, wd, ho, wo, c_all = geometry
    zero = gx.dtype.type(0)
    uc, uw = U(c_all), U(wd)
    for task in prange(gy.shape[0] * n_blocks(ho, rows)):
        p, i0, i1 = task_block(task, rows, ho)
        gx[p, 2 * i0 * wd * c_all:(2 * i1 if i1 < ho else h) * wd * c_all] = zero
        for i in range(i0, i1):
            if c_all == 1:          # NCHW planes: the loop over a row alone
                e, pixel = U(i * wo), U(2 * i * wd)
                for j in range(wo):
                    code = U(codes[p, e + U(j)])
                    gx[p, pixel + U(2 * j) + (code & U(1)) + (code >> U(1)) * uw] = \
                        relu_gradient(gy[p, e + U(j)], mask[p, e + U(j)], masked, zero)
                continue
            for j in range(wo):
                e = (U(i) * U(wo) + U(j)) * uc
                pixel = U(2 * i) * uw + U(2 * j)
                for c in range(c_all):
                    code = U(codes[p, e + U(c)])
                    gx[p, (pixel + (code & U(1)) + (code >> U(1)) * uw) * uc + U(c)] = \
                        relu_gradient(gy[p, e + U(c)], mask[p, e + U(c)], masked, zero)
