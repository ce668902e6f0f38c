"""CUDA kernels of conv2d and its gradients (contiguous NCHW / OIHW device arrays).

Every kernel is a grid-stride loop in which each iteration owns the one element it
writes; the im2col path's reductions run in the GEMM (one thread per output element).

Column buffer layout (im2col path), for a chunk of ``nc`` images starting at ``n0``:

    cols[(c*kh + a)*kw + b, (n*ho + i)*wo + j] = x[n0 + n, c, i*sh + a*rh - pt, j*sw + b*rw - pl]

(zero outside x). Viewed as (groups, C_in/groups*kh*kw, nc*ho*wo) it is the B operand of
one GEMM per group; the output of those GEMMs is (C_out, nc*ho*wo), "CNHW".
"""

from __future__ import annotations

from numba import cuda


@cuda.jit
def _im2col(x, cols, n0, kh, kw, sh, sw, pt, pl, rh, rw, ho, wo):
    rows = cols.shape[0]
    p_all = cols.shape[1]
    h = x.shape[2]
    w = x.shape[3]
    zero = cols.dtype.type(0)
    for t in range(cuda.grid(1), rows * p_all, cuda.gridsize(1)):
        p = t % p_all
        r = t // p_all
        j = p % wo
        i = (p // wo) % ho
        n = p // (wo * ho)
        b = r % kw
        a = (r // kw) % kh
        c = r // (kw * kh)
        hh = i * sh + a * rh - pt
        ww = j * sw + b * rw - pl
        if 0 <= hh < h and 0 <= ww < w:
            cols[r, p] = x[n0 + n, c, hh, ww]
        else:
            cols[r, p] = zero


@cuda.jit
def _col2im(cols, gx, n0, nc, kh, kw, sh, sw, pt, pl, rh, rw, ho, wo):
    """gx[n0 + n, c, h, w] = sum of the cols entries that im2col read from there (gather)."""
    c_all = gx.shape[1]
    h_all = gx.shape[2]
    w_all = gx.shape[3]
    for t in range(cuda.grid(1), nc * c_all * h_all * w_all, cuda.gridsize(1)):
        w = t % w_all
        h = (t // w_all) % h_all
        c = (t // (w_all * h_all)) % c_all
        n = t // (w_all * h_all * c_all)
        acc = gx.dtype.type(0)
        for a in range(kh):
            hh = h + pt - a * rh  # = i * sh
            if hh < 0 or hh % sh != 0 or hh // sh >= ho:
                continue
            i = hh // sh
            for b in range(kw):
                ww = w + pl - b * rw
                if ww < 0 or ww % sw != 0 or ww // sw >= wo:
                    continue
                j = ww // sw
                acc += cols[(c * kh + a) * kw + b, (n * ho + i) * wo + j]
        gx[n0 + n, c, h, w] = acc


@cuda.jit
def _cnhw_to_y(yt, bias, has_bias, y, n0):
    """y[n0 + n, d, s] = yt[d, n*HW + s] (+ bias[d]); y is (N, D, HW)."""
    d_all = yt.shape[0]
    hw = y.shape[2]
    p_all = yt.shape[1]
    for t in range(cuda.grid(1), d_all * p_all, cuda.gridsize(1)):
        s = t % hw
        d = (t // hw) % d_all
        n = t // (hw * d_all)
        v = yt[d, n * hw + s]
        if has_bias:
            v += bias[d]
        y[n0 + n, d, s] = v


@cuda.jit
def _y_to_cnhw(gy, gyt, n0):
    """gyt[d, n*HW + s] = gy[n0 + n, d, s]; gy is (N, D, HW)."""
    d_all = gyt.shape[0]
    hw = gy.shape[2]
    p_all = gyt.shape[1]
    for t in range(cuda.grid(1), d_all * p_all, cuda.gridsize(1)):
        p = t % p_all
        d = t // p_all
        gyt[d, p] = gy[n0 + p // hw, d, p % hw]


@cuda.jit
def _conv_direct(x, w, bias, has_bias, y, sh, sw, pt, pl, rh, rw, groups):
    """y[n, d, i, j] = bias[d] + sum_{c, a, b} w[d, c, a, b] x[n, g*Cg + c, ...]."""
    n_all, d_all, ho, wo = y.shape
    cg, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    h = x.shape[2]
    wd = x.shape[3]
    dg = d_all // groups
    for t in range(cuda.grid(1), n_all * d_all * ho * wo, cuda.gridsize(1)):
        j = t % wo
        i = (t // wo) % ho
        d = (t // (wo * ho)) % d_all
        n = t // (wo * ho * d_all)
        c0 = (d // dg) * cg
        acc = y.dtype.type(0)
        for c in range(cg):
            for a in range(kh):
                hh = i * sh + a * rh - pt
                if hh < 0 or hh >= h:
                    continue
                for b in range(kw):
                    ww = j * sw + b * rw - pl
                    if 0 <= ww < wd:
                        acc += w[d, c, a, b] * x[n, c0 + c, hh, ww]
        if has_bias:
            acc += bias[d]
        y[n, d, i, j] = acc


@cuda.jit
def _conv_direct_grad_x(gy, w, gx, sh, sw, pt, pl, rh, rw, groups):
    """gx[n, c, h, w] = sum over the (d, a, b, i, j) whose tap read x[n, c, h, w]."""
    n_all, c_all, h_all, w_all = gx.shape
    d_all, cg, kh, kw = w.shape
    ho, wo = gy.shape[2], gy.shape[3]
    dg = d_all // groups
    for t in range(cuda.grid(1), n_all * c_all * h_all * w_all, cuda.gridsize(1)):
        ww0 = t % w_all
        h = (t // w_all) % h_all
        c = (t // (w_all * h_all)) % c_all
        n = t // (w_all * h_all * c_all)
        g = c // cg
        ci = c % cg
        acc = gx.dtype.type(0)
        for a in range(kh):
            hh = h + pt - a * rh
            if hh < 0 or hh % sh != 0 or hh // sh >= ho:
                continue
            i = hh // sh
            for b in range(kw):
                ww = ww0 + pl - b * rw
                if ww < 0 or ww % sw != 0 or ww // sw >= wo:
                    continue
                j = ww // sw
                for d in range(g * dg, (g + 1) * dg):
                    acc += gy[n, d, i, j] * w[d, ci, a, b]
        gx[n, c, h, ww0] = acc


@cuda.jit
def _conv_direct_grad_w(gy, x, gw, sh, sw, pt, pl, rh, rw, groups):
    """gw[d, c, a, b] = sum_{n, i, j} gy[n, d, i, j] x[n, g*Cg + c, i*sh + a*rh - pt, ...]."""
    d_all, cg, kh, kw = gw.shape
    n_all, _, ho, wo = gy.shape
    h = x.shape[2]
    wd = x.shape[3]
    dg = d_all // groups
    for t in range(cuda.grid(1), d_all * cg * kh * kw, cuda.gridsize(1)):
        b = t % kw
        a = (t // kw) % kh
        c = (t // (kw * kh)) % cg
        d = t // (kw * kh * cg)
        cx = (d // dg) * cg + c
        acc = gw.dtype.type(0)
        for n in range(n_all):
            for i in range(ho):
                hh = i * sh + a * rh - pt
                if hh < 0 or hh >= h:
                    continue
                for j in range(wo):
                    ww = j * sw + b * rw - pl
                    if 0 <= ww < wd:
                        acc += gy[n, d, i, j] * x[n, cx, hh, ww]
        gw[d, c, a, b] = acc
