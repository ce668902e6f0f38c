"""im2col + GEMM: unfold receptive fields into a column buffer, then one BLAS GEMM.

NCHW: for each image, cols[(c*KH + a)*KW + b, i*Wo + j] = x[n, c, s_h*i + r_h*a - p_top,
s_w*j + r_w*b - p_left] (zero outside), so y[n] = W (D, C*KH*KW) @ cols (per group).
NHWC: one row per output pixel, cols[p, g, (a*KW + b)*Cg + c], so y (pixels, D) =
cols @ W (KH*KW*Cg, D) (per group); the channel copies are contiguous.

The batch is processed in tiles (a run of whole images, or a band of output rows of one
image) sized by ``config.IM2COL_CHUNK_BYTES`` so each unfolded tile is still in cache when
its GEMM reads it; the column buffer never exceeds ``config.WORKSPACE_BYTES`` (a single
output row of one image is the smallest tile).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from .. import config
from .._runtime import parallel_guard
from ._common import U, valid_range, workspace


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _im2col_nchw(x, cols, n0, i0, wo, sh, sw, pt, pl, rh, rw, kh, kw):
    """x (N, C, H, W) -> cols (C*KH*KW, B, band*Wo) for images n0.. and output rows i0..

    cols[(c*KH + a)*KW + b, bi, ii*Wo + j] = x[n0+bi, c, (i0+ii)*sh + a*rh - pt,
    j*sw + b*rw - pl], zero outside. One task per (row of cols, image), writing one
    contiguous run of cols. Inner loops index with unsigned offsets (see
    ``_common.U``) so that the copies vectorise."""
    _, _, h, wd = x.shape
    ckk, nb, length = cols.shape
    band = length // wo
    kk = kh * kw
    zero = cols.dtype.type(0)
    for task in prange(ckk * nb):
        r = task // nb
        bi = task % nb
        c = r // kk
        a = (r // kw) % kh
        b = r % kw
        dst = cols[r, bi]
        img = x[n0 + bi, c]
        off = b * rw - pl
        j_lo, j_hi = valid_range(wo, off, sw, wd)
        first = U(j_lo * sw + off)  # input column of output column j_lo
        step = U(sw)
        for ii in range(band):
            base = U(ii * wo)
            src = (i0 + ii) * sh + a * rh - pt
            if src < 0 or src >= h:
                for j in range(U(wo)):
                    dst[base + j] = zero
                continue
            line = img[src]
            for j in range(U(j_lo)):
                dst[base + j] = zero
            d0 = base + U(j_lo)
            if sw == 1:
                for j in range(U(j_hi - j_lo)):
                    dst[d0 + j] = line[first + j]
            else:
                for j in range(U(j_hi - j_lo)):
                    dst[d0 + j] = line[first + j * step]
            for j in range(U(j_hi), U(wo)):
                dst[base + j] = zero


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _scatter_nchw(tmp, out, n0, i0, bias):
    """tmp (D, B, band*Wo) -> out[n0+bi, d, i0:i0+band, :] = tmp[d, bi] (+ bias[d] when
    bias has D entries; an empty bias adds nothing)."""
    d_all, nb, length = tmp.shape
    wo = out.shape[3]
    band = length // wo
    with_bias = bias.shape[0] == d_all
    for task in prange(d_all * nb):
        d = task // nb
        bi = task % nb
        src = tmp[d, bi]
        bv = bias[d] if with_bias else src.dtype.type(0)
        for ii in range(band):
            row = out[n0 + bi, d, i0 + ii]
            base = U(ii * wo)
            for j in range(U(wo)):
                row[j] = src[base + j] + bv


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _im2col_nhwc(x, cols, n0, i0, wo, sh, sw, pt, pl, rh, rw, kh, kw, band):
    """x (N, H, W, C) -> cols (B*band*Wo, G, KH*KW*Cg) for images n0.. and rows i0.."""
    _, h, wd, _ = x.shape
    n_pix, groups, kkc = cols.shape
    cg = kkc // (kh * kw)
    per_img = band * wo
    for p in prange(n_pix):
        n = n0 + p // per_img
        i = i0 + (p % per_img) // wo
        j = p % wo
        dst = cols[p]
        for a in range(kh):
            src_i = i * sh + a * rh - pt
            inside_i = 0 <= src_i < h
            for b in range(kw):
                src_j = j * sw + b * rw - pl
                k0 = (a * kw + b) * cg
                if inside_i and 0 <= src_j < wd:
                    px = x[n, src_i, src_j]
                    for g in range(groups):
                        dst[g, k0:k0 + cg] = px[g * cg:(g + 1) * cg]
                else:
                    dst[:, k0:k0 + cg] = 0


def _view(a: np.ndarray, shape) -> np.ndarray:
    """Reshape without copying (raises if a copy would be needed)."""
    v = a.view()
    v.shape = shape
    return v


@dataclass(frozen=True)
class Tiling:
    """How the batch is cut: ``images`` whole images per tile, or a ``band`` of output
    rows of one image (images == 1 and band < h_out)."""

    images: int
    band: int
    col_bytes: int  # size of the column buffer


def tiling(args, chunk_bytes: int | None = None, budget: int | None = None) -> Tiling:
    """Pick the tile for ``args`` (see the module docstring)."""
    chunk = config.IM2COL_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    budget = config.WORKSPACE_BYTES if budget is None else budget
    chunk = max(1, min(chunk, budget))
    item = args.dtype.itemsize
    ckk = args.c_in * args.kh * args.kw
    row_bytes = ckk * args.w_out * item
    image_bytes = row_bytes * args.h_out
    if image_bytes <= chunk:
        images = max(1, min(args.n, chunk // max(image_bytes, 1)))
        return Tiling(images, args.h_out, images * image_bytes)
    band = max(1, min(args.h_out, chunk // max(row_bytes, 1)))
    return Tiling(1, band, band * row_bytes)


def is_pointwise(args) -> bool:
    """1x1 kernel, stride 1, no padding: the input already is the column matrix."""
    return (args.kh == args.kw == 1 and args.stride == (1, 1)
            and args.padding == ((0, 0), (0, 0)))


def forward(x: np.ndarray, w: np.ndarray, args, out: np.ndarray, bias=None) -> None:
    """im2col convolution into ``out`` (caller's layout), plus ``bias`` when given.

    Wraps ``_im2col_nchw`` / ``_im2col_nhwc`` (unfold), numpy's BLAS matmul and
    ``_scatter_nchw`` (tile -> output, fused bias add)."""
    if args.n == 0:
        return
    x = np.ascontiguousarray(x)
    if args.layout == "NCHW":
        _forward_nchw(x, w, args, out, bias)
    else:
        _forward_nhwc(x, w, args, out, bias)


def _conv_params(args) -> tuple:
    return (args.w_out, args.stride[0], args.stride[1], args.padding[0][0],
            args.padding[1][0], args.dilation[0], args.dilation[1], args.kh, args.kw)


def _forward_nchw(x, w, args, out, bias) -> None:
    """NCHW: per tile, cols (G*Cg*KH*KW, B*band*Wo) and one GEMM per group,
    W (G, Dg, Cg*KH*KW) @ cols. A tile of one image is multiplied straight into ``out``;
    a tile of several small images goes through a scratch (D, B*band*Wo) result that
    ``_scatter_nchw`` spreads into ``out`` with the bias."""
    g, dg = args.groups, args.c_out // args.groups
    cgkk = (args.c_in // g) * args.kh * args.kw
    wmat = np.ascontiguousarray(w).reshape(g, dg, cgkk)
    bias_g = None if bias is None else bias.reshape(g, dg, 1)
    if is_pointwise(args):
        hw = args.h * args.w
        y = _view(out, (args.n, g, dg, hw))
        np.matmul(wmat, _view(x, (args.n, g, args.c_in // g, hw)), out=y)
        if bias_g is not None:
            y += bias_g
        return
    t = tiling(args)
    wo = args.w_out
    conv = _conv_params(args)
    buf = workspace("im2col.cols", t.col_bytes // args.dtype.itemsize, args.dtype)
    if t.images > 1:
        tmp = workspace("im2col.gemm", args.c_out * t.images * t.band * wo, args.dtype)
        bias_flat = np.zeros(0, args.dtype) if bias is None else np.ascontiguousarray(bias)
    for n0 in range(0, args.n, t.images):
        nb = min(t.images, args.n - n0)
        for i0 in range(0, args.h_out, t.band):
            band = min(t.band, args.h_out - i0)
            length = band * wo
            cols = _view(buf[:g * cgkk * nb * length], (g * cgkk, nb, length))
            with parallel_guard():
                _im2col_nchw(x, cols, n0, i0, *conv)
            cols_g = _view(cols, (g, cgkk, nb * length))
            if t.images == 1:
                y = _view(out[n0, :, i0:i0 + band, :], (g, dg, length))
                np.matmul(wmat, cols_g, out=y)
                if bias_g is not None:
                    y += bias_g
            else:
                y = _view(tmp[:args.c_out * nb * length], (g, dg, nb * length))
                np.matmul(wmat, cols_g, out=y)
                with parallel_guard():
                    _scatter_nchw(_view(y, (args.c_out, nb, length)), out, n0, i0, bias_flat)


def _forward_nhwc(x, w, args, out, bias) -> None:
    """NHWC: per tile, cols (B*band*Wo, G, KH*KW*Cg) and W (G, KH*KW*Cg, Dg); the GEMM
    writes (pixels, G, Dg), which is the output tile itself."""
    t = tiling(args)
    g, dg = args.groups, args.c_out // args.groups
    cgkk = (args.c_in // g) * args.kh * args.kw
    wo = args.w_out
    conv = _conv_params(args)
    # HWIO (KH, KW, Cg, D) -> (G, KH*KW*Cg, Dg)
    wmat = np.ascontiguousarray(w.reshape(cgkk, g, dg).transpose(1, 0, 2))
    bias_g = None if bias is None else bias.reshape(g, dg)
    buf = workspace("im2col.cols", t.col_bytes // args.dtype.itemsize, args.dtype)
    for n0 in range(0, args.n, t.images):
        nb = min(t.images, args.n - n0)
        for i0 in range(0, args.h_out, t.band):
            band = min(t.band, args.h_out - i0)
            length = band * wo
            cols = _view(buf[:nb * length * g * cgkk], (nb * length, g, cgkk))
            with parallel_guard():
                _im2col_nhwc(x, cols, n0, i0, *conv, band)
            y = _view(out[n0:n0 + nb, i0:i0 + band, :, :], (nb * length, g, dg))
            np.matmul(cols.transpose(1, 0, 2), wmat, out=y.transpose(1, 0, 2))
            if bias_g is not None:
                y += bias_g
