"""The NHWC forward in register tiles read straight from the input: no column matrix.

In NHWC, output pixel (n, i, j)'s taps in kernel row a are one contiguous run of KW*C
input values, x[n, i*s_h - p_t + a, j*s_w - p_l :][: KW*C], as long as the kernel row
lies inside the image's columns and is undilated; six pixels of one output row start
s_w*C values apart. So the product of the fused forward's panels (``fused_nhwc``),
cols (pixels, KH*KW*C) @ W (KH*KW*C, D), can read its 6 rows of cols in place from x:
for every tile of 6 pixels and block of 4 registers of output channels, one
``_small_gemm._tile4`` per kernel row inside the image, each adding to the sums of the
one before (the indirect convolution: a GEMM that reads rows of its left operand where
they lie instead of from a copy). That leaves out the unfold, which wrote every input
value KH*KW/(s_h*s_w) times into a buffer.

The pixels whose kernel reaches into the left or right padding (output columns outside
``interior_columns``, a column or two at each side) are unfolded as before
(``unfold.unfold_pixel_nhwc``), one output column down a band of rows at a time, and
multiplied in the same tiles (``_small_gemm.panel_product``), their output rows Wo*D
apart. Rows whose kernel reaches above or below the image use the kernel rows inside
it. The band's runs of rows with the same kernel rows inside the image (all of them,
away from its top and bottom) take their pixels 6 at a time across the rows
(``interior_rows``; tiles of 6 pixels of one row recomputed 5 of 12 on rows of 7).
Alternating, 2 threads, best of 20: (64, 16, 16, 64) -> 128 3x3 stride 2 (a wide
ResNet's, 8x8 outputs) 2.30-2.33 -> 1.71-1.90 ms (torch 1.48-1.75); (16, 56, 56, 64)
-> 128 stride 2 4.81-5.32 -> 4.42-4.50 ms.

Examples
--------
>>> import numpy as np
>>> from fastconv import conv2d
>>> x = np.ones((2, 16, 20, 8), np.float32)           # NHWC
>>> w = np.ones((3, 3, 8, 128), np.float32)           # HWIO
>>> y = conv2d(x, w, stride=2, padding=1, layout="NHWC", algo="im2col")
>>> float(y[0, 0, 0, 0]), float(y[0, 0, 3, 5]), float(y[1, 4, 4, 127])  # corner, edge, inside
(32.0, 48.0, 72.0)
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ... import _lanes, _small_gemm, config
from ..._runtime import parallel_guard
from ..._small_gemm import TILE_ROWS, _tile4_at, panel_product
from .._common import U, interior_columns, workspace
from .fused_nhwc import register_tiles
from .tiling import unfold_params
from .unfold import unfold_pixel_nhwc

#: Output rows a task takes (the last task the rest too, up to twice as many); at least
#: ``TILE_ROWS``: the edge columns' pixels of a band are one product of that many rows.
BAND_ROWS = 8


def weight_fits(args) -> bool:
    """Whether the register tiles can run ``args``' products, either layout: one group,
    kernel columns undilated, a kernel larger than 1x1 (pointwise layers need no unfold
    anyway), output channels in the register tiles (``fused_nhwc.register_tiles``: at
    least 8 registers) and a weight of at most ``_small_gemm.TILED_MAX_B_BYTES`` (every
    tile reads all of it, from L2)."""
    if args.groups != 1 or args.dilation[1] != 1 or args.kh * args.kw == 1 \
            or not register_tiles(args):
        return False
    weight = args.kh * args.kw * args.c_in * args.c_out * args.dtype.itemsize
    return weight <= _small_gemm.TILED_MAX_B_BYTES


def indirect_applies(args) -> bool:
    """Whether ``forward_indirect`` runs the forward of ``args``: NHWC, a weight the
    register tiles take (``weight_fits``), at least ``TILE_ROWS`` output columns whose
    kernel row lies inside the image, and at least ``BAND_ROWS`` output rows. Measured
    on the 2-core Intel Xeon (alternating, best medians): (16, 56, 56, 64) -> 128 3x3
    stride 2 6.16 ms against 6.55 in fused panels; (64, 32, 32, 32) -> 128 stride 2 4.14
    against 4.40; a 128 -> 256 stride-2 layer (a 1.2 MB weight) 8.06 against 7.09
    through BLAS, hence the weight's bound."""
    if not args.dims.channels_last or not weight_fits(args):
        return False
    j_lo, j_hi = interior_columns(args)
    return j_hi - j_lo >= TILE_ROWS and args.n * args.h_out >= BAND_ROWS


@njit(inline="always")
def _kernel_rows(i, h, sh, pt, rh, kh):
    """(a_lo, a_hi): the kernel rows of output row i that lie inside the image's rows."""
    return (max(0, (pt - i * sh + rh - 1) // rh),
            min(kh, (h + pt - i * sh + rh - 1) // rh))


@njit(inline="always")
def interior_rows(xf, wf, yf, rows, cols, dims, geo, width, a_rng):
    """Output pixels j_lo <= j < j_hi of the output rows r_lo <= r < r_hi of the batch
    (rows), whose kernel rows inside the image are a_lo <= a < a_hi (a_rng, the same for
    all of them), in tiles of 6 pixels x 4 registers taken across the rows
    (``_tile4_at``), each the sum over those kernel rows (the last tile ends at the last
    pixel, rewriting those it shares with the one before; the last block of channels
    at D likewise): rows of 7 pixels tiled one by one computed 12 a row; a band of 8
    such rows computes 60 for 56. dims = (Ho, Wo, H, W, s_h, p_t)."""
    r_lo, r_hi = rows
    j_lo, j_hi = cols
    c_all, d_all, run, sw, pl, line = geo
    n_px = (r_hi - r_lo) * (j_hi - j_lo)
    for t0 in range(0, n_px, TILE_ROWS):
        p = min(t0, n_px - TILE_ROWS)
        x0, y0 = _pixel(p, rows, cols, dims, c_all, d_all, sw, pl)
        x1, y1 = _pixel(p + 1, rows, cols, dims, c_all, d_all, sw, pl)
        x2, y2 = _pixel(p + 2, rows, cols, dims, c_all, d_all, sw, pl)
        x3, y3 = _pixel(p + 3, rows, cols, dims, c_all, d_all, sw, pl)
        x4, y4 = _pixel(p + 4, rows, cols, dims, c_all, d_all, sw, pl)
        x5, y5 = _pixel(p + 5, rows, cols, dims, c_all, d_all, sw, pl)
        for dt in range(0, d_all, width):
            d = U(min(dt, d_all - width))
            for a in range(a_rng[0], a_rng[1]):
                o = U(a * line)
                _tile4_at(xf, (x0 + o, x1 + o, x2 + o, x3 + o, x4 + o, x5 + o), wf, yf,
                          U(a * run * d_all) + d, U(d_all),
                          (y0 + d, y1 + d, y2 + d, y3 + d, y4 + d, y5 + d), run,
                          a == a_rng[0])


@njit(inline="always")
def _pixel(q, rows, cols, dims, c_all, d_all, sw, pl):
    """(input offset of tap (0, 0, 0), output offset) of the q-th pixel of
    ``interior_rows``' tiles."""
    j_lo, j_hi = cols
    ho, wo, h, wd, sh, pt = dims
    r = rows[0] + q // (j_hi - j_lo)
    j = j_lo + q % (j_hi - j_lo)
    n, i = r // ho, r % ho
    return (U(((n * h + i * sh - pt) * wd + j * sw - pl) * c_all),
            U((r * wo + j) * d_all))


@njit(inline="always")
def add_bias(yf, start, end, bias):
    """yf[start:end], whole pixels of D channels last, plus bias (D,) at every pixel;
    nothing when bias is empty (no bias)."""
    d_all = bias.shape[0]
    if d_all == 0:
        return
    for q in range(start, end, d_all):
        for d in range(d_all):
            yf[q + d] += bias[d]


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _forward_indirect(x, wf, out, bias, bufs, ho, wo, j_lo, j_hi, sh, sw, pt, pl, rh, rw,
                      kh, kw):
    """out (N*Ho*Wo, D) = conv(x (N, H, W, C), w) (+ bias), wf the HWIO weight flat
    (KH*KW*C, D), one task per band of ``BAND_ROWS`` output rows of the batch; bufs (T,
    2*BAND_ROWS * KH*KW*C), a column buffer per thread for the edge columns' pixels."""
    n_img, h, wd, c_all = x.shape
    d_all = out.shape[1]
    xf = x.reshape(x.size)
    yf = out.reshape(out.size)
    width = 4 * _lanes.count(yf)
    kkc = kh * kw * c_all
    run = kw * c_all
    line = rh * wd * c_all
    rows = n_img * ho
    tasks = rows // BAND_ROWS
    zero = out.dtype.type(0)
    params = (sh, sw, pt, pl, rh, rw, kh, kw)
    geo = (c_all, d_all, run, sw, pl, line)
    for task in prange(tasks):
        r0 = task * BAND_ROWS
        r1 = rows if task == tasks - 1 else r0 + BAND_ROWS
        r = r0
        while r < r1:                  # runs of rows with the same kernel rows inside
            a_rng = _kernel_rows(r % ho, h, sh, pt, rh, kh)
            end = r + 1
            while end < r1 and _kernel_rows(end % ho, h, sh, pt, rh, kh) == a_rng:
                end += 1
            if a_rng[1] <= a_rng[0]:                      # none: the rows are zero
                for q in range(r, end):
                    yf[(q * wo + j_lo) * d_all:(q * wo + j_hi) * d_all] = zero
            else:
                interior_rows(xf, wf, yf, (r, end), (j_lo, j_hi), (ho, wo, h, wd, sh, pt),
                               geo, width, a_rng)
            r = end
        cols = bufs[numba.get_thread_id()][:(r1 - r0) * kkc].reshape((r1 - r0, 1, kkc))
        fc = cols.reshape(cols.size)
        for e in range(j_lo + wo - j_hi):                 # the edge columns, down the band
            j = e if e < j_lo else j_hi + e - j_lo
            for r in range(r0, r1):
                unfold_pixel_nhwc(xf, cols[r - r0], r // ho, r % ho, j, h, wd, c_all, params,
                                  zero)
            panel_product(fc, 0, kkc, wf, 0, d_all, yf, (r0 * wo + j) * d_all, wo * d_all,
                          r1 - r0, d_all, kkc)
        add_bias(yf, r0 * wo * d_all, r1 * wo * d_all, bias)


def forward_indirect(x, wmat, args, out, bias) -> None:
    """The forward of an ``indirect_applies`` problem on numba's threads: x (N, H, W, C)
    and out (N, Ho, Wo, D) C-contiguous, wmat (1, KH*KW*C, D) C-contiguous (on a cache
    line: its rows are loaded a register at a time), bias (D,) or None."""
    threads = numba.get_num_threads()
    size = 2 * BAND_ROWS * args.kh * args.kw * args.c_in
    bufs = workspace("im2col.indirect_nhwc", threads * size, out.dtype).reshape(threads, size)
    b = np.zeros(0, out.dtype) if bias is None else np.ascontiguousarray(bias, out.dtype)
    with parallel_guard():
        _forward_indirect(x, wmat.reshape(-1), out.reshape(-1, out.shape[3]), b, bufs,
                          args.h_out, args.w_out, *interior_columns(args),
                          *unfold_params(args)[1:])
