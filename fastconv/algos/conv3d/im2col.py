"""conv3d by im2col: a 3-D unfold (vol2col) and one BLAS GEMM per group (NCDHW arrays).

The columns of an image are (C_in * kd * kh * kw, od * oh * ow): row (c, a, b, e) holds
x[c, s_d i + r_d a - p_d, s_h j + r_h b - p_h, s_w l + r_w e - p_w] for every output
position (i, j, l), zero in the padding. Which input voxel each (tap, output position)
reads is one table of flat offsets (:func:`offsets`), shared by the unfold (a gather)
and the fold (a scatter-add, one task per channel). Each image is unfolded in chunks of
output positions whose columns fit ``config.WORKSPACE_CACHE_BYTES`` (a workspace reused
across calls: no page faults), each followed by its GEMMs, so memory stays bounded
whatever the batch. The backward forms the weight gradient as
grad_y @ columns^T and the column gradient as w^T @ grad_y, then folds (col2vol) the
latter back onto the input.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ... import config
from .._common import workspace
from . import window


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
def vol2col(x, cols, table, p0):
    """Unfold one image ``x`` (C, D*H*W) into ``cols`` (C*K, span): the columns of output
    positions p0 .. p0 + span - 1; one task per row."""
    c_in = x.shape[0]
    kk = table.shape[0]
    span = cols.shape[1]
    for row in prange(c_in * kk):
        c, k = row // kk, row % kk
        for p in range(span):
            o = table[k, p0 + p]
            cols[row, p] = x[c, o] if o >= 0 else 0


@njit(parallel=True, cache=True)
def col2vol(cols, gx, table, p0):
    """Add column gradients ``cols`` (C*K, span) of output positions p0 .. p0 + span - 1
    onto one image's ``gx`` (C, D*H*W); one task per channel (each writes only its own)."""
    c_in = gx.shape[0]
    kk = table.shape[0]
    span = cols.shape[1]
    for c in prange(c_in):
        for k in range(kk):
            for p in range(span):
                o = table[k, p0 + p]
                if o >= 0:
                    gx[c, o] += cols[c * kk + k, p]


def chunk_positions(a) -> int:
    """Output positions per unfolded chunk: as many as keep the columns (C_in*K rows)
    within ``config.WORKSPACE_CACHE_BYTES`` (the largest workspace kept for reuse), one
    at least. Larger chunks than conv2d's cache-sized ones: each chunk is a parallel
    region that waits for every thread, and on a busy machine those waits cost more
    than the cache misses (the 32^3 volume layer ran 2-3x faster at two threads)."""
    row_bytes = a.c_in * math.prod(a.kernel) * a.dtype.itemsize
    return max(1, min(math.prod(a.out), config.WORKSPACE_CACHE_BYTES // row_bytes))


def _table(a):
    return offsets(a.size, a.kernel, a.stride, tuple(p[0] for p in a.padding), a.dilation,
                   a.out)


def _chunks(a):
    """(p0, p1, cols) per chunk of output positions; cols a reused (C_in*K, p1 - p0)
    workspace."""
    span, npos = chunk_positions(a), math.prod(a.out)
    rows = a.c_in * math.prod(a.kernel)
    buf = workspace("conv3d-cols", rows * span, a.dtype)
    for p0 in range(0, npos, span):
        p1 = min(npos, p0 + span)
        yield p0, p1, buf[:rows * (p1 - p0)].reshape(rows, p1 - p0)


def _groups(a):
    """(input rows of the columns, output channels) of each group."""
    rows, dg = a.c_in // a.groups * math.prod(a.kernel), a.c_out // a.groups
    return [(slice(g * rows, (g + 1) * rows), slice(g * dg, (g + 1) * dg))
            for g in range(a.groups)]


def forward(x, w, a, out) -> None:
    """conv3d of canonical arrays into canonical ``out`` (bias not added); at stride 1
    the columns are shifted windows of the padded image (:mod:`.window`)."""
    if window.applies(a):
        window.forward(x, w, a, out)
        return
    table, groups = _table(a), _groups(a)
    wm = w.reshape(a.c_out, -1)
    xv = x.reshape(a.n, a.c_in, -1)
    yv = out.reshape(a.n, a.c_out, -1)
    for b in range(a.n):
        for p0, p1, cols in _chunks(a):
            vol2col(xv[b], cols, table, p0)
            for rows, ds in groups:
                np.matmul(wm[ds], cols[rows], out=yv[b, ds, p0:p1])


def backward(gy, x, w, a, grad_x, grad_w) -> None:
    """Input and weight gradients of canonical arrays (None: not wanted); at stride 1
    through :mod:`.window`."""
    if window.applies(a):
        window.backward(gy, x, w, a, grad_x, grad_w)
        return
    table, groups = _table(a), _groups(a)
    wm = w.reshape(a.c_out, -1)
    xv = x.reshape(a.n, a.c_in, -1)
    gyv = gy.reshape(a.n, a.c_out, -1)
    if grad_w is not None:
        gwm = grad_w.reshape(a.c_out, -1)
        gwm[...] = 0
    if grad_x is not None:
        gxv = grad_x.reshape(a.n, a.c_in, -1)
        gxv[...] = 0
    for b in range(a.n):
        for p0, p1, cols in _chunks(a):
            if grad_w is not None:
                vol2col(xv[b], cols, table, p0)
                for rows, ds in groups:
                    gwm[ds] += gyv[b, ds, p0:p1] @ cols[rows].T
            if grad_x is not None:
                for rows, ds in groups:
                    np.matmul(wm[ds].T, gyv[b, ds, p0:p1], out=cols[rows])
                col2vol(cols, gxv[b], table, p0)
