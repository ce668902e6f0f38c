"""conv3d by im2col: a 3-D unfold (vol2col) and one BLAS GEMM per group (NCDHW arrays).

The columns of an image are (C_in * kd * kh * kw, od * oh * ow): row (c, a, b, e) holds
x[c, s_d i + r_d a - p_d, s_h j + r_h b - p_h, s_w l + r_w e - p_w] for every output
position (i, j, l), zero in the padding. Which input voxel each (tap, output position)
reads is one table of flat offsets (:func:`offsets`), shared by the unfold (a gather)
and the fold (a scatter-add, one task per image and channel). The batch is tiled so a
tile's columns fit ``config.WORKSPACE_BYTES`` (one image at least). The backward forms
the weight gradient as grad_y @ columns^T and the column gradient as w^T @ grad_y, then
folds (col2vol) the latter back onto the input.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ... import config


@njit(cache=True)
def offsets(size, kernel, stride, pad, dil, out):
    """(K, od*oh*ow) int64: the flat offset within one input channel's volume that tap k
    reads for output position p, or -1 where it reads the padding."""
    dd, hh, ww = size
    kd, kh, kw = kernel
    od, oh, ow = out
    table = np.empty((kd * kh * kw, od * oh * ow), np.int64)
    for k in range(kd * kh * kw):
        a, e, f = k // (kh * kw), (k // kw) % kh, k % kw
        p = 0
        for i in range(od):
            z = i * stride[0] + a * dil[0] - pad[0]
            for j in range(oh):
                r = j * stride[1] + e * dil[1] - pad[1]
                for m in range(ow):
                    q = m * stride[2] + f * dil[2] - pad[2]
                    inside = 0 <= z < dd and 0 <= r < hh and 0 <= q < ww
                    table[k, p] = (z * hh + r) * ww + q if inside else -1
                    p += 1
    return table


@njit(parallel=True, cache=True)
def vol2col(x, cols, table):
    """Unfold the images ``x`` (nb, C, D*H*W) into ``cols`` (nb, C*K, od*oh*ow)."""
    nb, c_in = x.shape[0], x.shape[1]
    kk, npos = table.shape
    for task in prange(nb * c_in * kk):
        b = task // (c_in * kk)
        row = task % (c_in * kk)
        c, k = row // kk, row % kk
        for p in range(npos):
            o = table[k, p]
            cols[b, row, p] = x[b, c, o] if o >= 0 else 0


@njit(parallel=True, cache=True)
def col2vol(cols, gx, table):
    """Fold column gradients ``cols`` (nb, C*K, od*oh*ow) onto ``gx`` (nb, C, D*H*W),
    which it overwrites; one task per (image, channel)."""
    nb, c_in = gx.shape[0], gx.shape[1]
    kk, npos = table.shape
    for task in prange(nb * c_in):
        b, c = task // c_in, task % c_in
        gx[b, c] = 0
        for k in range(kk):
            for p in range(npos):
                o = table[k, p]
                if o >= 0:
                    gx[b, c, o] += cols[b, c * kk + k, p]


def tile_images(a) -> int:
    """Images per tile: as many as keep the columns within ``config.WORKSPACE_BYTES``."""
    per_image = a.c_in * math.prod(a.kernel) * math.prod(a.out) * a.dtype.itemsize
    return max(1, min(a.n, config.WORKSPACE_BYTES // max(per_image, 1)))


def _table(a):
    return offsets(a.size, a.kernel, a.stride, tuple(p[0] for p in a.padding), a.dilation,
                   a.out)


def _tiles(a):
    step = tile_images(a)
    cols = np.empty((step, a.c_in * math.prod(a.kernel), math.prod(a.out)), a.dtype)
    for start in range(0, a.n, step):
        stop = min(a.n, start + step)
        yield slice(start, stop), cols[:stop - start]


def _group_rows(a, g):
    rows = a.c_in // a.groups * math.prod(a.kernel)
    return slice(g * rows, (g + 1) * rows)


def forward(x, w, a, out) -> None:
    """conv3d of canonical arrays into canonical ``out`` (bias not added)."""
    table = _table(a)
    dg = a.c_out // a.groups
    wm = w.reshape(a.c_out, -1)
    xv = x.reshape(a.n, a.c_in, -1)
    yv = out.reshape(a.n, a.c_out, -1)
    for batch, cols in _tiles(a):
        vol2col(xv[batch], cols, table)
        for g in range(a.groups):
            np.matmul(wm[g * dg:(g + 1) * dg], cols[:, _group_rows(a, g)],
                      out=yv[batch, g * dg:(g + 1) * dg])


def backward(gy, x, w, a, grad_x, grad_w) -> None:
    """Input and weight gradients of canonical arrays (None: not wanted)."""
    table = _table(a)
    dg = a.c_out // a.groups
    wm = w.reshape(a.c_out, -1)
    xv = x.reshape(a.n, a.c_in, -1)
    gxv = None if grad_x is None else grad_x.reshape(a.n, a.c_in, -1)
    gyv = gy.reshape(a.n, a.c_out, -1)
    gwm = None
    if grad_w is not None:
        gwm = grad_w.reshape(a.c_out, -1)
        gwm[...] = 0
    for batch, cols in _tiles(a):
        gyt = gyv[batch]
        if gwm is not None:
            vol2col(xv[batch], cols, table)
            for g in range(a.groups):
                part = np.matmul(gyt[:, g * dg:(g + 1) * dg],
                                 cols[:, _group_rows(a, g)].transpose(0, 2, 1))
                gwm[g * dg:(g + 1) * dg] += part.sum(axis=0)
        if grad_x is not None:
            for g in range(a.groups):
                np.matmul(wm[g * dg:(g + 1) * dg].T, gyt[:, g * dg:(g + 1) * dg],
                          out=cols[:, _group_rows(a, g)])
            col2vol(cols, gxv[batch], table)
