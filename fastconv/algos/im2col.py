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

from .. import _blas, config
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
    """x (N, H, W, C) -> cols (B*band*Wo, G, KH*KW*Cg) for images n0.. and rows i0..

    One task per output pixel. With one group and no column dilation, the KW taps of a
    kernel row are KW neighbouring input pixels, one contiguous run of KW*C values in x
    (copied at once when all of them lie inside the image); otherwise each tap copies
    its Cg channels per group. Explicit loops: slice copies of a few channels (LeNet's
    6, an RGB stem's 3) cost more than the copy itself."""
    _, h, wd, c_all = x.shape
    flat = x.reshape(x.size)
    n_pix, groups, kkc = cols.shape
    cg = kkc // (kh * kw)
    run = kw * cg
    per_img = band * wo
    zero = cols.dtype.type(0)
    for p in prange(n_pix):
        n = n0 + p // per_img
        i = i0 + (p % per_img) // wo
        j = p % wo
        dst = cols[p]
        j_first = j * sw - pl
        row_inside = groups == 1 and rw == 1 and j_first >= 0 and j_first + kw <= wd
        for a in range(kh):
            src_i = i * sh + a * rh - pt
            if src_i < 0 or src_i >= h:
                for g in range(groups):
                    for t in range(a * run, (a + 1) * run):
                        dst[g, t] = zero
                continue
            line = U((n * h + src_i) * wd) * U(c_all)  # start of input row src_i
            if row_inside:
                d0 = U(a * run)
                s0 = line + U(j_first * c_all)
                for t in range(U(run)):
                    dst[0, d0 + t] = flat[s0 + t]
                continue
            for b in range(kw):
                src_j = j_first + b * rw
                k0 = U((a * kw + b) * cg)
                inside = 0 <= src_j < wd
                for g in range(groups):
                    s0 = line + U(src_j * c_all + g * cg)
                    for t in range(U(cg)):
                        dst[g, k0 + t] = flat[s0 + t] if inside else zero


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

    Wraps the unfold kernels ``_im2col_nchw`` / ``_to_image_last`` + ``_im2col_chwn`` /
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
    first put image-index last (``_to_image_last``, a pass over the input only), unfolded with
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
        xv = _view(x, (args.n, g, args.c_in // g, hw))
        if g == 1:  # one product per image, split over the threads
            _blas.split_matmul(wmat[0], xv[:, 0], y[:, 0])
        else:
            np.matmul(wmat, xv, out=y)
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
            _to_image_last(x, n0, xt)
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


# ------------------------------------------------------- backward of small images (image-last)
# For a tile of B small images the products are formed without the column matrix: with the
# images put last (x as xt (C, H, W, B), grad_y as gt (D, Ho, Wo, B)),
#   grad_w[d, c, a, b] = sum_{i, j, n} gt[d, i, j, n] xt[c, i*sh + a*rh - pt, j*sw + b*rw - pl, n]
#   grad_x[c, r, q, n] = sum of w[d, c, a, b] gt[d, i, j, n] over r = i*sh + a*rh - pt,
#                        q = j*sw + b*rw - pl
# (d in c's group). For fixed (d, c, a, b, i) the run over (j, n) is contiguous in both
# arrays when sw = 1 (runs of B elements otherwise): each term is a dot product (grad_w) or
# a multiply-add into an input row (grad_x) over (valid columns) * B elements, long even
# for rows of a few pixels. This is the tile's GEMM with the unfold folded into its operand
# reads; per pass over a run the kernels keep 4 output channels (and grad_w 2 taps, grad_x
# 2 input channels) in registers, so each load feeds several multiply-adds. Runs of B
# images also make the strided and dilated cases vectorise. Run offsets are unsigned
# (``_common.U``) so that the runs vectorise.

_DB = 4  # output channels per pass


@njit(inline="always")
def _dot1(r, g0, xs, x0, n, zero):
    """sum_t r[g0 + t] * xs[x0 + t], t < n (unsigned offsets)."""
    s = zero
    for t in range(n):
        s += r[g0 + t] * xs[x0 + t]
    return s


@njit(inline="always")
def _dot4(rows, g0, xs, x0, n, zero):
    """_dot1 for the 4 rows of ``rows`` at once (one load of xs per 4 multiply-adds)."""
    r0, r1, r2, r3 = rows
    s0 = s1 = s2 = s3 = zero
    for t in range(n):
        v = xs[x0 + t]
        s0 += r0[g0 + t] * v
        s1 += r1[g0 + t] * v
        s2 += r2[g0 + t] * v
        s3 += r3[g0 + t] * v
    return s0, s1, s2, s3


@njit(inline="always")
def _dot4x2(rows, g0, xs, xa, xb, n, zero):
    """_dot4 against two runs of xs (two taps of one row) at once."""
    r0, r1, r2, r3 = rows
    s0 = s1 = s2 = s3 = t0 = t1 = t2 = t3 = zero
    for t in range(n):
        u = xs[xa + t]
        v = xs[xb + t]
        q0 = r0[g0 + t]
        q1 = r1[g0 + t]
        q2 = r2[g0 + t]
        q3 = r3[g0 + t]
        s0 += q0 * u
        s1 += q1 * u
        s2 += q2 * u
        s3 += q3 * u
        t0 += q0 * v
        t1 += q1 * v
        t2 += q2 * v
        t3 += q3 * v
    return s0, s1, s2, s3, t0, t1, t2, t3


@njit(inline="always")
def _tap_sums(acc, b, rows, nd, xs, j_lo, j_hi, x_first, x_step, nb):
    """acc[k, b] += dot of rows[k] (gy rows) with tap b's input run, for output columns
    [j_lo, j_hi); the input column of output column j is x_first + j * x_step. One run of
    (j_hi - j_lo) * nb elements when x_step == 1, else one run of nb per column."""
    zero = rows[0].dtype.type(0)
    if j_hi <= j_lo:
        return
    if x_step == 1:
        runs, n = 1, U((j_hi - j_lo) * nb)
    else:
        runs, n = j_hi - j_lo, U(nb)
    for q in range(runs):
        j = j_lo + q
        g0 = U(j * nb)
        x0 = U((x_first + j * x_step) * nb)
        if nd == _DB:
            s0, s1, s2, s3 = _dot4(rows, g0, xs, x0, n, zero)
            acc[0, b] += s0
            acc[1, b] += s1
            acc[2, b] += s2
            acc[3, b] += s3
        else:
            for k in range(nd):
                acc[k, b] += _dot1(rows[k], g0, xs, x0, n, zero)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _grad_w_image_last(gt, xt, gw, sh, sw, pt, pl, rh, rw):
    """gw (D, Cg, KH, KW) float64 += grad_w of one tile: gt (D, Ho, Wo, B), xt (C, H, W, B).
    One task per (input channel c, tap row a, block of 4 output channels of c's group),
    owning gw[those d, c mod Cg, a, :]."""
    d_all, ho, wo, nb = gt.shape
    c_all, h, wd, _ = xt.shape
    _, cg, kh, kw = gw.shape
    dg = d_all // (c_all // cg)
    n_db = (dg + _DB - 1) // _DB
    gf = gt.reshape(d_all, ho, wo * nb)
    xf = xt.reshape(c_all, h, wd * nb)
    for task in prange(c_all * kh * n_db):
        c = task // (kh * n_db)
        a = (task // n_db) % kh
        d0 = (c // cg) * dg + (task % n_db) * _DB
        nd = min(_DB, (c // cg + 1) * dg - d0)
        zero = gt.dtype.type(0)
        acc = np.zeros((_DB, kw), np.float64)
        i_lo, i_hi = valid_range(ho, a * rh - pt, sh, h)
        for i in range(i_lo, i_hi):
            xs = xf[c, i * sh + a * rh - pt]
            rows = (gf[d0, i], gf[d0 + min(1, nd - 1), i], gf[d0 + min(2, nd - 1), i],
                    gf[d0 + min(3, nd - 1), i])
            b = 0
            while b < kw:
                off = b * rw - pl
                lo0, hi0 = valid_range(wo, off, sw, wd)
                if sw != 1 or b + 1 == kw or nd != _DB:
                    _tap_sums(acc, b, rows, nd, xs, lo0, hi0, off, sw, nb)
                    b += 1
                    continue
                # taps b and b + 1 together over the columns valid for both
                off1 = off + rw
                lo1, hi1 = valid_range(wo, off1, 1, wd)
                lo, hi = max(lo0, lo1), min(hi0, hi1)
                if lo < hi:
                    s = _dot4x2(rows, U(lo * nb), xs, U((lo + off) * nb),
                                U((lo + off1) * nb), U((hi - lo) * nb), zero)
                    for k in range(_DB):
                        acc[k, b] += s[k]
                        acc[k, b + 1] += s[_DB + k]
                    for tap, tlo, thi, toff in ((b, lo0, hi0, off), (b + 1, lo1, hi1, off1)):
                        _tap_sums(acc, tap, rows, nd, xs, tlo, min(lo, thi), toff, 1, nb)
                        _tap_sums(acc, tap, rows, nd, xs, max(hi, tlo), thi, toff, 1, nb)
                else:
                    _tap_sums(acc, b, rows, nd, xs, lo0, hi0, off, 1, nb)
                    _tap_sums(acc, b + 1, rows, nd, xs, lo1, hi1, off1, 1, nb)
                b += 2
        for k in range(nd):
            for b in range(kw):
                gw[d0 + k, c % cg, a, b] += acc[k, b]


@njit(inline="always")
def _axpy_run(la, lb, two, wa, wb, rows, nd, g0, x0, n):
    """la[x0 + t] += sum_k wa[k] rows[k][g0 + t] (and lb with wb when ``two``), t < n."""
    if nd == _DB:
        r0, r1, r2, r3 = rows
        a0, a1, a2, a3 = wa
        if two:
            b0, b1, b2, b3 = wb
            for t in range(n):
                q0 = r0[g0 + t]
                q1 = r1[g0 + t]
                q2 = r2[g0 + t]
                q3 = r3[g0 + t]
                la[x0 + t] += (a0 * q0 + a1 * q1) + (a2 * q2 + a3 * q3)
                lb[x0 + t] += (b0 * q0 + b1 * q1) + (b2 * q2 + b3 * q3)
        else:
            for t in range(n):
                la[x0 + t] += ((a0 * r0[g0 + t] + a1 * r1[g0 + t])
                               + (a2 * r2[g0 + t] + a3 * r3[g0 + t]))
        return
    for k in range(nd):
        r = rows[k]
        ak = wa[k]
        if two:
            bk = wb[k]
            for t in range(n):
                q = r[g0 + t]
                la[x0 + t] += ak * q
                lb[x0 + t] += bk * q
        else:
            for t in range(n):
                la[x0 + t] += ak * r[g0 + t]


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _grad_x_image_last(gt, w, gxt, sh, sw, pt, pl, rh, rw):
    """gxt (C, H, W, B), fully written: grad_x of one tile from gt (D, Ho, Wo, B) and w
    (D, Cg, KH, KW). One task per (pair of input channels of one group, input row), owning
    those two rows; they gather from the output rows that read them."""
    d_all, ho, wo, nb = gt.shape
    c_all, h, wd, _ = gxt.shape
    _, cg, kh, kw = w.shape
    groups = c_all // cg
    dg = d_all // groups
    n_cp = (cg + 1) // 2
    gf = gt.reshape(d_all, ho, wo * nb)
    xf = gxt.reshape(c_all, h, wd * nb)
    zero = gxt.dtype.type(0)
    for task in prange(groups * n_cp * h):
        r = task % h
        q = task // h
        g = q // n_cp
        cl = (q % n_cp) * 2
        two = cl + 1 < cg
        la = xf[g * cg + cl, r]
        lb = xf[g * cg + cl + 1 if two else g * cg + cl, r]
        for t in range(wd * nb):
            la[U(t)] = zero
        if two:
            for t in range(wd * nb):
                lb[U(t)] = zero
        for a in range(kh):
            num = r + pt - a * rh          # = i * sh for the output row i that reads row r
            if num < 0 or num % sh != 0 or num // sh >= ho:
                continue
            i = num // sh
            for d0 in range(g * dg, (g + 1) * dg, _DB):
                nd = min(_DB, (g + 1) * dg - d0)
                rows = (gf[d0, i], gf[d0 + min(1, nd - 1), i], gf[d0 + min(2, nd - 1), i],
                        gf[d0 + min(3, nd - 1), i])
                for b in range(kw):
                    wa = (w[d0, cl, a, b], w[d0 + min(1, nd - 1), cl, a, b],
                          w[d0 + min(2, nd - 1), cl, a, b], w[d0 + min(3, nd - 1), cl, a, b])
                    c1 = cl + 1 if two else cl
                    wb = (w[d0, c1, a, b], w[d0 + min(1, nd - 1), c1, a, b],
                          w[d0 + min(2, nd - 1), c1, a, b], w[d0 + min(3, nd - 1), c1, a, b])
                    off = b * rw - pl
                    j_lo, j_hi = valid_range(wo, off, sw, wd)
                    if j_hi <= j_lo:
                        continue
                    if sw == 1:
                        _axpy_run(la, lb, two, wa, wb, rows, nd, U(j_lo * nb),
                                  U((j_lo + off) * nb), U((j_hi - j_lo) * nb))
                    else:
                        for j in range(j_lo, j_hi):
                            _axpy_run(la, lb, two, wa, wb, rows, nd, U(j * nb),
                                      U((j * sw + off) * nb), U(nb))


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _to_image_last(x, n0, xt):
    """xt[c, i, j, b] = x[n0 + b, c, i, j] for x (N, C, H, W), xt (C, H, W, B). One task
    per (c, i); each image's row is read in one contiguous pass (reading one element of
    every image per column instead runs 2.4x slower on 28x28 planes)."""
    n_all, c_all, h, wd = x.shape
    nb = xt.shape[3]
    xf = x.reshape(n_all * c_all * h * wd)
    img = U(c_all * h * wd)
    for task in prange(c_all * h):
        c = task // h
        i = task % h
        dst = xt[c, i].reshape(wd * nb)
        base = U(n0) * img + U((c * h + i) * wd)
        for b in range(U(nb)):
            src = base + b * img
            for j in range(U(wd)):
                dst[j * U(nb) + b] = xf[src + j]


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _from_image_last(xt, x, n0):
    """x[n0 + b, c, i, j] = xt[c, i, j, b]: the inverse of ``_to_image_last``."""
    n_all, c_all, h, wd = x.shape
    nb = xt.shape[3]
    xf = x.reshape(n_all * c_all * h * wd)
    img = U(c_all * h * wd)
    for task in prange(c_all * h):
        c = task // h
        i = task % h
        src = xt[c, i].reshape(wd * nb)
        base = U(n0) * img + U((c * h + i) * wd)
        for b in range(U(nb)):
            dst = base + b * img
            for j in range(U(wd)):
                xf[dst + j] = src[j * U(nb) + b]


def image_last_tile(args, with_grad_x: bool = True) -> int:
    """Images per tile of the image-last backward, or 0 when the per-image GEMMs are
    used. The image-last kernels run at a steady rate (about 30 GMAC/s on one core here)
    whatever the shape; the per-image GEMMs are faster only when they are wide. So, on
    batches of small images (the forward unfolds whole images per tile,
    ``tiling(args).images > 1``), the image-last path runs for kernels larger than 1x1
    with at most 64 output channels per group, or at most 8192 output channels per group
    times output pixels; strided layers (whose image-last runs are one pixel's B images
    long) only with at most 32 output channels per group. Measured on one core, batch 64
    (image-last vs GEMMs): LeNet's 6 -> 16 5x5 at 14x14 1.0 vs 4.6 ms, 16 -> 16 3x3 at
    28x28 11 vs 24 ms, 64 -> 64 3x3 at 14x14 37 vs 47 ms, 128 -> 128 3x3 at 7x7 29 vs
    38 ms, 16 -> 32 3x3 stride 2 at 28x28 8.9 vs 10.5 ms; the GEMMs win for 128 -> 128
    at 14x14 and 256 -> 256 at 7x7 (batch 32: 88 vs 66, 70 vs 59 ms), 32 -> 64 stride 2
    at 28x28 (48 vs 24 ms) and 1x1 layers of many channels (16 vs 8.8 ms for 64 -> 128
    at 14x14).
    A tile holds x, grad_y (and grad_x) of its images, image-last, within
    ``config.IM2COL_CHUNK_BYTES``."""
    if args.n < 2 or args.kh * args.kw == 1 or tiling(args).images < 2:
        return 0
    dg = args.c_out // args.groups
    if max(args.stride) > 1:
        if dg > 32:
            return 0
    elif dg > 64 and dg * args.h_out * args.w_out > 8192:
        return 0
    per_image = (args.c_in * args.h * args.w * (2 if with_grad_x else 1)
                 + args.c_out * args.h_out * args.w_out) * args.dtype.itemsize
    chunk = max(1, min(config.IM2COL_CHUNK_BYTES, config.WORKSPACE_BYTES))
    return max(2, min(args.n, chunk // max(per_image, 1)))


def _backward_image_last(gy, x, w, args, grad_x, grad_w, images) -> None:
    """The image-last backward (see above) in tiles of ``images`` images; grad_x or grad_w
    may be None (not computed)."""
    nchw = args.layout == "NCHW"
    to_last = (1, 2, 3, 0) if nchw else (3, 1, 2, 0)       # (N, ...) -> (C, H, W, N)
    from_last = (3, 0, 1, 2) if nchw else (3, 1, 2, 0)     # (C, H, W, N) -> caller's
    w_oihw = np.ascontiguousarray(w if nchw else w.transpose(3, 2, 0, 1))
    conv = (args.stride[0], args.stride[1], args.padding[0][0], args.padding[1][0],
            args.dilation[0], args.dilation[1])
    gw = np.zeros(w_oihw.shape, np.float64) if grad_w is not None else None
    x_img = (args.c_in, args.h, args.w)
    y_img = (args.c_out, args.h_out, args.w_out)
    x_size, y_size = args.c_in * args.h * args.w, args.c_out * args.h_out * args.w_out
    xt_buf = None if grad_w is None else workspace("im2col.chwn", x_size * images, args.dtype)
    gt_buf = workspace("im2col.back.gy", y_size * images, args.dtype)
    gx_buf = None if grad_x is None else workspace("im2col.back.gx", x_size * images,
                                                   args.dtype)
    if nchw:
        gy = np.ascontiguousarray(gy)
        x = np.ascontiguousarray(x) if grad_w is not None else x
    for n0 in range(0, args.n, images):
        nb = min(images, args.n - n0)
        gt = _view(gt_buf[:y_size * nb], y_img + (nb,))
        xt = None if grad_w is None else _view(xt_buf[:x_size * nb], x_img + (nb,))
        with parallel_guard():
            if nchw:
                _to_image_last(gy, n0, gt)
                if xt is not None:
                    _to_image_last(x, n0, xt)
            else:
                np.copyto(gt, gy[n0:n0 + nb].transpose(to_last))
                if xt is not None:
                    np.copyto(xt, x[n0:n0 + nb].transpose(to_last))
            if xt is not None:
                _grad_w_image_last(gt, xt, gw, *conv)
            if grad_x is not None:
                gxt = _view(gx_buf[:x_size * nb], x_img + (nb,))
                _grad_x_image_last(gt, w_oihw, gxt, *conv)
                if nchw:
                    _from_image_last(gxt, grad_x, n0)
                else:
                    np.copyto(grad_x[n0:n0 + nb], gxt.transpose(from_last))
    if grad_w is not None:
        grad_w[...] = gw if nchw else gw.transpose(2, 3, 1, 0)


# ------------------------------------------------------------------- backward: dispatch
def backward(grad_y: np.ndarray, x: np.ndarray, w: np.ndarray, args, grad_x, grad_w) -> None:
    """im2col gradients into ``grad_x`` / ``grad_w`` (caller's layout, C-contiguous, fully
    written); either may be None, and is then not computed.

    Tiles of several small images (``image_last_tile``) run the image-last backward
    (``_grad_w_image_last``, ``_grad_x_image_last``: no column matrix). Otherwise each
    tile of the forward (``tiling``) is unfolded, used for grad_w, then overwritten by its
    column gradient and folded. Wraps ``_im2col_*``, ``_col2im_*`` and numpy's BLAS
    matmul."""
    images = image_last_tile(args, grad_x is not None)
    if images:
        _backward_image_last(grad_y, x, w, args, grad_x, grad_w, images)
        return
    t = tiling(args)
    x = np.ascontiguousarray(x)
    gy = np.ascontiguousarray(grad_y)
    g, dg = args.groups, args.c_out // args.groups
    cgkk = (args.c_in // g) * args.kh * args.kw
    conv = (args.w_out, args.stride[0], args.stride[1], args.padding[0][0],
            args.padding[1][0], args.dilation[0], args.dilation[1], args.kh, args.kw)
    wo = args.w_out
    if grad_x is not None:
        grad_x[...] = 0
    gw = None
    if args.layout == "NCHW":
        wmat = np.ascontiguousarray(w).reshape(g, dg, cgkk)
        if grad_w is not None:
            gw = _view(grad_w, (g, dg, cgkk))
            gw[...] = 0
            tmp = np.empty_like(gw)
    else:
        # HWIO (KH, KW, Cg, D) -> (G, KH*KW*Cg, Dg)
        wmat = np.ascontiguousarray(w.reshape(cgkk, g, dg).transpose(1, 0, 2))
        if grad_w is not None:
            gw = np.zeros((g, cgkk, dg), args.dtype)
    buf = workspace("im2col.cols", t.col_bytes // args.dtype.itemsize, args.dtype)
    for n0 in range(0, args.n, t.images):
        nb = min(t.images, args.n - n0)
        for i0 in range(0, args.h_out, t.band):
            band = min(t.band, args.h_out - i0)
            length = band * wo
            if args.layout == "NCHW":
                cols = _view(buf[:nb * g * cgkk * length], (nb, g * cgkk, length))
                cols4 = _view(cols, (nb, g, cgkk, length))
                gyt = _view(gy[n0:n0 + nb, :, i0:i0 + band, :], (nb, g, dg, length))
                if gw is not None:
                    with parallel_guard():
                        _im2col_nchw(x, cols, n0, i0, *conv)
                    for bi in range(nb):
                        _blas.matmul(gyt[bi], cols4[bi].transpose(0, 2, 1), out=tmp)
                        gw += tmp
                if grad_x is not None:
                    _blas.matmul(wmat.transpose(0, 2, 1), gyt, out=cols4)
                    with parallel_guard():
                        _col2im_nchw(cols, grad_x, n0, i0, *conv)
            else:
                cols = _view(buf[:nb * length * g * cgkk], (nb * length, g, cgkk))
                gyt = _view(gy[n0:n0 + nb, i0:i0 + band, :, :], (nb * length, g, dg))
                if gw is not None:
                    with parallel_guard():
                        _im2col_nhwc(x, cols, n0, i0, *conv, band)
                    gw += _blas.matmul(cols.transpose(1, 2, 0), gyt.transpose(1, 0, 2))
                if grad_x is not None:
                    _blas.matmul(gyt.transpose(1, 0, 2), wmat.transpose(0, 2, 1),
                                 out=cols.transpose(1, 0, 2))
                    with parallel_guard():
                        _col2im_nhwc(cols, grad_x, n0, i0, *conv, band)
    if gw is not None and args.layout == "NHWC":
        grad_w[...] = gw.transpose(1, 0, 2).reshape(grad_w.shape)
