"""The transforms of conv3d's Winograd path (:mod:`.winograd`): F(4x4, 3x3) over the
(h, w) planes, one depth plane of every channel at a time.

A plane's tiles are the 6x6 blocks of the padded plane at rows 4r - pt, columns
4j - pl (r < th, j < tw), numbered t = r * tw + j; entry e = 6 a + b of a transform is
row (a) and column (b) of the 6x6 block. The coefficient helpers are 2-D Winograd's
(``fastconv.algos.winograd.f4``).

>>> import numpy as np
>>> v = np.empty((36, 1, 1), np.float32)
>>> input_planes(np.ones((1, 4, 4), np.float32), v, 1, 1, 1, 1)
>>> float(v[0, 0, 0])  # (B^T d B)[0, 0] = (4 * 0 - 5 * 1 + 1)^2 on the padded ones
16.0
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit

from ... import config
from .._common import U, workspace
from ..winograd.f4 import _at6, _bt6, _gk4
from ..winograd.tasks import _scalars


def tiles(a) -> tuple[int, int]:
    """(tile rows, tile columns) of 4x4 outputs per output plane of conv3d problem ``a``."""
    return -(-a.out[1] // 4), -(-a.out[2] // 4)


def split_threads(a, threads: int | None = None) -> int:
    """Threads the (image, output depth) pairs of the forward and the backward are split
    over: 1 when their Winograd-domain products are small in total
    (``config.SMALL_GEMM_MACS``), else as many as numba uses (at most the pairs)."""
    threads = numba.get_num_threads() if threads is None else threads
    th, tw = tiles(a)
    macs = (ENTRIES * a.n * a.out[0] * a.c_out * (a.c_in // a.groups) * a.kernel[0]
            * th * tw)
    if macs <= config.SMALL_GEMM_MACS:
        return 1
    return max(1, min(threads, a.n * a.out[0]))

#: Entries of a transformed 6x6 tile.
ENTRIES = 36

#: Elements between consecutive entries' planes beyond their size: planes a multiple of
#: 4 KiB apart share L1 cache sets, and the transforms touch all 36 at once (the 32^3
#: layer's output transform took about 1.1x longer unpadded).
ENTRY_PAD = 16


def entry_planes(slot: str, shape, dtype, flat: bool = False):
    """A (36, *shape) thread-local workspace view whose entries lie ``ENTRY_PAD``
    elements more than their size apart (each entry's plane contiguous); with ``flat``
    also the C-contiguous (36, size + ENTRY_PAD) array it views."""
    size = math.prod(shape)
    buf = workspace(slot, ENTRIES * (size + ENTRY_PAD), dtype).reshape(ENTRIES, -1)
    view = buf[:, :size].reshape(ENTRIES, *shape)
    return (view, buf) if flat else view


@njit(cache=True, fastmath=config.FASTMATH)
def kernel_transform(w, u):
    """w (O, C, kd, 3, 3) -> u (36, O, kd * C): u[e, o, k * C + c] = (G w[o, c, k] G^T)[e]
    (F(4x4, 3x3)'s G, in float64, rounded once)."""
    c_out, c_in, kd = w.shape[0], w.shape[1], w.shape[2]
    tmp = np.empty((36, kd * c_in), dtype=u.dtype)
    for o in range(c_out):
        for c in range(c_in):
            for k in range(kd):
                _gk4(w[o, c, k], tmp, k * c_in + c)
        for e in range(36):
            u[e, o, :] = tmp[e]


@njit(inline="always")
def _store(tile, dst):
    """dst[e, :] = tile[e] for each entry: one plane's 36 rows formed in a local buffer,
    then stored row by row (contiguous runs; stores interleaved over the 36 planes made
    the 32^3 layer's transforms 1.2x (input) and 1.9x (output gradient) slower)."""
    n = tile.shape[1]
    for e in range(tile.shape[0]):
        src, out = tile[e], dst[e]
        for k in range(U(n)):
            out[k] = src[k]


@njit(cache=True, nogil=True, fastmath=config.FASTMATH)
def input_planes(xz, v, th, tw, pt, pl):
    """xz (C, H, W), one depth plane per channel -> v (36, C, th * tw): B^T d B of every
    6x6 tile d of each zero-padded plane (padding pt on top, pl on the left, zeros
    beyond the plane). B along the padded rows first (each row once), then down the
    columns, tile row by tile row."""
    c_in, h, w = xz.shape
    hp = 4 * th + 2
    pad = np.zeros((hp, 4 * tw + 2), dtype=xz.dtype)
    rows = np.empty((hp, 6, tw), dtype=xz.dtype)
    tile = np.empty((36, th * tw), dtype=xz.dtype)
    two, four, five = _scalars(xz, 2, 4, 5)
    hh, ww = min(h, hp - pt), min(w, 4 * tw + 2 - pl)
    for c in range(c_in):
        pad[pt:pt + hh, pl:pl + ww] = xz[c, :hh, :ww]
        for rr in range(hp):
            src = pad[rr]
            dst = rows[rr]
            for j in range(U(tw)):
                q = U(4) * j
                o = _bt6(src[q], src[q + U(1)], src[q + U(2)], src[q + U(3)],
                         src[q + U(4)], src[q + U(5)], two, four, five)
                for b in range(6):
                    dst[b, j] = o[b]
        for r in range(th):
            base = U(r * tw)
            for b in range(6):
                e0, e1, e2 = rows[4 * r, b], rows[4 * r + 1, b], rows[4 * r + 2, b]
                e3, e4, e5 = rows[4 * r + 3, b], rows[4 * r + 4, b], rows[4 * r + 5, b]
                for j in range(U(tw)):
                    o = _bt6(e0[j], e1[j], e2[j], e3[j], e4[j], e5[j], two, four, five)
                    for a in range(6):
                        tile[6 * a + b, base + j] = o[a]
        _store(tile, v[:, c])


@njit(inline="always")
def _down_columns(f, planes, base, tw, out, c0, c1, c2):
    """out[a, b, j] = f(planes[b], planes[6 + b], ..., planes[30 + b])[a], each plane
    read at element base + j (j < tw, b < 6): the 6-point transform ``f`` (coefficients
    c0, c1, c2) down the columns of one tile row's tiles."""
    for b in range(6):
        s0, s1, s2 = planes[b], planes[6 + b], planes[12 + b]
        s3, s4, s5 = planes[18 + b], planes[24 + b], planes[30 + b]
        for j in range(U(tw)):
            k = base + j
            q = f(s0[k], s1[k], s2[k], s3[k], s4[k], s5[k], c0, c1, c2)
            for a in range(len(q)):
                out[a, b, j] = q[a]


@njit(cache=True, nogil=True, fastmath=config.FASTMATH)
def output_planes(m, yz, th, tw, bias):
    """m (36, O, th * tw) Winograd-domain products -> yz (O, Ho, Wo): the 4x4 block
    A^T m A of every tile (those past Ho, Wo dropped), plus bias[o] (O values). Returns
    how many outputs are NaN or +-Inf."""
    c_out, ho, wo = yz.shape
    u = np.empty((4, 6, tw), dtype=m.dtype)
    line = np.empty(4 * tw, dtype=m.dtype)
    two, four, eight = _scalars(m, 2, 4, 8)
    bad = 0
    for o in range(c_out):
        mo = m[:, o]
        add = bias[o]
        for r in range(th):
            base = U(r * tw)
            _down_columns(_at6, mo, base, tw, u, two, four, eight)  # A^T
            for a in range(min(4, ho - 4 * r)):  # A along the rows
                ua = u[a]
                for j in range(U(tw)):
                    q = _at6(ua[0, j], ua[1, j], ua[2, j], ua[3, j], ua[4, j], ua[5, j],
                             two, four, eight)
                    for e in range(4):
                        line[U(4) * j + U(e)] = q[e] + add
                dst = yz[o, 4 * r + a]
                for s in range(U(wo)):
                    dst[s] = line[s]
                    bad += not math.isfinite(line[s])
    return bad


@njit(inline="always")
def _a6(g0, g1, g2, g3, two, four, eight):
    """A g for F(4x4, 3x3): A = (A^T)^T, six values from four."""
    p02, p13 = g0 + g2, g1 + g3
    e = g0 + four * g2
    o = two * g1 + eight * g3
    return g0, p02 + p13, p02 - p13, e + o, e - o, g3


@njit(cache=True, nogil=True, fastmath=config.FASTMATH)
def grad_planes(gz, p, th, tw):
    """gz (O, Ho, Wo), one output-gradient plane per channel -> p (36, O, th * tw):
    A g A^T of every 4x4 block g of each plane (zeros past Ho, Wo), the adjoint of
    :func:`output_planes`' A^T m A."""
    c_out, ho, wo = gz.shape
    two, four, eight = _scalars(gz, 2, 4, 8)
    blk = np.zeros((4 * th, 4 * tw), dtype=gz.dtype)
    cols = np.empty((4 * th, 6, tw), dtype=gz.dtype)
    tile = np.empty((36, th * tw), dtype=gz.dtype)
    for o in range(c_out):
        blk[:ho, :wo] = gz[o]
        for rr in range(4 * th):  # A along the rows
            src = blk[rr]
            dst = cols[rr]
            for j in range(U(tw)):
                q = U(4) * j
                e = _a6(src[q], src[q + U(1)], src[q + U(2)], src[q + U(3)], two, four, eight)
                for b in range(6):
                    dst[b, j] = e[b]
        for r in range(th):  # A down the columns
            base = U(r * tw)
            for b in range(6):
                g0, g1, g2, g3 = cols[4 * r, b], cols[4 * r + 1, b], cols[4 * r + 2, b], \
                    cols[4 * r + 3, b]
                for j in range(U(tw)):
                    e = _a6(g0[j], g1[j], g2[j], g3[j], two, four, eight)
                    for a in range(6):
                        tile[6 * a + b, base + j] = e[a]
        _store(tile, p[:, o])


@njit(inline="always")
def _gt3(e0, e1, e2, e3, e4, e5):
    """G^T e for F(4x4, 3x3) (``_gk4``'s G, 6 x 3), three values from six."""
    sixth = 1.0 / 6.0
    return (0.25 * e0 - (e1 + e2) * sixth + (e3 + e4) * (sixth / 4),
            (e2 - e1) * sixth + (e3 - e4) * (sixth / 2),
            -(e1 + e2) * sixth + (e3 + e4) * sixth + e5)


@njit(cache=True, fastmath=config.FASTMATH)
def kernel_adjoint(du, gw):
    """du (36, O, kd * C) Winograd-domain weight gradients -> gw (O, C, kd, 3, 3):
    gw[o, c, k] = G^T du[:, o, k * C + c] G (in float64, rounded once), the adjoint of
    :func:`kernel_transform`."""
    c_out, c_in, kd = gw.shape[0], gw.shape[1], gw.shape[2]
    t = np.empty((3, 6))
    for o in range(c_out):
        for c in range(c_in):
            for k in range(kd):
                col = k * c_in + c
                for b in range(6):  # G^T down the columns
                    e = _gt3(np.float64(du[b, o, col]), np.float64(du[6 + b, o, col]),
                             np.float64(du[12 + b, o, col]), np.float64(du[18 + b, o, col]),
                             np.float64(du[24 + b, o, col]), np.float64(du[30 + b, o, col]))
                    t[0, b], t[1, b], t[2, b] = e[0], e[1], e[2]
                for a in range(3):  # G along the rows
                    e = _gt3(t[a, 0], t[a, 1], t[a, 2], t[a, 3], t[a, 4], t[a, 5])
                    gw[o, c, k, a, 0] = e[0]
                    gw[o, c, k, a, 1] = e[1]
                    gw[o, c, k, a, 2] = e[2]


@njit(cache=True, nogil=True, fastmath=config.FASTMATH)
def weight_products(p, p0, o_n, o_step, i_step, v, v0, c_n, c_step, nt, n_i, du):
    """du[e, o, k * c_n + c] += sum over depths i < n_i and q < nt of
    p[e, p0 + o * o_step + i * i_step + q] * v[e, v0 + c * c_step + (i + k) * nt + q], for
    every entry e, o < o_n, c < c_n and tap depth k < du.shape[2] // c_n: the weight
    gradient's Winograd-domain products of :mod:`.wino_backward` (p: transformed grad_y,
    v: transformed input, each entry's planes a row of the C-contiguous p and v).

    Blocks of 4 x 4 (o, c) pairs, 16 running sums over (i, q) (vectorised over q): two
    multiply-adds per load. OpenBLAS took 1.6x as long on these (32 x 2048) @ (2048 x 16)
    products (the 32^3 layer's). Rows past o_n or c_n repeat the last row and are not
    stored."""
    kd = du.shape[2] // c_n
    zero = du.dtype.type(0)
    acc = np.empty((4, 4), dtype=du.dtype)
    for e in range(p.shape[0]):
        pe, ve, de = p[e], v[e], du[e]
        for o0 in range(0, o_n, 4):
            r0 = p0 + o0 * o_step
            r1 = p0 + min(o0 + 1, o_n - 1) * o_step
            r2 = p0 + min(o0 + 2, o_n - 1) * o_step
            r3 = p0 + min(o0 + 3, o_n - 1) * o_step
            for k in range(kd):
                for c0 in range(0, c_n, 4):
                    s0 = v0 + c0 * c_step + k * nt
                    s1 = v0 + min(c0 + 1, c_n - 1) * c_step + k * nt
                    s2 = v0 + min(c0 + 2, c_n - 1) * c_step + k * nt
                    s3 = v0 + min(c0 + 3, c_n - 1) * c_step + k * nt
                    a00 = a01 = a02 = a03 = zero
                    a10 = a11 = a12 = a13 = zero
                    a20 = a21 = a22 = a23 = zero
                    a30 = a31 = a32 = a33 = zero
                    for i in range(n_i):
                        pi, vi = U(i * i_step), U(i * nt)
                        q0, q1, q2, q3 = U(r0) + pi, U(r1) + pi, U(r2) + pi, U(r3) + pi
                        w0, w1, w2, w3 = U(s0) + vi, U(s1) + vi, U(s2) + vi, U(s3) + vi
                        for q in range(U(nt)):
                            x0, x1, x2, x3 = pe[q0 + q], pe[q1 + q], pe[q2 + q], pe[q3 + q]
                            y0, y1, y2, y3 = ve[w0 + q], ve[w1 + q], ve[w2 + q], ve[w3 + q]
                            a00 += x0 * y0
                            a01 += x0 * y1
                            a02 += x0 * y2
                            a03 += x0 * y3
                            a10 += x1 * y0
                            a11 += x1 * y1
                            a12 += x1 * y2
                            a13 += x1 * y3
                            a20 += x2 * y0
                            a21 += x2 * y1
                            a22 += x2 * y2
                            a23 += x2 * y3
                            a30 += x3 * y0
                            a31 += x3 * y1
                            a32 += x3 * y2
                            a33 += x3 * y3
                    acc[0, 0], acc[0, 1], acc[0, 2], acc[0, 3] = a00, a01, a02, a03
                    acc[1, 0], acc[1, 1], acc[1, 2], acc[1, 3] = a10, a11, a12, a13
                    acc[2, 0], acc[2, 1], acc[2, 2], acc[2, 3] = a20, a21, a22, a23
                    acc[3, 0], acc[3, 1], acc[3, 2], acc[3, 3] = a30, a31, a32, a33
                    for i in range(min(4, o_n - o0)):
                        for j in range(min(4, c_n - c0)):
                            de[o0 + i, k * c_n + c0 + j] += acc[i, j]


@njit(inline="always")
def _b6(x0, x1, x2, x3, x4, x5, two, four, five):
    """B x for F(4x4, 3x3) (the transpose of ``_bt6``'s B^T), six values from six."""
    return (four * x0,
            four * (x2 - x1) + two * (x4 - x3) + four * x5,
            -five * x0 - four * (x1 + x2) - x3 - x4,
            x1 - x2 + two * (x3 - x4) - five * x5,
            x0 + x1 + x2 + x3 + x4,
            x5)


@njit(cache=True, nogil=True, fastmath=config.FASTMATH)
def input_adjoint(dv, gz, th, tw, pt, pl):
    """dv (36, C, th * tw) Winograd-domain input gradients -> gz (C, H, W): B dv B^T of
    every tile added onto its 6x6 block of the padded plane (neighbouring tiles overlap
    by two rows and columns), the plane's interior stored: the adjoint of
    :func:`input_planes`. Returns how many stored values are NaN or +-Inf."""
    c_in, h, w = gz.shape
    hp = 4 * th + 2
    pad = np.empty((hp, 4 * tw + 2), dtype=dv.dtype)
    cols = np.empty((6, 6, tw), dtype=dv.dtype)
    two, four, five = _scalars(dv, 2, 4, 5)
    hh, ww = min(h, hp - pt), min(w, 4 * tw + 2 - pl)
    bad = 0
    for c in range(c_in):
        pad[:] = 0
        vc = dv[:, c]
        for r in range(th):
            base = U(r * tw)
            _down_columns(_b6, vc, base, tw, cols, two, four, five)  # B
            for p in range(6):  # B along the rows, added onto the padded plane
                cp = cols[p]
                dst = pad[4 * r + p]
                for j in range(U(tw)):
                    q = _b6(cp[0, j], cp[1, j], cp[2, j], cp[3, j], cp[4, j], cp[5, j],
                            two, four, five)
                    s = U(4) * j
                    for e in range(6):
                        dst[s + U(e)] += q[e]
        out = gz[c]
        for i in range(hh):
            src, row = pad[pt + i], out[i]
            for q in range(U(ww)):
                row[q] = src[U(pl) + q]
                bad += not math.isfinite(row[q])
    return bad
