"""The direct ("naive") algorithm: the convolution formula as loops.

    y[n, d, i, j] = sum_{c, a, b} w[d, c, a, b] * x[n, g*Cg + c, s_h*i + r_h*a - p_top,
                                                     s_w*j + r_w*b - p_left]

One parallel task per (image, output channel); each task owns its output plane. It is
the benchmark baseline, so it does no reordering beyond keeping the innermost loop on
contiguous output columns.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import config
from .._runtime import parallel_guard
from ._common import valid_range


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _conv_direct_nchw(x, w, out, sh, sw, pt, pl, rh, rw, groups):
    """x (N, C, H, W), w (D, C/groups, KH, KW), out (N, D, Ho, Wo) zero-filled."""
    n_img, _, h, wd = x.shape
    d_all, cg, kh, kw = w.shape
    ho, wo = out.shape[2], out.shape[3]
    dg = d_all // groups
    for task in prange(n_img * d_all):
        n = task // d_all
        d = task % d_all
        c0 = (d // dg) * cg
        plane = out[n, d]
        for c in range(cg):
            for a in range(kh):
                i_lo, i_hi = valid_range(ho, a * rh - pt, sh, h)
                for b in range(kw):
                    j_lo, j_hi = valid_range(wo, b * rw - pl, sw, wd)
                    wv = w[d, c, a, b]
                    for i in range(i_lo, i_hi):
                        row = x[n, c0 + c, i * sh + a * rh - pt]
                        for j in range(j_lo, j_hi):
                            plane[i, j] += wv * row[j * sw + b * rw - pl]


def forward(x: np.ndarray, w: np.ndarray, args, out: np.ndarray, bias=None) -> None:
    """Direct convolution into ``out`` (caller's layout), plus ``bias`` when given.
    Wraps ``_conv_direct_nchw``."""
    if args.layout == "NHWC":
        x = x.transpose(0, 3, 1, 2)
        w = w.transpose(3, 2, 0, 1)
        y = np.empty(args.y_shape, args.dtype)
    else:
        y = out
    # The kernel accumulates onto its output: start from the bias (or zero).
    y[...] = 0 if bias is None else bias[:, None, None]
    with parallel_guard():
        _conv_direct_nchw(np.ascontiguousarray(x), np.ascontiguousarray(w), y,
                          args.stride[0], args.stride[1], args.padding[0][0],
                          args.padding[1][0], args.dilation[0], args.dilation[1], args.groups)
    if args.layout == "NHWC":
        out[...] = y.transpose(0, 2, 3, 1)
