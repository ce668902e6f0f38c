"""The unfold (im2col) and fold (col2im) kernels, one pair per layout.

NCHW: cols (B, C*KH*KW, band*Wo), one row per (channel, tap) and image of the tile.
NHWC: cols (B*band*Wo, G, KH*KW*Cg), one row per output pixel of the tile.

The forward is y = W @ cols(x) per tile, so grad_W += grad_y_tile @ cols(x)^T and the
column gradient is W^T @ grad_y_tile; folding it back (col2im, the adjoint of the unfold)
adds every column entry to the input pixel it was copied from. The fold owns its writes:
one task per (image, input channel) plane in NCHW, per (image, input row) in NHWC.
"""

from __future__ import annotations

from numba import njit, prange

from ... import config
from .. import tiered
from .._common import U, serial_twin, valid_range


@njit(inline="always")
def _zero_pad(dst, base, lo, hi, end, zero):
    """dst[base + t] = zero for t in [0, lo) and in [hi, end) (unsigned): the zero padding
    around a run [lo, hi) of a row that is copied separately (lo = hi = end: the whole
    row is padding). ``zero`` is the kernel's, defined outside its parallel loop: as a
    value there, the stores stay vectorised loops (a literal 0 here makes LLVM call
    memset, slower for the runs of a few elements at an image border)."""
    for t in range(lo):
        dst[base + t] = zero
    for t in range(hi, end):
        dst[base + t] = zero


@njit(inline="always")
def _column_row(cols, r, kh, kw):
    """(c, a, b, row) of row r = (c*KH + a)*KW + b of an NCHW column matrix cols
    (C*KH*KW, ...): input channel c, kernel tap (a, b), and the row cols[r]."""
    return r // (kh * kw), (r // kw) % kh, r % kw, cols[r]


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
    zero = cols.dtype.type(0)
    for task in prange(nb * ckk):
        bi = task // ckk
        r = task % ckk
        c, a, b, dst = _column_row(cols[bi], r, kh, kw)
        img = x[n0 + bi, c]
        off = b * rw - pl
        j_lo, j_hi = valid_range(wo, off, sw, wd)
        first = U(j_lo * sw + off)  # input column of output column j_lo
        step = U(sw)
        for ii in range(band):
            base = U(ii * wo)
            src = (i0 + ii) * sh + a * rh - pt
            if src < 0 or src >= h:
                _zero_pad(dst, base, U(wo), U(wo), U(wo), zero)
                continue
            line = img[src]
            _zero_pad(dst, base, U(j_lo), U(j_hi), U(wo), zero)
            d0 = base + U(j_lo)
            if sw == 1:
                for j in range(U(j_hi - j_lo)):
                    dst[d0 + j] = line[first + j]
            else:
                for j in range(U(j_hi - j_lo)):
                    dst[d0 + j] = line[first + j * step]


#: The NCHW unfold compiled without threads, for tiles run one per thread (``split``)
#: and for a process's first small unfolds (``unfold_nchw``).
_im2col_nchw_serial = serial_twin(_im2col_nchw)

#: An unfold of at most this many column entries (a serial copy of about a millisecond)
#: may run on the serial twin while the parallel kernel compiles (``algos.tiered``).
TIERED_UNFOLD_ENTRIES = 1 << 20


def unfold_nchw(x, cols, n0: int, i0: int, conv) -> None:
    """``_im2col_nchw(x, cols, n0, i0, *conv)``, tiered (``algos.tiered.run``): a
    process's first unfolds of up to ``TIERED_UNFOLD_ENTRIES`` entries run the serial
    twin until the parallel kernel, compiled on a background thread, is ready."""
    tiered.run(_im2col_nchw, _im2col_nchw_serial, cols.size <= TIERED_UNFOLD_ENTRIES,
               x, cols, n0, i0, *conv)



@njit(inline="always")
def unfold_pixel_nhwc(flat, dst, n, i, j, h, wd, c_all, params, zero):
    """dst (G, KH*KW*Cg) = the receptive field of output pixel (n, i, j) of
    flat = x (N, H, W, C).ravel(): dst[g, (a*KW + b)*Cg + c] = x[n, i*sh + a*rh - pt,
    j*sw + b*rw - pl, g*Cg + c], zero outside; ``params`` = (sh, sw, pt, pl, rh, rw,
    kh, kw). With one group and no column dilation, the KW taps of a kernel row are KW
    neighbouring input pixels, one contiguous run of KW*C values in x (copied at once
    when all of them lie inside the image); otherwise each tap copies its Cg channels
    per group. Explicit loops: slice copies of a few channels (LeNet's 6, an RGB stem's
    3) cost more than the copy itself."""
    sh, sw, pt, pl, rh, rw, kh, kw = params
    groups, kkc = dst.shape
    cg = kkc // (kh * kw)
    run = kw * cg
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


@njit(inline="always")
def unfold_row_nhwc(flat, cols, base, n, i, h, wd, c_all, wo, params, zero):
    """cols[base + j] (G, KH*KW*Cg) = the receptive field of output pixel (n, i, j) of
    flat = x (N, H, W, C).ravel() for every j of the output row (``unfold_pixel_nhwc``'s
    columns). With one group and no column dilation, the pixels whose KW taps all lie
    inside the row go kernel row by kernel row: each copies one run of KW*C values from
    the same input row (the stem's runs of 21 values: 0.52x the time of going pixel by
    pixel, LeNet's second layer 0.62x, runs of 192 as fast); the others pixel by pixel."""
    sh, sw, pt, pl, rh, rw, kh, kw = params
    if cols.shape[1] != 1 or rw != 1:
        for j in range(wo):
            unfold_pixel_nhwc(flat, cols[base + j], n, i, j, h, wd, c_all, params, zero)
        return
    kkc = cols.shape[2]
    run = kw * c_all
    j_lo = min((pl + sw - 1) // sw, wo)          # the first pixel whose taps are inside
    j_hi = max(min((wd - kw + pl) // sw + 1, wo), j_lo)
    for j in range(j_lo):
        unfold_pixel_nhwc(flat, cols[base + j], n, i, j, h, wd, c_all, params, zero)
    for j in range(j_hi, wo):
        unfold_pixel_nhwc(flat, cols[base + j], n, i, j, h, wd, c_all, params, zero)
    fc = cols.reshape(cols.size)
    for a in range(kh):
        src_i = i * sh + a * rh - pt
        d_a = U(base * kkc + a * run)
        inside = 0 <= src_i < h
        line = U((n * h + src_i) * wd * c_all if inside else 0)
        for j in range(j_lo, j_hi):
            d0 = d_a + U(j * kkc)
            s0 = line + U((j * sw - pl) * c_all)
            if inside:
                for t in range(U(run)):
                    fc[d0 + t] = flat[s0 + t]
            else:
                for t in range(U(run)):
                    fc[d0 + t] = zero


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _im2col_nhwc(x, cols, n0, i0, wo, sh, sw, pt, pl, rh, rw, kh, kw, band):
    """x (N, H, W, C) -> cols (B*band*Wo, G, KH*KW*Cg) for images n0.. and rows i0..

    One task per output row (``unfold_row_nhwc``)."""
    _, h, wd, c_all = x.shape
    flat = x.reshape(x.size)
    zero = cols.dtype.type(0)
    params = (sh, sw, pt, pl, rh, rw, kh, kw)
    for r in prange(cols.shape[0] // wo):
        unfold_row_nhwc(flat, cols, r * wo, n0 + r // band, i0 + r % band, h, wd, c_all, wo,
                        params, zero)


@njit(inline="always")
def _fold_pair(line, r0, r1, o, off, lo0, hi0, lo1, hi1):
    """line[2j + off] += r0[o + j] for j in [lo0, hi0) and line[2j + off + 1] +=
    r1[o + j] for j in [lo1, hi1): the taps b and b + 1 of a stride-2 undilated row,
    in one loop over the j both reach (whose stores interleave and vectorise; one tap
    alone stores every other element, and does not), the ends apart: tap b + 1 sits one
    column right, so its range starts and ends no later (lo1 <= lo0, hi1 <= hi0). Each
    element still adds its taps in the same order (the decoder layer's fold: 1.35x
    faster)."""
    for j in range(lo1, min(lo0, hi1)):
        line[2 * j + off + 1] += r1[o + j]
    for j in range(lo0, hi1):
        line[2 * j + off] += r0[o + j]
        line[2 * j + off + 1] += r1[o + j]
    for j in range(max(hi1, lo0), hi0):
        line[2 * j + off] += r0[o + j]


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _col2im_nchw(cols, gx, n0, i0, wo, sh, sw, pt, pl, rh, rw, kh, kw):
    """gx[n0 + bi, c] += fold of cols (B, C*KH*KW, band*Wo) for output rows i0..;
    one task per (image, input channel) plane; at column stride 2 without column
    dilation, two neighbouring taps a pass (``_fold_pair``)."""
    _, _, h, wd = gx.shape
    nb, ckk, length = cols.shape
    band = length // wo
    c_all = ckk // (kh * kw)
    for task in prange(nb * c_all):
        bi = task // c_all
        c = task % c_all
        plane = gx[n0 + bi, c]
        for a in range(kh):
            b = 0
            while b < kw:
                row = cols[bi, (c * kh + a) * kw + b]
                j_lo, j_hi = valid_range(wo, b * rw - pl, sw, wd)
                pair = sw == 2 and rw == 1 and b + 1 < kw
                nxt, k_lo, k_hi = row, 0, 0
                if pair:
                    nxt = cols[bi, (c * kh + a) * kw + b + 1]
                    k_lo, k_hi = valid_range(wo, b + 1 - pl, sw, wd)
                for ii in range(band):
                    src = (i0 + ii) * sh + a * rh - pt
                    if src < 0 or src >= h:
                        continue
                    line = plane[src]
                    if pair:
                        _fold_pair(line, row, nxt, ii * wo, b - pl, j_lo, j_hi, k_lo, k_hi)
                        continue
                    seg = row[ii * wo:(ii + 1) * wo]
                    for j in range(j_lo, j_hi):
                        line[j * sw + b * rw - pl] += seg[j]
                b += 2 if pair else 1


#: The NCHW fold compiled without threads, for tiles run one per thread (``split``).
_col2im_nchw_serial = serial_twin(_col2im_nchw)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _col2im_nhwc(cols, gx, n0, i0, wo, sh, sw, pt, pl, rh, rw, kh, kw, band):
    """gx (N, H, W, C) += fold of cols (B*band*Wo, G, KH*KW*Cg) for output rows i0..;
    one task per (image, input row) that the band touches.

    The adjoint of ``_im2col_nhwc``, with its runs: with one group and no column
    dilation, an output pixel whose KW taps all lie inside the row adds one contiguous
    run of KW*C column values to KW neighbouring input pixels; otherwise each tap adds
    its Cg channels per group. Flat arrays and unsigned offsets (no view per pixel)."""
    _, h, wd, c_all = gx.shape
    n_pix, groups, kkc = cols.shape
    cg = kkc // (kh * kw)
    run = U(kw * cg)
    uc, ucg, ukkc = U(c_all), U(cg), U(kkc)
    nb = n_pix // (band * wo)
    r_lo = max(i0 * sh - pt, 0)
    r_hi = min((i0 + band - 1) * sh + (kh - 1) * rh - pt + 1, h)
    n_rows = max(r_hi - r_lo, 0)
    runs = groups == 1 and rw == 1
    fc, fg = cols.reshape(cols.size), gx.reshape(gx.size)
    for task in prange(nb * n_rows):
        bi = task // n_rows
        src_i = r_lo + task % n_rows
        line = U(((n0 + bi) * h + src_i) * wd) * uc  # start of input row src_i
        for a in range(kh):
            num = src_i + pt - a * rh          # = i * sh for the output row i that reads it
            if num < 0 or num % sh != 0:
                continue
            i = num // sh
            if i < i0 or i >= i0 + band:
                continue
            p0 = (bi * band + i - i0) * wo
            for j in range(wo):
                row = U((p0 + j) * groups) * ukkc  # cols[p0 + j, 0, 0]
                j_first = j * sw - pl
                if runs and j_first >= 0 and j_first + kw <= wd:
                    d0 = line + U(j_first) * uc
                    s0 = row + U(a) * run
                    for t in range(run):
                        fg[d0 + t] += fc[s0 + t]
                    continue
                for b in range(kw):
                    src_j = j_first + b * rw
                    if src_j < 0 or src_j >= wd:
                        continue
                    k0 = row + U((a * kw + b) * cg)
                    for g in range(U(groups)):
                        d0 = line + U(src_j) * uc + g * ucg
                        s0 = k0 + g * ukkc
                        for t in range(ucg):
                            fg[d0 + t] += fc[s0 + t]
