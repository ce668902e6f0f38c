"""The direct algorithm's NHWC kernels: forward, depthwise forward, input and weight
gradients on NHWC activations and HWIO weights, with no copy to NCHW.

In NHWC the channel axis is innermost, so every kernel here keeps its innermost loop on
channels: the output pixel y[n, i, j, :] (all D output channels) accumulates

    y[n, i, j, g*Dg + d] += x[n, s_h*i + r_h*a - p_top, s_w*j + r_w*b - p_left, g*Cg + c]
                            * w[a, b, c, g*Dg + d]

as an outer-product update over d (one contiguous row of the HWIO weight per input
value), and a depthwise layer with one output channel per input channel as one
elementwise multiply-add over the channels per tap. The NCHW kernels are in ``naive``
(one kernel per layout: the two orders want different loop nests). One parallel task
per output row (image, i) for the forward, per input row for the input gradient, per
block of output rows for the weight gradient (each with a partial sum), so no two tasks
write the same element.

Two groups of two input channels, three output channels each (HWIO weight (3, 3, 2, 6)),
on an NHWC image of ones: an inner pixel sums 2 channels x 9 taps, a corner 2 x 4.

>>> import numpy as np
>>> from fastconv import conv2d
>>> y = conv2d(np.ones((1, 4, 4, 4)), np.ones((3, 3, 2, 6)), padding=1, groups=2,
...            layout="NHWC", algo="naive")
>>> y[0, 1, 1].tolist(), y[0, 0, 0].tolist()
([18.0, 18.0, 18.0, 18.0, 18.0, 18.0], [8.0, 8.0, 8.0, 8.0, 8.0, 8.0])
"""

from __future__ import annotations

from numba import njit, prange

from .. import config
from ._common import U, valid_range


@njit(inline="always")
def _depthwise3x3(fx, fw, fy, bias, with_bias, o, x0, row, col, c):
    """fy[o + k] = bias + the 3x3 depthwise sum over channels k < c of one output pixel
    whose taps all lie inside the input (x0: its top-left tap; row, col: the offsets of
    one tap down and across): the nine products summed in registers, one store."""
    two = U(2)
    for k in range(c):
        acc = bias[k] if with_bias else fy.dtype.type(0)
        acc += (fx[x0 + k] * fw[k] + fx[x0 + col + k] * fw[c + k]
                + fx[x0 + two * col + k] * fw[two * c + k])
        acc += (fx[x0 + row + k] * fw[U(3) * c + k] + fx[x0 + row + col + k] * fw[U(4) * c + k]
                + fx[x0 + row + two * col + k] * fw[U(5) * c + k])
        acc += (fx[x0 + two * row + k] * fw[U(6) * c + k]
                + fx[x0 + two * row + col + k] * fw[U(7) * c + k]
                + fx[x0 + two * row + two * col + k] * fw[U(8) * c + k])
        fy[o + k] = acc


@njit(inline="always")
def _tap_products(dst, o, dst_c, fx, xo, src, so, src_c, grouping, depthwise):
    """One tap's products of an input pixel's channels x (at xo) with a row of D values
    per input channel:

        dst[o + c*dst_c + g*Dg + d] += x[g*Cg + c] * src[so + c*src_c + g*Dg + d]

    (the forward: dst the output pixel, src the tap's weights, (dst_c, src_c) = (0, D);
    the weight gradient: dst the tap's gradient rows, src the output pixel's gradient,
    (D, 0)). A depthwise layer (one output channel per input channel) multiplies
    channel by channel: dst[o + d] += x[d] * src[so + d]."""
    groups, ucg, dg = grouping
    if depthwise:
        for d in range(dg * U(groups)):
            dst[o + d] += fx[xo + d] * src[so + d]
        return
    for g in range(U(groups)):
        for c in range(ucg):
            v = fx[xo + g * ucg + c]
            do = o + c * dst_c + g * dg
            sr = so + c * src_c + g * dg
            for d in range(dg):
                dst[do + d] += v * src[sr + d]


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _conv_direct_nhwc(x, w, out, sh, sw, pt, pl, rh, rw, groups, bias):
    """x (N, H, W, C), w (KH, KW, C/groups, D) HWIO, out (N, Ho, Wo, D) overwritten;
    bias (D,) or empty. Any groups; a depthwise layer with one output channel per input
    channel (D == C == groups) is one elementwise multiply-add over the channels per tap,
    out[.., c] += x[.., c] * w[a, b, 0, c]; other layers (depthwise with a channel
    multiplier included) an outer-product update per input channel. Flat arrays and
    unsigned offsets, no slicing in the loops (a view per tap costs reference counting
    shared by the threads)."""
    n_img, h, wd, c_all = x.shape
    kh, kw, cg, d_all = w.shape
    ho, wo = out.shape[1], out.shape[2]
    dg = U(d_all // groups)
    ucg, ud = U(cg), U(d_all)
    with_bias = bias.shape[0] == d_all
    depthwise = cg == 1 and d_all == c_all  # one output channel per input channel
    fx, fw, fy = x.reshape(x.size), w.reshape(w.size), out.reshape(out.size)
    three = depthwise and kh == 3 and kw == 3
    for task in prange(n_img * ho):
        n = task // ho
        i = task % ho
        rows_in = 0 <= i * sh - pt and i * sh - pt + 2 * rh < h
        for j in range(wo):
            o = U((task * wo + j) * d_all)
            left = j * sw - pl
            if three and rows_in and 0 <= left and left + 2 * rw < wd:
                _depthwise3x3(fx, fw, fy, bias, with_bias, o,
                              U(((n * h + i * sh - pt) * wd + left) * c_all),
                              U(rh * wd * c_all), U(rw * c_all), ud)
                continue
            for d in range(ud):
                fy[o + d] = bias[d] if with_bias else 0
            a_lo, a_hi = valid_range(kh, i * sh - pt, rh, h)   # taps inside the image
            b_lo, b_hi = valid_range(kw, left, rw, wd)
            for a in range(a_lo, a_hi):
                for b in range(b_lo, b_hi):     # out += x (tap's input) (x) w[a, b]
                    xo = U(((n * h + i * sh + a * rh - pt) * wd + left + b * rw) * c_all)
                    _tap_products(fy, o, U(0), fx, xo, fw, U((a * kw + b) * cg) * ud, ud,
                                  (groups, ucg, dg), depthwise)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _conv_direct_grad_x_nhwc(gy, wt, gx, sh, sw, pt, pl, rh, rw, groups):
    """gy (N, Ho, Wo, D), wt (KH, KW, D, C/groups) (the HWIO weight with its last two
    axes swapped, so a row over c is contiguous), gx (N, H, W, C) overwritten.

    The gather form of the adjoint: gx[n, u, v, g*Cg + c] = sum over the taps (a, b) that
    reach (u, v) from an output (i, j) of sum_d wt[a, b, g*Dg + d, c] * gy[n, i, j, g*Dg + d].
    One task per input row (n, u); flat arrays as ``_conv_direct_nhwc``."""
    n_img, h, wd, c_all = gx.shape
    kh, kw, d_all, cg = wt.shape
    ho, wo = gy.shape[1], gy.shape[2]
    dg = U(d_all // groups)
    ucg, ud, uc = U(cg), U(d_all), U(c_all)
    depthwise = cg == 1 and d_all == c_all  # one output channel per input channel
    fy, fw, fx = gy.reshape(gy.size), wt.reshape(wt.size), gx.reshape(gx.size)
    for task in prange(n_img * h):
        n = task // h
        u = task % h
        for v in range(wd):
            o = U((task * wd + v) * c_all)
            for c in range(uc):
                fx[o + c] = 0
            for a in range(kh):
                num_i = u + pt - a * rh
                if num_i < 0 or num_i % sh != 0 or num_i // sh >= ho:
                    continue
                for b in range(kw):
                    num_j = v + pl - b * rw
                    if num_j < 0 or num_j % sw != 0 or num_j // sw >= wo:
                        continue
                    yo = U(((n * ho + num_i // sh) * wo + num_j // sw) * d_all)
                    wo_ = U((a * kw + b) * d_all) * ucg
                    if depthwise:
                        for d in range(ud):
                            fx[o + d] += fy[yo + d] * fw[wo_ + d]
                        continue
                    for g in range(U(groups)):
                        og = o + g * ucg
                        for d in range(g * dg, (g + U(1)) * dg):
                            s = fy[yo + d]
                            wr = wo_ + d * ucg
                            for c in range(ucg):
                                fx[og + c] += s * fw[wr + c]


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _conv_direct_grad_w_nhwc(gy, x, parts, sh, sw, pt, pl, rh, rw, groups):
    """gy (N, Ho, Wo, D), x (N, H, W, C), parts (B, KH, KW, C/groups, D) overwritten with
    the weight gradient of block b of the N*Ho output rows (the caller sums over B):
    parts[b, a, bb, c, g*Dg + d] = sum x[n, .., g*Cg + c] * gy[n, i, j, g*Dg + d].
    One task per block: it owns parts[b] and reads each output pixel's gradient once
    for all taps (it stays in cache); flat arrays as ``_conv_direct_nhwc``."""
    n_img, h, wd, c_all = x.shape
    blocks, kh, kw, cg, d_all = parts.shape
    ho, wo = gy.shape[1], gy.shape[2]
    dg = U(d_all // groups)
    ucg, ud = U(cg), U(d_all)
    depthwise = cg == 1 and d_all == c_all  # one output channel per input channel
    fy, fx, fp = gy.reshape(gy.size), x.reshape(x.size), parts.reshape(parts.size)
    rows = n_img * ho
    for blk in prange(blocks):
        base = U(blk) * U(kh * kw) * ucg * ud
        for k in range(U(kh * kw) * ucg * ud):
            fp[base + k] = 0
        for r in range(blk * rows // blocks, (blk + 1) * rows // blocks):
            n = r // ho
            i = r % ho
            for j in range(wo):
                yo = U((r * wo + j) * d_all)
                a_lo, a_hi = valid_range(kh, i * sh - pt, rh, h)   # taps inside the image
                b_lo, b_hi = valid_range(kw, j * sw - pl, rw, wd)
                for a in range(a_lo, a_hi):
                    for b in range(b_lo, b_hi):  # parts[b, a, bb] += x (tap's input) (x) gy
                        xo = U(((n * h + i * sh + a * rh - pt) * wd + j * sw + b * rw - pl)
                               * c_all)
                        _tap_products(fp, base + U(a * kw + b) * ucg * ud, ud, fx, xo, fy, yo,
                                      U(0), (groups, ucg, dg), depthwise)


def grad_w_blocks(rows: int, threads: int) -> int:
    """Blocks of output rows of the weight gradient (each a task with a partial sum):
    two per thread for balance, at most one per row."""
    return max(1, min(rows, 2 * threads))
