"""The NCHW unfold and fold of strided layers through their column phases.

At column stride s, tap b of output column j reads input column j*s + b*r_w - p_left =
s*(j + k) + q (q = (b*r_w - p_left) mod s, k its floor quotient): entry j + k of the
row's phase q, the columns q, q + s, q + 2s, .... ``unfold_phased`` first splits the
input rows the band reads into their phases (one strided pass over them), then copies
every column row from a phase as contiguous runs, where the plain unfold
(``unfold._im2col_nchw``) gathers every s-th element once per tap. It goes channel by
channel, so the phases stay in the L1 cache. One panel on one core, float32, best of
10 rounds of 20: the stride-2 layer's (x (16, 64, 56, 56), 3x3, stride 2, padding 1)
28 output rows in 126 against 306 us, the stem's (x (8, 3, 224, 224), 7x7, stride 2,
padding 3) 14 rows in 25 against 64 us. ``unfold_phased`` serves the fused forward
(``fused``); ``im2col_phased`` and its adjoint ``col2im_phased`` (column rows added into
zeroed phases as runs, the phases then added into the input rows) the backward's tiles
(``split.backward_tile``), one task per (image, channel).

Examples
--------
>>> import numpy as np
>>> x = np.arange(2 * 1 * 5 * 6, dtype=np.float32).reshape(2, 1, 5, 6)
>>> cols = np.empty((1, 9, 6), np.float32)       # 3x3 taps, 2 output rows of 3
>>> from fastconv._args import conv_args_from_shapes
>>> a = conv_args_from_shapes("t", (2, 1, 5, 6), (1, 1, 3, 3), stride=2, padding=1)
>>> phases = np.empty(phase_size(2, a), np.float32)
>>> unfold_phased(x, cols, phases, 1, 0, 3, 2, 2, 1, 1, 1, 1, 3, 3)
>>> cols[0, 4]                                   # centre tap: x[1, 0, 0::2, 0::2]
array([30., 32., 34., 42., 44., 46.], dtype=float32)
>>> cols[0, 0]                                   # top-left tap: padding, then x[1, 0, 1, 1::2]
array([ 0.,  0.,  0.,  0., 37., 39.], dtype=float32)
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ... import config
from .._common import U, serial_twin


@njit(inline="always")
def _phase_geometry(band, kh, kw, sh, sw, pl, rh, rw, wo):
    """(rows, left, width): the band's source rows (its first at (i0*sh - pt), padding
    rows included), the zero columns left of each phase row, and a phase row's length
    (every tap reads Wo entries of one phase row from column k + left)."""
    rows = (band - 1) * sh + (kh - 1) * rh + 1
    left = -(-pl // sw)
    width = wo + ((kw - 1) * rw - pl) // sw + left
    return rows, left, width


def phase_size(band: int, args) -> int:
    """Elements of the phase buffer ``unfold_phased`` needs for a band of ``band``
    output rows of the conv2d record ``args`` (one channel's phases at a time)."""
    sh, sw = args.stride
    rows, _, width = _phase_geometry.py_func(band, args.kh, args.kw, sh, sw,
                                             args.padding[1][0], *args.dilation, args.w_out)
    return rows * args.stride[1] * width


@njit(inline="always")
def _phase_plan(wd, band, i0, wo, sh, sw, pt, pl, rh, rw, kh, kw):
    """(r0, rows, left, width, full): the band's first source row and ``_phase_geometry``,
    with ``full`` the whole groups of s_w input columns that are read."""
    rows, left, width = _phase_geometry(band, kh, kw, sh, sw, pl, rh, rw, wo)
    return i0 * sh - pt, rows, left, width, min(wd // sw, width - left)


@njit(inline="always")
def _split_rows(plane, ph, r0, left, full, zero):
    """ph (rows, s_w, width) = the input rows r0.. of one channel plane (H, W) split into
    their column phases after ``left`` zero columns, zero outside the image."""
    h, wd = plane.shape
    rows, sw, width = ph.shape
    for r in range(rows):
        src = r0 + r
        dst = ph[r]
        if src < 0 or src >= h:
            dst[:, :] = zero
            continue
        dst[:, :left] = zero
        dst[:, left + full:] = zero
        line = plane[src]
        if sw == 2:                 # two phases in one pass (vectorises)
            d0, d1 = dst[0, left:], dst[1, left:]
            for m in range(full):
                d0[m] = line[2 * m]
                d1[m] = line[2 * m + 1]
        elif sw == 1:               # one phase: a copy (the row lanes kernel's stride 1)
            dst[0, left:left + full] = line[:full]
        else:
            for m in range(full):
                for q in range(sw):
                    dst[q, left + m] = line[m * sw + q]
        if left + full < width:     # the last, partial group
            for q in range(wd - full * sw):
                dst[q, left + full] = line[full * sw + q]


@njit(inline="always")
def _merge_rows(plane, ph, r0, left, full):
    """The adjoint of ``_split_rows``: plane (H, W) += the phase rows ph, entries in the
    padding dropped."""
    h, wd = plane.shape
    rows, sw, width = ph.shape
    for r in range(rows):
        src = r0 + r
        if src < 0 or src >= h:
            continue
        line = plane[src]
        if sw == 2:                 # as in ``_split_rows``
            d0, d1 = ph[r, 0, left:], ph[r, 1, left:]
            for m in range(full):
                line[2 * m] += d0[m]
                line[2 * m + 1] += d1[m]
        else:
            for m in range(full):
                for q in range(sw):
                    line[m * sw + q] += ph[r, q, left + m]
        if left + full < width:
            for q in range(wd - full * sw):
                line[full * sw + q] += ph[r, q, left + full]


@njit(inline="always")
def _tap_base(t, kw, sh, sw, pl, rh, rw, left, width):
    """(entry of tap t's first value in the flat phases, entries per output row)."""
    a, b = t // kw, t % kw
    off = b * rw - pl
    q = off % sw
    return U((a * rh * sw + q) * width + (off - q) // sw + left), U(sh * sw * width)


@njit(inline="always")
def unfold_phased(x, cols, phases, n, i0, wo, sh, sw, pt, pl, rh, rw, kh, kw):
    """x (N, C, H, W) -> cols (1, C*KH*KW, band*Wo) for image n and output rows i0..,
    as ``unfold._im2col_nchw`` (zero outside), through ``phases``, a scratch array of at
    least ``phase_size`` elements: channel by channel, the band's source rows split into
    their column phases, zero-padded (small enough to stay in the L1 cache), then the
    channel's KH*KW column rows copied from them as runs of plain copies."""
    _, c_all, _, wd = x.shape
    band = cols.shape[2] // wo
    r0, rows, left, width, full = _phase_plan(wd, band, i0, wo, sh, sw, pt, pl, rh, rw, kh,
                                              kw)
    ph = phases[:rows * sw * width].reshape((rows, sw, width))
    zero = cols.dtype.type(0)
    for c in range(c_all):
        _split_rows(x[n, c], ph, r0, left, full, zero)
        _copy_taps(ph, cols[0], c, band, wo, sh, sw, pl, rh, rw, kh, kw, left, width)


@njit(inline="always")
def _copy_taps(ph, cols, c, band, wo, sh, sw, pl, rh, rw, kh, kw, left, width):
    """cols[(c*KH + a)*KW + b] = tap (a, b)'s values, read from channel c's phases."""
    flat = ph.reshape(ph.size)
    for t in range(kh * kw):
        dst = cols[c * kh * kw + t]
        base, step = _tap_base(t, kw, sh, sw, pl, rh, rw, left, width)
        for ii in range(band):
            s0 = base + U(ii) * step
            d0 = U(ii * wo)
            for j in range(U(wo)):
                dst[d0 + j] = flat[s0 + j]


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def im2col_phased(x, cols, n0, i0, wo, sh, sw, pt, pl, rh, rw, kh, kw):
    """``unfold._im2col_nchw`` through column phases: x (N, C, H, W) -> cols
    (B, C*KH*KW, band*Wo) for images n0.. and output rows i0..; one task per (image,
    channel), each with its own phases."""
    _, c_all, _, wd = x.shape
    nb, _, length = cols.shape
    band = length // wo
    r0, rows, left, width, full = _phase_plan(wd, band, i0, wo, sh, sw, pt, pl, rh, rw, kh,
                                              kw)
    zero = cols.dtype.type(0)
    for task in prange(nb * c_all):
        bi, c = task // c_all, task % c_all
        ph = np.empty((rows, sw, width), cols.dtype)
        _split_rows(x[n0 + bi, c], ph, r0, left, full, zero)
        _copy_taps(ph, cols[bi], c, band, wo, sh, sw, pl, rh, rw, kh, kw, left, width)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def col2im_phased(cols, gx, n0, i0, wo, sh, sw, pt, pl, rh, rw, kh, kw):
    """The adjoint of ``im2col_phased`` (``unfold._col2im_nchw`` through column phases):
    gx[n0 + bi, c] += fold of cols (B, C*KH*KW, band*Wo); one task per (image, channel):
    its KH*KW column rows added into zeroed phases as contiguous runs, the phases then
    added into the channel's rows."""
    _, c_all, _, wd = gx.shape
    nb, _, length = cols.shape
    band = length // wo
    r0, rows, left, width, full = _phase_plan(wd, band, i0, wo, sh, sw, pt, pl, rh, rw, kh,
                                              kw)
    for task in prange(nb * c_all):
        bi, c = task // c_all, task % c_all
        ph = np.zeros((rows, sw, width), cols.dtype)
        flat = ph.reshape(ph.size)
        for t in range(kh * kw):
            src = cols[bi, c * kh * kw + t]
            base, step = _tap_base(t, kw, sh, sw, pl, rh, rw, left, width)
            for ii in range(band):
                s0 = base + U(ii) * step
                d0 = U(ii * wo)
                for j in range(U(wo)):
                    flat[s0 + j] += src[d0 + j]
        _merge_rows(gx[n0 + bi, c], ph, r0, left, full)


#: The phased unfold and fold compiled without threads, for tiles run one per thread
#: (``split``).
im2col_phased_serial = serial_twin(im2col_phased)
col2im_phased_serial = serial_twin(col2im_phased)
