"""The image-last backward's gradient kernels (used by ``image_last``).

For a tile of B small images the products are formed without the column matrix: with the
images put last (x as xt (C, H, W, B), grad_y as gt (D, Ho, Wo, B)),

    grad_w[d, c, a, b] = sum_{i, j, n} gt[d, i, j, n] xt[c, i*sh + a*rh - pt, j*sw + b*rw - pl, n]
    grad_x[c, r, q, n] = sum of w[d, c, a, b] gt[d, i, j, n] over r = i*sh + a*rh - pt,
                         q = j*sw + b*rw - pl

(d in c's group). For fixed (d, c, a, b, i) the run over (j, n) is contiguous in both
arrays when sw = 1 (runs of B elements otherwise): each term is a dot product (grad_w) or
a multiply-add into an input row (grad_x) over (valid columns) * B elements, long even
for rows of a few pixels. This is the tile's GEMM with the unfold folded into its operand
reads; per pass over a run the kernels keep 4 output channels (and grad_w 2 taps, grad_x
2 input channels) in registers, so each load feeds several multiply-adds. Runs of B
images also make the strided and dilated cases vectorise. Run offsets are unsigned
(``_common.U``) so that the runs vectorise.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ... import config
from .._common import U, valid_range

_DB = 4  # output channels per pass


@njit(inline="always")
def _dot1(r, g0, xs, x0, n, zero):
    """sum_t r[g0 + t] * xs[x0 + t], t < n (unsigned offsets)."""
    s = zero
    for t in range(n):
        s += r[g0 + t] * xs[x0 + t]
    return s


@njit(inline="always")
def _dot4(rows, g0, xs, x0, n, zero):
    """_dot1 for the 4 rows of ``rows`` at once (one load of xs per 4 multiply-adds)."""
    r0, r1, r2, r3 = rows
    s0 = s1 = s2 = s3 = zero
    for t in range(n):
        v = xs[x0 + t]
        s0 += r0[g0 + t] * v
        s1 += r1[g0 + t] * v
        s2 += r2[g0 + t] * v
        s3 += r3[g0 + t] * v
    return s0, s1, s2, s3


@njit(inline="always")
def _dot4x2(rows, g0, xs, xa, xb, n, zero):
    """_dot4 against two runs of xs (two taps of one row) at once."""
    r0, r1, r2, r3 = rows
    s0 = s1 = s2 = s3 = t0 = t1 = t2 = t3 = zero
    for t in range(n):
        u = xs[xa + t]
        v = xs[xb + t]
        q0 = r0[g0 + t]
        q1 = r1[g0 + t]
        q2 = r2[g0 + t]
        q3 = r3[g0 + t]
        s0 += q0 * u
        s1 += q1 * u
        s2 += q2 * u
        s3 += q3 * u
        t0 += q0 * v
        t1 += q1 * v
        t2 += q2 * v
        t3 += q3 * v
    return s0, s1, s2, s3, t0, t1, t2, t3


@njit(inline="always")
def _tap_sums(acc, b, rows, nd, xs, j_lo, j_hi, x_first, x_step, nb):
    """acc[k, b] += dot of rows[k] (gy rows) with tap b's input run, for output columns
    [j_lo, j_hi); the input column of output column j is x_first + j * x_step. One run of
    (j_hi - j_lo) * nb elements when x_step == 1, else one run of nb per column."""
    zero = rows[0].dtype.type(0)
    if j_hi <= j_lo:
        return
    if x_step == 1:
        runs, n = 1, U((j_hi - j_lo) * nb)
    else:
        runs, n = j_hi - j_lo, U(nb)
    for q in range(runs):
        j = j_lo + q
        g0 = U(j * nb)
        x0 = U((x_first + j * x_step) * nb)
        if nd == _DB:
            s0, s1, s2, s3 = _dot4(rows, g0, xs, x0, n, zero)
            acc[0, b] += s0
            acc[1, b] += s1
            acc[2, b] += s2
            acc[3, b] += s3
        else:
            for k in range(nd):
                acc[k, b] += _dot1(rows[k], g0, xs, x0, n, zero)


@njit(inline="always")
def _segment(seg, n, tap, lo, hi, off, step):
    """Append the run (tap, lo, hi, off, step) to ``seg`` when it is not empty; returns
    the new count."""
    if hi <= lo:
        return n
    seg[n, 0] = tap
    seg[n, 1] = lo
    seg[n, 2] = hi
    seg[n, 3] = off
    seg[n, 4] = step
    return n + 1


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _grad_w_image_last(gt, xt, gw, sh, sw, pt, pl, rh, rw):
    """gw (D, Cg, KH, KW) float64 += grad_w of one tile: gt (D, Ho, Wo, B), xt (C, H, W, B).
    One task per (input channel c, tap row a, block of 4 output channels of c's group),
    owning gw[those d, c mod Cg, a, :] (``_grad_w_task``)."""
    d_all, ho, wo, nb = gt.shape
    c_all, h, wd, _ = xt.shape
    _, cg, kh, _ = gw.shape
    n_db = (d_all // (c_all // cg) + _DB - 1) // _DB
    gf = gt.reshape(d_all, ho, wo * nb)
    xf = xt.reshape(c_all, h, wd * nb)
    for task in prange(c_all * kh * n_db):
        _grad_w_task(np.int64(task), gf, xf, gw, nb, sh, sw, pt, pl, rh, rw)


@njit(cache=True, fastmath=config.FASTMATH, error_model="numpy")
def _grad_w_task(task, gf, xf, gw, nb, sh, sw, pt, pl, rh, rw):
    """One task of ``_grad_w_image_last`` on gf (D, Ho, Wo*B), xf (C, H, W*B).

    Compiled apart from the parallel loop that calls it, which stays one line: numba's
    parallel passes then never see this body, and the first call of the kernel costs
    3.1 instead of 4.9 s of CPU (float32, measured on the 2-core machine), the same
    speed afterwards. The task index comes as int64 (not the loop's uint64): one
    specialisation. ``error_model="numpy"`` as inside a parallel loop: no
    division-by-zero checks, which made the loops 8% slower."""
    d_all, ho, wob = gf.shape
    c_all, h, wdb = xf.shape
    _, cg, kh, kw = gw.shape
    wo, wd = wob // nb, wdb // nb
    dg = d_all // (c_all // cg)
    n_db = (dg + _DB - 1) // _DB
    c = task // (kh * n_db)
    a = (task // n_db) % kh
    d0 = (c // cg) * dg + (task % n_db) * _DB
    nd = min(_DB, (c // cg + 1) * dg - d0)
    zero = gf.dtype.type(0)
    acc = np.zeros((_DB, kw), np.float64)
    seg = np.empty((4, 5), np.int64)
    i_lo, i_hi = valid_range(ho, a * rh - pt, sh, h)
    for i in range(i_lo, i_hi):
        xs = xf[c, i * sh + a * rh - pt]
        rows = (gf[d0, i], gf[d0 + min(1, nd - 1), i], gf[d0 + min(2, nd - 1), i],
                gf[d0 + min(3, nd - 1), i])
        b = 0
        while b < kw:
            # the runs of this tap (or pair of taps) go to ``seg`` rows (tap, lo, hi,
            # x offset, x step) and are summed at one call site below: one inlined
            # copy of the run loops keeps the compile short
            off = b * rw - pl
            lo0, hi0 = valid_range(wo, off, sw, wd)
            if sw != 1 or b + 1 == kw or nd != _DB:
                n_seg = _segment(seg, 0, b, lo0, hi0, off, sw)
                b += 1
            else:   # taps b and b + 1 together over the columns valid for both
                off1 = off + rw
                lo1, hi1 = valid_range(wo, off1, 1, wd)
                lo, hi = max(lo0, lo1), min(hi0, hi1)
                if lo < hi:
                    s = _dot4x2(rows, U(lo * nb), xs, U((lo + off) * nb),
                                U((lo + off1) * nb), U((hi - lo) * nb), zero)
                    for k in range(_DB):
                        acc[k, b] += s[k]
                        acc[k, b + 1] += s[_DB + k]
                    n_seg = _segment(seg, 0, b, lo0, min(lo, hi0), off, 1)
                    n_seg = _segment(seg, n_seg, b, max(hi, lo0), hi0, off, 1)
                    n_seg = _segment(seg, n_seg, b + 1, lo1, min(lo, hi1), off1, 1)
                    n_seg = _segment(seg, n_seg, b + 1, max(hi, lo1), hi1, off1, 1)
                else:
                    n_seg = _segment(seg, 0, b, lo0, hi0, off, 1)
                    n_seg = _segment(seg, n_seg, b + 1, lo1, hi1, off1, 1)
                b += 2
            for q in range(n_seg):
                _tap_sums(acc, seg[q, 0], rows, nd, xs, seg[q, 1], seg[q, 2],
                          seg[q, 3], seg[q, 4], nb)
    for k in range(nd):
        for b in range(kw):
            gw[d0 + k, c % cg, a, b] += acc[k, b]


@njit(inline="always")
def _axpy_run(la, lb, two, wa, wb, rows, nd, g0, x0, n):
    """la[x0 + t] += sum_k wa[k] rows[k][g0 + t] (and lb with wb when ``two``), t < n."""
    if nd == _DB:
        r0, r1, r2, r3 = rows
        a0, a1, a2, a3 = wa
        if two:
            b0, b1, b2, b3 = wb
            for t in range(n):
                q0 = r0[g0 + t]
                q1 = r1[g0 + t]
                q2 = r2[g0 + t]
                q3 = r3[g0 + t]
                la[x0 + t] += (a0 * q0 + a1 * q1) + (a2 * q2 + a3 * q3)
                lb[x0 + t] += (b0 * q0 + b1 * q1) + (b2 * q2 + b3 * q3)
        else:
            for t in range(n):
                la[x0 + t] += ((a0 * r0[g0 + t] + a1 * r1[g0 + t])
                               + (a2 * r2[g0 + t] + a3 * r3[g0 + t]))
        return
    for k in range(nd):
        r = rows[k]
        ak = wa[k]
        if two:
            bk = wb[k]
            for t in range(n):
                q = r[g0 + t]
                la[x0 + t] += ak * q
                lb[x0 + t] += bk * q
        else:
            for t in range(n):
                la[x0 + t] += ak * r[g0 + t]


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _grad_x_image_last(gt, w, gxt, sh, sw, pt, pl, rh, rw):
    """gxt (C, H, W, B), fully written: grad_x of one tile from gt (D, Ho, Wo, B) and w
    (D, Cg, KH, KW). One task per (pair of input channels of one group, input row), owning
    those two rows; they gather from the output rows that read them."""
    d_all, ho, wo, nb = gt.shape
    c_all, h, wd, _ = gxt.shape
    _, cg, kh, kw = w.shape
    groups = c_all // cg
    dg = d_all // groups
    n_cp = (cg + 1) // 2
    gf = gt.reshape(d_all, ho, wo * nb)
    xf = gxt.reshape(c_all, h, wd * nb)
    zero = gxt.dtype.type(0)
    for task in prange(groups * n_cp * h):
        r = task % h
        q = task // h
        g = q // n_cp
        cl = (q % n_cp) * 2
        two = cl + 1 < cg
        la = xf[g * cg + cl, r]
        lb = xf[g * cg + cl + 1 if two else g * cg + cl, r]
        for t in range(wd * nb):
            la[U(t)] = zero
        if two:
            for t in range(wd * nb):
                lb[U(t)] = zero
        for a in range(kh):
            num = r + pt - a * rh          # = i * sh for the output row i that reads row r
            if num < 0 or num % sh != 0 or num // sh >= ho:
                continue
            i = num // sh
            for d0 in range(g * dg, (g + 1) * dg, _DB):
                nd = min(_DB, (g + 1) * dg - d0)
                rows = (gf[d0, i], gf[d0 + min(1, nd - 1), i], gf[d0 + min(2, nd - 1), i],
                        gf[d0 + min(3, nd - 1), i])
                for b in range(kw):
                    wa = (w[d0, cl, a, b], w[d0 + min(1, nd - 1), cl, a, b],
                          w[d0 + min(2, nd - 1), cl, a, b], w[d0 + min(3, nd - 1), cl, a, b])
                    c1 = cl + 1 if two else cl
                    wb = (w[d0, c1, a, b], w[d0 + min(1, nd - 1), c1, a, b],
                          w[d0 + min(2, nd - 1), c1, a, b], w[d0 + min(3, nd - 1), c1, a, b])
                    off = b * rw - pl
                    j_lo, j_hi = valid_range(wo, off, sw, wd)
                    if j_hi <= j_lo:
                        continue
                    # one run of all the columns when sw == 1, else a run of B per
                    # column (one call site: one inlined copy of the run loops)
                    runs, n = (1, (j_hi - j_lo) * nb) if sw == 1 else (j_hi - j_lo, nb)
                    for j in range(j_lo, j_lo + runs):
                        _axpy_run(la, lb, two, wa, wb, rows, nd, U(j * nb),
                                  U((j * sw + off) * nb), U(n))
