"""conv3d's direct algorithm: the formula as numba loops (NCDHW / OIDHW arrays).

y[n, d, i, j, l] = sum_{c, a, b, e} w[d, c, a, b, e]
    x[n, gCg + c, s_d i + r_d a - p_d, s_h j + r_h b - p_h, s_w l + r_w e - p_w]
(zero outside x): one kernel, one parallel task per (image, output channel), sums in
float64. Both gradients are that kernel again (one specialisation per dtype):

* grad_w[d, c, a] = sum_{n, i} grad_y[n, d, i] x[n, c, s i + r a - p] is, per group, a
  correlation of x (channels as the batch, images as the channels) with grad_y (images
  as the input channels) at stride r and dilation s;
* grad_x[n, c, z] = sum_{d, a} grad_y[n, d, (z + p - r a) / s] w[d, c, a] (where that
  divides) is a stride-1 correlation of grad_y spread on the stride grid (zeros between)
  with the flipped kernel, dilation r and padding r (k - 1) - p (negative: a crop),
  channels of each group transposed. Each task writes only its own output volume.
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


def forward(x, w, a, out) -> None:
    """conv3d of canonical arrays into canonical ``out`` (bias not added)."""
    forward_kernel(x, w, out, a.stride, tuple(p[0] for p in a.padding), a.dilation,
                   a.groups)


def backward(gy, x, w, a, grad_x, grad_w) -> None:
    """Input and weight gradients of canonical arrays into canonical ``grad_x`` /
    ``grad_w`` (None: not wanted)."""
    pad = tuple(p[0] for p in a.padding)
    cg, dg = a.c_in // a.groups, a.c_out // a.groups
    if grad_w is not None:
        for g in range(a.groups):
            xt = np.ascontiguousarray(x[:, g * cg:(g + 1) * cg].transpose(1, 0, 2, 3, 4))
            gyt = np.ascontiguousarray(gy[:, g * dg:(g + 1) * dg].transpose(1, 0, 2, 3, 4))
            gwt = np.empty((cg, dg, *a.kernel), gy.dtype)
            forward_kernel(xt, gyt, gwt, a.dilation, pad, a.stride, 1)
            grad_w[g * dg:(g + 1) * dg] = gwt.transpose(1, 0, 2, 3, 4)
    if grad_x is not None:
        spread = np.zeros(gy.shape[:2] + tuple((o - 1) * s + 1 for o, s in
                                               zip(a.out, a.stride, strict=True)), gy.dtype)
        spread[(Ellipsis, *(slice(None, None, s) for s in a.stride))] = gy
        flipped = w[:, :, ::-1, ::-1, ::-1].reshape(a.groups, dg, cg, *a.kernel)
        wt = np.ascontiguousarray(flipped.transpose(0, 2, 1, 3, 4, 5)).reshape(
            a.c_in, dg, *a.kernel)
        back_pad = tuple(r * (k - 1) - p for r, k, p in zip(a.dilation, a.kernel, pad,
                                                             strict=True))
        forward_kernel(spread, wt, grad_x, (1, 1, 1), back_pad, a.dilation, a.groups)
