"""Winograd convolution: 3x3 stride-1 layers with 2.25x or 4x fewer multiplications.

An m x m block of outputs of a 3x3 correlation reads an (m+2) x (m+2) block d of the
input. Winograd's minimal filtering algorithm F(m x m, 3x3) computes it as

    Y = A^T [ (G g G^T) * (B^T d B) ] A            (* elementwise, (m+2) x (m+2))

with (m+2)^2 multiplications instead of 9 m^2. F(2x2, 3x3) (16 for 4 outputs):

    B^T = [[1, 0, -1,  0],   G = [[1,    0,   0],    A^T = [[1, 1,  1,  0],
           [0, 1,  1,  0],        [1/2,  1/2, 1/2],         [0, 1, -1, -1]]
           [0, -1, 1,  0],        [1/2, -1/2, 1/2],
           [0, 1,  0, -1]]        [0,    0,   1]]

F(4x4, 3x3) (36 for 16 outputs) uses the 6x6 B^T, 6x3 G and 4x6 A^T written out at
``_input_transform4``, ``_g6`` and ``_output_transform4`` (interpolation points 0, +-1,
+-2 and infinity). ``config.WINOGRAD_TILE`` picks m (4 by default).

Summed over input channels, the elementwise products of every tile become (m+2)^2
independent GEMMs, M[e] (C_out, tiles) = U[e] (C_out, C_in) @ V[e] (C_in, tiles), where
U = G g G^T is the transformed kernel and V = B^T d B the transformed input tiles.
Accuracy: F(2x2, 3x3)'s transforms only add and halve, so float32 results are as accurate
as im2col's; F(4x4, 3x3) multiplies by up to 8 and 1/24 and loses a few more bits
(tests/test_winograd.py bounds both against float64).

Applies to 3x3 kernels with stride 1 (``supports``), any padding, dilation (one
undilated problem per phase of the input, ``_run``), groups (one set of GEMMs per
group) and both layouts (NHWC through transposed copies). Tiles are
processed in chunks of tile rows sized by ``config.WINOGRAD_CHUNK_BYTES`` (never above
``config.WORKSPACE_BYTES``), so the transformed tiles of a chunk are still in cache when
its GEMMs read them. The backward pass computes grad_x as the same transform of grad_y
with the flipped, transposed kernel (padding 2 - p), and grad_w as the adjoint of
F(2x2, 3x3) in the Winograd domain (``_grad_w_nchw``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .. import _blas, config
from . import _nhwc, im2col
from ._common import U, workspace


def supports(args) -> bool:
    """Whether the algorithm applies: a 3x3 kernel with stride 1 (any dilation: see
    ``_run``)."""
    return (args.kh, args.kw) == (3, 3) and args.stride == (1, 1)


def check_supported(op: str, args) -> None:
    if not supports(args):
        raise ValueError(
            f"{op}: algo='winograd' needs a 3x3 kernel with stride 1; got kernel "
            f"{args.kh}x{args.kw}, stride {args.stride} (use algo='auto', 'im2col', 'fft' "
            "or 'naive')")


# --------------------------------------------------------------------------- kernels
@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _kernel_transform(w, u):
    """w (C_out, Cg, 3, 3) -> u (G, 16, Dg, Cg): u[g, 4*a + b, d, c] = (G w G^T)[a, b]
    for w[g*Dg + d, c]. One task per output channel; its 16 x Cg values are formed in a
    local buffer and stored row by row (16 interleaved stores a plane apart thrash the
    cache: 4x slower)."""
    c_out, cg = w.shape[0], w.shape[1]
    dg = u.shape[2]
    half = w.dtype.type(0.5)
    for o in prange(c_out):
        ug = u[o // dg]
        d = o % dg
        tmp = np.empty((16, cg), dtype=u.dtype)
        for c in range(cg):
            k = w[o, c]
            for a in range(4):  # row a of G k, then times G^T
                if a == 0:
                    t0, t1, t2 = k[0, 0], k[0, 1], k[0, 2]
                elif a == 3:
                    t0, t1, t2 = k[2, 0], k[2, 1], k[2, 2]
                else:
                    sign = 1 if a == 1 else -1
                    t0 = half * (k[0, 0] + sign * k[1, 0] + k[2, 0])
                    t1 = half * (k[0, 1] + sign * k[1, 1] + k[2, 1])
                    t2 = half * (k[0, 2] + sign * k[1, 2] + k[2, 2])
                tmp[4 * a, c] = t0
                tmp[4 * a + 1, c] = half * (t0 + t1 + t2)
                tmp[4 * a + 2, c] = half * (t0 - t1 + t2)
                tmp[4 * a + 3, c] = t2
        for e in range(16):
            ug[e, d, :] = tmp[e]


@njit(inline="always")
def _images_of(r0, r1, th):
    """(first image, number of images) that global tile rows r0..r1 (th per image) touch."""
    n_first = r0 // th
    return n_first, (r1 - 1) // th - n_first + 1


@njit(inline="always")
def _task_rows(task, images, n_first, r0, r1, th):
    """(channel, image, ra, rb) of a transform task: tasks run channel-major over the
    chunk's images, and the task covers the image's global tile rows [ra, rb) within
    the chunk r0..r1."""
    n = n_first + task % images
    return task // images, n, max(r0, n * th), min(r1, (n + 1) * th)


@njit(inline="always")
def _padded_row(img, src_row, row, lo, hi, pl):
    """row[q] = img[src_row, q - pl] where that lies inside the image, else 0 (columns
    [lo, hi) of row are the image's)."""
    zero = row.dtype.type(0)
    if src_row < 0 or src_row >= img.shape[0]:
        for q in range(U(row.size)):
            row[q] = zero
        return
    src = img[src_row]
    for q in range(U(lo)):
        row[q] = zero
    for q in range(U(hi - lo)):
        row[U(lo) + q] = src[U(lo - pl) + q]
    for q in range(U(hi), U(row.size)):
        row[q] = zero


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _input_transform(x, v, cg, cols, c0, r0, r1, th, tw, pt, pl):
    """x (N, C, H, W) -> v (16, Cg, (r1-r0)*tw): the transformed 4x4 input tiles of
    channels c0.. for global tile rows r0..r1 (tile row r: image r // th, output rows
    2*(r % th) and the next). v[4*a + b, c, (r - r0)*tw + j] = (B^T d B)[a, b] for the tile
    d = x[n, c0 + c, 2i - pt : 2i - pt + 4, 2j - pl : 2j - pl + 4] (zero outside).

    One task per (channel, image) covered by the chunk. Each tile row is first copied,
    with its zero padding, into four buffer rows; the column transform B^T then runs
    along whole rows and the row transform B reads them with stride 2, so both loops
    vectorise."""
    wd = x.shape[3]
    wp = 2 * tw + 2  # input columns the tile row reads
    lo = min(pl, wp)
    hi = min(wp, pl + wd)
    n_first, images = _images_of(r0, r1, th)
    for task in prange(cg * images):
        c, n, ra, rb = _task_rows(task, images, n_first, r0, r1, th)
        img = x[n, c0 + c]
        buf = np.empty((4, wp), dtype=x.dtype)
        t = np.empty((4, wp), dtype=x.dtype)
        for r in range(ra, rb):
            top = 2 * (r - n * th) - pt
            for a in range(4):
                _padded_row(img, top + a, buf[a], lo, hi, pl)
            b0, b1, b2, b3 = buf[0], buf[1], buf[2], buf[3]
            t0, t1, t2, t3 = t[0], t[1], t[2], t[3]
            for q in range(U(wp)):  # B^T along the columns
                t0[q] = b0[q] - b2[q]
                t1[q] = b1[q] + b2[q]
                t2[q] = b2[q] - b1[q]
                t3[q] = b1[q] - b3[q]
            k0 = U(c * cols + (r - r0) * tw)
            for a in range(4):  # B along the rows
                ta = t[a]
                d0 = v[4 * a]
                d1 = v[4 * a + 1]
                d2 = v[4 * a + 2]
                d3 = v[4 * a + 3]
                for j in range(U(tw)):
                    q = U(2) * j
                    e0 = ta[q]
                    e1 = ta[q + U(1)]
                    e2 = ta[q + U(2)]
                    e3 = ta[q + U(3)]
                    d0[k0 + j] = e0 - e2
                    d1[k0 + j] = e1 + e2
                    d2[k0 + j] = e2 - e1
                    d3[k0 + j] = e1 - e3


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _output_transform(m, y, dg, cols, d0, r0, r1, th, tw, bias, has_bias, flags):
    """m (16, Dg, (r1-r0)*tw) -> y (N, C_out, Ho, Wo), channels d0..: the 2x2 output block
    A^T m A of every tile (plus bias[d0 + d] when has_bias), cut at the last row/column
    when Ho or Wo is odd. One task per (output channel, image) covered by the chunk;
    flags[task] is set when the task wrote a NaN or an infinity."""
    _, _, ho, wo = y.shape
    n_first, images = _images_of(r0, r1, th)
    for task in prange(dg * images):
        d, n, ra, rb = _task_rows(task, images, n_first, r0, r1, th)
        out = y[n, d0 + d]
        add = bias[d0 + d] if has_bias else y.dtype.type(0)
        bad = 0  # outputs that are NaN or +-Inf
        u = np.empty((8, tw), dtype=m.dtype)
        rows = np.empty((2, 2 * tw), dtype=m.dtype)
        for r in range(ra, rb):
            k0 = U(d * cols + (r - r0) * tw)
            for a in range(4):  # A along the rows: (m0 + m1 + m2, m1 - m2 - m3)
                s0 = m[4 * a]
                s1 = m[4 * a + 1]
                s2 = m[4 * a + 2]
                s3 = m[4 * a + 3]
                ua = u[2 * a]
                ub = u[2 * a + 1]
                for j in range(U(tw)):
                    e1 = s1[k0 + j]
                    e2 = s2[k0 + j]
                    ua[j] = s0[k0 + j] + e1 + e2
                    ub[j] = e1 - e2 - s3[k0 + j]
            u00, u01, u10, u11 = u[0], u[1], u[2], u[3]
            u20, u21, u30, u31 = u[4], u[5], u[6], u[7]
            top, bottom = rows[0], rows[1]
            for j in range(U(tw)):  # A^T along the columns, interleaved into two rows
                q = U(2) * j
                top[q] = u00[j] + u10[j] + u20[j] + add
                top[q + U(1)] = u01[j] + u11[j] + u21[j] + add
                bottom[q] = u10[j] - u20[j] - u30[j] + add
                bottom[q + U(1)] = u11[j] - u21[j] - u31[j] + add
            i = 2 * (r - n * th)
            dst = out[i]
            for q in range(U(wo)):
                dst[q] = top[q]
                bad += not math.isfinite(top[q])
            if i + 1 < ho:
                dst = out[i + 1]
                for q in range(U(wo)):
                    dst[q] = bottom[q]
                    bad += not math.isfinite(bottom[q])
        flags[task] = bad > 0


# -------------------------------------------------------------- F(4x4, 3x3) kernels
@njit(inline="always")
def _g6(k0, k1, k2):
    """G k for F(4x4, 3x3): G = [[1/4, 0, 0], [-1/6, -1/6, -1/6], [-1/6, 1/6, -1/6],
    [1/24, 1/12, 1/6], [1/24, -1/12, 1/6], [0, 0, 1]] (float64 arithmetic)."""
    sixth = 1.0 / 6.0
    even = k0 + k2
    quarter_even = 0.25 * k0 + k2  # (k0/24 + k2/6) * 6 -> 6*(1/24 k0 + 1/6 k2) = k0/4 + k2
    return (0.25 * k0, -(even + k1) * sixth, (k1 - even) * sixth,
            (quarter_even + 0.5 * k1) * sixth, (quarter_even - 0.5 * k1) * sixth, k2)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _kernel_transform4(w, u):
    """w (C_out, Cg, 3, 3) -> u (G, 36, Dg, Cg): u[g, 6*a + b, d, c] = (G w G^T)[a, b],
    computed in float64 (1/6 and 1/24 are not exact) and rounded once. One task per
    output channel, through a local buffer as ``_kernel_transform``."""
    c_out, cg = w.shape[0], w.shape[1]
    dg = u.shape[2]
    for o in prange(c_out):
        ug = u[o // dg]
        d = o % dg
        tmp = np.empty((36, cg), dtype=u.dtype)
        for c in range(cg):
            k = w[o, c]
            col0 = _g6(np.float64(k[0, 0]), np.float64(k[1, 0]), np.float64(k[2, 0]))
            col1 = _g6(np.float64(k[0, 1]), np.float64(k[1, 1]), np.float64(k[2, 1]))
            col2 = _g6(np.float64(k[0, 2]), np.float64(k[1, 2]), np.float64(k[2, 2]))
            for a in range(6):
                row = _g6(col0[a], col1[a], col2[a])
                for b in range(6):
                    tmp[6 * a + b, c] = row[b]
        for e in range(36):
            ug[e, d, :] = tmp[e]


@njit(inline="always")
def _bt6(e0, e1, e2, e3, e4, e5, two, four, five):
    """B^T e for F(4x4, 3x3) (one 6-point column or row)."""
    return (four * e0 - five * e2 + e4,
            e3 + e4 - four * (e1 + e2),
            e4 - e3 + four * (e1 - e2),
            e4 - e2 - two * (e1 - e3),
            e4 - e2 + two * (e1 - e3),
            four * e1 - five * e3 + e5)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _input_transform4(x, v, cg, cols, c0, r0, r1, th, tw, pt, pl):
    """As ``_input_transform`` for F(4x4, 3x3): 6x6 input tiles at (4i - pt, 4j - pl),
    v (36, Cg, (r1-r0)*tw) = B^T d B with
    B^T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
           [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]].

    Per task (a channel of one image, its tile rows ra..rb of the chunk): each input row
    the tiles read is copied with its padding, split into its four column phases (phase p
    holds columns 4j + p) and transformed along the row once (tile j reads phases 0-3 at
    j and phases 0-1 at j + 1: contiguous loads), into ``rows[rho % 4, b]`` at tile row
    rho // 4. Tile row r reads input rows 4r .. 4r+5, i.e. phases 0-3 of block r and
    phases 0-1 of block r + 1, so B^T down the columns runs over all the task's tile rows
    in one contiguous loop per entry b."""
    wd = x.shape[3]
    wp = 4 * (tw + 1)  # padded input columns, whole groups of four
    lo = min(pl, wp)
    hi = min(wp, pl + wd)
    n_first, images = _images_of(r0, r1, th)
    two = x.dtype.type(2)
    four = x.dtype.type(4)
    five = x.dtype.type(5)
    for task in prange(cg * images):
        c, n, ra, rb = _task_rows(task, images, n_first, r0, r1, th)
        img = x[n, c0 + c]
        nr = rb - ra
        row = np.empty(wp, dtype=x.dtype)
        ph = np.empty((4, tw + 1), dtype=x.dtype)
        rows = np.empty((4, 6, (nr + 1) * tw), dtype=x.dtype)
        top = 4 * (ra - n * th) - pt
        for rho in range(4 * nr + 2):  # B along each input row, once
            _padded_row(img, top + rho, row, lo, hi, pl)
            p0, p1, p2, p3 = ph[0], ph[1], ph[2], ph[3]
            for j in range(U(tw + 1)):
                q = U(4) * j
                p0[j] = row[q]
                p1[j] = row[q + U(1)]
                p2[j] = row[q + U(2)]
                p3[j] = row[q + U(3)]
            dst = rows[rho % 4]
            base = U((rho // 4) * tw)
            s0, s1, s2, s3, s4, s5 = dst[0], dst[1], dst[2], dst[3], dst[4], dst[5]
            for j in range(U(tw)):
                o = _bt6(p0[j], p1[j], p2[j], p3[j], p0[j + U(1)], p1[j + U(1)],
                         two, four, five)
                s0[base + j] = o[0]
                s1[base + j] = o[1]
                s2[base + j] = o[2]
                s3[base + j] = o[3]
                s4[base + j] = o[4]
                s5[base + j] = o[5]
        k0 = U(c * cols + (ra - r0) * tw)
        nxt = U(tw)
        for b in range(6):  # B^T down the columns, all tile rows at once
            e0, e1, e2, e3 = rows[0, b], rows[1, b], rows[2, b], rows[3, b]
            o0, o1, o2 = v[b], v[6 + b], v[12 + b]
            o3, o4, o5 = v[18 + b], v[24 + b], v[30 + b]
            for k in range(U(nr * tw)):
                o = _bt6(e0[k], e1[k], e2[k], e3[k], e0[k + nxt], e1[k + nxt],
                         two, four, five)
                o0[k0 + k] = o[0]
                o1[k0 + k] = o[1]
                o2[k0 + k] = o[2]
                o3[k0 + k] = o[3]
                o4[k0 + k] = o[4]
                o5[k0 + k] = o[5]


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
    """As ``_output_transform`` for F(4x4, 3x3): the 4x4 block A^T m A of every 6x6 tile,
    A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
           [0, 1, -1, 8, -8, 1]]. A^T first combines the six rows of m elementwise, for
    all the task's tile rows in one contiguous loop, then each of the four resulting rows
    of a tile row is transformed along and its four outputs per tile stored together
    (one interleaved store group)."""
    _, _, ho, wo = y.shape
    n_first, images = _images_of(r0, r1, th)
    two = m.dtype.type(2)
    four = m.dtype.type(4)
    eight = m.dtype.type(8)
    for task in prange(dg * images):
        d, n, ra, rb = _task_rows(task, images, n_first, r0, r1, th)
        out = y[n, d0 + d]
        add = bias[d0 + d] if has_bias else y.dtype.type(0)
        bad = 0  # outputs that are NaN or +-Inf
        nr = rb - ra
        # u[a, b, r*tw + j]: row a of A^T m for entry b of tile (r, j), all tile rows at once
        u = np.empty((4, 6, nr * tw), dtype=m.dtype)
        line = np.empty(4 * tw, dtype=m.dtype)
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
        for r in range(nr):
            i = 4 * (ra + r - n * th)
            base = U(r * tw)
            for a in range(min(4, ho - i)):  # A along each output row
                ua = u[a]
                e0, e1, e2 = ua[0], ua[1], ua[2]
                e3, e4, e5 = ua[3], ua[4], ua[5]
                for j in range(U(tw)):
                    k = base + j
                    o = _at6(e0[k], e1[k], e2[k], e3[k], e4[k], e5[k], two, four, eight)
                    q = U(4) * j
                    line[q] = o[0] + add
                    line[q + U(1)] = o[1] + add
                    line[q + U(2)] = o[2] + add
                    line[q + U(3)] = o[3] + add
                dst = out[i + a]
                for q in range(U(wo)):
                    dst[q] = line[q]
                    bad += not math.isfinite(line[q])
        flags[task] = bad > 0


# ------------------------------------------------------------------------ driver
#: Output block size m of F(m x m, 3x3) -> (kernel transform, input transform, output
#: transform).
_KERNELS = {2: (_kernel_transform, _input_transform, _output_transform),
            4: (_kernel_transform4, _input_transform4, _output_transform4)}


def tile_size() -> int:
    """The output block m of F(m x m, 3x3) that ``algo="winograd"`` uses:
    ``config.WINOGRAD_TILE`` (4 by default; 2 is the more accurate variant)."""
    m = int(config.WINOGRAD_TILE)
    if m not in _KERNELS:
        raise ValueError(f"conv2d: config.WINOGRAD_TILE={config.WINOGRAD_TILE!r} must be 2 "
                         "or 4 (F(2x2, 3x3) or F(4x4, 3x3))")
    return m


def transformed(m: int) -> int:
    """Values per transformed tile: (m + 2)^2."""
    return (m + 2) * (m + 2)


def tile_grid(h_out: int, w_out: int, m: int) -> tuple[int, int]:
    """Tile rows and tile columns covering an h_out x w_out output with m x m blocks."""
    return -(-h_out // m), -(-w_out // m)


def chunk_rows(args, m: int | None = None, chunk_bytes: int | None = None,
               budget: int | None = None) -> int:
    """Tile rows per chunk of F(m x m, 3x3) (default: ``tile_size()``): as many as keep
    the transformed input and the GEMM result of one group, (m+2)^2 * (Cg + Dg) * rows *
    tw elements, within ``chunk_bytes`` (``config.WINOGRAD_CHUNK_BYTES``) and the
    workspace budget; at least one."""
    m = tile_size() if m is None else m
    th, tw = tile_grid(args.h_out, args.w_out, m)
    return _rows_per_chunk(args.n * th, tw, args.c_in // args.groups,
                           args.c_out // args.groups, args.dtype.itemsize, m, chunk_bytes,
                           budget)


def _rows_per_chunk(total_rows, tw, cg, dg, itemsize, m, chunk_bytes=None,
                    budget=None) -> int:
    chunk_bytes = config.WINOGRAD_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    budget = config.WORKSPACE_BYTES if budget is None else budget
    per_row = transformed(m) * (cg + dg) * tw * itemsize
    return max(1, min(total_rows, min(chunk_bytes, budget) // per_row))


def workspace_bytes(args) -> int:
    """Scratch bytes of the forward: the chunk's transformed tiles and GEMM result, the
    transformed kernel, and for NHWC the NCHW copies of input and output."""
    item = args.dtype.itemsize
    m = tile_size()
    t = transformed(m)
    _, tw = tile_grid(args.h_out, args.w_out, m)
    cg, dg = args.c_in // args.groups, args.c_out // args.groups
    total = t * (cg + dg) * chunk_rows(args) * tw * item + t * args.c_out * cg * item
    if args.layout == "NHWC":
        total += args.n * (args.c_in * args.h * args.w + args.c_out * args.h_out
                           * args.w_out) * item
    return total


def transform_kernel(w_oihw: np.ndarray, groups: int, m: int) -> np.ndarray:
    """(C_out, Cg, 3, 3) -> (G, (m+2)^2, Dg, Cg), contiguous."""
    c_out, cg = w_oihw.shape[:2]
    u = np.empty((groups, transformed(m), c_out // groups, cg), w_oihw.dtype)
    _KERNELS[m][0](np.ascontiguousarray(w_oihw), u)
    return u


def _run_nchw(x, u, y, bias, pads, groups, m) -> bool:
    """y (N, C_out, Ho, Wo) = F(m x m, 3x3) of x (N, C_in, H, W), contiguous, with the
    transformed kernel u (G, (m+2)^2, Dg, Cg) and padding (top, left), dilation 1.
    Returns whether every output is finite."""
    n, c_in = x.shape[:2]
    c_out, ho, wo = y.shape[1:]
    cg, dg = c_in // groups, c_out // groups
    th, tw = tile_grid(ho, wo, m)
    t = transformed(m)
    _, input_transform, output_transform = _KERNELS[m]
    pt, pl = pads
    rows = _rows_per_chunk(n * th, tw, cg, dg, x.itemsize, m)
    has_bias = bias is not None
    b = bias if has_bias else np.zeros(1, x.dtype)
    flags = np.zeros(dg * (rows // th + 2), np.bool_)  # a chunk covers <= rows/th + 2 images
    finite = True
    for r0 in range(0, n * th, rows):
        r1 = min(n * th, r0 + rows)
        cols = (r1 - r0) * tw
        v, v_planes = _planes("winograd_v", t, cg, cols, x.dtype)
        prod, prod_planes = _planes("winograd_m", t, dg, cols, x.dtype)
        for g in range(groups):
            input_transform(x, v_planes, cg, cols, g * cg, r0, r1, th, tw, pt, pl)
            _blas.split_matmul(u[g], v, prod)
            output_transform(prod_planes, y, dg, cols, g * dg, r0, r1, th, tw, b,
                             has_bias, flags)
            finite = finite and not flags.any()
    return finite


#: Elements between consecutive planes of the transformed tiles beyond the plane itself:
#: the transforms write/read all (m+2)^2 planes at once, and planes a multiple of 4 KiB
#: apart all map to the same cache sets (the F(4x4, 3x3) input transform ran 1.5-2x
#: slower so).
PLANE_PAD = 16


def _planes(slot, t, rows, cols, dtype):
    """A workspace of t planes (rows, cols), PLANE_PAD elements apart: returned as the
    (t, rows, cols) view for the GEMMs and the (t, rows*cols + PLANE_PAD) array the
    kernels index (plane e, element row*cols + col)."""
    stride = rows * cols + PLANE_PAD
    flat = workspace(slot, t * stride, dtype).reshape(t, stride)
    return flat[:, :rows * cols].reshape(t, rows, cols), flat


def forward(x: np.ndarray, w: np.ndarray, args, out: np.ndarray, bias=None) -> None:
    """F(m x m, 3x3) convolution into ``out`` (caller's layout), plus ``bias`` when given.
    Wraps the kernel and input transforms, numpy's BLAS matmul (``_blas.split_matmul``)
    and the output transform of ``_KERNELS[m]``.

    Non-finite values: a NaN or Inf entering a tile's transform can reach every output of
    that tile (and Inf - Inf turns an infinity into NaN), unlike the direct formula. The
    output transform therefore flags any non-finite output, and im2col then recomputes
    the call: the result always equals the direct formula's, NaN and Inf included.
    ``args`` must be one ``supports`` accepts (conv2d checks that)."""
    if args.n == 0:
        return
    m = tile_size()
    pads = (args.padding[0][0], args.padding[1][0])
    if args.layout == "NCHW":
        u = transform_kernel(w, args.groups, m)
        finite = _run(np.ascontiguousarray(x), u, out, bias, pads, args.groups, m,
                      args.dilation)
    else:
        u = transform_kernel(w.transpose(3, 2, 0, 1), args.groups, m)   # HWIO -> OIHW
        xn = _nhwc.to_nchw(x)
        yn = np.empty((args.n, args.c_out, args.h_out, args.w_out), args.dtype)
        finite = _run(xn, u, yn, bias, pads, args.groups, m, args.dilation)
        _nhwc.write_nhwc(yn, out)
    if not finite:
        im2col.forward(x, w, args, out, bias)


def phases(out: int, pad: int, dilation: int) -> list[tuple[int, int, int, int]]:
    """The polyphase split of one axis of a dilated 3x3 correlation with stride 1.

    Output i = d*i' + rho reads inputs i + d*a - pad = d*(i' + a - p') + sigma with
    sigma = (rho - pad) mod d and p' = -floor((rho - pad) / d): an undilated correlation
    of the input's phase sigma (every d-th element from sigma) with padding p' before it.
    Returns (rho, sigma, p', outputs of phase rho) for every phase with outputs."""
    out_phases = []
    for rho in range(min(dilation, out)):
        sigma = (rho - pad) % dilation
        out_phases.append((rho, sigma, -((rho - pad) // dilation),
                           len(range(rho, out, dilation))))
    return out_phases


def _run(x, u, y, bias, pads, groups, m, dilation) -> bool:
    """``_run_nchw`` for any dilation (dh, dw). Dilated, the outputs
    y[:, :, rho_h::dh, rho_w::dw] of each phase are an undilated 3x3 correlation of the
    input phase x[:, :, sigma_h::dh, sigma_w::dw] (``phases``), computed with
    F(m x m, 3x3) on contiguous copies and scattered back. Returns whether every output
    is finite."""
    if dilation == (1, 1):
        return _run_nchw(x, u, y, bias, pads, groups, m)
    ho, wo = y.shape[2:]
    finite = True
    for rho_h, sigma_h, pt, count_h in phases(ho, pads[0], dilation[0]):
        for rho_w, sigma_w, pl, count_w in phases(wo, pads[1], dilation[1]):
            xs = np.ascontiguousarray(x[:, :, sigma_h::dilation[0], sigma_w::dilation[1]])
            ys = np.empty(y.shape[:2] + (count_h, count_w), y.dtype)
            finite &= _run_nchw(xs, u, ys, bias, (pt, pl), groups, m)
            y[:, :, rho_h::dilation[0], rho_w::dilation[1]] = ys
    return finite


# ------------------------------------------------------------------ weight gradient
# y = A^T [(G w G^T) * (B^T d B)] A is linear in w, so its adjoint gives the weight
# gradient of one tile: grad_w += G^T [(A gy A^T) * (B^T d B)] G, with gy the tile's m x m
# block of grad_y. Summed over channels and tiles: per entry e of the (m+2) x (m+2)
# transforms, GW[e] (Dg, Cg) = sum over tiles of Yt[e] (Dg, tiles) @ V[e]^T, one GEMM per
# entry as in the forward, then grad_w[d, c] = G^T GW[:, d, c] G.

@njit(inline="always")
def _a2(g0, g1):
    """A g for F(2x2, 3x3): A = (A^T)^T = [[1, 0], [1, 1], [1, -1], [0, -1]]."""
    return g0, g0 + g1, g0 - g1, -g1


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _grad_transform(gy, p, dg, cols, d0, r0, r1, th, tw):
    """gy (N, C_out, Ho, Wo) -> p (16, Dg*cols + pad): the transformed output-gradient
    tiles of F(2x2, 3x3), p[4*a + b, d*cols + (r - r0)*tw + j] = (A g A^T)[a, b] for the
    2x2 block g of grad_y channel d0 + d at tile (r, j), zero beyond Ho, Wo. One task per
    (channel, image) of the chunk."""
    _, _, ho, wo = gy.shape
    n_first, images = _images_of(r0, r1, th)
    width = 2 * tw
    for task in prange(dg * images):
        d, n, ra, rb = _task_rows(task, images, n_first, r0, r1, th)
        plane = gy[n, d0 + d]
        rows = np.zeros((2, width), dtype=gy.dtype)
        t = np.empty((4, width), dtype=gy.dtype)
        for r in range(ra, rb):
            i0 = 2 * (r - n * th)
            for i in range(2):
                if i0 + i < ho:
                    rows[i, :wo] = plane[i0 + i]
                else:
                    rows[i, :] = 0
            g0, g1 = rows[0], rows[1]
            t0, t1, t2, t3 = t[0], t[1], t[2], t[3]
            for q in range(U(width)):  # A down the columns
                o = _a2(g0[q], g1[q])
                t0[q] = o[0]
                t1[q] = o[1]
                t2[q] = o[2]
                t3[q] = o[3]
            k0 = U(d * cols + (r - r0) * tw)
            for a in range(4):  # A along the rows
                ta = t[a]
                o0, o1, o2, o3 = p[4 * a], p[4 * a + 1], p[4 * a + 2], p[4 * a + 3]
                for j in range(U(tw)):
                    o = _a2(ta[U(2) * j], ta[U(2) * j + U(1)])
                    o0[k0 + j] = o[0]
                    o1[k0 + j] = o[1]
                    o2[k0 + j] = o[2]
                    o3[k0 + j] = o[3]


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _weight_from_transform(gw, gt, grad_w, o0):
    """grad_w[o0 + d, c] = G^T gw[:, d, c] G (3x3) for gw (alpha^2, Dg, Cg) and G^T
    gt (3, alpha) in float64; one task per output channel, the input channels innermost
    (contiguous loads)."""
    alpha = gt.shape[1]
    dg, cg = gw.shape[1], gw.shape[2]
    for d in prange(dg):
        left = np.zeros((3, alpha, cg))      # G^T gw, per input channel
        for i in range(3):
            for a in range(alpha):
                coef = gt[i, a]
                if coef == 0.0:
                    continue
                for b in range(alpha):
                    src = gw[alpha * a + b, d]
                    dst = left[i, b]
                    for c in range(cg):
                        dst[c] += coef * src[c]
        out = grad_w[o0 + d]
        for i in range(3):
            for j in range(3):
                acc = np.zeros(cg)
                for b in range(alpha):
                    coef = gt[j, b]
                    if coef == 0.0:
                        continue
                    src = left[i, b]
                    for c in range(cg):
                        acc[c] += coef * src[c]
                for c in range(cg):
                    out[c, i, j] = acc[c]


#: G^T (3 x 4) of F(2x2, 3x3), float64.
_GT2 = np.array([[1, 0.5, 0.5, 0], [0, 0.5, -0.5, 0], [0, 0.5, 0.5, 1]])


#: The weight gradient always uses F(2x2, 3x3): on a resnet_56 layer (16 x 64 x 56 x 56)
#: it ran as fast as an F(4x4, 3x3) version (23.6 vs 22.7 ms; its GEMMs sum over 4x more
#: tiles, the long dimension) with a float32 error of 7.4e-7 instead of 7.3e-6 of the
#: largest gradient (im2col: 4.4e-7), so only the F(2x2, 3x3) kernels exist.
GRAD_W_TILE = 2


def grad_w_supported(args) -> bool:
    """The weight gradient runs in the Winograd domain for dilation 1."""
    return supports(args) and args.dilation == (1, 1)


def _grad_w_nchw(gy, x, grad_w, pads, groups) -> None:
    """grad_w (C_out, Cg, 3, 3) from gy (N, C_out, Ho, Wo) and x (N, C_in, H, W), both
    contiguous, with F(2x2, 3x3): per chunk of tile rows and group, the input and
    output-gradient transforms and the 16 GEMMs Yt[e] @ V[e]^T, summed over chunks."""
    m = GRAD_W_TILE
    n, c_in = x.shape[:2]
    c_out, ho, wo = gy.shape[1:]
    cg, dg = c_in // groups, c_out // groups
    th, tw = tile_grid(ho, wo, m)
    t = transformed(m)
    input_transform = _KERNELS[m][1]
    pt, pl = pads
    rows = _rows_per_chunk(n * th, tw, cg, dg, x.itemsize, m)
    total = np.zeros((groups, t, dg, cg), x.dtype)
    part = np.empty((t, dg, cg), x.dtype)
    for r0 in range(0, n * th, rows):
        r1 = min(n * th, r0 + rows)
        cols = (r1 - r0) * tw
        v, v_planes = _planes("winograd_v", t, cg, cols, x.dtype)
        yt, yt_planes = _planes("winograd_m", t, dg, cols, x.dtype)
        for g in range(groups):
            input_transform(x, v_planes, cg, cols, g * cg, r0, r1, th, tw, pt, pl)
            _grad_transform(gy, yt_planes, dg, cols, g * dg, r0, r1, th, tw)
            _blas.split_matmul(yt, v.transpose(0, 2, 1), part)
            total[g] += part
    for g in range(groups):
        _weight_from_transform(total[g], _GT2, grad_w, g * dg)


def _grad_x_kernel(w_oihw: np.ndarray, groups: int) -> np.ndarray:
    """The kernel whose correlation with grad_y gives grad_x: (C_in, Dg, 3, 3) with
    k[g*Cg + c, d, a, b] = w[g*Dg + d, c, 2 - a, 2 - b]."""
    c_out, cg = w_oihw.shape[:2]
    dg = c_out // groups
    k = w_oihw.reshape(groups, dg, cg, 3, 3)[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(k).reshape(groups * cg, dg, 3, 3)


def grad_x_supported(args) -> bool:
    """grad_x is a correlation with padding 2 - p: every padding must be at most 2 (and
    dilation 1; dilated layers take im2col's grad_x)."""
    return (supports(args) and args.dilation == (1, 1)
            and all(0 <= p <= 2 for pair in args.padding for p in pair))


def backward(grad_y: np.ndarray, x: np.ndarray, w: np.ndarray, args, grad_x, grad_w) -> None:
    """Gradients into ``grad_x`` / ``grad_w`` (caller's layout; either may be None).

    grad_x[n, c, i, j] = sum_{d,a,b} grad_y[n, d, i + p_top - a, j + p_left - b] w[d, c, a, b]
    is a 3x3 correlation of grad_y with the flipped kernel, channels transposed, padding
    (2 - p): the forward's transform applies (paddings above 2 and dilated layers use
    im2col). grad_w is the adjoint of F(2x2, 3x3) in the Winograd domain
    (``_grad_w_nchw``, ``GRAD_W_TILE``; dilated layers use im2col). A non-finite result
    is recomputed with im2col, as in the forward."""
    by_x = grad_x is not None and grad_x_supported(args)
    by_w = grad_w is not None and grad_w_supported(args)
    rest_x = grad_x if grad_x is not None and not by_x else None
    rest_w = grad_w if grad_w is not None and not by_w else None
    if rest_x is not None or rest_w is not None:
        im2col.backward(grad_y, x, w, args, rest_x, rest_w)
    if not (by_x or by_w):
        return
    (pt, _), (pl, _) = args.padding
    m = tile_size()
    nchw = args.layout == "NCHW"
    gy = np.ascontiguousarray(grad_y) if nchw else _nhwc.to_nchw(grad_y)
    if by_w:
        xn = np.ascontiguousarray(x) if nchw else _nhwc.to_nchw(x)
        gw = grad_w if nchw else np.empty(args.w_shape, args.dtype)
        _grad_w_nchw(gy, xn, gw, (pt, pl), args.groups)
        if not nchw:
            grad_w[...] = gw.transpose(2, 3, 1, 0)
        if not np.isfinite(gw).all():  # the direct formula's NaN/Inf pattern
            im2col.backward(grad_y, x, w, args, None, grad_w)
    if by_x:
        w_oihw = w if nchw else w.transpose(3, 2, 0, 1)
        u = transform_kernel(_grad_x_kernel(w_oihw, args.groups), args.groups, m)
        gx = grad_x if nchw else np.empty((args.n, args.c_in, args.h, args.w), args.dtype)
        finite = _run_nchw(gy, u, gx, None, (2 - pt, 2 - pl), args.groups, m)
        if not nchw:
            _nhwc.write_nhwc(gx, grad_x)
        if not finite:  # as in forward: the direct formula's NaN/Inf pattern from im2col
            im2col.backward(grad_y, x, w, args, grad_x, None)


def chunks(args, m: int | None = None) -> int:
    """Chunks of tile rows the forward (or, with m, F(m x m, 3x3)) runs in."""
    m = tile_size() if m is None else m
    th, _ = tile_grid(args.h_out, args.w_out, m)
    return math.ceil(args.n * th / chunk_rows(args, m))
