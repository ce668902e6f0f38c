"""The output-gradient transform of F(4x4, 3x3)'s weight gradient (``grad_w``).

For a 4x4 block g of grad_y, the adjoint of y = A^T [U * V] A needs A g A^T (6x6), with
A = (A^T)^T of ``f4._output_transform4``: A applied to four values (g0, g1, g2, g3) is

    (g0, g0 + g1 + g2 + g3, g0 - g1 + g2 - g3, g0 + 2 g1 + 4 g2 + 8 g3,
     g0 - 2 g1 + 4 g2 - 8 g3, g3).

Planes as in ``f4``: 36 flat planes, entry e = 6*a + b of every tile in row e.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ... import config
from .._common import U, scalar_only
from .f4 import _at, _put6, _zero6
from .tasks import _scalars, _task_count, _task_plane


@njit(inline="always")
def _a6(g0, g1, g2, g3, two, four, eight):
    """A g for F(4x4, 3x3): six values from a 4-point column or row."""
    even = g0 + g2
    odd = g1 + g3
    even4 = g0 + four * g2
    odd4 = two * g1 + eight * g3
    return g0, even + odd, even - odd, even4 + odd4, even4 - odd4, g3


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _grad_transform4(gy, p, dg, cols, d0, r0, r1, th, tw):
    """gy (N, C_out, Ho, Wo) -> p (36, Dg*cols + pad): the transformed output-gradient
    tiles of F(4x4, 3x3), p[6*a + b, d*cols + (r - r0)*tw + j] = (A g A^T)[a, b] for the
    4x4 block g of grad_y channel d0 + d at tile (r, j), zero beyond Ho, Wo.

    One task per (channel, image) of the chunk, as ``f4._input_transform4``: each
    grad_y row i of the task's tile rows is transformed along the row once, straight
    from grad_y (A, six values per tile; the last tile's columns beyond Wo, and rows
    beyond Ho, read as zero), into ``rows[i % 4, b]`` at tile row i // 4; A down the
    columns then runs over all the task's tile rows in one contiguous loop per entry b
    (0.55x the time of the same steps tile row by tile row on the bench layers, whose
    loops run over a tile row's 4 to 14 tiles only; reading the rows in place rather
    than through a copy split into column phases: 0.83x-0.94x)."""
    _, _, ho, wo = gy.shape
    two, four, eight = _scalars(gy, 2, 4, 8)
    zero = gy.dtype.type(0)
    full = min(tw, wo // 4)  # tiles whose four columns all lie inside a row
    for task in prange(_task_count(dg, r0, r1, th)):
        d, n, ra, rb, plane = _task_plane(gy, task, d0, r0, r1, th)
        nr = rb - ra
        rows = np.empty((4, 6, nr * tw), dtype=gy.dtype)
        top = 4 * (ra - n * th)
        for rho in range(4 * nr):  # A along each grad_y row, once, straight from it
            dst = rows[rho % 4]
            base = U((rho // 4) * tw)
            s0, s1, s2, s3, s4, s5 = dst[0], dst[1], dst[2], dst[3], dst[4], dst[5]
            if top + rho >= ho:
                _zero6(s0, s1, s2, s3, s4, s5, base, U(tw), zero)
                continue
            src = plane[top + rho]
            end = U(src.size)
            for j in range(U(full)):  # tiles wholly inside the row
                q = U(4) * j
                if scalar_only(q + U(3), end):
                    break
                o = _a6(src[q], src[q + U(1)], src[q + U(2)], src[q + U(3)], two, four,
                        eight)
                _put6(o, s0, s1, s2, s3, s4, s5, base + j)
            for j in range(full, tw):  # the last tile, zero beyond Wo
                q = 4 * j
                o = _a6(_at(src, q, wo), _at(src, q + 1, wo), _at(src, q + 2, wo),
                        _at(src, q + 3, wo), two, four, eight)
                _put6(o, s0, s1, s2, s3, s4, s5, base + U(j))
        k0 = U(d * cols + (ra - r0) * tw)
        for b in range(6):  # A down the columns, all tile rows at once
            e0, e1, e2, e3 = rows[0, b], rows[1, b], rows[2, b], rows[3, b]
            o0, o1, o2 = p[b], p[6 + b], p[12 + b]
            o3, o4, o5 = p[18 + b], p[24 + b], p[30 + b]
            for k in range(U(nr * tw)):
                o = _a6(e0[k], e1[k], e2[k], e3[k], two, four, eight)
                _put6(o, o0, o1, o2, o3, o4, o5, k0 + k)


#: G^T (3 x 6) of F(4x4, 3x3) (``f4._g6``), float64.
GT4 = np.array([[1 / 4, -1 / 6, -1 / 6, 1 / 24, 1 / 24, 0],
                [0, -1 / 6, 1 / 6, 1 / 12, -1 / 12, 0],
                [0, -1 / 6, -1 / 6, 1 / 6, 1 / 6, 1]])
