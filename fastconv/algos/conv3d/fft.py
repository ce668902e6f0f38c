"""conv3d by FFT (scipy.fft.rfftn over depth, height and width; NCDHW arrays).

The padded input (P = size + padding per axis) and the dilated kernel are transformed at
a fast length L >= P per axis; the correlation is the inverse transform of
sum_c X[n, c] * conj(W[d, c]), read at the strided output positions (no wrap-around:
every tap of a kept output lies within P). The backward is the adjoint: grad_x is the
inverse transform of sum_d GY[n, d] * W[d, c] (grad_y spread on the stride grid) cropped
to the unpadded input, grad_w the correlation of the padded input with that grid, read
at the dilated taps. float32 runs in complex64. Pays off for large kernels.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

AXES = (-3, -2, -1)


def _lengths(a) -> tuple[int, ...]:
    return tuple(scipy.fft.next_fast_len(s + lo + hi, real=True)
                 for s, (lo, hi) in zip(a.size, a.padding, strict=True))


def _padded(x, a, lengths):
    """x in a zero array of the transform lengths, shifted by the low padding."""
    xp = np.zeros(x.shape[:2] + lengths, x.dtype)
    xp[(Ellipsis, *(slice(lo, lo + s) for s, (lo, _) in zip(a.size, a.padding,
                                                             strict=True)))] = x
    return xp


def _dilated(w, a, lengths):
    """The kernel with its taps at the dilated positions of a zero array."""
    wd = np.zeros(w.shape[:2] + lengths, w.dtype)
    wd[(Ellipsis, *(slice(0, r * (k - 1) + 1, r)
                    for k, r in zip(a.kernel, a.dilation, strict=True)))] = w
    return wd


def _out_grid(a):
    """The strided positions of the outputs in the padded input's frame."""
    return (Ellipsis, *(slice(0, s * (o - 1) + 1, s)
                        for s, o in zip(a.stride, a.out, strict=True)))


def _groups(a):
    cg, dg = a.c_in // a.groups, a.c_out // a.groups
    for g in range(a.groups):
        yield slice(g * cg, (g + 1) * cg), slice(g * dg, (g + 1) * dg)


def forward(x, w, a, out) -> None:
    """conv3d of canonical arrays into canonical ``out`` (bias not added)."""
    lengths = _lengths(a)
    xf = scipy.fft.rfftn(_padded(x, a, lengths), axes=AXES)
    wf = np.conj(scipy.fft.rfftn(_dilated(w, a, lengths), axes=AXES))
    yf = np.empty((a.n, a.c_out) + xf.shape[2:], xf.dtype)
    for cs, ds in _groups(a):
        np.einsum("ncxyz,dcxyz->ndxyz", xf[:, cs], wf[ds], out=yf[:, ds])
    y = scipy.fft.irfftn(yf, s=lengths, axes=AXES)
    out[...] = y[_out_grid(a)]


def backward(gy, x, w, a, grad_x, grad_w) -> None:
    """Input and weight gradients of canonical arrays (None: not wanted)."""
    lengths = _lengths(a)
    grid = np.zeros((a.n, a.c_out) + lengths, gy.dtype)
    grid[_out_grid(a)] = gy
    gf = scipy.fft.rfftn(grid, axes=AXES)
    if grad_x is not None:
        wf = scipy.fft.rfftn(_dilated(w, a, lengths), axes=AXES)
        xf = np.empty((a.n, a.c_in) + gf.shape[2:], gf.dtype)
        for cs, ds in _groups(a):
            np.einsum("ndxyz,dcxyz->ncxyz", gf[:, ds], wf[ds], out=xf[:, cs])
        gxp = scipy.fft.irfftn(xf, s=lengths, axes=AXES)
        grad_x[...] = gxp[(Ellipsis, *(slice(lo, lo + s) for s, (lo, _) in
                                       zip(a.size, a.padding, strict=True)))]
    if grad_w is not None:
        xf = scipy.fft.rfftn(_padded(x, a, lengths), axes=AXES)
        gwf = np.empty((a.c_out, a.c_in // a.groups) + gf.shape[2:], gf.dtype)
        for cs, ds in _groups(a):
            np.einsum("ncxyz,ndxyz->dcxyz", xf[:, cs], np.conj(gf[:, ds]), out=gwf[ds])
        gwd = scipy.fft.irfftn(gwf, s=lengths, axes=AXES)
        grad_w[...] = gwd[(Ellipsis, *(slice(0, r * (k - 1) + 1, r)
                                       for k, r in zip(a.kernel, a.dilation, strict=True)))]
