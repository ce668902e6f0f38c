"""Winograd F(m x m, 3x3) on NHWC activations, without copies to NCHW.

In NHWC a tile's (m+2) x (m+2) input block holds all channels of each pixel together,
so the transforms here run over contiguous channels: the input transform writes the
transformed tiles as (m+2)^2 planes of shape (tiles, Cg) (entry e of tile k, channel c
at ``v[e, k*Cg + c]``), the (m+2)^2 GEMMs are
M[e] (tiles, Dg) = V[e] (tiles, Cg) @ U[e]^T (Cg, Dg) with the NCHW path's transformed
kernel U, and the output transform writes each tile's m x m block of Dg output channels
straight into the NHWC output. One kernel pair serves both tile sizes: F(4x4, 3x3)
applies ``f4``'s B^T and A^T to six channel vectors at once; F(2x2, 3x3) takes B^T and
A^T as small matrices (``TRANSFORMS``) and skips their zero entries. NCHW has its own
transforms (``f2``, ``f4``: rows of one channel plane innermost).

>>> import numpy as np
>>> from fastconv import conv2d
>>> x = np.ones((1, 6, 6, 2), np.float32)              # NHWC
>>> w = np.ones((3, 3, 2, 4), np.float32)              # HWIO
>>> y = conv2d(x, w, padding=1, layout="NHWC", algo="winograd")
>>> y.shape, float(y[0, 2, 2, 3]), float(y[0, 0, 0, 0])
((1, 6, 6, 4), 18.0, 8.0)
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ... import _blas, _lanes, config
from ..._runtime import guarded
from .._common import U
from .nhwc_tiles import fused_applies, fused_forward, tile_in4, tile_out4
from .tiling import _rows_per_chunk, chunk_planes, tile_grid, transformed

#: Tile size m -> (B^T ((m+2) x (m+2)), A^T (m x (m+2))) of F(m x m, 3x3), as in the
#: package docstring (F(2x2, 3x3)) and ``f4`` (F(4x4, 3x3)).
TRANSFORMS = {
    2: ([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]]),
    4: ([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
         [0, 1, -1, 8, -8, 1]]),
}


@njit(inline="always")
def _combine(mat, row, src, s, stride, dst, o, n):
    """dst[o + c] = sum_q mat[row, q] * src[q*stride + s + c] for c < n, skipping the
    zero coefficients (unsigned offsets: the loops over c vectorise)."""
    for c in range(n):
        dst[o + c] = 0
    for q in range(mat.shape[1]):
        coef = mat[row, q]
        if coef != 0:
            i0 = U(q) * stride + s
            for c in range(n):
                dst[o + c] += coef * src[i0 + c]


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _input_transform_nhwc(x, bt, v, cg, c0, r0, r1, th, tw, pt, pl, grid):
    """x (N, H, W, C); v (T, >= cols*Cg) planes: v[e, k*Cg + c] = (B^T d B)[e] of tile k
    of the chunk (tile rows r0..r1 of the whole batch, tw tiles each), channels
    c0..c0 + Cg - 1. One task per tile row; each tile's block d is copied with its
    zero padding, combined down its columns, then along its rows (F(4x4, 3x3):
    ``nhwc_tiles.tile_in4``).

    grid (hp, wp, sigma_h, sigma_w, dh, dw): the tiles cover the hp x wp input phase
    x[:, sigma_h::dh, sigma_w::dw] (the whole input: (H, W, 0, 0, 1, 1))."""
    n_img, h, wd, c_all = x.shape
    hp, wp, sig_h, sig_w, dh, dw = grid
    s = bt.shape[0]
    m = s - 2
    ucg = U(cg)
    fx, fv, plane = x.reshape(x.size), v.reshape(v.size), U(v.shape[1])
    for task in prange(r1 - r0):
        r = r0 + task
        n = r // th
        top = (r % th) * m - pt
        d = np.empty(s * s * cg, x.dtype)
        tmp = np.empty(s * s * cg, x.dtype)
        for tj in range(tw):
            left = tj * m - pl
            k = U(task * tw + tj) * ucg
            if s == 6:
                tile_in4(fx, x.shape, c0, cg, n, top, left, grid, d, tmp, fv, k, plane)
                continue
            for a in range(s):
                for b in range(s):
                    o = U(a * s + b) * ucg
                    ii, jj = top + a, left + b
                    if 0 <= ii < hp and 0 <= jj < wp:
                        src = U(((n * h + sig_h + ii * dh) * wd + sig_w + jj * dw) * c_all
                                + c0)
                        for c in range(ucg):
                            d[o + c] = fx[src + c]
                    else:
                        for c in range(ucg):
                            d[o + c] = 0
            for a in range(s):       # B^T down the columns: tmp[a, b] = sum_q B^T[a, q] d[q, b]
                for b in range(s):
                    _combine(bt, a, d, U(b) * ucg, U(s) * ucg, tmp, U(a * s + b) * ucg, ucg)
            for a in range(s):       # B along the rows: v[a*s + e] = sum_q B^T[e, q] tmp[a, q]
                for e in range(s):
                    _combine(bt, e, tmp, U(a * s) * ucg, ucg, fv, U(a * s + e) * plane + k,
                             ucg)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _output_transform_nhwc(p, at, y, dg, d0, r0, r1, th, tw, bias, has_bias, flags, grid):
    """p (T, >= cols*Dg) planes of the GEMM results (entry e of tile k, channel d at
    p[e, k*Dg + d]) -> the m x m blocks A^T M A of y (N, Ho, Wo, D), channels
    d0..d0 + Dg - 1, plus bias (F(4x4, 3x3): ``nhwc_tiles.tile_out4``). flags[task]
    says whether a task wrote a NaN or Inf.
    grid (ho, wo, rho_h, rho_w, dh, dw): the tiles cover the ho x wo output phase
    y[:, rho_h::dh, rho_w::dw] (the whole output: (Ho, Wo, 0, 0, 1, 1))."""
    n_img, y_h, y_w, d_all = y.shape
    ho, wo, rho_h, rho_w, dh, dw = grid
    m, s = at.shape
    udg = U(dg)
    fy, fp, plane = y.reshape(y.size), p.reshape(p.size), U(p.shape[1])
    for task in prange(r1 - r0):
        r = r0 + task
        n = r // th
        top = (r % th) * m
        add = np.zeros(dg, y.dtype)
        if has_bias:
            add[:] = bias[d0:d0 + dg]
        buf = np.empty(28 * dg, y.dtype)
        tmp = np.empty(m * s * dg, y.dtype)
        line = np.empty(dg, y.dtype)
        nan = _lanes.zeros(add)
        bad = 0
        for tj in range(tw):
            k = U(task * tw + tj) * udg
            if s == 6:
                nan, b = tile_out4(fp, k, plane, dg, fy, y.shape, d0, n, top, tj * m, grid,
                                   add, buf, nan)
                bad += b
                continue
            for a in range(m):       # A^T down the columns
                for col in range(s):
                    o = U(a * s + col) * udg
                    for c in range(udg):
                        tmp[o + c] = 0
                    for q in range(s):
                        coef = at[a, q]
                        if coef != 0:
                            src = U(q * s + col) * plane + k
                            for c in range(udg):
                                tmp[o + c] += coef * fp[src + c]
            for a in range(min(m, ho - top)):    # A along the rows, into y
                for q in range(min(m, wo - tj * m)):
                    _combine(at, q, tmp, U(a * s) * udg, udg, line, U(0), udg)
                    o = U(((n * y_h + rho_h + (top + a) * dh) * y_w + rho_w + (tj * m + q) * dw)
                          * d_all + d0)
                    for c in range(udg):
                        val = line[c] + add[c]
                        fy[o + c] = val
                        # NaN and +-Inf fail the comparison (math.isfinite gets folded
                        # away under the "reassoc" fastmath flag in this loop)
                        bad += not (abs(val) < math.inf)
        for lane in range(_lanes.count(add)):
            bad += not (abs(_lanes.lane(nan, lane)) < math.inf)
        flags[task] = bad > 0


def run_nhwc(x, u, y, bias, pads, groups: int, m: int, phase=None) -> bool:
    """y (N, Ho, Wo, C_out) = F(m x m, 3x3) of x (N, H, W, C_in), both C-contiguous, with
    the transformed kernel u (G, (m+2)^2, Cg, Dg) (``kernel.transform_kernel_io``), padding
    (top, left), dilation 1. Returns whether every output is finite.

    ``phase`` ((rho_h, sigma_h, count_h), (rho_w, sigma_w, count_w), (dh, dw)): only
    the outputs y[:, rho_h::dh, rho_w::dw] (count_h x count_w of them), an undilated
    correlation of the input phase x[:, sigma_h::dh, sigma_w::dw] with padding ``pads``
    (one phase of a dilated layer, ``drivers._run``), read and written in place."""
    n, h, wd, c_in = x.shape
    c_out = y.shape[3]
    if fused_applies(x.shape, y.shape, x.itemsize, groups, m, phase):
        return fused_forward(x, u, y, bias, pads)
    if phase is None:
        in_grid = (h, wd, 0, 0, 1, 1)
        out_grid = (*y.shape[1:3], 0, 0, 1, 1)
    else:
        (rho_h, sig_h, ho), (rho_w, sig_w, wo), (dh, dw) = phase
        in_grid = (len(range(sig_h, h, dh)), len(range(sig_w, wd, dw)), sig_h, sig_w, dh, dw)
        out_grid = (ho, wo, rho_h, rho_w, dh, dw)
    th, tw = tile_grid(out_grid[0], out_grid[1], m)
    cg, dg = c_in // groups, c_out // groups
    rows = _rows_per_chunk(n * th, tw, cg, dg, x.itemsize, m)
    bt, at = (np.array(t, x.dtype) for t in TRANSFORMS[m])
    t = transformed(m)
    has_bias = bias is not None
    b = bias if has_bias else np.zeros(1, x.dtype)
    flags = np.zeros(rows, np.bool_)
    finite = True
    ut = np.ascontiguousarray(u)    # the stage's right operands: (t, Cg, Dg) planes
    for r0, r1, cols, (_, v), (_, prod) in chunk_planes(n * th, rows, tw, cg, dg, m, x.dtype):
        vv = v[:, :cols * cg].reshape(t, cols, cg)
        pv = prod[:, :cols * dg].reshape(t, cols, dg)
        for g in range(groups):
            guarded(_input_transform_nhwc)(x, bt, v, cg, g * cg, r0, r1, th, tw, *pads,
                                           in_grid)
            with np.errstate(invalid="ignore", over="ignore"):   # flagged below
                _blas.split_matmul(vv, ut[g], pv)
            guarded(_output_transform_nhwc)(prod, at, y, dg, g * dg, r0, r1, th, tw, b, has_bias,
                                   flags, out_grid)
            finite = finite and not flags[:r1 - r0].any()
    return finite
