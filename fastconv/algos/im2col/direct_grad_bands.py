"""The register bands of the direct weight gradient (``direct_grad._grad_w_parts``): a
group of up to 8 taps (``direct_grad.TAPS``) of one block of output channels in 8 registers
(``_fma8``), two blocks at once each input value loaded once for both (``_pair_band``,
``_fma8x2``: 16 registers), or one block's 16 taps with AVX-512's 32 registers
(``_single16_band``), summed over a band of output rows.
"""

from __future__ import annotations

from numba import njit

from ... import _lanes
from .._common import U


@njit(inline="always")
def _taps8(toff, t0, k):
    """The input offsets of the taps t0 .. t0 + 7 (of k real ones: tap t0's beyond)."""
    t = toff[t0]
    return (U(t), U(toff[t0 + 1] if k > 1 else t), U(toff[t0 + 2] if k > 2 else t),
            U(toff[t0 + 3] if k > 3 else t), U(toff[t0 + 4] if k > 4 else t),
            U(toff[t0 + 5] if k > 5 else t), U(toff[t0 + 6] if k > 6 else t),
            U(toff[t0 + 7] if k > 7 else t))


@njit(inline="always")
def _sums8(part, a0, k):
    """The 8 registers of sums of a group of k taps starting at a0 (tap 0's beyond)."""
    nl = _lanes.count(part)
    return (_lanes.load(part, a0), _lanes.load(part, a0 + U(nl if k > 1 else 0)),
            _lanes.load(part, a0 + U(2 * nl if k > 2 else 0)),
            _lanes.load(part, a0 + U(3 * nl if k > 3 else 0)),
            _lanes.load(part, a0 + U(4 * nl if k > 4 else 0)),
            _lanes.load(part, a0 + U(5 * nl if k > 5 else 0)),
            _lanes.load(part, a0 + U(6 * nl if k > 6 else 0)),
            _lanes.load(part, a0 + U(7 * nl if k > 7 else 0)))


@njit(inline="always")
def _fma8(v, xp, xb, o, gv):
    """v[p] + xp[xb + o[p]] * gv for the 8 registers p (one load of gv for 8)."""
    f = _lanes.fma
    return (f(v[0], xp[xb + o[0]], gv), f(v[1], xp[xb + o[1]], gv),
            f(v[2], xp[xb + o[2]], gv), f(v[3], xp[xb + o[3]], gv),
            f(v[4], xp[xb + o[4]], gv), f(v[5], xp[xb + o[5]], gv),
            f(v[6], xp[xb + o[6]], gv), f(v[7], xp[xb + o[7]], gv))


@njit(cache=True)
def _pair_band(part, a0, a1, k, xp, gf, o, rows, wo, step, d_all):
    """The sums of a group of k taps (offsets o) for a pair of blocks, at a0 and a1 in
    part, over a band of output rows: rows = (the image's first input element, input
    elements per output row, the image's first grad_y element of the pair, grad_y
    elements per output row, first row, row after the last). A function of its own, not
    inlined: numba's parallel-loop analysis fails on the tuples of registers."""
    x0, xrow, g0, grow, i_lo, i_hi = rows
    nl = _lanes.count(part)
    v, u = _sums8(part, a0, k), _sums8(part, a1, k)
    for i in range(i_lo, i_hi):
        xb = U(x0 + i * xrow)
        gb = U(g0 + i * grow)
        for _j in range(wo):
            v, u = _fma8x2(v, u, xp, xb, o, _lanes.load(gf, gb), _lanes.load(gf, gb + U(nl)))
            xb += step
            gb += U(d_all)
    for p in range(k):
        _lanes.store(part, a0 + U(p * nl), v[p])
        _lanes.store(part, a1 + U(p * nl), u[p])


@njit(cache=True)
def _single16_band(part, a0, xp, gf, o, o2, rows, wo, step, d_all):
    """The sums of 16 taps (offsets o, then o2) for one block at a0 in part, over a band
    of output rows (``_pair_band``'s rows): each load of grad_y's lanes feeds 16
    multiply-adds. A function of its own, as ``_pair_band``."""
    x0, xrow, g0, grow, i_lo, i_hi = rows
    nl = _lanes.count(part)
    v, u = _sums8(part, a0, 8), _sums8(part, a0 + U(8 * nl), 8)
    for i in range(i_lo, i_hi):
        xb = U(x0 + i * xrow)
        gb = U(g0 + i * grow)
        for _j in range(wo):
            gv = _lanes.load(gf, gb)
            v = _fma8(v, xp, xb, o, gv)
            u = _fma8(u, xp, xb, o2, gv)
            xb += step
            gb += U(d_all)
    for p in range(8):
        _lanes.store(part, a0 + U(p * nl), v[p])
        _lanes.store(part, a0 + U((8 + p) * nl), u[p])


@njit(inline="always")
def _fma8x2(v, u, xp, xb, o, g0, g1):
    """``_fma8`` for two blocks of output channels: each input value loaded once for
    both (16 chains of multiply-adds)."""
    f = _lanes.fma
    s0, s1, s2, s3 = xp[xb + o[0]], xp[xb + o[1]], xp[xb + o[2]], xp[xb + o[3]]
    s4, s5, s6, s7 = xp[xb + o[4]], xp[xb + o[5]], xp[xb + o[6]], xp[xb + o[7]]
    return ((f(v[0], s0, g0), f(v[1], s1, g0), f(v[2], s2, g0), f(v[3], s3, g0),
             f(v[4], s4, g0), f(v[5], s5, g0), f(v[6], s6, g0), f(v[7], s7, g0)),
            (f(u[0], s0, g1), f(u[1], s1, g1), f(u[2], s2, g1), f(u[3], s3, g1),
             f(u[4], s4, g1), f(u[5], s5, g1), f(u[6], s6, g1), f(u[7], s7, g1)))
