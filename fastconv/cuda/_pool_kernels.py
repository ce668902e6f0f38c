"""CUDA kernels of max and average pooling and their gradients (torch's rules, as the CPU).

Arrays are contiguous NCHW planes viewed as (P = N*C, H, W). Forward kernels and the
average-pooling gradient own one output element per loop iteration (the gradient
gathers from the windows covering its input element). The max-pooling gradient gets no
window geometry (only indices), so it scatters with ``cuda.atomic.add``: the one place a
reduction needs atomics (several windows may pick the same input element).
"""

from __future__ import annotations

import math

from numba import cuda


@cuda.jit(device=True)
def _unravel(t, a):
    """(p, i, j): the element of flat index t (C order) of the 3-D array a, for the
    grid-stride loops over one array's elements."""
    rows, cols = a.shape[1], a.shape[2]
    return t // (cols * rows), (t // cols) % rows, t % cols


@cuda.jit
def _max_pool(x, y, idx, kh, kw, sh, sw, ph, pw, rh, rw):
    """y, idx (P, Ho, Wo): the window maximum and its flat index r*W + c in the plane.

    A value replaces the running maximum when larger or NaN (the first maximum wins ties;
    the last NaN wins). A window with no input element gives -inf and index -1."""
    h, wd = x.shape[1], x.shape[2]
    neg_inf = y.dtype.type(-math.inf)
    for t in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        p, i, j = _unravel(t, y)
        top = i * sh - ph
        left = j * sw - pw
        best = neg_inf
        best_k = -1
        for a in range(kh):
            r = top + a * rh
            if r < 0 or r >= h:
                continue
            for b in range(kw):
                c = left + b * rw
                if c < 0 or c >= wd:
                    continue
                k = r * wd + c
                if best_k < 0:
                    best_k = k  # the first element read, as on the CPU
                v = x[p, r, c]
                if v > best or v != v:  # v != v: NaN
                    best = v
                    best_k = k
        y[p, i, j] = best
        idx[p, i, j] = best_k


@cuda.jit
def _max_unpool(gy, idx, gx):
    """gx (P, H*W) zero-filled; gx[p, idx[p, k]] += gy[p, k] for gy, idx (P, Ho*Wo).
    Indices outside [0, H*W) (-1: an empty window) pass nothing."""
    n_planes, n_out = gy.shape
    hw = gx.shape[1]
    for t in range(cuda.grid(1), n_planes * n_out, cuda.gridsize(1)):
        p = t // n_out
        k = idx[p, t % n_out]
        if 0 <= k < hw:
            cuda.atomic.add(gx, (p, k), gy[p, t % n_out])


@cuda.jit(device=True)
def _avg_window(o, s, p, k, size):
    """Rows [lo, hi) of window o inside the input, and its extent for the divisor with
    count_include_pad (clipped at the end of the right padding, as torch)."""
    start = o * s - p
    end = min(start + k, size + p)
    return max(start, 0), min(end, size), end - start


@cuda.jit
def _avg_pool(x, y, kh, kw, sh, sw, ph, pw, include_pad):
    """y (P, Ho, Wo) = window sums / divisor; 0 for a window without input elements."""
    h, wd = x.shape[1], x.shape[2]
    for t in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        p, i, j = _unravel(t, y)
        r0, r1, eh = _avg_window(i, sh, ph, kh, h)
        c0, c1, ew = _avg_window(j, sw, pw, kw, wd)
        count = eh * ew if include_pad else (r1 - r0) * (c1 - c0)
        acc = y.dtype.type(0)
        for r in range(r0, r1):
            for c in range(c0, c1):
                acc += x[p, r, c]
        if count > 0 and r0 < r1 and c0 < c1:
            y[p, i, j] = acc / y.dtype.type(count)
        else:
            y[p, i, j] = 0


@cuda.jit
def _avg_unpool(gy, gx, kh, kw, sh, sw, ph, pw, include_pad):
    """gx[p, r, c] = sum of gy[p, i, j] / divisor(i, j) over the windows covering (r, c)."""
    h, wd = gx.shape[1], gx.shape[2]
    ho, wo = gy.shape[1], gy.shape[2]
    for t in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
        p, r, c = _unravel(t, gx)
        # windows i with i*sh - ph <= r < i*sh - ph + kh
        i_lo = max(0, (r + ph - kh) // sh + 1)
        i_hi = min(ho, (r + ph) // sh + 1)
        j_lo = max(0, (c + pw - kw) // sw + 1)
        j_hi = min(wo, (c + pw) // sw + 1)
        acc = gx.dtype.type(0)
        for i in range(i_lo, i_hi):
            r0, r1, eh = _avg_window(i, sh, ph, kh, h)
            for j in range(j_lo, j_hi):
                c0, c1, ew = _avg_window(j, sw, pw, kw, wd)
                count = eh * ew if include_pad else (r1 - r0) * (c1 - c0)
                if count > 0:
                    acc += gy[p, i, j] / gx.dtype.type(count)
        gx[p, r, c] = acc
