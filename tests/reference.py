"""Slow, obvious references written from the formulas (not from the kernels).

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


def conv_transpose2d(x, w, bias=None, stride=(1, 1), padding=(0, 0),
                     output_padding=(0, 0), groups=1, dilation=(1, 1)):
    """Y[n, g*Dg + d, s_h i + r_h a - p_h, s_w j + r_w b - p_w] += X[n, g*Cg + c, i, j]
    W[g*Cg + c, d, a, b]: every input pixel scatters its kernel-weighted copy, positions
    outside [0, H_out) x [0, W_out) dropped; H_out = (H-1) s_h - 2 p_h + r_h (kh-1) +
    output_padding_h + 1. W is (C_in, C_out/groups, kh, kw)."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, c_in, h, wd = x.shape
    _, dg, kh, kw = w.shape
    cg = c_in // groups
    (sh, sw), (ph, pw), (oh, ow), (rh, rw) = stride, padding, output_padding, dilation
    ho = (h - 1) * sh - 2 * ph + rh * (kh - 1) + oh + 1
    wo = (wd - 1) * sw - 2 * pw + rw * (kw - 1) + ow + 1
    y = np.zeros((n, dg * groups, ho, wo))
    for c in range(c_in):
        g = c // cg
        for i in range(h):
            for j in range(wd):
                for a in range(kh):
                    for b in range(kw):
                        oi, oj = sh * i + rh * a - ph, sw * j + rw * b - pw
                        if 0 <= oi < ho and 0 <= oj < wo:
                            y[:, g * dg:(g + 1) * dg, oi, oj] += x[:, c, i, j, None] * w[c, :, a, b]
    if bias is not None:
        y += np.asarray(bias, np.float64)[None, :, None, None]
    return y


def conv_transpose2d_backward(gy, x, w, stride=(1, 1), padding=(0, 0),
                              output_padding=(0, 0), groups=1, dilation=(1, 1)):
    """The adjoint of :func:`conv_transpose2d` term by term: each product
    X[n, c, i, j] W[c, d, a, b] added to Y[n, gDg + d, oi, oj] (oi = s_h i + r_h a - p_h,
    inside the output) sends gy[n, gDg + d, oi, oj] W[c, d, a, b] to X and
    gy[n, gDg + d, oi, oj] X[n, c, i, j] to W. Returns (gx, gw, gb)."""
    gy = np.asarray(gy, np.float64)
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    _, c_in, h, wd = x.shape
    _, dg, kh, kw = w.shape
    cg = c_in // groups
    (sh, sw), (ph, pw), (rh, rw) = stride, padding, dilation
    ho, wo = gy.shape[2:]
    gx, gw = np.zeros_like(x), np.zeros_like(w)
    for c in range(c_in):
        out = slice((c // cg) * dg, (c // cg + 1) * dg)
        for i in range(h):
            for j in range(wd):
                for a in range(kh):
                    for b in range(kw):
                        oi, oj = sh * i + rh * a - ph, sw * j + rw * b - pw
                        if 0 <= oi < ho and 0 <= oj < wo:
                            g = gy[:, out, oi, oj]                      # (n, dg)
                            gx[:, c, i, j] += g @ w[c, :, a, b]
                            gw[c, :, a, b] += x[:, c, i, j] @ g
    return gx, gw, gy.sum(axis=(0, 2, 3))


# ------------------------------------------------------------------------ conv backward
def conv2d_backward(gy, x, w, stride=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1),
                    groups=1):
    """The adjoint of ``conv2d`` term by term: each product w[d, c, a, b] * xp[n, gCg + c,
    s_h i + r_h a, s_w j + r_w b] in y[n, d, i, j] sends gy[n, d, i, j] * w[d, c, a, b] to
    that (padded) input position and gy * xp to w[d, c, a, b]. Returns (gx, gw, gb)."""
    gy = np.asarray(gy, np.float64)
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, c, h, wd = x.shape
    d_all, cg, kh, kw = w.shape
    (pt, pb), (pl, pr) = padding
    sh, sw = stride
    rh, rw = dilation
    ho, wo = gy.shape[2], gy.shape[3]
    xp = np.zeros((n, c, h + pt + pb, wd + pl + pr))
    xp[:, :, pt:pt + h, pl:pl + wd] = x
    gxp = np.zeros_like(xp)
    gw = np.zeros_like(w)
    dg = d_all // groups
    for d in range(d_all):
        g = d // dg
        for a in range(kh):
            for b in range(kw):
                window = (slice(None), slice(g * cg, (g + 1) * cg),
                          slice(a * rh, a * rh + sh * (ho - 1) + 1, sh),
                          slice(b * rw, b * rw + sw * (wo - 1) + 1, sw))
                gxp[window] += gy[:, d, None] * w[d, :, a, b][None, :, None, None]
                gw[d, :, a, b] = np.einsum("ncij,nij->c", xp[window], gy[:, d])
    return gxp[:, :, pt:pt + h, pl:pl + wd], gw, gy.sum(axis=(0, 2, 3))


def numerical_grad(f, a, eps):
    """Central differences (f(a + eps e_k) - f(a - eps e_k)) / (2 eps) of the scalar
    function f() for every element k of the float64 array a (changed in place, restored)."""
    g = np.zeros(a.shape)
    flat = a.reshape(-1)
    assert np.shares_memory(flat, a)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + eps
        up = f()
        flat[k] = old - eps
        down = f()
        flat[k] = old
        g.flat[k] = (up - down) / (2 * eps)
    return g


# ------------------------------------------------------------------------------ pooling
def pool_out_size(n, k, s, p, r=1, ceil_mode=False):
    """torch's pooling output size: floor (or ceil) of (n + 2p - r(k-1) - 1)/s, plus one;
    in ceil mode a last window that would start in the right padding is dropped."""
    import math

    frac = (n + 2 * p - r * (k - 1) - 1) / s
    out = (math.ceil(frac) if ceil_mode else math.floor(frac)) + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


def _pool_geometry(x, kernel, stride, padding, dilation, ceil_mode):
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    rh, rw = dilation
    h, w = x.shape[2:]
    ho = pool_out_size(h, kh, sh, ph, rh, ceil_mode)
    wo = pool_out_size(w, kw, sw, pw, rw, ceil_mode)
    return ho, wo


def max_pool2d(x, kernel, stride, padding=(0, 0), dilation=(1, 1), ceil_mode=False):
    """Max over each window's input elements (padding never wins), visited row by row:
    a value replaces the maximum when larger or NaN. Returns (y, flat indices h*W + w);
    a window with no input element gives (-inf, -1)."""
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    ho, wo = _pool_geometry(x, kernel, stride, padding, dilation, ceil_mode)
    y = np.full((n, c, ho, wo), -np.inf)
    idx = np.full((n, c, ho, wo), -1, np.int64)
    for i in range(ho):
        for j in range(wo):
            taps = [(stride[0] * i - padding[0] + dilation[0] * a,
                     stride[1] * j - padding[1] + dilation[1] * b)
                    for a in range(kernel[0]) for b in range(kernel[1])]
            taps = [(r, q) for r, q in taps if 0 <= r < h and 0 <= q < w]
            for nn in range(n):
                for cc in range(c):
                    best, best_k = -np.inf, (taps[0][0] * w + taps[0][1]) if taps else -1
                    for r, q in taps:
                        v = x[nn, cc, r, q]
                        if v > best or np.isnan(v):
                            best, best_k = v, r * w + q
                    y[nn, cc, i, j], idx[nn, cc, i, j] = best, best_k
    return y, idx


def max_pool2d_backward(gy, idx, input_shape):
    """grad_x[n, c].flat[idx[n, c, i, j]] += gy[n, c, i, j]."""
    gx = np.zeros(input_shape)
    for nn, cc, i, j in np.ndindex(gy.shape):
        if idx[nn, cc, i, j] >= 0:
            gx[nn, cc].flat[idx[nn, cc, i, j]] += gy[nn, cc, i, j]
    return gx


def _avg_windows(h, w, kernel, stride, padding, ceil_mode, count_include_pad):
    """Yield (i, j, rows, cols, divisor) for every avg_pool2d window (torch's rules: the
    padded window ends at most at the end of the right padding)."""
    ho = pool_out_size(h, kernel[0], stride[0], padding[0], 1, ceil_mode)
    wo = pool_out_size(w, kernel[1], stride[1], padding[1], 1, ceil_mode)
    for i in range(ho):
        r0 = stride[0] * i - padding[0]
        r1 = min(r0 + kernel[0], h + padding[0])
        for j in range(wo):
            c0 = stride[1] * j - padding[1]
            c1 = min(c0 + kernel[1], w + padding[1])
            rows = range(max(r0, 0), min(r1, h))
            cols = range(max(c0, 0), min(c1, w))
            div = (r1 - r0) * (c1 - c0) if count_include_pad else len(rows) * len(cols)
            yield i, j, rows, cols, div


def avg_pool2d(x, kernel, stride, padding=(0, 0), ceil_mode=False, count_include_pad=True):
    """Sum of each window's input elements over the window's divisor."""
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    ho = pool_out_size(h, kernel[0], stride[0], padding[0], 1, ceil_mode)
    wo = pool_out_size(w, kernel[1], stride[1], padding[1], 1, ceil_mode)
    y = np.zeros((n, c, ho, wo))
    for i, j, rows, cols, div in _avg_windows(h, w, kernel, stride, padding, ceil_mode,
                                              count_include_pad):
        y[:, :, i, j] = x[:, :, rows.start:rows.stop, cols.start:cols.stop].sum((2, 3)) / div
    return y


def avg_pool2d_backward(gy, input_shape, kernel, stride, padding=(0, 0), ceil_mode=False,
                        count_include_pad=True):
    """Each gy[n, c, i, j] / divisor added to every input element of its window."""
    gx = np.zeros(input_shape)
    h, w = input_shape[2:]
    for i, j, rows, cols, div in _avg_windows(h, w, kernel, stride, padding, ceil_mode,
                                              count_include_pad):
        gx[:, :, rows.start:rows.stop, cols.start:cols.stop] += \
            np.asarray(gy, np.float64)[:, :, i, j, None, None] / div
    return gx


# --------------------------------------------------------------------------- batch norm
def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """gamma * (x - mu) / sqrt(var + eps) + beta per channel over (N, H, W), NCHW, float64.
    Returns (y, mean used, var used, new running mean, new running var); in training the
    batch mean and biased variance normalise and the running estimates move towards the
    batch mean and the unbiased variance."""
    x = np.asarray(x, np.float64)
    c = x.shape[1]
    gamma = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    beta = np.zeros(c) if bias is None else np.asarray(bias, np.float64)
    rm = None if running_mean is None else np.asarray(running_mean, np.float64)
    rv = None if running_var is None else np.asarray(running_var, np.float64)
    if training:
        m = x.size // c
        mu = x.mean(axis=(0, 2, 3))
        var = ((x - mu[:, None, None]) ** 2).mean(axis=(0, 2, 3))
        if rm is not None:
            rm = (1 - momentum) * rm + momentum * mu
            rv = (1 - momentum) * rv + momentum * var * m / (m - 1)
    else:
        mu, var = rm, rv
    y = (gamma[:, None, None] * (x - mu[:, None, None]) / np.sqrt(var[:, None, None] + eps)
         + beta[:, None, None])
    return y, mu, var, rm, rv


def batch_norm_backward(gy, x, weight=None, eps=1e-5, training=True, running_mean=None,
                        running_var=None):
    """Chain rule step by step through xhat = (x - mu) / sqrt(var + eps), var and mu
    (training), or through the affine map with the running estimates (evaluation).
    Returns (gx, gweight, gbias), NCHW, float64."""
    gy = np.asarray(gy, np.float64)
    x = np.asarray(x, np.float64)
    c = x.shape[1]
    m = x.size // c
    gamma = (np.ones(c) if weight is None else np.asarray(weight, np.float64))[:, None, None]
    axes = (0, 2, 3)

    def per_channel(v):
        return v.sum(axis=axes)[:, None, None]

    if training:
        mu = per_channel(x) / m
        var = per_channel((x - mu) ** 2) / m
    else:
        mu = np.asarray(running_mean, np.float64)[:, None, None]
        var = np.asarray(running_var, np.float64)[:, None, None]
    std = np.sqrt(var + eps)
    xmu = x - mu
    dxhat = gy * gamma
    gweight = (gy * xmu / std).sum(axis=axes)
    gbias = gy.sum(axis=axes)
    if not training:
        return dxhat / std, gweight, gbias
    dvar = per_channel(dxhat * xmu) * -0.5 * std ** -3
    dmu = per_channel(-dxhat / std) + dvar * per_channel(-2 * xmu) / m
    gx = dxhat / std + dvar * 2 * xmu / m + dmu / m
    return gx, gweight, gbias


# --------------------------------------------------------------- conv1d / conv3d (N-d)
def _taps(kernel):
    return np.ndindex(*kernel)


def _nd_window(tap, stride, dilation, out):
    """The strided slice of the padded input that tap ``tap`` reads for every output."""
    return tuple(slice(t * r, t * r + s * (o - 1) + 1, s)
                 for t, s, r, o in zip(tap, stride, dilation, out, strict=True))


def _nd_problem(x, w, stride, padding, dilation):
    """float64 x and w, the per-axis defaults (stride and dilation 1, no padding) and the
    zero-padded input."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    rank = x.ndim - 2
    stride = stride or (1,) * rank
    dilation = dilation or (1,) * rank
    padding = padding or ((0, 0),) * rank
    return x, w, stride, padding, dilation, np.pad(x, ((0, 0), (0, 0), *padding))


def conv_nd(x, w, bias=None, stride=None, padding=None, dilation=None, groups=1):
    """N-d (NC + spatial / OI + kernel) correlation from the formula:
    y[n, d, i...] = U[d] + sum_{c, a...} w[d, c, a...] xp[n, gCg + c, s i + r a ...]."""
    x, w, stride, padding, dilation, xp = _nd_problem(x, w, stride, padding, dilation)
    kernel = w.shape[2:]
    out = tuple(out_size(n, k, s, lo, hi, r) for n, k, s, (lo, hi), r
                in zip(x.shape[2:], kernel, stride, padding, dilation, strict=True))
    d_all, cg = w.shape[:2]
    dg = d_all // groups
    y = np.zeros((x.shape[0], d_all, *out))
    for d in range(d_all):
        g = d // dg
        for tap in _taps(kernel):
            patch = xp[(slice(None), slice(g * cg, (g + 1) * cg),
                        *_nd_window(tap, stride, dilation, out))]
            y[:, d] += np.tensordot(patch, w[(d, slice(None), *tap)], axes=([1], [0]))
        if bias is not None:
            y[:, d] += bias[d]
    return y


def conv_nd_backward(gy, x, w, stride=None, padding=None, dilation=None, groups=1):
    """The adjoint of ``conv_nd`` term by term; returns (gx, gw, gb)."""
    gy = np.asarray(gy, np.float64)
    x, w, stride, padding, dilation, xp = _nd_problem(x, w, stride, padding, dilation)
    rank = x.ndim - 2
    gxp = np.zeros_like(xp)
    gw = np.zeros_like(w)
    out = gy.shape[2:]
    d_all, cg = w.shape[:2]
    dg = d_all // groups
    for d in range(d_all):
        g = d // dg
        for tap in _taps(w.shape[2:]):
            window = (slice(None), slice(g * cg, (g + 1) * cg),
                      *_nd_window(tap, stride, dilation, out))
            wv = w[(d, slice(None), *tap)]
            gxp[window] += gy[:, d, None] * wv.reshape((1, cg) + (1,) * rank)
            gw[(d, slice(None), *tap)] = np.tensordot(
                xp[window], gy[:, d], axes=([0, *range(2, 2 + rank)], list(range(1 + rank))))
    crop = (slice(None), slice(None), *(slice(lo, lo + n) for (lo, _), n
                                        in zip(padding, x.shape[2:], strict=True)))
    return gxp[crop], gw, gy.sum(axis=(0, *range(2, gy.ndim)))


# ------------------------------------------------------------------ pad, unfold and fold
def pad_source(j, n, lo, hi, mode):
    """The input index that output index j copies along an axis of size n padded by
    (lo, hi) (negative: cropped), or None for the constant fill. reflect mirrors
    without repeating the edge, replicate repeats the edge, circular first crops and
    then wraps the cropped axis."""
    s = j - lo
    if mode == "constant":
        return s if 0 <= s < n else None
    if mode == "reflect":
        if s < 0:
            s = -s
        if s > n - 1:
            s = 2 * (n - 1) - s
        return s
    if mode == "replicate":
        return min(max(s, 0), n - 1)
    first, kept = max(-lo, 0), n - max(-lo, 0) - max(-hi, 0)
    return first + (j - max(lo, 0)) % kept


def _pad_plan(shape, pad):
    """((axis, lo, hi) per padded axis, output shape) of torch's flat pad tuple."""
    axes = [(len(shape) - 1 - i, pad[2 * i], pad[2 * i + 1]) for i in range(len(pad) // 2)]
    out = list(shape)
    for axis, lo, hi in axes:
        out[axis] += lo + hi
    return axes, tuple(out)


def _pad_pairs(shape, pad, mode):
    """(output index, input index or None) for every output element of the pad."""
    axes, out_shape = _pad_plan(shape, pad)
    for o in np.ndindex(*out_shape):
        i = list(o)
        for axis, lo, hi in axes:
            i[axis] = pad_source(o[axis], shape[axis], lo, hi, mode)
        yield o, (None if None in i else tuple(i))


def pad(x, pad, mode="constant", value=0.0):
    """torch.nn.functional.pad, one output element at a time."""
    _, out_shape = _pad_plan(x.shape, pad)
    out = np.empty(out_shape, x.dtype)
    for o, i in _pad_pairs(x.shape, pad, mode):
        out[o] = value if i is None else x[i]
    return out


def pad_backward(gy, input_shape, pad, mode="constant"):
    """The gradient of pad's input: each output's gradient added to its source."""
    gx = np.zeros(input_shape, np.float64)
    for o, i in _pad_pairs(tuple(input_shape), pad, mode):
        if i is not None:
            gx[i] += gy[o]
    return gx


def _blocks(h, w, kernel, dilation, padding, stride):
    """(block row, block col, tap row, tap col, input row, input col) of every tap of
    every sliding block, and the block grid (rows, cols)."""
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = kernel, dilation, padding, stride
    rows = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    cols = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    taps = [(r, q, i, j, r * sh + i * dh - ph, q * sw + j * dw - pw)
            for r in range(rows) for q in range(cols) for i in range(kh) for j in range(kw)]
    return taps, rows, cols


def unfold(x, kernel, dilation=(1, 1), padding=(0, 0), stride=(1, 1)):
    """torch.nn.functional.unfold of (N, C, H, W): cols[n, c*kh*kw + i*kw + j, r*cols + q]
    = x[n, c, r*sh + i*dh - ph, q*sw + j*dw - pw], 0 outside."""
    n, c, h, w = x.shape
    kh, kw = kernel
    taps, rows, ncols = _blocks(h, w, kernel, dilation, padding, stride)
    out = np.zeros((n, c * kh * kw, rows * ncols), x.dtype)
    for b in range(n):
        for ch in range(c):
            for r, q, i, j, y, z in taps:
                if 0 <= y < h and 0 <= z < w:
                    out[b, ch * kh * kw + i * kw + j, r * ncols + q] = x[b, ch, y, z]
    return out


def fold(cols, output_size, kernel, dilation=(1, 1), padding=(0, 0), stride=(1, 1)):
    """torch.nn.functional.fold: every column entry added onto its pixel."""
    n, ckk, _ = cols.shape
    kh, kw = kernel
    h, w = output_size
    taps, _rows, ncols = _blocks(h, w, kernel, dilation, padding, stride)
    out = np.zeros((n, ckk // (kh * kw), h, w), np.float64)
    for b in range(n):
        for ch in range(ckk // (kh * kw)):
            for r, q, i, j, y, z in taps:
                if 0 <= y < h and 0 <= z < w:
                    out[b, ch, y, z] += cols[b, ch * kh * kw + i * kw + j, r * ncols + q]
    return out
