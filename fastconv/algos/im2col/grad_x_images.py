"""The input gradient of small stride-1 NHWC layers image by image, its column gradient
formed and folded while it is in cache.

im2col's input gradient multiplies grad_y by the weight into a column gradient (a
column of KH*KW*C taps per output pixel) and folds it onto the input (``_col2im_nhwc``).
For LeNet's second layer (6 -> 16, 5x5, 14x14 input, batch 64) that column gradient is
3.8 MB: written by a GEMM whose inner dimension is 16 and read back by the fold, both
passes at memory speed. Here one task per image forms its image's columns, (Ho*Wo, T)
= grad_y[n] (Ho*Wo, D) @ W^T (D, T) with taps t = (a, b, c) (60 KB, in the core's
cache), in ``_small_gemm.panel_product``'s register tiles, and folds them at once: for
each pixel and kernel row a, the KW*C taps land on one contiguous run of the input row
(stride 1, no dilation; taps in the padding dropped, the runs clipped). Needs the 6 x
4-register tiles (``_small_gemm.FOUR_REGISTER_TILES``: AVX-512), whose products take at
least 6 rows and 4 registers of columns.

LeNet's second layer, batch 64, 2 threads, calls alternating, best of 100: grad_x alone
0.29-0.30 ms against 0.35-0.38 through the whole-batch GEMM and fold; all three
gradients 0.48-0.51 against 0.58-0.60. NCHW layers do not take it: the same scheme on
planes (columns (T, Ho*Wo), each tap's products one run of a padded input plane) took
0.34-0.36 ms for grad_x against 0.33-0.35 and 0.59-0.62 for all three against 0.58-0.61
by the image-last pass (the products' rows of 10 pixels fill the register tiles poorly).

>>> import numpy as np
>>> from fastconv import conv2d_backward
>>> gy = np.ones((4, 10, 10, 16), np.float32)                     # NHWC
>>> w = np.ones((5, 5, 6, 16), np.float32)                        # HWIO
>>> gx, _, _ = conv2d_backward(gy, np.ones((4, 14, 14, 6), np.float32), w,
...                            layout="NHWC")
>>> float(gx[0, 0, 0, 0]), float(gx[0, 7, 7, 0])    # 16 channels x 1 / 25 taps
(16.0, 400.0)
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ... import _lanes, _small_gemm
from ..._runtime import parallel_guard
from ...costs import Estimate, Profile
from .._common import U, workspace

#: An image's column gradient takes at most this many bytes (in the core's L2).
MAX_COLUMN_BYTES = 256 * 1024
#: Multiply-adds (the layer's own, KH*KW*C*D per output pixel) per second per thread,
#: float32 (half for float64), for the cost model: LeNet's second layer, batch 64, 2
#: threads, 25 (NCHW) and 29 (NHWC).
GMACS = 27.0


def cost(a, p: Profile) -> Estimate:
    """Model time of ``input_grad_images``: the layer's multiply-adds at ``GMACS`` per
    thread, plus the call's fixed cost."""
    macs = a.n * a.h_out * a.w_out * a.kh * a.kw * a.c_in * a.c_out
    rate = GMACS * 1e9 * p.threads * (4 / a.dtype.itemsize)
    return Estimate(p.call_us * 1e-6 + macs / rate, 0,
                    "per-image column gradients folded in cache")


def applies(a) -> bool:
    """Whether ``input_grad_images`` takes the input gradient of ``a``: NHWC, one
    group, stride 1, no dilation, an image's column gradient within
    ``MAX_COLUMN_BYTES``, and the register tiles' least product (6 output pixels, 4
    registers of taps KH*KW*C), on a host with 32 vector registers."""
    if not _small_gemm.FOUR_REGISTER_TILES or not a.dims.channels_last or a.groups != 1 \
            or a.stride != (1, 1) or a.dilation != (1, 1) or a.n == 0:
        return False
    taps, pixels = a.kh * a.kw * a.c_in, a.h_out * a.w_out
    return (pixels >= _small_gemm.TILE_ROWS
            and taps >= 4 * _lanes.per_register(a.dtype.itemsize)
            and taps * pixels * a.dtype.itemsize <= MAX_COLUMN_BYTES)


@njit(parallel=True, cache=True)
def _grad_x_nhwc(gyf, wt, gxf, bufs, geo):
    """gxf (N, H, W, C) flat, fully written: the input gradient of grad_y gyf (N, Ho,
    Wo, D) flat and wt (D, KH*KW*C) (the HWIO weight's rows transposed), one image a
    task; geo = (N, Ho, Wo, D, H, W, C, KH, KW, p_top, p_left)."""
    n_img, ho, wo, d_all, h, wd, c_all, kh, kw, pt, pl = geo
    m = ho * wo
    taps = kh * kw * c_all
    plane = h * wd * c_all
    zero = gxf.dtype.type(0)
    for n in prange(n_img):
        cols = bufs[numba.get_thread_id()]
        _small_gemm.panel_product(gyf, n * m * d_all, d_all, wt, 0, taps, cols, 0, taps,
                                  m, taps, d_all)
        base = n * plane
        for q in range(plane):
            gxf[base + q] = zero
        for i in range(ho):
            for j in range(wo):
                b_lo = max(0, pl - j)
                b_hi = min(kw, wd + pl - j)
                if b_hi <= b_lo:
                    continue
                run = U((b_hi - b_lo) * c_all)
                for ka in range(kh):
                    r = i + ka - pt
                    if r < 0 or r >= h:
                        continue
                    dst = U(base + (r * wd + j + b_lo - pl) * c_all)
                    src = U((i * wo + j) * taps + (ka * kw + b_lo) * c_all)
                    for q in range(run):
                        gxf[dst + q] += cols[src + q]


def input_grad_images(gy, w, a, grad_x) -> None:
    """grad_x (N, H, W, C), C-contiguous = the input gradient of an ``applies`` problem
    for grad_y gy (N, Ho, Wo, D) and the HWIO weight w (any strides)."""
    dt = a.dtype
    gy = np.ascontiguousarray(gy, dt)
    wt = np.ascontiguousarray(np.asarray(w, dt).reshape(-1, a.c_out).T)   # (D, T)
    size = a.kh * a.kw * a.c_in * a.h_out * a.w_out
    bufs = workspace("grad_x_images.cols", numba.get_num_threads() * size, dt)
    (pt, _), (pl, _) = a.padding
    geo = (a.n, a.h_out, a.w_out, a.c_out, a.h, a.w, a.c_in, a.kh, a.kw, pt, pl)
    with parallel_guard():
        _grad_x_nhwc(gy.reshape(-1), wt.reshape(-1), grad_x.reshape(-1),
                     bufs.reshape(numba.get_num_threads(), size), geo)
