"""Rows of an NCHW array staged channels last, and back: for kernels that compute on
vectors of channels (the NHWC Winograd tiles, the NHWC register tiles) run on NCHW data.

A task copies the input rows it reads into a channels-last buffer of its own, zero
padding included (``stage_in``), computes its output rows channels last into a second
buffer, and writes them back to the output planes (``stage_out``); both buffers are
small enough to stay in the core's cache. Where the arrays are C-contiguous the copies
move a vector of columns of 8 channels (or 8 columns of a vector of channels) at a time,
transposed in registers (``_lanes.store_columns``), the columns a row leaves over (the
whole of a row shorter than a vector) as one masked run (``_lanes_part``); the rest one
value at a time.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .. import _lanes
from .._lanes_part import load_first, store_columns_part
from ._common import U


def raveled(a: np.ndarray) -> np.ndarray:
    """``a`` flat where it is C-contiguous (the copies' fast path, a vector at a time),
    else an empty array of its dtype (one value at a time)."""
    return a.reshape(-1) if a.flags.c_contiguous else np.empty(0, a.dtype)


@njit(inline="always")
def stage_in(x, xf, n, top, left, rows, span, xs, o0):
    """xs[o0:] (rows, cols, C) flat: columns span = (q0, q1, cols) of it hold
    x[n, :, top + r, left + q] channels last, zero outside the image. xf: x.ravel()
    where x is C-contiguous (else empty): then runs of a vector's lanes of columns of 8
    channels are written transposed (``_lanes.store_columns``; the columns left over at
    the end as one masked run, ``_lanes_part``); the other channels (C % 8, or all
    where x is not C-contiguous) one value at a time."""
    _, c_all, h, wd = x.shape
    q0, q1, cols = span
    q_lo = min(q1, max(q0, -left))                  # [q_lo, q_hi): the image's columns
    q_hi = max(q_lo, min(q1, wd - left))
    nl = _lanes.count(xs)
    c8 = c_all - c_all % 8 if xf.size else 0
    q_vec = q_lo + (q_hi - q_lo) // nl * nl
    plane = h * wd
    r_lo, r_hi = max(0, -top), max(0, min(rows, h - top))   # the rows inside the image
    for r in range(rows):       # the padding: rows outside the image, columns at its sides
        o = o0 + r * cols * c_all
        if r < r_lo or r >= r_hi:
            xs[o + q0 * c_all:o + q1 * c_all] = 0
            continue
        xs[o + q0 * c_all:o + q_lo * c_all] = 0
        xs[o + q_hi * c_all:o + q1 * c_all] = 0
    # channels outer: each group of 8 planes is read down its rows, 8 streams at a time
    # (rows outer read a row of every plane before the next row: the staging alone of
    # the indirect stride-2 layer, 16 x 64 x 56 x 56 -> 128, 2 threads, 0.54-0.62 ->
    # 0.49-0.52 ms; the whole layer within the noise, 10.9-11.9 ms either way)
    for c0 in range(0, c8, 8):
        for r in range(r_lo, r_hi):
            o = o0 + r * cols * c_all
            src = U(((n * c_all + c0) * h + top + r) * wd + left)
            for q in range(q_lo, q_vec, nl):
                _columns_in(xf, src + U(q), plane, xs, U(o + q * c_all + c0), c_all, nl)
            if q_vec < q_hi:
                # the columns left over, masked: a 7x7 map's rows are shorter than a
                # vector (64 channels, batch 32, 2 threads: staged in 0.138 -> 0.042 ms)
                _columns_in(xf, src + U(q_vec), plane, xs, U(o + q_vec * c_all + c0),
                            c_all, q_hi - q_vec)
    for c in range(c8, c_all):
        for r in range(r_lo, r_hi):
            o = o0 + r * cols * c_all
            for q in range(q_lo, q_hi):
                xs[o + q * c_all + c] = x[n, c, top + r, left + q]


@njit(inline="always")
def _columns_in(xf, at, plane, xs, to, c_all, k):
    """k <= count columns from each of 8 planes (from xf[at], ``plane`` apart), written
    transposed at xs[to] (runs of 8 channels, C apart); masked where k < count (none
    past them read or written)."""
    vs = (_first(xf, at, k), _first(xf, at + U(plane), k),
          _first(xf, at + U(2 * plane), k), _first(xf, at + U(3 * plane), k),
          _first(xf, at + U(4 * plane), k), _first(xf, at + U(5 * plane), k),
          _first(xf, at + U(6 * plane), k), _first(xf, at + U(7 * plane), k))
    if k == _lanes.count(xs):
        _lanes.store_columns(xs, to, U(c_all), vs)
    else:
        store_columns_part(xs, to, U(c_all), vs, k, 8)


@njit(inline="always")
def _first(xf, at, k):
    """The vector of xf[at : at + k] (a whole one where k is count, else masked)."""
    return _lanes.load(xf, at) if k == _lanes.count(xf) else load_first(xf, at, k)


@njit(inline="always")
def stage_out(ys, o0, span, y, yf, n, top, rows):
    """y[n, d, top + r, q] = ys[o0 + (r * cols + q) * D + d] for r < rows and the
    columns span = (q0, q1, cols) (q0 <= q < q1 <= Wo). yf: y.ravel() where y is
    C-contiguous (else empty): then, for D a whole number of vectors, runs of 8 columns
    of a vector of channels are written transposed (``_lanes.store_columns``; the
    columns left over as one masked run, ``_lanes_part``); otherwise one value at a
    time."""
    _, d_all, ho, wo = y.shape
    q0, q1, cols = span
    nl = _lanes.count(ys)
    plane = U(ho * wo)
    if not (yf.size and d_all % nl == 0):
        for r in range(rows):
            o = o0 + r * cols * d_all
            for d in range(d_all):
                for q in range(q0, q1):
                    y[n, d, top + r, q] = ys[o + q * d_all + d]
        return
    q8 = q0 + (q1 - q0) // 8 * 8
    # the columns left over as one run: one value at a time they wrote D planes a value
    # each (one thread, 28 columns, 4 left over: 0.61 -> 0.37 ms as a run); a 7x7 map's
    # rows hold no whole run (64 -> 64 channels, batch 32, 2 threads, staged out
    # 0.098 -> 0.032 ms masked)
    for r in range(rows):
        o = o0 + r * cols * d_all
        to = U((n * d_all * ho + top + r) * wo)
        for q in range(q0, q8, 8):
            _columns_out(ys, U(o + q * d_all), d_all, yf, to + U(q), plane, 8)
        if q8 < q1:
            _columns_out(ys, U(o + q8 * d_all), d_all, yf, to + U(q8), plane, q1 - q8)


@njit(inline="always")
def _columns_out(ys, at, d_all, yf, to, plane, k):
    """k <= 8 columns of D channels (ys[at:], channels last) written to D planes (yf[to],
    ``plane`` apart), a vector of channels at a time, transposed (masked where k < 8;
    no column past the k-th read)."""
    nl = _lanes.count(ys)
    for d0 in range(0, d_all, nl):
        a = at + U(d0)
        vs = (_lanes.load(ys, a), _lanes.load(ys, a + _column(1, k, d_all)),
              _lanes.load(ys, a + _column(2, k, d_all)),
              _lanes.load(ys, a + _column(3, k, d_all)),
              _lanes.load(ys, a + _column(4, k, d_all)),
              _lanes.load(ys, a + _column(5, k, d_all)),
              _lanes.load(ys, a + _column(6, k, d_all)),
              _lanes.load(ys, a + _column(7, k, d_all)))
        if k == 8:
            _lanes.store_columns(yf, to + U(d0) * plane, plane, vs)
        else:
            store_columns_part(yf, to + U(d0) * plane, plane, vs, nl, k)


@njit(inline="always")
def _column(p, k, d_all):
    """The offset of column p of k (the last one's for p >= k) in a channels-last row."""
    return U(min(p, k - 1) * d_all)
