"""The numba kernels of ``shared``'s unfold by phases and of its output grid: one call per
image each, on the calling thread and without the GIL, so the threads that share the
images out do not wait on each other between the steps.

- :func:`phase_columns`: split an image into its phases and copy every column row
  from them, the grid's unread columns zeroed (the forward and weight gradient's
  columns);
- :func:`fold_into_image`: add the column gradients back onto the phases and write
  the image's gradient from them, row by row (conv2d's input gradient alone);
- :func:`channel_sums`: an image's sums per channel in float64 (conv_transpose2d's
  bias gradient);
- :func:`copy_columns`: an image onto the output grid and back (rows of a few dozen
  pixels, which numpy's strided copies take several times longer over).

Examples
--------
>>> import numpy as np
>>> sums = np.empty(2)
>>> channel_sums(np.arange(8.0, dtype=np.float32).reshape(2, 2, 2), sums)
>>> sums
array([ 6., 22.])
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ... import config
from .._common import U, valid_range
from .unfold import _zero_pad


@njit(cache=True, nogil=True, fastmath=config.FASTMATH)
def split_phases(img, phases, pt, pl, sums):
    """phases[c, a0, b0, u, v] = img[c, sh u + a0 - pt, sw v + b0 - pl], zero outside
    the image (phases (C, sh, sw, Hq, Wq)); sums[c] (float64) = the sum of the pixels
    of channel c the phases hold (every pixel when sh Hq - pt >= H and sw Wq - pl >= W),
    summed over the channel's phases while they are in cache."""
    c_all, sh, sw, hq, wq = phases.shape
    _, h, w = img.shape
    zero = phases.dtype.type(0)
    for c in range(c_all):
        s = 0.0
        for a0 in range(sh):
            for b0 in range(sw):
                off = b0 - pl
                v_lo, v_hi = valid_range(wq, off, sw, w)
                for u in range(hq):
                    dst = phases[c, a0, b0, u]
                    src = sh * u + a0 - pt
                    if src < 0 or src >= h:
                        _zero_pad(dst, U(0), U(wq), U(wq), U(wq), zero)
                        continue
                    line = img[c, src]
                    _zero_pad(dst, U(0), U(v_lo), U(v_hi), U(wq), zero)
                    first, step = U(sw * v_lo + off), U(sw)
                    for t in range(U(v_hi - v_lo)):
                        dst[U(v_lo) + t] = line[first + t * step]
        flat = phases[c].reshape(sh * sw * hq * wq)   # in cache: one long vector sum
        for t in range(U(flat.shape[0])):
            s += np.float64(flat[t])
        sums[c] = s


@njit(cache=True, nogil=True, fastmath=config.FASTMATH)
def phase_columns(img, phases, cols, pt, pl, w_out, sums):
    """cols (C, KH/sh, sh, KW/sw, sw, H_out, Wq) of image ``img`` (C, H, W): row
    (c, a1, a0, b1, b0) is phase (a0, b0) of channel c read from grid row a1, column
    b1 on (``phases`` (C, sh, sw, Hq, Wq) is the workspace it is split into); the grid
    columns from ``w_out`` on are zero. ``sums`` as in :func:`split_phases`."""
    split_phases(img, phases, pt, pl, sums)
    c_all, kh1, sh, kw1, sw, h_out, wq = cols.shape
    zero = cols.dtype.type(0)
    length = h_out * wq
    runs = phases.reshape(c_all, sh, sw, phases.shape[3] * wq)
    rows = cols.reshape(c_all, kh1, sh, kw1, sw, length)
    for c in range(c_all):
        for a1 in range(kh1):
            for a0 in range(sh):
                for b1 in range(kw1):
                    for b0 in range(sw):
                        src, dst = runs[c, a0, b0], rows[c, a1, a0, b1, b0]
                        start = U(a1 * wq + b1)      # one contiguous run
                        for t in range(U(length)):
                            dst[t] = src[start + t]
                        for i in range(h_out):
                            _zero_pad(dst, U(i * wq), U(0), U(w_out), U(wq), zero)


@njit(cache=True, nogil=True, fastmath=config.FASTMATH)
def fold_into_image(cols, img, pt, pl, wq):
    """img (C, H, W) = the input gradient whose phases (sh, sw, Hq, Wq) are the sums of
    the column gradients ``cols`` (C, KH/sh, sh, KW/sw, sw, H_out*Wq) over the kernel
    offsets (a1, b1) (:func:`fold_phases`), merged into the image (:func:`merge_phases`)
    one channel at a time, its phases in a buffer that stays in cache."""
    c_all, kh1, sh, kw1, sw, span = cols.shape
    hq = span // wq + kh1
    phases = np.empty((1, sh, sw, hq, wq), img.dtype)
    flat = phases.reshape(1, sh, sw, hq * wq)
    for c in range(c_all):
        fold_phases(cols[c:c + 1], flat, wq)
        merge_phases(phases, img[c:c + 1], pt, pl)


@njit(cache=True, nogil=True, fastmath=config.FASTMATH)
def merge_phases(phases, img, pt, pl):
    """img[c, y, x] = phases[c, (y + pt) % sh, (x + pl) % sw, (y + pt) // sh,
    (x + pl) // sw]: the inverse of :func:`split_phases` on the image's pixels (zero
    past the phases' reach: no output reads them)."""
    c_all, sh, sw, hq, wq = phases.shape
    _, h, w = img.shape
    zero = img.dtype.type(0)
    rows, cols = min(h, hq * sh - pt), max(0, min(w, wq * sw - pl))
    for c in range(c_all):
        for y in range(rows, h):
            _zero_pad(img[c, y], U(0), U(w), U(w), U(w), zero)
        for y in range(rows):
            u, a0 = (y + pt) // sh, (y + pt) % sh
            line = img[c, y]
            _zero_pad(line, U(0), U(0), U(cols), U(w), zero)
            if sw == 2:     # both phases in one pass, pixel pairs (a vectorised loop)
                even, odd = phases[c, a0, pl % 2, u], phases[c, a0, (pl + 1) % 2, u]
                d0, d1 = pl // 2, (pl + 1) // 2
                pairs = max(0, min(w // 2, wq - d1))
                for t in range(U(pairs)):
                    line[U(2) * t] = even[U(d0) + t]
                    line[U(2) * t + U(1)] = odd[U(d1) + t]
                for x in range(2 * pairs, cols):
                    line[x] = phases[c, a0, (x + pl) % 2, u, (x + pl) // 2]
                continue
            for b0 in range(sw):
                src = phases[c, a0, b0, u]
                # pixels x = sw v + b0 - pl, for v with 0 <= x < w
                v_lo, v_hi = valid_range(wq, b0 - pl, sw, w)
                first, step = U(sw * v_lo + b0 - pl), U(sw)
                for t in range(U(v_hi - v_lo)):
                    line[first + t * step] = src[U(v_lo) + t]


@njit(cache=True, nogil=True, fastmath=config.FASTMATH)
def fold_phases(cols, phases, wq):
    """phases (C, sh, sw, Hq*Wq) = the sum over kernel offsets (a1, b1) of the column
    gradients cols (C, KH/sh, sh, KW/sw, sw, span) of taps (sh a1 + a0, sw b1 + b0),
    each run added at offset a1 Wq + b1 of its phase (grid width ``wq``)."""
    c_all, kh1, sh, kw1, sw, span = cols.shape
    plane = phases.shape[3]
    zero = phases.dtype.type(0)
    for c in range(c_all):
        for a0 in range(sh):
            for b0 in range(sw):
                dst = phases[c, a0, b0]
                if kh1 == 2 and kw1 == 2 and span > wq + 1:
                    _fold_four(cols[c, 0, a0, 0, b0], cols[c, 0, a0, 1, b0],
                               cols[c, 1, a0, 0, b0], cols[c, 1, a0, 1, b0], dst, wq)
                    continue
                for t in range(U(plane)):
                    dst[t] = zero
                for a1 in range(kh1):
                    for b1 in range(kw1):
                        src = cols[c, a1, a0, b1, b0]
                        base = U(a1 * wq + b1)
                        for t in range(U(span)):
                            dst[base + t] += src[t]


@njit(cache=True, nogil=True, fastmath=config.FASTMATH, inline="always")
def _fold_four(s00, s01, s10, s11, dst, wq):
    """:func:`fold_phases` of one phase for 2 x 2 kernel offsets (the 4x4 kernel at
    stride 2): where all four runs reach, one pass adding them (no zeroing, no
    read-modify-write per run); the few positions at the ends term by term."""
    span, plane = s00.shape[0], dst.shape[0]
    for p in range(wq + 1):
        dst[p] = _fold_term(s00, p) + _fold_term(s01, p - 1) + _fold_term(s10, p - wq)
    for t in range(U(span - wq - 1)):
        p = U(wq + 1) + t
        dst[p] = s00[p] + s01[p - U(1)] + s10[p - U(wq)] + s11[t]
    for p in range(span, plane):
        dst[p] = (_fold_term(s00, p) + _fold_term(s01, p - 1) + _fold_term(s10, p - wq)
                  + _fold_term(s11, p - wq - 1))


@njit(inline="always")
def _fold_term(src, i):
    """src[i] where 0 <= i < len(src), else zero."""
    return src[i] if 0 <= i < src.shape[0] else src.dtype.type(0)


@njit(cache=True, nogil=True, fastmath=config.FASTMATH)
def channel_sums(img, out):
    """out[c] = the sum of img[c] (C, H, W) in float64."""
    c_all, h, w = img.shape
    for c in range(c_all):
        s = 0.0
        for i in range(h):
            line = img[c, i]
            for j in range(U(w)):
                s += np.float64(line[j])
        out[c] = s


@njit(cache=True, nogil=True, fastmath=config.FASTMATH)
def copy_columns(src, dst, w):
    """dst[c, i, :w] = src[c, i, :w] (both (C, H, W or more)): an image onto the output
    grid (w = W, the grid's other columns left as they are) or off it."""
    c_all, h = dst.shape[0], dst.shape[1]
    for c in range(c_all):
        for i in range(h):
            line, row = src[c, i], dst[c, i]
            for j in range(U(w)):
                row[j] = line[j]
