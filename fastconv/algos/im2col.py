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
    """x (N, C, H, W) -> cols (B, C*KH*KW, band*Wo) for images n0.. and output rows i0..

    cols[bi, (c*KH + a)*KW + b, ii*Wo + j] = x[n0+bi, c, (i0+ii)*sh + a*rh - pt,
    j*sw + b*rw - pl], zero outside. One task per (image, row of cols), writing one
    contiguous run. Inner loops index with unsigned offsets (``_common.U``) so that the
    copies vectorise."""
    _, _, h, wd = x.shape
    nb, ckk, length = cols.shape
    band = length // wo
    kk = kh * kw
    zero = cols.dtype.type(0)
    for task in prange(nb * ckk):
        bi = task // ckk
        r = task % ckk
        c = r // kk
        a = (r // kw) % kh
        b = r % kw
        dst = cols[bi, r]
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
def _to_chwn(x, xt, n0):
    """xt[c, i, j, b] = x[n0 + b, c, i, j]: a run of B images with the image index last."""
    _, c_all, h, wd = x.shape
    nb = xt.shape[3]
    for task in prange(c_all * h):
        c = task // h
        i = task % h
        dst = xt[c, i]
        for j in range(wd):
            for b in range(nb):
                dst[j, b] = x[n0 + b, c, i, j]


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _im2col_chwn(xt, cols, i0, wo, sh, sw, pt, pl, rh, rw, kh, kw):
    """xt (C, H, W, B) flattened -> cols (C*KH*KW, band*Wo*B):

    cols[(c*KH + a)*KW + b, (ii*Wo + j)*B + n] = xt[c, (i0+ii)*sh + a*rh - pt,
    j*sw + b*rw - pl, n], zero outside. With the image index innermost, a stride-1 row
    of the tile is one contiguous run of (valid columns) * B elements, long even for
    small images (rows of 8 pixels copy slowly; 8 pixels x 64 images do not)."""
    c_all, h, wd, nb = xt.shape
    flat = xt.reshape(c_all * h * wd * nb)
    ckk, length = cols.shape
    row_len = wo * nb
    band = length // row_len
    kk = kh * kw
    zero = cols.dtype.type(0)
    for task in prange(ckk * band):
        r = task // band
        ii = task % band
        c = r // kk
        a = (r // kw) % kh
        b = r % kw
        dst = cols[r]
        base = U(ii * row_len)
        src = (i0 + ii) * sh + a * rh - pt
        if src < 0 or src >= h:
            for t in range(U(row_len)):
                dst[base + t] = zero
            continue
        off = b * rw - pl
        j_lo, j_hi = valid_range(wo, off, sw, wd)
        line = U((c * h + src) * wd * nb)  # start of input row src of channel c
        for t in range(U(j_lo * nb)):
            dst[base + t] = zero
        d0 = base + U(j_lo * nb)
        if sw == 1:
            s0 = line + U((j_lo + off) * nb)
            for t in range(U((j_hi - j_lo) * nb)):
                dst[d0 + t] = flat[s0 + t]
        else:
            for j in range(j_lo, j_hi):
                s0 = line + U((j * sw + off) * nb)
                dj = d0 + U((j - j_lo) * nb)
                for t in range(U(nb)):
                    dst[dj + t] = flat[s0 + t]
        for t in range(U(j_hi * nb), U(row_len)):
            dst[base + t] = zero


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _scatter_chwn(tmp, out, n0, i0, nb, bias):
    """tmp (D, band*Wo*B) -> out[n0+n, d, i0+ii, j] = tmp[d, (ii*Wo + j)*B + n] for
    n < B = nb (+ bias[d] when bias has D entries; an empty bias adds nothing)."""
    d_all, length = tmp.shape
    wo = out.shape[3]
    band = length // (wo * nb)
    with_bias = bias.shape[0] == d_all
    step = U(nb)
    for task in prange(d_all * nb):
        d = task // nb
        n = task % nb
        src = tmp[d]
        bv = bias[d] if with_bias else src.dtype.type(0)
        for ii in range(band):
            row = out[n0 + n, d, i0 + ii]
            base = U(ii * wo * nb + n)
            for j in range(U(wo)):
                row[j] = src[base + j * step] + bv


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


#: NCHW tiles of at least this many images whose output rows are at most this wide are
#: unfolded image-index-last (``_im2col_chwn``): rows of a few pixels copy slowly, runs of
#: pixels x images do not. Wider rows copy fast as they are and skip the extra passes.
IMAGE_LAST_MAX_WIDTH = 16
IMAGE_LAST_MIN_IMAGES = 4


@dataclass(frozen=True)
class Tiling:
    """How the batch is cut: ``images`` whole images per tile, or a ``band`` of output
    rows of one image (images == 1 and band < h_out). ``image_last``: the NCHW forward
    unfolds the tile with the image index innermost."""

    images: int
    band: int
    col_bytes: int  # size of the column buffer
    image_last: bool = False


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
        image_last = (args.layout == "NCHW" and images >= IMAGE_LAST_MIN_IMAGES
                      and args.w_out <= IMAGE_LAST_MAX_WIDTH)
        return Tiling(images, args.h_out, images * image_bytes, image_last)
    band = max(1, min(args.h_out, chunk // max(row_bytes, 1)))
    return Tiling(1, band, band * row_bytes)


def is_pointwise(args) -> bool:
    """1x1 kernel, stride 1, no padding: the input already is the column matrix."""
    return (args.kh == args.kw == 1 and args.stride == (1, 1)
            and args.padding == ((0, 0), (0, 0)))


def forward(x: np.ndarray, w: np.ndarray, args, out: np.ndarray, bias=None) -> None:
    """im2col convolution into ``out`` (caller's layout), plus ``bias`` when given.

    Wraps the unfold kernels ``_im2col_nchw`` / ``_to_chwn`` + ``_im2col_chwn`` /
    ``_im2col_nhwc``, numpy's BLAS matmul, and ``_scatter_chwn`` (a tile of several
    images -> output, with the bias)."""
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
    """NCHW. A tile of whole images (or a band of output rows of one image): cols
    (B, C*KH*KW, pixels) from ``_im2col_nchw`` and a GEMM per image and group,
    W (G, Dg, Cg*KH*KW) @ cols, written straight into ``out`` (one batched matmul call).
    A tile of many images with short output rows (``Tiling.image_last``): the images are
    first put image-index last (``_to_chwn``, a pass over the input only), unfolded with
    long contiguous runs (``_im2col_chwn``), multiplied in one GEMM of B times the width,
    and the result is spread into ``out`` with the bias (``_scatter_chwn``)."""
    g, dg = args.groups, args.c_out // args.groups
    cgkk = (args.c_in // g) * args.kh * args.kw
    ckk = g * cgkk
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
    if not t.image_last:
        for n0 in range(0, args.n, t.images):
            nb = min(t.images, args.n - n0)
            for i0 in range(0, args.h_out, t.band):
                band = min(t.band, args.h_out - i0)
                length = band * wo
                cols = _view(buf[:nb * ckk * length], (nb, ckk, length))
                with parallel_guard():
                    _im2col_nchw(x, cols, n0, i0, *conv)
                y = _view(out[n0:n0 + nb, :, i0:i0 + band, :], (nb, g, dg, length))
                np.matmul(wmat, _view(cols, (nb, g, cgkk, length)), out=y)
                if bias_g is not None:
                    y += bias_g
        return
    image = args.c_in * args.h * args.w
    xt_buf = workspace("im2col.chwn", image * t.images, args.dtype)
    tmp = workspace("im2col.gemm", args.c_out * t.images * args.h_out * wo, args.dtype)
    bias_flat = np.zeros(0, args.dtype) if bias is None else np.ascontiguousarray(bias)
    for n0 in range(0, args.n, t.images):
        nb = min(t.images, args.n - n0)
        length = args.h_out * wo * nb
        xt = _view(xt_buf[:image * nb], (args.c_in, args.h, args.w, nb))
        cols = _view(buf[:ckk * length], (ckk, length))
        with parallel_guard():
            _to_chwn(x, xt, n0)
            _im2col_chwn(xt, cols, 0, *conv)
        y = _view(tmp[:args.c_out * length], (g, dg, length))
        np.matmul(wmat, _view(cols, (g, cgkk, length)), out=y)
        with parallel_guard():
            _scatter_chwn(_view(y, (args.c_out, length)), out, n0, 0, nb, bias_flat)


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


# ----------------------------------------------------------------------------- backward
# The forward is y = W @ cols(x) per tile, so grad_W += grad_y_tile @ cols(x)^T and the
# column gradient is W^T @ grad_y_tile; folding it back (col2im, the adjoint of the unfold)
# adds every column entry to the input pixel it was copied from. The fold owns its writes:
# one task per (image, input channel) plane in NCHW, per (image, input row) in NHWC.


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _col2im_nchw(cols, gx, n0, i0, wo, sh, sw, pt, pl, rh, rw, kh, kw):
    """gx[n0 + bi, c] += fold of cols (B, C*KH*KW, band*Wo) for output rows i0..;
    one task per (image, input channel) plane."""
    _, _, h, wd = gx.shape
    nb, ckk, length = cols.shape
    band = length // wo
    c_all = ckk // (kh * kw)
    for task in prange(nb * c_all):
        bi = task // c_all
        c = task % c_all
        plane = gx[n0 + bi, c]
        for a in range(kh):
            for b in range(kw):
                row = cols[bi, (c * kh + a) * kw + b]
                j_lo, j_hi = valid_range(wo, b * rw - pl, sw, wd)
                for ii in range(band):
                    src = (i0 + ii) * sh + a * rh - pt
                    if src < 0 or src >= h:
                        continue
                    line = plane[src]
                    seg = row[ii * wo:(ii + 1) * wo]
                    for j in range(j_lo, j_hi):
                        line[j * sw + b * rw - pl] += seg[j]


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _col2im_nhwc(cols, gx, n0, i0, wo, sh, sw, pt, pl, rh, rw, kh, kw, band):
    """gx (N, H, W, C) += fold of cols (B*band*Wo, G, KH*KW*Cg) for output rows i0..;
    one task per (image, input row) that the band touches."""
    _, h, wd, _ = gx.shape
    n_pix, groups, kkc = cols.shape
    cg = kkc // (kh * kw)
    nb = n_pix // (band * wo)
    r_lo = max(i0 * sh - pt, 0)
    r_hi = min((i0 + band - 1) * sh + (kh - 1) * rh - pt + 1, h)
    n_rows = max(r_hi - r_lo, 0)
    for task in prange(nb * n_rows):
        bi = task // n_rows
        src_i = r_lo + task % n_rows
        line = gx[n0 + bi, src_i]
        for a in range(kh):
            num = src_i + pt - a * rh          # = i * sh for the output row i that reads it
            if num < 0 or num % sh != 0:
                continue
            i = num // sh
            if i < i0 or i >= i0 + band:
                continue
            p0 = (bi * band + i - i0) * wo
            for b in range(kw):
                k0 = (a * kw + b) * cg
                j_lo, j_hi = valid_range(wo, b * rw - pl, sw, wd)
                for j in range(j_lo, j_hi):
                    px = line[j * sw + b * rw - pl]
                    src = cols[p0 + j]
                    for g in range(groups):
                        for c in range(cg):
                            px[g * cg + c] += src[g, k0 + c]


def backward(grad_y: np.ndarray, x: np.ndarray, w: np.ndarray, args, grad_x: np.ndarray,
             grad_w: np.ndarray) -> None:
    """im2col gradients into ``grad_x`` / ``grad_w`` (caller's layout, C-contiguous, fully
    written). Same tiles and column buffer as the forward (``tiling``): each tile is
    unfolded, used for grad_w, then overwritten by its column gradient and folded.
    Wraps ``_im2col_*``, ``_col2im_*`` and numpy's BLAS matmul."""
    t = tiling(args)
    x = np.ascontiguousarray(x)
    gy = np.ascontiguousarray(grad_y)
    g, dg = args.groups, args.c_out // args.groups
    cgkk = (args.c_in // g) * args.kh * args.kw
    conv = (args.w_out, args.stride[0], args.stride[1], args.padding[0][0],
            args.padding[1][0], args.dilation[0], args.dilation[1], args.kh, args.kw)
    wo = args.w_out
    grad_x[...] = 0
    if args.layout == "NCHW":
        wmat = np.ascontiguousarray(w).reshape(g, dg, cgkk)
        gw = _view(grad_w, (g, dg, cgkk))
        gw[...] = 0
        tmp = np.empty_like(gw)
    else:
        # HWIO (KH, KW, Cg, D) -> (G, KH*KW*Cg, Dg)
        wmat = np.ascontiguousarray(w.reshape(cgkk, g, dg).transpose(1, 0, 2))
        gw = np.zeros((g, cgkk, dg), args.dtype)
    buf = np.empty(t.col_bytes // args.dtype.itemsize, args.dtype)
    for n0 in range(0, args.n, t.images):
        nb = min(t.images, args.n - n0)
        for i0 in range(0, args.h_out, t.band):
            band = min(t.band, args.h_out - i0)
            length = band * wo
            if args.layout == "NCHW":
                cols = _view(buf[:nb * g * cgkk * length], (nb, g * cgkk, length))
                cols4 = _view(cols, (nb, g, cgkk, length))
                gyt = _view(gy[n0:n0 + nb, :, i0:i0 + band, :], (nb, g, dg, length))
                with parallel_guard():
                    _im2col_nchw(x, cols, n0, i0, *conv)
                for bi in range(nb):
                    np.matmul(gyt[bi], cols4[bi].transpose(0, 2, 1), out=tmp)
                    gw += tmp
                np.matmul(wmat.transpose(0, 2, 1), gyt, out=cols4)
                with parallel_guard():
                    _col2im_nchw(cols, grad_x, n0, i0, *conv)
            else:
                cols = _view(buf[:nb * length * g * cgkk], (nb * length, g, cgkk))
                gyt = _view(gy[n0:n0 + nb, i0:i0 + band, :, :], (nb * length, g, dg))
                with parallel_guard():
                    _im2col_nhwc(x, cols, n0, i0, *conv, band)
                gw += np.matmul(cols.transpose(1, 2, 0), gyt.transpose(1, 0, 2))
                np.matmul(gyt.transpose(1, 0, 2), wmat.transpose(0, 2, 1),
                          out=cols.transpose(1, 0, 2))
                with parallel_guard():
                    _col2im_nhwc(cols, grad_x, n0, i0, *conv, band)
    if args.layout == "NHWC":
        grad_w[...] = gw.transpose(1, 0, 2).reshape(grad_w.shape)
