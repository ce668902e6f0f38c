"""CUDA kernels of conv2d and its gradients (contiguous NCHW / OIHW device arrays).

Every kernel is a grid-stride loop in which each iteration owns the one element it
writes; the im2col path's reductions run in the GEMM (one thread per output element).
Geometry arguments: stride (sh, sw), top and left padding (pt, pl), dilation (rh, rw);
output row i and kernel row a read input row i*sh + a*rh - pt (columns alike).

Column buffer layout (im2col path), for a chunk of ``nc`` images starting at ``n0``:

    cols[(c*kh + a)*kw + b, (n*ho + i)*wo + j] = x[n0 + n, c, i*sh + a*rh - pt, j*sw + b*rw - pl]

(zero outside x). Viewed as (groups, C_in/groups*kh*kw, nc*ho*wo) it is the B operand of
one GEMM per group; the output of those GEMMs is (C_out, nc*ho*wo), "CNHW".

Two sums serve several kernels:

* :func:`_window_dot`, a plane times a strided window of x (the forward's taps, and the
  weight gradient's outputs);
* :func:`gather_kernel`, the input gradient gathered from every (tap, output) pair that
  read an input element (col2im, and the direct kernel's grad_x).
"""

from __future__ import annotations

from numba import cuda


# --------------------------------------------------------------------- index arithmetic
@cuda.jit(device=True)
def _unravel4(t, d1, d2, d3):
    """(i0, i1, i2, i3): the flat row-major index ``t`` into an array (_, d1, d2, d3)."""
    i3 = t % d3
    t //= d3
    i2 = t % d2
    t //= d2
    return t // d1, t % d1, i2, i3


@cuda.jit(device=True)
def _span(base, step, size, count):
    """(lo, hi): the k in [lo, hi) are those of [0, count) with 0 <= base + k*step < size
    (step >= 1; an empty range when there are none)."""
    lo = (step - 1 - base) // step  # the first k with base + k*step >= 0
    hi = (size - base + step - 1) // step  # one past the last k with base + k*step < size
    return (lo if lo > 0 else 0), (hi if hi < count else count)


@cuda.jit(device=True)
def _tap_output(pos, k, stride, dilation, pad, out_size):
    """The output index o whose tap k reads input position ``pos`` (o*stride +
    k*dilation - pad == pos, 0 <= o < out_size), or -1 when there is none."""
    q = pos + pad - k * dilation
    if q < 0 or q % stride != 0 or q // stride >= out_size:
        return -1
    return q // stride


# ------------------------------------------------------------------------ the two sums
@cuda.jit(device=True)
def _window_dot(acc, f, f0, f1, x, x0, x1, h0, step_h, w0, step_w):
    """acc + sum over u, v of f[f0, f1, u, v] * x[x0, x1, h0 + u*step_h, w0 + v*step_w].

    f is 4-D and (u, v) run over its last two axes; terms whose x position falls outside
    x (the zero padding) are left out, the others are added in (u, v) order."""
    u0, u1 = _span(h0, step_h, x.shape[2], f.shape[2])
    v0, v1 = _span(w0, step_w, x.shape[3], f.shape[3])
    for u in range(u0, u1):
        for v in range(v0, v1):
            acc += f[f0, f1, u, v] * x[x0, x1, h0 + u * step_h, w0 + v * step_w]
    return acc


def gather_kernel(term):
    """The kernel ``gather(src, aux, gx, n0, nc, kh, kw, sh, sw, pt, pl, rh, rw, ho, wo)``
    that sets, for every n < nc, c, h, w of gx (N, C_in, H, W),

        gx[n0 + n, c, h, w] = sum of term(acc, src, aux, n, c, a, b, i, j)

    over the taps (a, b) < (kh, kw) and outputs (i, j) < (ho, wo) that read x[., c, h, w]
    (i*sh + a*rh - pt == h, j*sw + b*rw - pl == w), in (a, b) order: one thread per input
    element, no atomics. ``term`` is a device function returning ``acc`` plus the
    contribution of one (tap, output) pair, read from ``src`` and ``aux``."""

    def gather(src, aux, gx, n0, nc, kh, kw, sh, sw, pt, pl, rh, rw, ho, wo):
        c_all, h_all, w_all = gx.shape[1], gx.shape[2], gx.shape[3]
        for t in range(cuda.grid(1), nc * c_all * h_all * w_all, cuda.gridsize(1)):
            n, c, h, w = _unravel4(t, c_all, h_all, w_all)
            acc = gx.dtype.type(0)
            for a in range(kh):
                i = _tap_output(h, a, sh, rh, pt, ho)
                if i < 0:
                    continue
                for b in range(kw):
                    j = _tap_output(w, b, sw, rw, pl, wo)
                    if j >= 0:
                        acc = term(acc, src, aux, n, c, a, b, i, j)
            gx[n0 + n, c, h, w] = acc

    # The kernel's name (in profiles and PTX) says which sum it is, e.g. "_gather_cols_term".
    gather.__name__ = gather.__qualname__ = f"_gather{term.py_func.__name__}"
    return cuda.jit(gather)


# ---------------------------------------------------------------------------- im2col path
@cuda.jit
def _im2col(x, cols, n0, kh, kw, sh, sw, pt, pl, rh, rw, ho, wo):
    """cols (C_in*kh*kw, nc*ho*wo) of the images n0 .. n0+nc-1 of x (N, C_in, H, W)."""
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


@cuda.jit(device=True)
def _cols_term(acc, cols, _, n, c, a, b, i, j):
    """acc + the column-buffer entry of tap (a, b), output (i, j) of chunk image n;
    cols viewed as (C_in, kh, kw, nc, ho, wo)."""
    return acc + cols[c, a, b, n, i, j]


#: col2im(cols (C_in, kh, kw, nc, ho, wo), cols, gx (N, C_in, H, W), n0, nc, kh, kw, sh,
#: sw, pt, pl, rh, rw, ho, wo): gx[n0 + n] = the sum of the column-buffer entries that
#: im2col read from each position (the adjoint of im2col).
_col2im = gather_kernel(_cols_term)


@cuda.jit
def _cnhw_to_y(yt, bias, has_bias, y, n0):
    """y[n0 + n, d, s] = yt[d, n*HW + s] (+ bias[d]); yt is (D, nc*HW), y is (N, D, HW)."""
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
    """gyt[d, n*HW + s] = gy[n0 + n, d, s]; gy is (N, D, HW), gyt is (D, nc*HW)."""
    d_all = gyt.shape[0]
    hw = gy.shape[2]
    p_all = gyt.shape[1]
    for t in range(cuda.grid(1), d_all * p_all, cuda.gridsize(1)):
        p = t % p_all
        d = t // p_all
        gyt[d, p] = gy[n0 + p // hw, d, p % hw]


# ---------------------------------------------------------------------------- direct path
@cuda.jit
def _conv_direct(x, w, bias, has_bias, y, sh, sw, pt, pl, rh, rw, groups):
    """y[n, d, i, j] = bias[d] + sum_{c, a, b} w[d, c, a, b] x[n, g*Cg + c, i*sh + a*rh - pt,
    j*sw + b*rw - pl], g = d's group; x (N, C_in, H, W), w (C_out, Cg, kh, kw),
    y (N, C_out, Ho, Wo)."""
    d_all, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    cg = w.shape[1]
    dg = d_all // groups
    for t in range(cuda.grid(1), y.shape[0] * d_all * ho * wo, cuda.gridsize(1)):
        n, d, i, j = _unravel4(t, d_all, ho, wo)
        c0 = (d // dg) * cg
        acc = y.dtype.type(0)
        for c in range(cg):
            acc = _window_dot(acc, w, d, c, x, n, c0 + c, i * sh - pt, rh, j * sw - pl, rw)
        if has_bias:
            acc += bias[d]
        y[n, d, i, j] = acc


@cuda.jit(device=True)
def _products_term(acc, gy, w, n, c, a, b, i, j):
    """acc + sum over the output channels d of c's group of gy[n, d, i, j] w[d, c % Cg, a, b];
    gy viewed as (N, groups, C_out/groups, Ho, Wo), w as (groups, C_out/groups, Cg, kh, kw)."""
    cg = w.shape[2]
    g = c // cg
    ci = c % cg
    for d in range(w.shape[1]):
        acc += gy[n, g, d, i, j] * w[g, d, ci, a, b]
    return acc


#: grad_x(gy (N, groups, C_out/groups, Ho, Wo), w (groups, C_out/groups, Cg, kh, kw),
#: gx (N, C_in, H, W), 0, N, kh, kw, sh, sw, pt, pl, rh, rw, Ho, Wo): gx[n, c, h, w] = the
#: sum of gy[n, d, i, j] w[d, c % Cg, a, b] over the taps that read x[n, c, h, w].
_conv_direct_grad_x = gather_kernel(_products_term)


@cuda.jit
def _conv_direct_grad_w(gy, x, gw, sh, sw, pt, pl, rh, rw, groups):
    """gw[d, c, a, b] = sum_{n, i, j} gy[n, d, i, j] x[n, g*Cg + c, i*sh + a*rh - pt,
    j*sw + b*rw - pl], g = d's group; gy (N, C_out, Ho, Wo), x (N, C_in, H, W),
    gw (C_out, Cg, kh, kw)."""
    d_all, cg, kh, kw = gw.shape
    dg = d_all // groups
    for t in range(cuda.grid(1), d_all * cg * kh * kw, cuda.gridsize(1)):
        d, c, a, b = _unravel4(t, cg, kh, kw)
        cx = (d // dg) * cg + c
        acc = gw.dtype.type(0)
        for n in range(gy.shape[0]):
            acc = _window_dot(acc, gy, n, d, x, n, cx, a * rh - pt, sh, b * rw - pl, sw)
        gw[d, c, a, b] = acc
