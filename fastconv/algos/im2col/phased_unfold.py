"""The NCHW unfold of a band of output rows through its column phases (strided layers).

At column stride s, tap b of output column j reads input column j*s + b*r_w - p_left =
s*(j + k) + q (q = (b*r_w - p_left) mod s, k its floor quotient): entry j + k of the
row's phase q, the columns q, q + s, q + 2s, .... ``unfold_phased`` first splits the
input rows the band reads into their phases (one strided pass over them), then copies
every column row from a phase as contiguous runs, where the plain unfold
(``unfold._im2col_nchw``) gathers every s-th element once per tap. It goes channel by
channel, so the phases stay in the L1 cache. One panel on one core, float32, best of
10 rounds of 20: the stride-2 layer's (x (16, 64, 56, 56), 3x3, stride 2, padding 1)
28 output rows in 126 against 306 us, the stem's (x (8, 3, 224, 224), 7x7, stride 2,
padding 3) 14 rows in 25 against 64 us.

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

from numba import njit

from .._common import U


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
def unfold_phased(x, cols, phases, n, i0, wo, sh, sw, pt, pl, rh, rw, kh, kw):
    """x (N, C, H, W) -> cols (1, C*KH*KW, band*Wo) for image n and output rows i0..,
    as ``unfold._im2col_nchw`` (zero outside), through ``phases``, a scratch array of at
    least ``phase_size`` elements: channel by channel, the band's source rows split into
    their column phases, zero-padded (small enough to stay in the L1 cache), then the
    channel's KH*KW column rows copied from them as runs of plain copies."""
    _, c_all, h, wd = x.shape
    length = cols.shape[2]
    band = length // wo
    rows, left, width = _phase_geometry(band, kh, kw, sh, sw, pl, rh, rw, wo)
    r0 = i0 * sh - pt
    ph = phases[:rows * sw * width].reshape((rows, sw, width))
    flat = ph.reshape(ph.size)
    step = U(sh * sw * width)
    zero = cols.dtype.type(0)
    full = min(wd // sw, width - left)  # whole groups of sw input columns that are read
    for c in range(c_all):
        for r in range(rows):
            src = r0 + r
            dst = ph[r]
            if src < 0 or src >= h:
                dst[:, :] = zero
                continue
            dst[:, :left] = zero
            dst[:, left + full:] = zero
            line = x[n, c, src]
            if sw == 2:                 # two phases in one pass (vectorises)
                d0, d1 = dst[0, left:], dst[1, left:]
                for m in range(full):
                    d0[m] = line[2 * m]
                    d1[m] = line[2 * m + 1]
            else:
                for m in range(full):
                    for q in range(sw):
                        dst[q, left + m] = line[m * sw + q]
            if left + full < width:     # the last, partial group
                for q in range(wd - full * sw):
                    dst[q, left + full] = line[full * sw + q]
        for t in range(kh * kw):
            a, b = t // kw, t % kw
            dst = cols[0, c * kh * kw + t]
            off = b * rw - pl
            q = off % sw
            base = U((a * rh * sw + q) * width + (off - q) // sw + left)
            for ii in range(band):
                s0 = base + U(ii) * step
                d0 = U(ii * wo)
                for j in range(U(wo)):
                    dst[d0 + j] = flat[s0 + j]
