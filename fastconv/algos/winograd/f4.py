"""F(4x4, 3x3) transforms: the kernel (``_kernel_transform4``), input and output
transforms, 6x6 tiles and 4x4 output blocks (interpolation points 0, +-1, +-2 and
infinity). Planes as in ``f2``: 36 flat planes, entry e of every tile in row e.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ... import _lanes, config
from .._common import U, scalar_only
from .tasks import _scalars, _task_count, _task_plane


@njit(inline="always")
def _g6(k0, k1, k2):
    """G k for F(4x4, 3x3): G = [[1/4, 0, 0], [-1/6, -1/6, -1/6], [-1/6, 1/6, -1/6],
    [1/24, 1/12, 1/6], [1/24, -1/12, 1/6], [0, 0, 1]] (float64 arithmetic, on scalars
    or float64 vectors)."""
    sixth = 1.0 / 6.0
    even = k0 + k2
    quarter_even = 0.25 * k0 + k2  # (k0/24 + k2/6) * 6 -> 6*(1/24 k0 + 1/6 k2) = k0/4 + k2
    return (0.25 * k0, (even + k1) * -sixth, (k1 - even) * sixth,
            (quarter_even + 0.5 * k1) * sixth, (quarter_even - 0.5 * k1) * sixth, k2)


@njit(inline="always")
def _gk4(k, tmp, c):
    """tmp[6*a + b, c] = (G k G^T)[a, b] for one 3x3 kernel k, F(4x4, 3x3)'s G, computed
    in float64 (1/6 and 1/24 are not exact) and rounded once (conv3d's planes)."""
    col0 = _g6(np.float64(k[0, 0]), np.float64(k[1, 0]), np.float64(k[2, 0]))
    col1 = _g6(np.float64(k[0, 1]), np.float64(k[1, 1]), np.float64(k[2, 1]))
    col2 = _g6(np.float64(k[0, 2]), np.float64(k[1, 2]), np.float64(k[2, 2]))
    for a in range(6):
        row = _g6(col0[a], col1[a], col2[a])
        for b in range(6):
            tmp[6 * a + b, c] = row[b]


@njit(inline="always")
def _gkg(k, gk, out):
    """out[6*a + b, i] = (G k[:, :, i] G^T)[a, b] for the n kernels k (3, 3, n) (float64;
    ``_g6`` down each kernel's columns into the scratch gk (3, 6, n), then along the
    rows; rounded once on the store), every step over the n kernels (contiguous)."""
    n = k.shape[2]
    for j in range(3):
        for i in range(n):
            r = _g6(k[0, j, i], k[1, j, i], k[2, j, i])
            for a in range(6):
                gk[j, a, i] = r[a]
    for a in range(6):
        for i in range(n):
            r = _g6(gk[0, a, i], gk[1, a, i], gk[2, a, i])
            for b in range(6):
                out[6 * a + b, i] = r[b]


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _kernel_transform4(w, u):
    """w (C_out, Cg, 3, 3) -> u (G, 36, Dg, Cg): u[g, 6*a + b, d, c] = (G w G^T)[a, b]
    (``_gkg``). One task per output channel; its kernels are copied to (3, 3, Cg) first,
    so that every step runs over the input channels, contiguous (a kernel at a time,
    each of its 36 values stored a row of u apart, ran 2 ms for 256 -> 256 channels, 16%
    of the layer's forward)."""
    c_out, cg = w.shape[0], w.shape[1]
    dg = u.shape[2]
    for o in prange(c_out):
        k = np.empty((3, 3, cg))         # k[i, j, c] = w[o, c, i, j]
        for c in range(cg):
            for i in range(3):
                for j in range(3):
                    k[i, j, c] = w[o, c, i, j]
        _gkg(k, np.empty((3, 6, cg)), u[o // dg, :, o % dg, :])


#: Tasks of ``_kernel_transform4_io`` at most (each a run of rows, one float64 scratch).
KERNEL_TASKS = 8


@njit(inline="always")
def _gkg_row(fu, o, plane, c0, c1, c2):
    """G along one row a of the columns' results (c0, c1, c2: their entries a):
    fu[o + b*plane] = (G k G^T)[a, b] (b < 6) for a float64 vector of kernels, each
    value rounded once on the store."""
    r0, r1, r2, r3, r4, r5 = _g6(c0, c1, c2)
    _lanes.store_f64(fu, o, r0)
    _lanes.store_f64(fu, o + plane, r1)
    _lanes.store_f64(fu, o + U(2) * plane, r2)
    _lanes.store_f64(fu, o + U(3) * plane, r3)
    _lanes.store_f64(fu, o + U(4) * plane, r4)
    _lanes.store_f64(fu, o + U(5) * plane, r5)


@njit(inline="always")
def _gkg_lanes(k, i, out, o):
    """out[o + (6a + b)*n ...] = (G k G^T)[a, b] for the float64 vector of kernels whose
    tap (p, q) is k[i + (3p + q)*n ...], n the lanes of a float64 vector (k a flat
    float64 scratch laid out by vector, as ``_kernel_transform4_io``'s): ``_g6`` down
    the three columns, then along the six rows (straight-line code; the results stay in
    registers)."""
    n = U(_lanes.count(k))
    c0 = _g6(_lanes.load(k, i), _lanes.load(k, i + U(3) * n), _lanes.load(k, i + U(6) * n))
    c1 = _g6(_lanes.load(k, i + n), _lanes.load(k, i + U(4) * n),
             _lanes.load(k, i + U(7) * n))
    c2 = _g6(_lanes.load(k, i + U(2) * n), _lanes.load(k, i + U(5) * n),
             _lanes.load(k, i + U(8) * n))
    p6 = U(6) * n
    _gkg_row(out, o, n, c0[0], c1[0], c2[0])
    _gkg_row(out, o + p6, n, c0[1], c1[1], c2[1])
    _gkg_row(out, o + U(2) * p6, n, c0[2], c1[2], c2[2])
    _gkg_row(out, o + U(3) * p6, n, c0[3], c1[3], c2[3])
    _gkg_row(out, o + U(4) * p6, n, c0[4], c1[4], c2[4])
    _gkg_row(out, o + U(5) * p6, n, c0[5], c1[5], c2[5])


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _kernel_transform4_io(wv, ut):
    """wv (G, 3, 3, R, Q) (any strides) -> ut (G, 36, R, Q) C-contiguous: ut[g, 6*a +
    b, r, q] = (G wv[g, :, :, r, q] G^T)[a, b] in float64, rounded once (``_g6``): the
    transformed kernel in the order NHWC's products read it, (R, Q) = (Cg, Dg) planes
    (``kernel.transform_kernel_io`` passes grad_x's kernel as a transposed view).

    Tasks take runs of rows (g, r). A row's kernels are transformed a float64 vector of
    columns at a time (the last vector's lanes beyond Q zero) through a scratch laid
    out by vector, its 9 taps and then its 36 results each a vector apart (offsets the
    compiler knows), and the results are copied out plane by plane. Against one task
    per input channel with each kernel's columns and rows as loops over scratch
    arrays, 2 threads, each call after 60 us of other work (median): 64 x 64 kernels
    38 against 57 us (grad_x's transposed view 50 against 69), 32 x 32 16 against 20,
    16 x 16 level."""
    n_groups, _, _, n_rows, n_cols = wv.shape
    total = n_groups * n_rows
    n_tasks = min(total, KERNEL_TASKS)
    fu = ut.reshape(ut.size)
    un = U(n_cols)
    plane = U(n_rows) * un
    for task in prange(n_tasks):
        nl = U(_lanes.count(np.empty(0)))       # float64 lanes
        n_vec = (un + nl - U(1)) // nl
        k = np.zeros(n_vec * U(9) * nl)
        out = np.empty(n_vec * U(36) * nl, ut.dtype)
        for gr in range(task * total // n_tasks, (task + 1) * total // n_tasks):
            g, r = gr // n_rows, gr % n_rows
            for p in range(3):
                for q in range(3):
                    for c in range(un):
                        k[(c // nl * U(9) + U(3 * p + q)) * nl + c % nl] = wv[g, p, q, r, c]
            for v in range(n_vec):
                _gkg_lanes(k, v * U(9) * nl, out, v * U(36) * nl)
            o = U(g) * U(36) * plane + U(r) * un
            for e in range(36):
                dst = o + U(e) * plane
                for v in range(un // nl):   # (float32 values round-trip through float64)
                    src = (v * U(36) + U(e)) * nl
                    _lanes.store_f64(fu, dst + v * nl, _lanes.load_f64(out, src))
                for c in range(un - un % nl, un):
                    fu[dst + c] = out[(c // nl * U(36) + U(e)) * nl + c % nl]


@njit(inline="always")
def _bt6(e0, e1, e2, e3, e4, e5, two, four, five):
    """B^T e for F(4x4, 3x3) (one 6-point column or row)."""
    return (four * e0 - five * e2 + e4,
            e3 + e4 - four * (e1 + e2),
            e4 - e3 + four * (e1 - e2),
            e4 - e2 - two * (e1 - e3),
            e4 - e2 + two * (e1 - e3),
            four * e1 - five * e3 + e5)


@njit(inline="always")
def _zero6(s0, s1, s2, s3, s4, s5, base, n, zero):
    """s0[base + j], ..., s5[base + j] = zero for j < n (a tile row outside the image)."""
    for j in range(n):
        s0[base + j] = zero
        s1[base + j] = zero
        s2[base + j] = zero
        s3[base + j] = zero
        s4[base + j] = zero
        s5[base + j] = zero


@njit(inline="always")
def _put6(o, s0, s1, s2, s3, s4, s5, i):
    """s0[i], ..., s5[i] = the six values of o (one ``_bt6`` result)."""
    s0[i] = o[0]
    s1[i] = o[1]
    s2[i] = o[2]
    s3[i] = o[3]
    s4[i] = o[4]
    s5[i] = o[5]


@njit(inline="always")
def _at(src, q, wd):
    """src[q] for 0 <= q < wd, else 0 (the padding around an image row)."""
    return src[q] if 0 <= q < wd else src.dtype.type(0)


@njit(inline="always")
def _bt6_edge(src, q, wd, two, four, five):
    """``_bt6`` of the six columns q .. q + 5 of an image row ``src`` of ``wd`` columns,
    zero outside it (a tile at the padded border)."""
    return _bt6(_at(src, q, wd), _at(src, q + 1, wd), _at(src, q + 2, wd),
                _at(src, q + 3, wd), _at(src, q + 4, wd), _at(src, q + 5, wd),
                two, four, five)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _input_transform4(x, v, cg, cols, c0, r0, r1, th, tw, pt, pl):
    """As ``f2._input_transform`` for F(4x4, 3x3): 6x6 input tiles at (4i - pt, 4j - pl),
    v (36 flat planes of Cg*cols + padding elements) = B^T d B with
    B^T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
           [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]].

    Per task (a channel of one image, its tile rows ra..rb of the chunk): each input row
    the tiles read is transformed along the row once, straight from the image (tiles
    jlo .. jhi - 1 lie inside it; the few at the padded borders go through
    ``_bt6_edge``, a row wholly in the padding gives zeros), into ``rows[rho % 4, b]``
    at tile row rho // 4 (0.74x-0.91x the time of copying each row with its padding and
    splitting it into its four column phases first, on the bench suite's layers). Tile
    row r reads input rows 4r .. 4r+5, i.e. rows 0-3 of block r and 0-1 of block r + 1,
    so B^T down the columns runs over all the task's tile rows in one contiguous loop
    per entry b."""
    h, wd = x.shape[2], x.shape[3]
    two, four, five = _scalars(x, 2, 4, 5)
    zero = x.dtype.type(0)
    # the tiles whose six columns 4j - pl .. 4j + 5 - pl all lie inside the image
    jlo = min(tw, (pl + 3) // 4)
    jhi = max(jlo, min(tw, (wd - 6 + pl) // 4 + 1))
    for task in prange(_task_count(cg, r0, r1, th)):
        c, n, ra, rb, img = _task_plane(x, task, c0, r0, r1, th)
        nr = rb - ra
        rows = np.empty((4, 6, (nr + 1) * tw), dtype=x.dtype)
        top = 4 * (ra - n * th) - pt
        for rho in range(4 * nr + 2):  # B along each input row, once
            dst = rows[rho % 4]
            base = U((rho // 4) * tw)
            s0, s1, s2, s3, s4, s5 = dst[0], dst[1], dst[2], dst[3], dst[4], dst[5]
            if top + rho < 0 or top + rho >= h:
                _zero6(s0, s1, s2, s3, s4, s5, base, U(tw), zero)
                continue
            src = img[top + rho]
            for j in range(jlo):
                o = _bt6_edge(src, 4 * j - pl, wd, two, four, five)
                _put6(o, s0, s1, s2, s3, s4, s5, base + U(j))
            off = U(4 * jlo - pl)
            end = U(src.size)
            for jj in range(U(jhi - jlo)):  # the inner tiles, no bounds to check
                q = off + U(4) * jj
                if scalar_only(q + U(5), end):
                    break
                o = _bt6(src[q], src[q + U(1)], src[q + U(2)], src[q + U(3)],
                         src[q + U(4)], src[q + U(5)], two, four, five)
                _put6(o, s0, s1, s2, s3, s4, s5, base + U(jlo) + jj)
            for j in range(jhi, tw):
                o = _bt6_edge(src, 4 * j - pl, wd, two, four, five)
                _put6(o, s0, s1, s2, s3, s4, s5, base + U(j))
        k0 = U(c * cols + (ra - r0) * tw)
        nxt = U(tw)
        for b in range(6):  # B^T down the columns, all tile rows at once
            e0, e1, e2, e3 = rows[0, b], rows[1, b], rows[2, b], rows[3, b]
            o0, o1, o2 = v[b], v[6 + b], v[12 + b]
            o3, o4, o5 = v[18 + b], v[24 + b], v[30 + b]
            for k in range(U(nr * tw)):
                o = _bt6(e0[k], e1[k], e2[k], e3[k], e0[k + nxt], e1[k + nxt],
                         two, four, five)
                _put6(o, o0, o1, o2, o3, o4, o5, k0 + k)


@njit(inline="always")
def _at6(e0, e1, e2, e3, e4, e5, two, four, eight):
    """A^T e for F(4x4, 3x3): four outputs from a 6-point column or row."""
    p12 = e1 + e2
    m12 = e1 - e2
    p34 = e3 + e4
    m34 = e3 - e4
    return e0 + p12 + p34, m12 + two * m34, p12 + four * p34, m12 + eight * m34 + e5


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _output_transform4(m, y, dg, cols, d0, r0, r1, th, tw, bias, has_bias, flags):
    """As ``f2._output_transform`` for F(4x4, 3x3): the 4x4 block A^T m A of every 6x6 tile,
    A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
           [0, 1, -1, 8, -8, 1]]. A^T first combines the six rows of m elementwise, for
    all the task's tile rows in one contiguous loop, then A along the rows, again for all
    the task's tile rows in one loop per output row a of a tile, the four outputs of a
    tile stored together (one interleaved store group) into ``lines``; each output row
    is then copied out, cut at Wo (0.62x-0.86x the time of transforming along the rows
    tile row by tile row, in loops of 4 to 14 tiles, on the bench suite's layers)."""
    _, _, ho, wo = y.shape
    two, four, eight = _scalars(m, 2, 4, 8)
    for task in prange(_task_count(dg, r0, r1, th)):
        d, n, ra, rb, out = _task_plane(y, task, d0, r0, r1, th)
        add = bias[d0 + d] if has_bias else y.dtype.type(0)
        bad = 0  # outputs that are NaN or +-Inf
        nr = rb - ra
        # u[a, b, r*tw + j]: row a of A^T m for entry b of tile (r, j), all tile rows at once
        u = np.empty((4, 6, nr * tw), dtype=m.dtype)
        # lines[a, 4*(r*tw + j) + t]: output row 4r + a, column 4j + t
        lines = np.empty((4, 4 * nr * tw), dtype=m.dtype)
        k0 = U(d * cols + (ra - r0) * tw)
        for b in range(6):  # A^T down the columns: one contiguous loop per entry
            s0, s1, s2 = m[b], m[6 + b], m[12 + b]
            s3, s4, s5 = m[18 + b], m[24 + b], m[30 + b]
            u0, u1, u2, u3 = u[0, b], u[1, b], u[2, b], u[3, b]
            for k in range(U(nr * tw)):
                i = k0 + k
                o = _at6(s0[i], s1[i], s2[i], s3[i], s4[i], s5[i], two, four, eight)
                u0[k] = o[0]
                u1[k] = o[1]
                u2[k] = o[2]
                u3[k] = o[3]
        for a in range(4):  # A along the rows: row a of every tile row at once
            ua, la = u[a], lines[a]
            e0, e1, e2 = ua[0], ua[1], ua[2]
            e3, e4, e5 = ua[3], ua[4], ua[5]
            for k in range(U(nr * tw)):
                o = _at6(e0[k], e1[k], e2[k], e3[k], e4[k], e5[k], two, four, eight)
                q = U(4) * k
                la[q] = o[0] + add
                la[q + U(1)] = o[1] + add
                la[q + U(2)] = o[2] + add
                la[q + U(3)] = o[3] + add
        for r in range(nr):
            i = 4 * (ra + r - n * th)
            base = U(4 * r * tw)
            for a in range(min(4, ho - i)):  # output row i + a, cut at Wo
                la = lines[a]
                dst = out[i + a]
                for q in range(U(wo)):
                    dst[q] = la[base + q]
                    bad += not math.isfinite(la[base + q])
        flags[task] = bad > 0
