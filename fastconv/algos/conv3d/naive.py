"""conv3d's direct algorithm: the formula as numba loops (NCDHW / OIDHW arrays).

y[n, d, i, j, l] = sum_{c, a, b, e} w[d, c, a, b, e]
    x[n, gCg + c, s_d i + r_d a - p_d, s_h j + r_h b - p_h, s_w l + r_w e - p_w]
(zero outside x). One parallel task per (image, output channel) in the forward, per
(image, input channel) in the input gradient (a gather: each task writes only its own
volume, so no two threads write one element). The weight gradient is the forward kernel
itself, per group: grad_w[d, c, a] = sum_{n, i} grad_y[n, d, i] x[n, c, s i + r a - p]
is a correlation of x (channels as the batch, images as the channels) with grad_y
(images as the input channels) at stride r and dilation s. Sums run in float64.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def forward_kernel(x, w, y, stride, pad, dil, groups):
    n, c_in, dd, hh, ww = x.shape
    c_out, cg, kd, kh, kw = w.shape
    od, oh, ow = y.shape[2], y.shape[3], y.shape[4]
    dg = c_out // groups
    for task in prange(n * c_out):
        b = task // c_out
        d = task % c_out
        c0 = (d // dg) * cg
        for i in range(od):
            for j in range(oh):
                for m in range(ow):
                    acc = 0.0
                    for c in range(cg):
                        for a in range(kd):
                            z = i * stride[0] + a * dil[0] - pad[0]
                            if z < 0 or z >= dd:
                                continue
                            for e in range(kh):
                                r = j * stride[1] + e * dil[1] - pad[1]
                                if r < 0 or r >= hh:
                                    continue
                                for f in range(kw):
                                    q = m * stride[2] + f * dil[2] - pad[2]
                                    if 0 <= q < ww:
                                        acc += w[d, c, a, e, f] * x[b, c0 + c, z, r, q]
                    y[b, d, i, j, m] = acc


@njit(cache=True)
def _source(pos, k, stride, dil, pad, n_out):
    """The output index whose tap ``k`` reads input position ``pos``, or -1."""
    t = pos + pad - k * dil
    if t < 0 or t % stride:
        return -1
    t //= stride
    return t if t < n_out else -1


@njit(parallel=True, cache=True)
def input_grad_kernel(gy, w, gx, stride, pad, dil, groups):
    n, c_in, dd, hh, ww = gx.shape
    c_out, cg, kd, kh, kw = w.shape
    od, oh, ow = gy.shape[2], gy.shape[3], gy.shape[4]
    dg = c_out // groups
    for task in prange(n * c_in):
        b = task // c_in
        ch = task % c_in
        g = ch // cg
        c = ch % cg
        for z in range(dd):
            for r in range(hh):
                for q in range(ww):
                    acc = 0.0
                    for a in range(kd):
                        i = _source(z, a, stride[0], dil[0], pad[0], od)
                        if i < 0:
                            continue
                        for e in range(kh):
                            j = _source(r, e, stride[1], dil[1], pad[1], oh)
                            if j < 0:
                                continue
                            for f in range(kw):
                                m = _source(q, f, stride[2], dil[2], pad[2], ow)
                                if m < 0:
                                    continue
                                for d in range(g * dg, (g + 1) * dg):
                                    acc += gy[b, d, i, j, m] * w[d, c, a, e, f]
                    gx[b, ch, z, r, q] = acc


def forward(x, w, a, out) -> None:
    """conv3d of canonical arrays into canonical ``out`` (bias not added)."""
    forward_kernel(x, w, out, a.stride, tuple(p[0] for p in a.padding), a.dilation,
                   a.groups)


def backward(gy, x, w, a, grad_x, grad_w) -> None:
    """Input and weight gradients of canonical arrays into canonical ``grad_x`` /
    ``grad_w`` (None: not wanted)."""
    pad = tuple(p[0] for p in a.padding)
    if grad_w is not None:
        cg, dg = a.c_in // a.groups, a.c_out // a.groups
        for g in range(a.groups):
            xt = np.ascontiguousarray(x[:, g * cg:(g + 1) * cg].transpose(1, 0, 2, 3, 4))
            gyt = np.ascontiguousarray(gy[:, g * dg:(g + 1) * dg].transpose(1, 0, 2, 3, 4))
            gwt = np.empty((cg, dg, *a.kernel), gy.dtype)
            forward_kernel(xt, gyt, gwt, a.dilation, pad, a.stride, 1)
            grad_w[g * dg:(g + 1) * dg] = gwt.transpose(1, 0, 2, 3, 4)
    if grad_x is not None:
        input_grad_kernel(gy, w, grad_x, a.stride, pad, a.dilation, a.groups)
