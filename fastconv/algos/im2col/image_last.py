"""The image-last path of im2col: tiles of several small images with the image index
innermost.

Rows of a few output pixels copy and multiply slowly; put image-index last, a row of a
tile is one run of pixels x images. The NCHW forward unfolds such tiles with
``_im2col_chwn`` and spreads its GEMM's result with ``_scatter_chwn``
(``Tiling.image_last``); the backward of batches of small images
(``image_last_tile``) forms both gradients from image-last copies of x and grad_y with
the kernels of ``image_last_grad``, without a column matrix.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ... import _blas, config
from ..._runtime import parallel_guard
from ...layout import permutation
from .._common import U, geometry, valid_range, view, workspace
from .image_last_grad import _grad_w_image_last, _grad_x_image_last
from .tiling import IMAGE_LAST_MIN_IMAGES, column_buffer, tiling, unfold_params
from .unfold import _column_row, _zero_pad

#: The axes of an image-last tile (channels, rows, columns, images).
IMAGE_LAST = "CHWN"
#: NHWC backward: the image-last path only below this many input channels per group.
#: One core, batch 32, image-last vs GEMMs + ``_col2im_nhwc`` (forward and backward, both
#: gradients): 16 -> 32 3x3 stride 2 at 28x28 6.9 vs 1.7 ms, 32 -> 32 3x3 at 14x14 3.9
#: vs 3.0 ms, 64 -> 64 3x3 at 7x7 4.5 vs 2.1 ms, 16 -> 16 3x3 at 28x28 8.5 vs 8.8 ms;
#: image-last keeps LeNet's layers (1 -> 6 5x5: 0.42 vs 2.1 ms, 6 -> 16 5x5: 1.0 vs
#: 1.5 ms, batch 64) and single-channel stems (1 -> 16 3x3 at 28x28: 0.46 vs 0.65 ms).
NHWC_IMAGE_LAST_BELOW_CHANNELS = 16


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _im2col_chwn(xt, cols, i0, wo, sh, sw, pt, pl, rh, rw, kh, kw):
    """xt (C, H, W, B) flattened -> cols (C*KH*KW, band*Wo*B):

    cols[(c*KH + a)*KW + b, (ii*Wo + j)*B + n] = xt[c, (i0+ii)*sh + a*rh - pt,
    j*sw + b*rw - pl, n], zero outside. With the image index innermost, a stride-1 row
    of the tile is one contiguous run of (valid columns) * B elements, long even for
    small images (rows of 8 pixels copy slowly; 8 pixels x 64 images do not)."""
    c_all, h, wd, nb = xt.shape
    flat = xt.reshape(c_all * h * wd * nb)
    zero = cols.dtype.type(0)
    ckk, length = cols.shape
    row_len = wo * nb
    band = length // row_len
    for task in prange(ckk * band):
        r = task // band
        ii = task % band
        c, a, b, dst = _column_row(cols, r, kh, kw)
        base = U(ii * row_len)
        src = (i0 + ii) * sh + a * rh - pt
        if src < 0 or src >= h:
            _zero_pad(dst, base, U(row_len), U(row_len), U(row_len), zero)
            continue
        off = b * rw - pl
        j_lo, j_hi = valid_range(wo, off, sw, wd)
        line = U((c * h + src) * wd * nb)  # start of input row src of channel c
        _zero_pad(dst, base, U(j_lo * nb), U(j_hi * nb), U(row_len), zero)
        d0 = base + U(j_lo * nb)
        if sw == 1:
            s0 = line + U((j_lo + off) * nb)
            for t in range(U((j_hi - j_lo) * nb)):
                dst[d0 + t] = flat[s0 + t]
        else:
            for j in range(j_lo, j_hi):
                s0 = line + U((j * sw + off) * nb)
                dj = d0 + U((j - j_lo) * nb)
                for t in range(U(nb)):
                    dst[dj + t] = flat[s0 + t]


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _scatter_chwn(tmp, out, n0, i0, nb, bias):
    """tmp (D, band*Wo*B) -> out[n0+n, d, i0+ii, j] = tmp[d, (ii*Wo + j)*B + n] for
    n < B = nb (+ bias[d] when bias has D entries; an empty bias adds nothing)."""
    d_all, length = tmp.shape
    wo = out.shape[3]
    band = length // (wo * nb)
    with_bias = bias.shape[0] == d_all
    step = U(nb)
    for task in prange(d_all * nb):
        d = task // nb
        n = task % nb
        src = tmp[d]
        bv = bias[d] if with_bias else src.dtype.type(0)
        for ii in range(band):
            row = out[n0 + n, d, i0 + ii]
            base = U(ii * wo * nb + n)
            for j in range(U(wo)):
                row[j] = src[base + j * step] + bv


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _image_last_copy(xf, xs, n0, xt, to_last):
    """xt[c, i, j, b] = x[n0 + b, c, i, j] (``to_last``) or the inverse, x[n0 + b, c, i,
    j] = xt[c, i, j, b], for xt (C, H, W, B) contiguous and x given as a flat array xf
    with the shape and element strides of its (N, C, H, W) view, xs = (N, C, H, W, s_n,
    s_c, s_h, s_w): one kernel for NCHW and NHWC. One task per (c, i); each image's row
    is read (written) in one pass (reading one element of every image per column
    instead runs 2.4x slower on 28x28 planes). Writing back into a channels-last x
    (s_c == 1, C > 1): one task per row i with every channel, so that no two tasks write
    into one cache line of x (a task per (c, i) wrote LeNet's (64, 28, 28, 6) gradient
    back in 382 us, this way in 151, the NCHW one in 75; reading, a task per (c, i)
    stays the faster: 103 against 173 us). Both directions in one kernel: one compile (a
    parallel kernel's compile costs about 0.5 s of CPU before its body)."""
    _, c_all, h, wd, sn, sc, sh, sw = xs
    nb = xt.shape[3]
    usw, usc = U(sw), U(sc)
    rows = sc == 1 and c_all > 1 and not to_last
    tasks = h if rows else c_all * h
    for task in prange(tasks):
        if rows:
            for b in range(U(nb)):
                src = U((n0 + b) * sn + task * sh)
                for j in range(U(wd)):
                    s = src + j * usw
                    for c in range(c_all):
                        xf[s + U(c) * usc] = xt[c, task, j, b]
        else:
            c = task // h
            i = task % h
            line = xt[c, i].reshape(wd * nb)
            for b in range(U(nb)):
                src = U((n0 + b) * sn + c * sc + i * sh)
                if to_last:
                    for j in range(U(wd)):
                        line[j * U(nb) + b] = xf[src + j * usw]
                else:
                    for j in range(U(wd)):
                        xf[src + j * usw] = line[j * U(nb) + b]


def _canonical_geometry(a, dims) -> tuple[int, ...]:
    """The shape and element strides of the canonical (N, C, H, W) view of ``a``."""
    v = dims.to_canonical_view(a)
    return tuple(v.shape) + tuple(s // a.itemsize for s in v.strides)


def contiguous_geometry(shape, dims) -> tuple[int, ...]:
    """``_canonical_geometry`` of a C-contiguous array of ``shape`` in layout ``dims``,
    from the shape alone."""
    steps = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        steps[i] = steps[i + 1] * shape[i + 1]
    perm = dims.to_canonical
    return tuple(shape[p] for p in perm) + tuple(steps[p] for p in perm)


def _flat(a, dims):
    """A C-contiguous array of layout ``dims`` as (flat array, the shape and element
    strides of its canonical (N, C, H, W) view)."""
    return _flat_view(a), _canonical_geometry(a, dims)


def _flat_view(a):
    """A C-contiguous array as a 1-D view (raises rather than copy: a kernel writes
    through it)."""
    flat = a.view()
    flat.shape = (a.size,)
    return flat


def strided_flat(a, dims):
    """For an array that is not C-contiguous but has positive strides in whole elements
    (a phase of a larger array: grad_x[:, ::2, 1::2, :]): (a 1-D view of its memory
    from its first element to its last, the shape and element strides of its canonical
    (N, C, H, W) view), which the kernel writes in place; else None."""
    item = a.itemsize
    if a.flags.c_contiguous or a.size == 0 or not a.flags.writeable \
            or any(s <= 0 or s % item for s in a.strides):
        return None
    span = 1 + sum((n - 1) * s // item for n, s in zip(a.shape, a.strides, strict=True))
    return _span_view(a, span), _canonical_geometry(a, dims)


def _span_view(a, span):
    """A 1-D view of the ``span`` elements of memory from a's first element: a slice of
    the C-contiguous array a is a view of where there is one (its bytes: a pooled
    array's base is a byte buffer, ``fastconv._pool``; numpy's ``as_strided`` took 12 us
    a call inside a training step), else ``as_strided``."""
    base = a.base
    if isinstance(base, np.ndarray) and base.flags.c_contiguous and base.flags.writeable:
        start = a.__array_interface__["data"][0] - base.__array_interface__["data"][0]
        end = start + span * a.itemsize
        if start >= 0 and start % a.itemsize == 0 and end <= base.nbytes:
            return base.reshape(-1).view(np.uint8)[start:end].view(a.dtype)
    return np.lib.stride_tricks.as_strided(a, shape=(span,), strides=(a.itemsize,))


def _to_last(a, n0, at, dims) -> None:
    """at (C, H, W, B) = images n0.. of a (layout ``dims``, C-contiguous) with
    ``_image_last_copy`` (a read-only a takes numpy's copy, ``_to_last_any``: the kernel
    writes its first argument in the other direction, so numba cannot compile it for a
    read-only one)."""
    if a.flags.writeable:
        _image_last_copy(*_flat(a, dims), n0, at, True)
    else:
        _to_last_any(a, n0, at, dims)


def _from_last(at, a, n0, dims) -> None:
    """Images n0.. of a (layout ``dims``, C-contiguous) = at (C, H, W, B)."""
    _image_last_copy(*_flat(a, dims), n0, at, False)


def _to_last_any(a, n0, at, dims) -> None:
    """at (C, H, W, B) = images n0.. of a (layout ``dims``, any strides): numpy's copy."""
    np.copyto(at, a[n0:n0 + at.shape[3]].transpose(permutation(dims.name, IMAGE_LAST)))




def image_last_tile(args, with_grad_x: bool = True) -> int:
    """Images per tile of the image-last backward, or 0 when the per-image GEMMs are
    used. The image-last kernels run at a steady rate (about 30 GMAC/s on one core here)
    on batches of many small images; the per-image GEMMs are faster only when they are
    wide. So, on batches of small images (the forward unfolds whole images per tile,
    ``tiling(args).images > 1``) of at least ``IMAGE_LAST_MIN_IMAGES``, the image-last
    path runs for kernels larger than 1x1 with at most 64 output channels per group, and
    never for strided layers (whose image-last runs are one pixel's B images long).
    Measured on one core, batch 64 (image-last vs GEMMs): LeNet's 6 -> 16 5x5 at 14x14
    1.0 vs 4.6 ms, 16 -> 16 3x3 at 28x28 11 vs 24 ms, 64 -> 64 3x3 at 14x14 37 vs 47 ms;
    the GEMMs win for 128 -> 128 at 14x14 and 256 -> 256 at 7x7 (batch 32: 88 vs 66, 70
    vs 59 ms), 32 -> 64 stride 2 at 28x28 (48 vs 24 ms) and 1x1 layers of many channels
    (16 vs 8.8 ms for 64 -> 128 at 14x14). Since the GEMMs run on numba's threads
    (``_blas.matmul``, the weight gradient's per-image terms summed a run per thread),
    they also win on every strided layer measured (2 threads, batch 32, 3x3 stride 2,
    image-last vs GEMMs): 16 -> 32 at 28x28 3.0 vs 2.0 ms (NHWC 1.53 vs 1.43), 8 -> 16
    at 28x28 2.0 vs 1.7 ms (NHWC 1.17 vs 0.78), 3 -> 16 at 32x32 (batch 64, no grad_x)
    1.30 vs 0.65 ms; on 128 -> 128 3x3 layers (at 8x8 and 7x7, batch 16 / 64: 13.7 /
    30.9 and 11.7 / 25.2 ms against 6.4 / 26.4 and 5.7 / 22.0; on one core 128 -> 128
    at 7x7 had run 29 vs 38 ms); and on batches of 2 or 3 images, whose image-last runs
    are short (NCHW, both gradients, batch 2: 64 -> 64 3x3 at 7x7 1.40 vs 0.36 ms,
    32 -> 32 at 14x14 1.12 vs 0.40, 16 -> 16 at 28x28 0.73 vs 0.49, LeNet's 6 -> 16 5x5
    0.23 vs 0.16; its 1 -> 6, weight gradient only, 0.07 vs 0.11).
    NHWC layers of ``NHWC_IMAGE_LAST_BELOW_CHANNELS`` or more input channels per group
    take the GEMMs and the NHWC fold instead (their copies to image-last order cost
    more than the fold's runs of KW*C values).
    A tile holds x, grad_y (and grad_x) of its images, image-last, within
    ``config.IM2COL_CHUNK_BYTES``."""
    if args.n < IMAGE_LAST_MIN_IMAGES or args.kh * args.kw == 1 or tiling(args).images < 2:
        return 0
    if args.dims.channels_last and args.c_in // args.groups >= NHWC_IMAGE_LAST_BELOW_CHANNELS:
        return 0
    dg = args.c_out // args.groups
    if max(args.stride) > 1 or dg > 64:
        return 0
    per_image = (args.c_in * args.h * args.w * (2 if with_grad_x else 1)
                 + args.c_out * args.h_out * args.w_out) * args.dtype.itemsize
    chunk = max(1, min(config.IM2COL_CHUNK_BYTES, config.WORKSPACE_BYTES))
    return max(2, min(args.n, chunk // max(per_image, 1)))


def forward_image_last(x, wmat, args, out, bias, t) -> None:
    """The NCHW forward of ``Tiling.image_last`` tiles: the images of a tile are first put
    image-index last (``_to_last``, a pass over the input only), unfolded with
    long contiguous runs (``_im2col_chwn``), multiplied by wmat (G, Dg, Cg*KH*KW) in one
    GEMM of B times the width, and the result is spread into ``out`` with the bias
    (``_scatter_chwn``). x is C-contiguous."""
    g, dg, cgkk = wmat.shape
    ckk = g * cgkk
    wo = args.w_out
    conv = unfold_params(args)
    buf = column_buffer(args, t)
    image = args.c_in * args.h * args.w
    xt_buf = workspace("im2col.chwn", image * t.images, args.dtype)
    tmp = workspace("im2col.gemm", args.c_out * t.images * args.h_out * wo, args.dtype)
    bias_flat = np.zeros(0, args.dtype) if bias is None else np.ascontiguousarray(bias)
    for n0 in range(0, args.n, t.images):
        nb = min(t.images, args.n - n0)
        length = args.h_out * wo * nb
        xt = view(xt_buf[:image * nb], (args.c_in, args.h, args.w, nb))
        cols = view(buf[:ckk * length], (ckk, length))
        with parallel_guard():
            _to_last(x, n0, xt, args.dims)
            _im2col_chwn(xt, cols, 0, *conv)
        y = view(tmp[:args.c_out * length], (g, dg, length))
        _blas.matmul(wmat, view(cols, (g, cgkk, length)), out=y)
        with parallel_guard():
            _scatter_chwn(view(y, (args.c_out, length)), out, n0, 0, nb, bias_flat)


def backward_image_last(gy, x, w, args, grad_x, grad_w, images) -> None:
    """The image-last backward in tiles of ``images`` images (``image_last_tile``);
    grad_x or grad_w may be None (not computed). Wraps the copies ``_to_last`` /
    ``_from_last`` and ``_grad_w_image_last`` / ``_grad_x_image_last``."""
    dims = args.dims
    w_oihw = np.ascontiguousarray(dims.weight_to_canonical_view(w))
    conv = geometry(args)
    gw = np.zeros(w_oihw.shape, np.float64) if grad_w is not None else None
    x_img = (args.c_in, args.h, args.w)
    y_img = (args.c_out, args.h_out, args.w_out)
    x_size, y_size = args.c_in * args.h * args.w, args.c_out * args.h_out * args.w_out
    xt_buf = None if grad_w is None else workspace("im2col.chwn", x_size * images, args.dtype)
    gt_buf = workspace("im2col.back.gy", y_size * images, args.dtype)
    gx_buf = None if grad_x is None else workspace("im2col.back.gx", x_size * images,
                                                   args.dtype)
    gy = np.ascontiguousarray(gy)
    x = np.ascontiguousarray(x) if grad_w is not None else x
    for n0 in range(0, args.n, images):
        nb = min(images, args.n - n0)
        gt = view(gt_buf[:y_size * nb], y_img + (nb,))
        xt = None if grad_w is None else view(xt_buf[:x_size * nb], x_img + (nb,))
        with parallel_guard():
            _to_last(gy, n0, gt, dims)
            if xt is not None:
                _to_last(x, n0, xt, dims)
                _grad_w_image_last(gt, xt, gw, *conv)
            if grad_x is not None:
                gxt = view(gx_buf[:x_size * nb], x_img + (nb,))
                _grad_x_image_last(gt, w_oihw, gxt, *conv)
                _from_last(gxt, grad_x, n0, dims)
    if grad_w is not None:
        grad_w[...] = dims.weight_from_canonical_view(gw)
