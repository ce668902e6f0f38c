"""CUDA kernels of conv3d and its gradients (contiguous NCDHW / OIDHW device arrays).

The 3-D counterparts of ``_conv_kernels`` (same conventions: grid-stride loops, each
iteration owns the element it writes, no atomics). Geometry arguments: stride (sd, sh,
sw), front, top and left padding (pd, ph, pw), dilation (rd, rh, rw); output index i and
kernel index a along depth read input depth i*sd + a*rd - pd (height, width alike).

Column buffer (im2col path) for ``nc`` images from ``n0``:

    cols[((c*kd + a)*kh + b)*kw + e, ((n*od + i)*oh + j)*ow + l]
        = x[n0 + n, c, i*sd + a*rd - pd, j*sh + b*rh - ph, l*sw + e*rw - pw]

(zero outside x): the B operand of one GEMM per group, as in 2-D.
"""

from __future__ import annotations

from numba import cuda

from ._conv_kernels import _span, _tap_output


@cuda.jit(device=True)
def _unravel5(t, d1, d2, d3, d4):
    """(i0, .., i4): the flat row-major index ``t`` into an array (_, d1, d2, d3, d4)."""
    i4 = t % d4
    t //= d4
    i3 = t % d3
    t //= d3
    i2 = t % d2
    t //= d2
    return t // d1, t % d1, i2, i3, i4


@cuda.jit(device=True)
def _window_dot3(acc, f, f0, f1, x, x0, x1, z0, step_d, h0, step_h, w0, step_w):
    """acc + sum over u, v, q of f[f0, f1, u, v, q] * x[x0, x1, z0 + u*step_d,
    h0 + v*step_h, w0 + q*step_w]; f and x 5-D, terms outside x left out."""
    u0, u1 = _span(z0, step_d, x.shape[2], f.shape[2])
    v0, v1 = _span(h0, step_h, x.shape[3], f.shape[3])
    q0, q1 = _span(w0, step_w, x.shape[4], f.shape[4])
    for u in range(u0, u1):
        for v in range(v0, v1):
            for q in range(q0, q1):
                acc += f[f0, f1, u, v, q] * x[x0, x1, z0 + u * step_d, h0 + v * step_h,
                                              w0 + q * step_w]
    return acc


def gather3_kernel(term):
    """The 3-D ``_conv_kernels.gather_kernel``: the kernel ``gather(src, aux, gx, n0, nc,
    kd, kh, kw, sd, sh, sw, pd, ph, pw, rd, rh, rw, od, oh, ow)`` setting gx[n0 + n, c,
    z, h, w] (gx (N, C_in, D, H, W)) to the sum of ``term(acc, src, aux, n, c, a, b, e, i,
    j, l)`` over the taps (a, b, e) and outputs (i, j, l) that read x[., c, z, h, w]."""

    def gather(src, aux, gx, n0, nc, kd, kh, kw, sd, sh, sw, pd, ph, pw, rd, rh, rw, od, oh,
               ow):
        c_all, d_all, h_all, w_all = gx.shape[1], gx.shape[2], gx.shape[3], gx.shape[4]
        for t in range(cuda.grid(1), nc * c_all * d_all * h_all * w_all, cuda.gridsize(1)):
            n, c, z, h, w = _unravel5(t, c_all, d_all, h_all, w_all)
            acc = gx.dtype.type(0)
            for a in range(kd):
                i = _tap_output(z, a, sd, rd, pd, od)
                if i < 0:
                    continue
                for b in range(kh):
                    j = _tap_output(h, b, sh, rh, ph, oh)
                    if j < 0:
                        continue
                    for e in range(kw):
                        q = _tap_output(w, e, sw, rw, pw, ow)
                        if q >= 0:
                            acc = term(acc, src, aux, n, c, a, b, e, i, j, q)
            gx[n0 + n, c, z, h, w] = acc

    gather.__name__ = gather.__qualname__ = f"_gather3{term.py_func.__name__}"
    return cuda.jit(gather)


# ---------------------------------------------------------------------------- im2col path
@cuda.jit
def _vol2col(x, cols, n0, kd, kh, kw, sd, sh, sw, pd, ph, pw, rd, rh, rw, od, oh, ow):
    """cols (C_in*kd*kh*kw, nc*od*oh*ow) of the images n0 .. n0+nc-1 of x (N, C_in, D, H,
    W)."""
    rows = cols.shape[0]
    p_all = cols.shape[1]
    zero = cols.dtype.type(0)
    for t in range(cuda.grid(1), rows * p_all, cuda.gridsize(1)):
        p = t % p_all
        r = t // p_all
        q = p % ow
        j = (p // ow) % oh
        i = (p // (ow * oh)) % od
        n = p // (ow * oh * od)
        e = r % kw
        b = (r // kw) % kh
        a = (r // (kw * kh)) % kd
        c = r // (kw * kh * kd)
        zz = i * sd + a * rd - pd
        hh = j * sh + b * rh - ph
        ww = q * sw + e * rw - pw
        if 0 <= zz < x.shape[2] and 0 <= hh < x.shape[3] and 0 <= ww < x.shape[4]:
            cols[r, p] = x[n0 + n, c, zz, hh, ww]
        else:
            cols[r, p] = zero


@cuda.jit(device=True)
def _cols3_term(acc, cols, _, n, c, a, b, e, i, j, q):
    """acc + the column-buffer entry of tap (a, b, e), output (i, j, q) of chunk image n;
    cols viewed as (C_in, kd, kh, kw, nc, od, oh, ow)."""
    return acc + cols[c, a, b, e, n, i, j, q]


#: col2vol(cols (C_in, kd, kh, kw, nc, od, oh, ow), cols, gx (N, C_in, D, H, W), n0, nc,
#: kd, kh, kw, sd, sh, sw, pd, ph, pw, rd, rh, rw, od, oh, ow): the adjoint of vol2col.
_col2vol = gather3_kernel(_cols3_term)


# ---------------------------------------------------------------------------- direct path
@cuda.jit
def _conv3d_direct(x, w, bias, has_bias, y, sd, sh, sw, pd, ph, pw, rd, rh, rw, groups):
    """y[n, d, i, j, l] = bias[d] + sum_{c, a, b, e} w[d, c, a, b, e] x[n, g*Cg + c,
    i*sd + a*rd - pd, j*sh + b*rh - ph, l*sw + e*rw - pw], g = d's group."""
    d_all, od, oh, ow = y.shape[1], y.shape[2], y.shape[3], y.shape[4]
    cg = w.shape[1]
    dg = d_all // groups
    for t in range(cuda.grid(1), y.shape[0] * d_all * od * oh * ow, cuda.gridsize(1)):
        n, d, i, j, q = _unravel5(t, d_all, od, oh, ow)
        c0 = (d // dg) * cg
        acc = y.dtype.type(0)
        for c in range(cg):
            acc = _window_dot3(acc, w, d, c, x, n, c0 + c, i * sd - pd, rd, j * sh - ph, rh,
                               q * sw - pw, rw)
        if has_bias:
            acc += bias[d]
        y[n, d, i, j, q] = acc


@cuda.jit(device=True)
def _products3_term(acc, gy, w, n, c, a, b, e, i, j, q):
    """acc + sum over the output channels d of c's group of gy[n, d, i, j, q]
    w[d, c % Cg, a, b, e]; gy viewed as (N, groups, C_out/groups, od, oh, ow), w as
    (groups, C_out/groups, Cg, kd, kh, kw)."""
    cg = w.shape[2]
    g = c // cg
    ci = c % cg
    for d in range(w.shape[1]):
        acc += gy[n, g, d, i, j, q] * w[g, d, ci, a, b, e]
    return acc


#: grad_x(gy (N, groups, C_out/groups, od, oh, ow), w (groups, C_out/groups, Cg, kd, kh,
#: kw), gx (N, C_in, D, H, W), 0, N, kd, kh, kw, geometry, od, oh, ow).
_conv3d_direct_grad_x = gather3_kernel(_products3_term)


@cuda.jit
def _conv3d_direct_grad_w(gy, x, gw, sd, sh, sw, pd, ph, pw, rd, rh, rw, groups):
    """gw[d, c, a, b, e] = sum_{n, i, j, l} gy[n, d, i, j, l] x[n, g*Cg + c, i*sd + a*rd -
    pd, j*sh + b*rh - ph, l*sw + e*rw - pw], g = d's group."""
    d_all, cg, kd, kh, kw = gw.shape
    dg = d_all // groups
    for t in range(cuda.grid(1), d_all * cg * kd * kh * kw, cuda.gridsize(1)):
        d, c, a, b, e = _unravel5(t, cg, kd, kh, kw)
        cx = (d // dg) * cg + c
        acc = gw.dtype.type(0)
        for n in range(gy.shape[0]):
            acc = _window_dot3(acc, gy, n, d, x, n, cx, a * rd - pd, sd, b * rh - ph, sh,
                               e * rw - pw, sw)
        gw[d, c, a, b, e] = acc
