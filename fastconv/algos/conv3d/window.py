"""conv3d im2col at stride 1: columns as shifted windows of the padded volume.

At stride 1 the output is computed on the padded input's grid: output position
q = i * Hp * Wp + j * Wp + l (i < D_out, j < Hp, l < Wp, the padded sizes) reads tap
(a, b, e) at flat offset q + r_d a Hp Wp + r_h b Wp + r_w e of the padded channel. So
the column row of (channel, tap) for the output positions p0 .. p1 - 1 is one
contiguous run of the padded channel, and a chunk of columns (C_in, kd, kh, kw, span)
is a strided view of it copied by one ``np.copyto``: no offset table, no gather, no
branch per element. The GEMM (C_out/G) x (C_in/G K) x (span) then fills the grid's
outputs; those with j >= H_out or l >= W_out read past a row's end and are dropped
(the 32^3 layer computes 34 * 34 / 32^2 = 1.13x its outputs). Chunks stay near
``CHUNK_BYTES`` of columns, so each chunk's columns are still in cache for its GEMM.

The backward: the weight gradient is grad_y spread on the same grid (zeros at the
dropped positions) against the padded input, tap by tap in place (without groups) or
against the columns. The input gradient is either the column gradients w^T grad_y,
chunk by chunk, each row added back as one contiguous run of the padded image
(:func:`fold`), whose interior is grad_x (any padding), or the forward on grad_y with
the kernel flipped and each group's channels transposed (padding r (k - 1) - p, when
not negative): :func:`input_gradient_by_fold` picks by the cost model.

>>> import numpy as np
>>> from fastconv._args.conv_nd import conv_nd_args_from_shapes
>>> a = conv_nd_args_from_shapes("conv3d", (1, 1, 3, 3, 3), (1, 1, 2, 2, 2), rank=3)
>>> y = np.empty(a.y_shape)
>>> forward(np.ones(a.x_shape), np.ones(a.w_shape), a, y)
>>> y[0, 0, 0]
array([[8., 8.],
       [8., 8.]])
"""

from __future__ import annotations

import math
from dataclasses import replace

import numba
import numpy as np
from numba import njit, prange
from numpy.lib.stride_tricks import as_strided

from ... import _blas, config
from ...costs import gemm_seconds, load_profile
from .._common import serial_twin, workspace

#: Column bytes per chunk: near the per-core L2 cache (2 MiB on the development machine;
#: the 16 -> 32 channel 32^3 layer ran fastest at 512-1024 positions, 0.9-1.8 MB).
CHUNK_BYTES = 1 << 20

#: Grid positions per chunk of the tap-by-tap weight gradient (the 32^3 layer: 12 ms an
#: image at 1024, 14 at 512, 18 at 4096 and over).
TAP_SPAN = 1024


def applies(a) -> bool:
    """Whether the windowed unfold serves problem ``a`` (every stride 1)."""
    return all(s == 1 for s in a.stride)


def chunk_positions(a, grid: int) -> int:
    """Grid positions per chunk: ``CHUNK_BYTES`` of columns, at least 1, at most
    ``grid``."""
    row_bytes = a.c_in * math.prod(a.kernel) * a.dtype.itemsize
    return max(1, min(grid, CHUNK_BYTES // row_bytes))


def grid_positions(a) -> int:
    """Output positions the GEMMs compute: D_out * Hp * Wp (the padded plane's)."""
    return geometry(a)[1]


def geometry(a):
    """(padded sizes, grid positions, tap offsets' extent, padded channel length)."""
    dp, hp, wp = (s + lo + hi for s, (lo, hi) in zip(a.size, a.padding, strict=True))
    grid = a.out[0] * hp * wp
    reach = sum((k - 1) * r * step for k, r, step in
                zip(a.kernel, a.dilation, (hp * wp, wp, 1), strict=True))
    return (dp, hp, wp), grid, reach, max(dp * hp * wp, grid + reach)


def padded(a, xb, length):
    """Image ``xb`` (C, D, H, W) zero-padded into a (C, length) workspace."""
    (dp, hp, wp), _, _, _ = geometry(a)
    xp = workspace("conv3d-window-x", a.c_in * length, a.dtype).reshape(a.c_in, length)
    xp[...] = 0
    (d0, _), (h0, _), (w0, _) = a.padding
    d, h, w = a.size
    xp[:, :dp * hp * wp].reshape(a.c_in, dp, hp, wp)[:, d0:d0 + d, h0:h0 + h,
                                                   w0:w0 + w] = xb
    return xp


def columns(a, xp, end: int | None = None):
    """(p0, p1, cols) per chunk of the grid positions before ``end`` (all: None); cols
    (C_in K, p1 - p0) a reused workspace holding the shifted windows of the padded image
    ``xp``."""
    (_, hp, wp), grid, _, _ = geometry(a)
    grid = grid if end is None else end
    span = chunk_positions(a, grid)
    rows = a.c_in * math.prod(a.kernel)
    buf = workspace("conv3d-window-cols", rows * span, a.dtype)
    item = xp.itemsize
    steps = tuple(r * s * item for r, s in zip(a.dilation, (hp * wp, wp, 1), strict=True))
    for p0 in range(0, grid, span):
        p1 = min(grid, p0 + span)
        cols = buf[:rows * (p1 - p0)].reshape(a.c_in, *a.kernel, p1 - p0)
        np.copyto(cols, as_strided(xp[:, p0:], shape=cols.shape,
                                   strides=(xp.strides[0], *steps, item)))
        yield p0, p1, cols.reshape(rows, p1 - p0)


def group_slices(a):
    """(column rows, output channels) slices of each group."""
    rows, dg = a.c_in // a.groups * math.prod(a.kernel), a.c_out // a.groups
    return [(slice(g * rows, (g + 1) * rows), slice(g * dg, (g + 1) * dg))
            for g in range(a.groups)]


def _grid_view(a, q):
    """The (C_out, D_out, H_out, W_out) outputs within grid array ``q`` (C_out, grid)."""
    (_, hp, wp), _, _, _ = geometry(a)
    od, oh, ow = a.out
    return q.reshape(a.c_out, od, hp, wp)[:, :, :oh, :ow]


def _chunk_macs(a) -> int:
    """Multiply-adds of one chunk's GEMM, (C_out/G) x (C_in/G K) x (span): the loops
    run on one BLAS thread when that counts as small (``fastconv._blas``: many small
    multi-threaded products stall on a busy machine; the 32^3 layer's forward took
    1.5 s instead of 54 ms at two threads under load)."""
    span = chunk_positions(a, grid_positions(a))
    return a.c_out // a.groups * (a.c_in // a.groups) * math.prod(a.kernel) * span


def split_threads(a, threads: int | None = None) -> int:
    """Threads the images of ``a`` are split over (1: not split). Each of two or more
    threads takes a run of whole images with its own workspaces, every GEMM on one BLAS
    thread (``fastconv._blas.on_threads``, as im2col's tile split): the chunks' GEMMs
    are small, so on two BLAS threads one core mostly idles. Split when there are at
    least as many images as threads and one image's GEMMs are not small."""
    threads = numba.get_num_threads() if threads is None else threads
    macs = a.c_out // a.groups * (a.c_in // a.groups) * math.prod(a.kernel) * \
        grid_positions(a)
    if threads < 2 or a.n < 2 or macs <= config.SMALL_GEMM_MACS:
        return 1
    return min(threads, a.n)


def on_images(a, part) -> None:
    """``part(k, images, split)`` over all images: split over the threads of
    :func:`split_threads` (thread k a run of images, ``split`` True), or at once in the
    calling thread (k = 0, small chunk GEMMs on one BLAS thread). Returns the threads'
    count."""
    threads = split_threads(a)
    if threads == 1:
        with _blas.limit_for(_chunk_macs(a)):
            part(0, range(a.n), False)
        return 1
    bounds = [a.n * k // threads for k in range(threads + 1)]
    _blas.on_threads(lambda k: part(k, range(bounds[k], bounds[k + 1]), True), threads)
    return threads


def forward(x, w, a, out) -> None:
    """conv3d of canonical arrays into canonical ``out`` at stride 1 (no bias)."""
    on_images(a, lambda _k, images, _split: _forward(x, w, a, out, images))


def _forward(x, w, a, out, images) -> None:
    _, grid, _, length = geometry(a)
    wm, groups = w.reshape(a.c_out, -1), group_slices(a)
    q = workspace("conv3d-window-y", a.c_out * grid, a.dtype).reshape(a.c_out, grid)
    for b in images:
        for p0, p1, cols in columns(a, padded(a, x[b], length)):
            for rows, ds in groups:
                np.matmul(wm[ds], cols[rows], out=q[ds, p0:p1])
        out[b] = _grid_view(a, q)


@njit(parallel=True, cache=True)
def fold(cols, gxp, offs, p0):
    """Add column gradients ``cols`` (C K, span) of grid positions p0 .. p0 + span - 1
    onto the padded image gradient ``gxp`` (C, length): row (c, k) onto channel c from
    p0 + offs[k] on, a contiguous run; one task per channel (each writes only its own)."""
    taps = offs.size
    span = cols.shape[1]
    for c in prange(gxp.shape[0]):
        for k in range(taps):
            base = p0 + offs[k]
            for p in range(span):
                gxp[c, base + p] += cols[c * taps + k, p]


#: :func:`fold` without threads, for images split over the threads.
_fold_serial = serial_twin(fold)


def _input_gradient(gy, w, a, grad_x, images, serial: bool) -> None:
    """grad_x of ``images``: the column gradients w^T grad_y (grad_y spread on the
    grid, zeros at the dropped positions), chunk by chunk, folded onto the padded
    image, whose interior is the gradient (the fold on this thread alone if
    ``serial``)."""
    (dp, hp, wp), grid, _, length = geometry(a)
    wm, groups = w.reshape(a.c_out, -1), group_slices(a)
    q = workspace("conv3d-window-y", a.c_out * grid, a.dtype).reshape(a.c_out, grid)
    gxp = workspace("conv3d-window-x", a.c_in * length, a.dtype).reshape(a.c_in, length)
    offs = np.array(_tap_offsets(a), np.int64)
    span, rows = chunk_positions(a, grid), a.c_in * math.prod(a.kernel)
    buf = workspace("conv3d-window-cols", rows * span, a.dtype)
    (d0, _), (h0, _), (w0, _) = a.padding
    d, h, w_ = a.size
    fold_into = _fold_serial if serial else fold
    for b in images:
        q[...] = 0
        _grid_view(a, q)[...] = gy[b]
        gxp[...] = 0
        for p0 in range(0, grid, span):
            p1 = min(grid, p0 + span)
            cols = buf[:rows * (p1 - p0)].reshape(rows, p1 - p0)
            for rs, ds in groups:
                np.matmul(wm[ds].T, q[ds, p0:p1], out=cols[rs])
            fold_into(cols, gxp, offs, p0)
        grad_x[b] = gxp[:, :dp * hp * wp].reshape(a.c_in, dp, hp, wp)[
            :, d0:d0 + d, h0:h0 + h, w0:w0 + w_]


def input_gradient_problem(a):
    """The forward problem whose output is the input gradient (grad_y as its input, the
    kernel flipped, padding r (k - 1) - p per side), or None where some padding exceeds
    the dilated kernel's extent (it would need a crop)."""
    pads = tuple((r * (k - 1) - lo, r * (k - 1) - hi) for k, r, (lo, hi) in
                 zip(a.kernel, a.dilation, a.padding, strict=True))
    if any(p < 0 for side in pads for p in side):
        return None
    return replace(a, c_in=a.c_out, c_out=a.c_in, size=a.out, out=a.size, padding=pads)


def _flipped(w, groups):
    """(C_in, C_out/G, k...) kernel of the input gradient: each group's channels
    transposed, every spatial axis reversed."""
    c_out, cg = w.shape[:2]
    dg = c_out // groups
    wg = w.reshape(groups, dg, cg, *w.shape[2:]).swapaxes(1, 2)[..., ::-1, ::-1, ::-1]
    return np.ascontiguousarray(wg).reshape(groups * cg, dg, *w.shape[2:])


def _seconds(a, m, k, copied_rows, copy_passes):
    """Modelled seconds of one image's chunked GEMMs (m x k) @ (k x span) over the grid
    of ``a`` plus ``copy_passes`` passes over ``copied_rows`` grid-long rows."""
    p, item = load_profile(), a.dtype.itemsize
    grid = grid_positions(a)
    span = chunk_positions(a, grid)
    gemm = gemm_seconds(p, m, k, span, math.ceil(grid / span) * a.groups, item)
    return gemm + copy_passes * copied_rows * grid * item / (p.copy_gbs * 1e9)


def _input_gradient_seconds(a):
    """(modelled seconds of one image's input gradient, whether by the fold)."""
    t = input_gradient_problem(a)
    kk = math.prod(a.kernel)
    cg, dg = a.c_in // a.groups, a.c_out // a.groups
    fold_s = _seconds(a, cg * kk, dg, a.c_in * kk, 2)
    if t is None:
        return fold_s, True
    forward_s = _seconds(t, cg, dg * kk, a.c_out * kk, 1)
    return min(fold_s, forward_s), fold_s < forward_s


def input_gradient_by_fold(a) -> bool:
    """Whether the input gradient folds column gradients (:func:`_input_gradient`) rather
    than running the forward of :func:`input_gradient_problem`: where that problem
    needs a crop, or where the cost model prices the fold lower. The forward's GEMM is
    (C_in/G) x (C_out/G K), skinny when C_in is small (the 16 -> 32 channel 32^3 layer:
    77 ms forward, 64 ms fold), the fold's (C_in/G K) x (C_out/G) with a read-modify-
    write pass more (the 64-channel k=9 audio layer: 94 ms forward, 114 ms fold)."""
    return _input_gradient_seconds(a)[1]


def weight_gradient_seconds(a) -> float:
    """Modelled seconds of the weight gradient's GEMMs over every image (tap by tap
    without groups, else against the columns)."""
    p, item = load_profile(), a.dtype.itemsize
    kk = math.prod(a.kernel)
    cg, dg = a.c_in // a.groups, a.c_out // a.groups
    if a.groups == 1:
        chunks = math.ceil(grid_positions(a) / TAP_SPAN)
        return a.n * gemm_seconds(p, a.c_out, TAP_SPAN, a.c_in, kk * chunks, item)
    return a.n * _seconds(a, dg, cg * kk, a.c_in * kk, 1)


def backward_seconds(a) -> float:
    """Modelled seconds of both gradients of every image: the weight gradient
    (:func:`weight_gradient_seconds`) and the input gradient's cheaper way."""
    return weight_gradient_seconds(a) + a.n * _input_gradient_seconds(a)[0]


def _tap_offsets(a):
    """Flat offset within the padded channel of each tap (kd * kh * kw of them)."""
    (_, hp, wp), _, _, _ = geometry(a)
    (rd, rh, rw), (kd, kh, kw) = a.dilation, a.kernel
    return [(i * rd * hp + j * rh) * wp + e * rw
            for i in range(kd) for j in range(kh) for e in range(kw)]


def _weight_gradient_by_taps(a, q, xp, acc) -> None:
    """Add one image's weight gradient, tap by tap, to ``acc`` (K, C_out, C_in): for
    each chunk of ``TAP_SPAN`` grid positions and each tap, grad_y's chunk times the
    padded input's shifted chunk transposed, both read in place (no columns)."""
    grid = q.shape[1]
    offs = _tap_offsets(a)
    for p0 in range(0, grid, TAP_SPAN):
        p1 = min(grid, p0 + TAP_SPAN)
        for k, off in enumerate(offs):
            acc[k] += q[:, p0:p1] @ xp[:, p0 + off:p1 + off].T


def _weight_gradient_by_columns(a, q, xp, gwm) -> None:
    """Add one image's weight gradient to ``gwm`` (C_out, C_in/G K): grad_y's chunks
    times the columns' transposed, per group."""
    for p0, p1, cols in columns(a, xp):
        for rows, ds in group_slices(a):
            gwm[ds] += q[ds, p0:p1] @ cols[rows].T


def backward(gy, x, w, a, grad_x, grad_w) -> None:
    """Weight gradient into ``grad_w`` and input gradient into ``grad_x`` (None: not
    wanted) at stride 1. Without groups the weight gradient runs tap by tap on the
    padded input itself (:func:`_weight_gradient_by_taps`: the 32^3 layer's took 12
    instead of 16 ms an image), with groups through columns; the input gradient as
    :func:`input_gradient_by_fold` picks. Split over threads (:func:`split_threads`),
    each thread sums its images' weight gradients, and the parts are added at the end."""
    by_fold = grad_x is not None and input_gradient_by_fold(a)
    if grad_w is not None or by_fold:
        parts = {}

        def part(k, images, serial):
            gw = None if grad_w is None else np.zeros_like(grad_w)
            _backward(gy, x, w, a, grad_x if by_fold else None, gw, images, serial)
            parts[k] = gw

        threads = on_images(a, part)
        if grad_w is not None:       # in thread order: the same sum every run
            grad_w[...] = sum((parts[k] for k in range(1, threads)), parts[0])
    if grad_x is not None and not by_fold:
        forward(gy, _flipped(w, a.groups), input_gradient_problem(a), grad_x)


def _backward(gy, x, w, a, grad_x, grad_w, images, serial: bool) -> None:
    """The gradients of ``images``: their weight gradients' sum into ``grad_w`` (or
    None), their input gradients by the fold into ``grad_x`` (or None)."""
    if grad_w is not None:
        _, grid, _, length = geometry(a)
        gwm = grad_w.reshape(a.c_out, -1)
        q = workspace("conv3d-window-y", a.c_out * grid, a.dtype).reshape(a.c_out, grid)
        taps = math.prod(a.kernel)
        acc = np.zeros((taps, a.c_out, a.c_in), a.dtype) if a.groups == 1 else None
        for b in images:
            q[...] = 0
            _grid_view(a, q)[...] = gy[b]
            xp = padded(a, x[b], length)
            if acc is None:
                _weight_gradient_by_columns(a, q, xp, gwm)
            else:
                _weight_gradient_by_taps(a, q, xp, acc)
        if acc is not None:
            gwm.reshape(a.c_out, a.c_in, taps)[...] = acc.transpose(1, 2, 0)
    if grad_x is not None:
        _input_gradient(gy, w, a, grad_x, images, serial)
