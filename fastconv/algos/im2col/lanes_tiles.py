"""The direct lanes kernel's register tiles (``direct_lanes``): inlined numba functions
that accumulate a group of output pixels' blocks of output channels in vector registers
over a table of taps, and write them out.

A tile runs the taps t_lo <= t < t_hi of a flat table ``toff`` of input offsets (tap t
reads input x0 + toff[t] for the group's pixel 0, and the weight's lanes at w0 + t *
lanes); the group's other pixels read at fixed offsets from pixel 0 (``_offsets``). The
tiles: 4 or 8 pixels of one block (``_group4``, ``_group8``), 8 or 4 pixels of two
blocks sharing each input load (``_group8x2`` with AVX-512's 32 registers,
``_group4x2`` with AVX2's 16), and two groups of 8 pixels alike of one block sharing
each weight load (``_group16``); a pixel whose kernel reaches into the padding runs
alone over its valid columns (``_edge_pixel``). ``_write`` stores a group: a vector a
pixel in NHWC, runs of pixels a channel (a transpose in registers) in NCHW.
"""

from __future__ import annotations

from numba import njit

from ... import _lanes
from .._common import U
from .lanes_plan import PIXELS


@njit(inline="always")
def _put(fo, o, osd, v, m, nl, stream):
    """fo[o + k*osd] = lane k of v for k < m: one vector store where the lanes are
    contiguous and all kept (past the caches with ``stream``), else one store per
    lane."""
    if osd == 1 and m == nl:
        _lanes.put(fo, o, v, stream)
    else:
        for k in range(m):
            fo[o + U(k) * osd] = _lanes.lane(v, k)


@njit(inline="always")
def _next(col, off, k, wrap, cstep, back):
    """The pixel after one at column ``col`` of its output row and input offset ``off``
    (from a group's pixel 0): its column and offset, a step of cstep along the row or,
    past the row's last column, ``back`` to the next row's first. k > 0 real pixels
    remain from this one on (none: offset 0, pixel 0's)."""
    if k <= 1:
        return col, 0
    if col + 1 == wrap:
        return 0, off + back
    return col + 1, off + cstep


@njit(inline="always")
def _pixel_base(x_base, f, wrap, rstep, cstep):
    """The input offset of pixel f's tap (0, 0, 0), pixels numbered along output rows of
    ``wrap`` columns, rstep / cstep input elements apart a row / a column, from pixel 0's
    at x_base."""
    return x_base + (f // wrap) * rstep + (f % wrap) * cstep


@njit(inline="always")
def _offsets(f0, k, wrap, rstep, cstep):
    """The input offsets of pixels f0 .. f0 + 7 of a group of k from pixel f0's, as an
    8-tuple (uint64: a step back to the next row's first column wraps around, and so
    does the sum); beyond the k real pixels 0, pixel f0's own. Pixels are numbered along
    output rows of ``wrap`` columns, rstep / cstep input elements apart a row / a column.
    Stepped pixel to pixel: one division a group (a division a pixel cost LeNet's
    6 -> 16 layer about a fifth of its time)."""
    back = rstep - (wrap - 1) * cstep
    c1, d1 = _next(f0 % wrap, 0, k, wrap, cstep, back)
    c2, d2 = _next(c1, d1, k - 1, wrap, cstep, back)
    c3, d3 = _next(c2, d2, k - 2, wrap, cstep, back)
    c4, d4 = _next(c3, d3, k - 3, wrap, cstep, back)
    c5, d5 = _next(c4, d4, k - 4, wrap, cstep, back)
    c6, d6 = _next(c5, d5, k - 5, wrap, cstep, back)
    _, d7 = _next(c6, d6, k - 6, wrap, cstep, back)
    return U(0), U(d1), U(d2), U(d3), U(d4), U(d5), U(d6), U(d7)


@njit(inline="always")
def _edge_pixel(xf, fw, v, xrow, wrow, taps, cols, nl):
    """v + one pixel's sums over the kernel columns b_lo <= b < b_hi inside the image
    (cols = (col0, r_w, s_xw, b_lo, b_hi): its kernel reaches into the left or right
    padding): xrow, wrow the offsets of the pixel's input row (column 0) and of the
    weight's kernel row. Four accumulators, taps in turn, for four chains of
    multiply-adds at once."""
    nu, su, nv, sv, bv = taps
    col0, rw, xsw, b_lo, b_hi = cols
    if bv > 0:                # the columns on the inner level, bv taps each
        u_lo, u_hi, v_lo, v_hi = 0, nu, b_lo * bv, b_hi * bv
    else:                     # one column per outer step
        u_lo, u_hi, v_lo, v_hi = b_lo, b_hi, 0, nv
    run = v_hi - v_lo
    q4 = U(run - run % 4)
    usv = U(sv)
    e1, e2, e3 = _lanes.zeros(fw), _lanes.zeros(fw), _lanes.zeros(fw)
    for u in range(u_lo, u_hi):
        xo = U(xrow + (col0 + b_lo * rw) * xsw + (u - u_lo) * su)
        wq = wrow + U((u * nv + v_lo) * nl)
        for q in range(U(0), q4, U(4)):
            x, w = xo + q * usv, wq + q * U(nl)
            v = _lanes.fma(v, xf[x], _lanes.load(fw, w))
            e1 = _lanes.fma(e1, xf[x + usv], _lanes.load(fw, w + U(nl)))
            e2 = _lanes.fma(e2, xf[x + U(2) * usv], _lanes.load(fw, w + U(2 * nl)))
            e3 = _lanes.fma(e3, xf[x + U(3) * usv], _lanes.load(fw, w + U(3 * nl)))
        for q in range(q4, U(run)):
            v = _lanes.fma(v, xf[xo + q * usv], _lanes.load(fw, wq + q * U(nl)))
    return _lanes.add(_lanes.add(v, e1), _lanes.add(e2, e3))


@njit(inline="always")
def _group4(xf, fw, v0, rows, offs, nl):
    """A group of at most 4 pixels (a row's last): v0 + their sums in 4 accumulators,
    pixel 0's taps repeated beyond the k real ones. rows = (x0, toff, t_lo, t_hi, w0,
    k): the taps t_lo <= t < t_hi, tap t reading input x0 + toff[t] (pixel 0; x0 the
    offset of its tap (0, 0, 0), outside the image when t_lo > 0) and weight
    w0 + t * lanes; offs: the pixels' input offsets from pixel 0's (``_offsets``)."""
    x0, toff, t_lo, t_hi, w0, k = rows
    o1, o2, o3 = offs[1], offs[2], offs[3]
    v1, v2, v3 = v0, v0, v0
    for t in range(U(t_lo), U(t_hi)):
        wv = _lanes.load(fw, U(w0) + t * U(nl))
        xq = U(x0 + toff[t])
        v0 = _lanes.fma(v0, xf[xq], wv)
        v1 = _lanes.fma(v1, xf[xq + o1], wv)
        v2 = _lanes.fma(v2, xf[xq + o2], wv)
        v3 = _lanes.fma(v3, xf[xq + o3], wv)
    return v0, v1, v2, v3


@njit(inline="always")
def _write(fo, o, vs, k, m, osd, osw, nl, stream):
    """A group's registers vs (4 or 8, one per pixel) into out at o: pixels p < k,
    lanes < m; osd, osw the output's channel and column strides; stream: whole
    vectors past the caches (``_put``)."""
    if osw == 1 and osd > 1 and k == len(vs) and m == nl:
        _lanes.store_columns(fo, o, U(osd), vs)      # NCHW: runs of pixels
    else:
        for p, v in enumerate(vs):
            if p < k:
                _put(fo, o + U(p) * U(osw), U(osd), v, m, nl, stream)


@njit(inline="always")
def _group8(xf, fw, v0, rows, offs, nl):
    """A group of k <= 8 pixels at input offsets offs from pixel 0's (pixel 0's taps
    repeated beyond the real ones, ``_offsets``): v0 + their sums in 8 accumulators;
    rows as ``_group4``'s."""
    x0, toff, t_lo, t_hi, w0, k = rows
    _, o1, o2, o3, o4, o5, o6, o7 = offs
    v1, v2, v3, v4, v5, v6, v7 = v0, v0, v0, v0, v0, v0, v0
    for t in range(U(t_lo), U(t_hi)):
        wv = _lanes.load(fw, U(w0) + t * U(nl))
        xq = U(x0 + toff[t])
        v0 = _lanes.fma(v0, xf[xq], wv)
        v1 = _lanes.fma(v1, xf[xq + o1], wv)
        v2 = _lanes.fma(v2, xf[xq + o2], wv)
        v3 = _lanes.fma(v3, xf[xq + o3], wv)
        v4 = _lanes.fma(v4, xf[xq + o4], wv)
        v5 = _lanes.fma(v5, xf[xq + o5], wv)
        v6 = _lanes.fma(v6, xf[xq + o6], wv)
        v7 = _lanes.fma(v7, xf[xq + o7], wv)
    return v0, v1, v2, v3, v4, v5, v6, v7


@njit(inline="always")
def _group8x2(xf, fw, b0, b1, rows, offs, wlen, nl, fo, outs):
    """``_group8`` for two blocks of output channels at once (their weights wlen apart),
    written out by ``_write``: each input value loaded once feeds 2 multiply-adds, 16
    accumulators. outs = (o, o_1, m_0, m_1, s_d, s_w, stream): each block's output
    offset and lanes kept, the output's channel and column strides, ``_write``'s
    stream."""
    x0, toff, t_lo, t_hi, w0, k = rows
    _, o1, o2, o3, o4, o5, o6, o7 = offs
    p0, p1, p2, p3, p4, p5, p6, p7 = b0, b0, b0, b0, b0, b0, b0, b0
    q0, q1, q2, q3, q4, q5, q6, q7 = b1, b1, b1, b1, b1, b1, b1, b1
    for t in range(U(t_lo), U(t_hi)):
        w0v = _lanes.load(fw, U(w0) + t * U(nl))
        w1v = _lanes.load(fw, U(w0) + U(wlen) + t * U(nl))
        xq = U(x0 + toff[t])
        s = xf[xq]
        p0, q0 = _lanes.fma(p0, s, w0v), _lanes.fma(q0, s, w1v)
        s = xf[xq + o1]
        p1, q1 = _lanes.fma(p1, s, w0v), _lanes.fma(q1, s, w1v)
        s = xf[xq + o2]
        p2, q2 = _lanes.fma(p2, s, w0v), _lanes.fma(q2, s, w1v)
        s = xf[xq + o3]
        p3, q3 = _lanes.fma(p3, s, w0v), _lanes.fma(q3, s, w1v)
        s = xf[xq + o4]
        p4, q4 = _lanes.fma(p4, s, w0v), _lanes.fma(q4, s, w1v)
        s = xf[xq + o5]
        p5, q5 = _lanes.fma(p5, s, w0v), _lanes.fma(q5, s, w1v)
        s = xf[xq + o6]
        p6, q6 = _lanes.fma(p6, s, w0v), _lanes.fma(q6, s, w1v)
        s = xf[xq + o7]
        p7, q7 = _lanes.fma(p7, s, w0v), _lanes.fma(q7, s, w1v)
    o, o_1, m0, m1, osd, osw, stream = outs
    _write(fo, o, (p0, p1, p2, p3, p4, p5, p6, p7), k, m0, osd, osw, nl, stream)
    _write(fo, o_1, (q0, q1, q2, q3, q4, q5, q6, q7), k, m1, osd, osw, nl, stream)


@njit(inline="always")
def _group4x2(xf, fw, b0, b1, rows, offs, wlen, nl, fo, outs):
    """``_group4`` for two blocks of output channels at once (their weights wlen apart):
    each input value loaded once feeds 2 multiply-adds, 8 accumulators (``_group8x2``'s
    16 do not fit in 256-bit AVX's 16 registers), written out as ``_group8x2``'s."""
    x0, toff, t_lo, t_hi, w0, k = rows
    o1, o2, o3 = offs[1], offs[2], offs[3]
    p0, p1, p2, p3 = b0, b0, b0, b0
    q0, q1, q2, q3 = b1, b1, b1, b1
    for t in range(U(t_lo), U(t_hi)):
        w0v = _lanes.load(fw, U(w0) + t * U(nl))
        w1v = _lanes.load(fw, U(w0) + U(wlen) + t * U(nl))
        xq = U(x0 + toff[t])
        s = xf[xq]
        p0, q0 = _lanes.fma(p0, s, w0v), _lanes.fma(q0, s, w1v)
        s = xf[xq + o1]
        p1, q1 = _lanes.fma(p1, s, w0v), _lanes.fma(q1, s, w1v)
        s = xf[xq + o2]
        p2, q2 = _lanes.fma(p2, s, w0v), _lanes.fma(q2, s, w1v)
        s = xf[xq + o3]
        p3, q3 = _lanes.fma(p3, s, w0v), _lanes.fma(q3, s, w1v)
    o, o_1, m0, m1, osd, osw, stream = outs
    _write(fo, o, (p0, p1, p2, p3), k, m0, osd, osw, nl, stream)
    _write(fo, o_1, (q0, q1, q2, q3), k, m1, osd, osw, nl, stream)


@njit(inline="always")
def _group16(xf, fw, v0, rows, offs, x_b, nl, fo, outs):
    """Two groups of 8 pixels with the same offsets between their pixels (along one
    output row, or two rows' same columns) for one block of output channels:
    each load of the weight's lanes feeds 16 multiply-adds in 16 accumulators and the
    two groups share their 8 pixel offsets (16 distinct ones spill out of the general
    registers). rows as ``_group4``'s for the first group (k = 8), whose pixel 0 reads
    input x0 + toff[t], the second's x_b + toff[t]. Written out by ``_write``: outs =
    (o, o_b, m, s_d, s_w, stream), each group's output offset, the lanes kept, the
    output's channel and column strides, ``_write``'s stream."""
    x0, toff, t_lo, t_hi, w0, _ = rows
    _, o1, o2, o3, o4, o5, o6, o7 = offs
    p0, p1, p2, p3, p4, p5, p6, p7 = v0, v0, v0, v0, v0, v0, v0, v0
    q0, q1, q2, q3, q4, q5, q6, q7 = v0, v0, v0, v0, v0, v0, v0, v0
    for t in range(U(t_lo), U(t_hi)):
        wv = _lanes.load(fw, U(w0) + t * U(nl))
        xq, xr = U(x0 + toff[t]), U(x_b + toff[t])
        p0, q0 = _lanes.fma(p0, xf[xq], wv), _lanes.fma(q0, xf[xr], wv)
        p1, q1 = _lanes.fma(p1, xf[xq + o1], wv), _lanes.fma(q1, xf[xr + o1], wv)
        p2, q2 = _lanes.fma(p2, xf[xq + o2], wv), _lanes.fma(q2, xf[xr + o2], wv)
        p3, q3 = _lanes.fma(p3, xf[xq + o3], wv), _lanes.fma(q3, xf[xr + o3], wv)
        p4, q4 = _lanes.fma(p4, xf[xq + o4], wv), _lanes.fma(q4, xf[xr + o4], wv)
        p5, q5 = _lanes.fma(p5, xf[xq + o5], wv), _lanes.fma(q5, xf[xr + o5], wv)
        p6, q6 = _lanes.fma(p6, xf[xq + o6], wv), _lanes.fma(q6, xf[xr + o6], wv)
        p7, q7 = _lanes.fma(p7, xf[xq + o7], wv), _lanes.fma(q7, xf[xr + o7], wv)
    o, o_b, m, osd, osw, stream = outs
    _write(fo, o, (p0, p1, p2, p3, p4, p5, p6, p7), PIXELS, m, osd, osw, nl, stream)
    _write(fo, o_b, (q0, q1, q2, q3, q4, q5, q6, q7), PIXELS, m, osd, osw, nl, stream)
