"""Slow, obvious references written from the formulas in DESIGN.md (not from the kernels).

Everything is NCHW / OIHW and computed in float64.
"""

from __future__ import annotations

import numpy as np


def out_size(n, k, s, p_lo, p_hi, r):
    return (n + p_lo + p_hi - r * (k - 1) - 1) // s + 1


def conv2d(x, w, bias=None, stride=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1),
           groups=1):
    """H[n, d, i, j] = U[d] + sum_{c,a,b} V[d, c, a, b] X[n, g*Cg + c, s_h i + r_h a - p_top,
    s_w j + r_w b - p_left], zero outside X."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, c, h, wd = x.shape
    d_all, cg, kh, kw = w.shape
    (pt, pb), (pl, pr) = padding
    sh, sw = stride
    rh, rw = dilation
    ho = out_size(h, kh, sh, pt, pb, rh)
    wo = out_size(wd, kw, sw, pl, pr, rw)
    xp = np.zeros((n, c, h + pt + pb, wd + pl + pr))
    xp[:, :, pt:pt + h, pl:pl + wd] = x
    y = np.zeros((n, d_all, ho, wo))
    dg = d_all // groups
    for d in range(d_all):
        g = d // dg
        for a in range(kh):
            for b in range(kw):
                patch = xp[:, g * cg:(g + 1) * cg,
                           a * rh: a * rh + sh * (ho - 1) + 1: sh,
                           b * rw: b * rw + sw * (wo - 1) + 1: sw]
                y[:, d] += np.einsum("ncij,c->nij", patch, w[d, :, a, b])
        if bias is not None:
            y[:, d] += bias[d]
    return y


def rel_error(got, want) -> float:
    """max |got - want| / max |want| (0 when both are zero)."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    scale = np.max(np.abs(want)) if want.size else 0.0
    err = np.max(np.abs(got - want)) if want.size else 0.0
    return float(err / scale) if scale > 0 else float(err)


def tolerance(dtype, algo) -> float:
    if np.dtype(dtype) == np.float64:
        return 1e-10
    return 1e-3 if algo == "fft" else 1e-4
