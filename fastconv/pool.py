"""Pooling: max, average and global average pooling and their gradients (torch's rules).

Window (i, j) of a plane covers rows s_h*i - p_h + r_h*a (a < kh) and columns
s_w*j - p_w + r_w*b (b < kw); padding is never read (max ignores it, average counts it
when ``count_include_pad``). Output size per axis (:func:`pool_output_size`):
floor((n + 2p - r*(k-1) - 1) / s) + 1, or the ceiling with ``ceil_mode``, where the last
window must then start inside the input or the left padding. Padding may be at most half
the kernel size.

Kernels work on NCHW planes (N*C, H, W) or on NHWC images (N, H, W, C); every parallel
loop owns what it writes: one task per (plane, output row) or per (image, output row)
forward, and one per plane, per (image, channel block) or per (image, input row) backward,
so overlapping windows (stride < kernel) never race.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from . import config
from ._args import check_array, check_device, check_layout, pair
from ._memory import allocate
from ._runtime import parallel_guard
from .algos._common import valid_range

_C_BLOCK = 16  # channels per task in the NHWC kernels that parallelise over (image, channels)


# ------------------------------------------------------------------------------ arguments
def pool_output_size(n: int, k: int, stride: int, pad: int, dilation: int,
                     ceil_mode: bool) -> int:
    """Output length along one axis, torch's law (see the module docstring)."""
    span = n + 2 * pad - dilation * (k - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= n + pad:
        out -= 1  # the last window would start in the right padding
    return out


@dataclass(frozen=True)
class PoolArgs:
    """A pooling problem in canonical form (NCHW terms, whatever the layout)."""

    n: int
    c: int
    h: int
    w: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    ceil_mode: bool
    h_out: int
    w_out: int
    layout: str
    unbatched: bool

    def shape(self, h: int, w: int, c: int | None = None) -> tuple[int, ...]:
        """An (N, C, h, w) shape in the caller's layout (3-D when unbatched)."""
        c = self.c if c is None else c
        s = (self.n, c, h, w) if self.layout == "NCHW" else (self.n, h, w, c)
        return s[1:] if self.unbatched else s

    @property
    def x_shape(self):
        return self.shape(self.h, self.w)

    @property
    def y_shape(self):
        return self.shape(self.h_out, self.w_out)


def _check_flag(op: str, name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name}={value!r} must be a bool")
    return bool(value)


def _input_dims(op: str, shape, layout: str):
    """(n, c, h, w, unbatched) from a 4-D or 3-D shape in ``layout``."""
    shape = tuple(shape)
    if len(shape) not in (3, 4):
        raise ValueError(f"{op}: input must be 4-D (batched) or 3-D (unbatched) in layout "
                         f"{layout}, got {len(shape)}-D shape {shape}")
    unbatched = len(shape) == 3
    if unbatched:
        shape = (1,) + shape
    if layout == "NCHW":
        n, c, h, w = shape
    else:
        n, h, w, c = shape
    return n, c, h, w, unbatched


def pool_args(op: str, shape, kernel_size, stride=None, padding=0, dilation=1,
              ceil_mode=False, layout="NCHW") -> PoolArgs:
    """Validate a pooling problem given by the input shape in the caller's layout."""
    check_layout(op, layout)
    n, c, h, w, unbatched = _input_dims(op, shape, layout)
    kernel = pair(op, "kernel_size", kernel_size, minimum=1)
    stride_ = kernel if stride is None else pair(op, "stride", stride, minimum=1)
    pad = pair(op, "padding", padding, minimum=0)
    dil = pair(op, "dilation", dilation, minimum=1)
    ceil_mode = _check_flag(op, "ceil_mode", ceil_mode)
    if pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
        raise ValueError(f"{op}: padding={padding!r} must be at most half the kernel size "
                         f"{kernel_size!r}")
    h_out = pool_output_size(h, kernel[0], stride_[0], pad[0], dil[0], ceil_mode)
    w_out = pool_output_size(w, kernel[1], stride_[1], pad[1], dil[1], ceil_mode)
    if h_out < 1 or w_out < 1:
        raise ValueError(f"{op}: output size {h_out}x{w_out} is too small: input {h}x{w}, "
                         f"kernel {kernel[0]}x{kernel[1]}, stride {stride_}, padding {pad}, "
                         f"dilation {dil}")
    return PoolArgs(n, c, h, w, kernel, stride_, pad, dil, ceil_mode, h_out, w_out, layout,
                    unbatched)


def _check_grad_y(op: str, grad_y, want) -> np.ndarray:
    grad_y = check_array(op, "grad_y", grad_y)
    if grad_y.shape != tuple(want):
        raise ValueError(f"{op}: grad_y must have shape {tuple(want)} (the pooling output), "
                         f"got {grad_y.shape}")
    return grad_y


def _check_input_shape(op: str, input_shape) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in input_shape)
    except TypeError:
        raise TypeError(f"{op}: input_shape={input_shape!r} must be a tuple of ints") from None
    if any(s < 0 for s in shape):
        raise ValueError(f"{op}: input_shape={shape} must not have negative sizes")
    return shape


def _nchw(a: np.ndarray, unbatched: bool) -> np.ndarray:
    """4-D C-contiguous view or copy of an input."""
    return np.ascontiguousarray(a[None] if unbatched else a)


# ------------------------------------------------------------------------------ max pool
def _row_block(n_planes: int, h_out: int, tasks: int = 256) -> int:
    """Output rows per task for the plane kernels: whole planes when there are many,
    bands of rows otherwise, so there are about ``tasks`` tasks to share out."""
    return max(1, min(h_out, (n_planes * h_out) // tasks))


# Row helpers. Called with a literal stride (1 or 2) in the common cases. Their indices
# are unsigned: every index is >= 0 here (uint64 arithmetic wraps back to it when ``off``
# is negative), so numba emits no negative-index wraparound test and, with the literal
# stride, LLVM vectorises the loop (about 4x on 2x2/2 max pooling).
@njit(inline="always")
def _max_taps(xrow, yrow, krow, j_lo, j_hi, off, base, sw):
    """One tap over an output row: yrow[j], krow[j] <- xrow[j*sw + off], base + j*sw when
    larger, NaN, or the first tap of the window inside the input (branch-free)."""
    us, uoff = np.uint64(sw), np.uint64(off)
    for j in range(j_lo, j_hi):
        uj = np.uint64(j)
        v = xrow[uj * us + uoff]
        cur = yrow[uj]
        k = krow[uj]
        better = (v > cur) | (v != v) | (k < 0)     # k < 0: the first tap inside the input
        yrow[uj] = v if better else cur
        krow[uj] = (base + j * sw) if better else k


@njit(inline="always")
def _sum_taps(xrow, acc, j_lo, j_hi, off, sw):
    """acc[j] += xrow[j*sw + off] for one tap over an output row."""
    us, uoff = np.uint64(sw), np.uint64(off)
    for j in range(j_lo, j_hi):
        uj = np.uint64(j)
        acc[uj] += xrow[uj * us + uoff]


@njit(inline="always")
def _spread_taps(g, grow, j_lo, j_hi, off, sw):
    """grow[j*sw + off] += g[j] for one tap over an output row."""
    us, uoff = np.uint64(sw), np.uint64(off)
    for j in range(j_lo, j_hi):
        uj = np.uint64(j)
        grow[uj * us + uoff] += g[uj]


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _max_pool_planes(x, y, idx, kh, kw, sh, sw, ph, pw, rh, rw, rows):
    """x (P, H, W) -> y, idx (P, Ho, Wo); one task per (plane, block of ``rows`` output
    rows).

    Each output row is swept once per tap (a, b), taps in row-major window order, so every
    output sees its window row by row; the first tap inside the input sets the maximum
    and its index (as torch, even when it is -inf), then a value replaces it when larger
    or NaN (the first maximum wins ties, a NaN is the maximum). A window lying wholly in
    the padding keeps -inf and index -1."""
    n_planes, h, wd = x.shape
    _, ho, wo = y.shape
    n_blk = (ho + rows - 1) // rows
    neg_inf = y.dtype.type(-np.inf)
    for task in prange(n_planes * n_blk):
        p = task // n_blk
        i0 = (task % n_blk) * rows
        for i in range(i0, min(i0 + rows, ho)):
            top = i * sh - ph
            a_lo, a_hi = valid_range(kh, top, rh, h)
            yrow = y[p, i]
            krow = idx[p, i]
            yrow[:] = neg_inf
            krow[:] = -1
            for a in range(a_lo, a_hi):
                r = top + a * rh
                xrow = x[p, r]
                for b in range(kw):
                    off = b * rw - pw
                    j_lo, j_hi = valid_range(wo, off, sw, wd)
                    base = r * wd + off
                    if sw == 1:
                        _max_taps(xrow, yrow, krow, j_lo, j_hi, off, base, 1)
                    elif sw == 2:
                        _max_taps(xrow, yrow, krow, j_lo, j_hi, off, base, 2)
                    else:
                        _max_taps(xrow, yrow, krow, j_lo, j_hi, off, base, sw)


@njit(inline="always")
def _max_tap(v, best, code, tap):
    """One more tap of a 2x2 window: (best, code) <- (v, tap) when v is larger or NaN."""
    better = (v > best) | (v != v)
    return (v if better else best), (tap if better else code)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _max_pool_2x2_planes(x, y, idx, with_idx, rows):
    """2x2 windows, stride 2, no padding or dilation, every window inside the input:
    x (P, H, W) -> y (P, Ho, Wo) and, when ``with_idx``, idx (P, Ho, Wo) (else idx is not
    touched and may be empty). One task per (plane, block of ``rows`` output rows).

    The same rule as ``_max_pool_planes`` (taps in row-major order, the first maximum
    wins, a NaN is the maximum and a later NaN replaces it), written per output element
    so that the loop over a row vectorises: the winning tap is kept as an int32 code
    0..3 (the width of a float32 lane) and turned into the int64 flat index in a second
    pass over the row."""
    n_planes, _, wd = x.shape
    _, ho, wo = y.shape
    n_blk = (ho + rows - 1) // rows
    for task in prange(n_planes * n_blk):
        p = task // n_blk
        i0 = (task % n_blk) * rows
        codes = np.empty(wo, np.int32)
        for i in range(i0, min(i0 + rows, ho)):
            r0 = x[p, 2 * i]
            r1 = x[p, 2 * i + 1]
            yrow = y[p, i]
            # (literal unsigned constants: hoisted into variables, the stride 2 is no
            # longer known to the vectoriser and the loop runs twice as long)
            if not with_idx:
                for j in range(wo):
                    k = np.uint64(j) * np.uint64(2)
                    best = r0[k]
                    best, _ = _max_tap(r0[k + np.uint64(1)], best, 0, 1)
                    best, _ = _max_tap(r1[k], best, 0, 2)
                    best, _ = _max_tap(r1[k + np.uint64(1)], best, 0, 3)
                    yrow[np.uint64(j)] = best
                continue
            for j in range(wo):
                k = np.uint64(j) * np.uint64(2)
                best = r0[k]
                code = np.int32(0)
                best, code = _max_tap(r0[k + np.uint64(1)], best, code, np.int32(1))
                best, code = _max_tap(r1[k], best, code, np.int32(2))
                best, code = _max_tap(r1[k + np.uint64(1)], best, code, np.int32(3))
                yrow[np.uint64(j)] = best
                codes[np.uint64(j)] = code
            krow = idx[p, i]
            base = 2 * i * wd
            for j in range(wo):
                c = np.int64(codes[np.uint64(j)])
                krow[np.uint64(j)] = base + 2 * j + (c & 1) + (c >> 1) * wd


def _is_2x2_stride_2(a: PoolArgs) -> bool:
    """The common pooling layer that ``_max_pool_2x2_planes`` runs: 2x2 windows, stride 2,
    no padding or dilation, no partial window at the edges."""
    return (a.kernel == (2, 2) and a.stride == (2, 2) and a.padding == (0, 0)
            and a.dilation == (1, 1) and a.h_out == a.h // 2 and a.w_out == a.w // 2)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _max_pool_nhwc(x, y, idx, kh, kw, sh, sw, ph, pw, rh, rw):
    """x (N, H, W, C) -> y, idx (N, Ho, Wo, C); one task per (image, output row); the
    same scan as ``_max_pool_planes``, all channels at once."""
    n_img, h, wd, c_all = x.shape
    _, ho, wo, _ = y.shape
    neg_inf = y.dtype.type(-np.inf)
    for task in prange(n_img * ho):
        n = task // ho
        i = task % ho
        top = i * sh - ph
        a_lo, a_hi = valid_range(kh, top, rh, h)
        for j in range(wo):
            left = j * sw - pw
            b_lo, b_hi = valid_range(kw, left, rw, wd)
            best = y[n, i, j]
            best_k = idx[n, i, j]
            best[:] = neg_inf
            best_k[:] = -1
            for a in range(a_lo, a_hi):
                r = top + a * rh
                for b in range(b_lo, b_hi):
                    k = r * wd + left + b * rw
                    px = x[n, r, left + b * rw]
                    for c in range(c_all):
                        v = px[c]
                        cur = best[c]
                        kc = best_k[c]
                        better = (v > cur) | (v != v) | (kc < 0)
                        best[c] = v if better else cur
                        best_k[c] = k if better else kc


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _max_unpool_planes(gy, idx, gx):
    """gx (P, H*W) zero-filled; gx[p, idx[p, k]] += gy[p, k] for gy, idx (P, Ho*Wo).
    One task per plane (windows may overlap); index -1 gets nothing."""
    n_planes, n_out = gy.shape
    for p in prange(n_planes):
        for k in range(n_out):
            t = idx[p, k]
            if t >= 0:
                gx[p, t] += gy[p, k]


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _max_unpool_nhwc(gy, idx, gx):
    """gx (N, H*W, C) zero-filled; gx[n, idx[n, k, c], c] += gy[n, k, c] for gy, idx
    (N, Ho*Wo, C). One task per (image, block of channels)."""
    n_img, n_out, c_all = gy.shape
    n_blk = (c_all + _C_BLOCK - 1) // _C_BLOCK
    for task in prange(n_img * n_blk):
        n = task // n_blk
        c0 = (task % n_blk) * _C_BLOCK
        c1 = min(c0 + _C_BLOCK, c_all)
        for k in range(n_out):
            for c in range(c0, c1):
                t = idx[n, k, c]
                if t >= 0:
                    gx[n, t, c] += gy[n, k, c]


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *,
               layout="NCHW", return_indices=False, device="cpu"):
    """2-D max pooling, as torch.nn.functional.max_pool2d.

    Parameters
    ----------
    x : ndarray (N, C, H, W) for "NCHW" or (N, H, W, C) for "NHWC"; 3-D is unbatched.
    kernel_size, dilation : int or (h, w), positive.
    stride : int or (h, w); None (default) means kernel_size.
    padding : int or (h, w), at most half the kernel size; padding is never the maximum.
    ceil_mode : round the output size up (the last window starting inside the input or
        the left padding).
    return_indices : also return the position of each maximum.
    device : "cpu" (default) or "cuda": the same op on the GPU (``fastconv.cuda``).

    Returns
    -------
    y : ndarray (N, C, H_out, W_out) / (N, H_out, W_out, C), dtype of x, with
        H_out = floor((H + 2 p_h - d_h (k_h - 1) - 1) / s_h) + 1 (ceil with ceil_mode).
    indices : int64 ndarray, shape of y: flat index h*W + w of the maximum in the plane of
        (n, c). The first maximum in row-major window order wins ties; a NaN is the
        maximum (the last NaN wins, as in torch). A window wholly in the padding (possible
        only with dilation) gives -inf and index -1.

    Notes
    -----
    Wraps ``_max_pool_planes`` (NCHW) / ``_max_pool_nhwc``; 2x2 windows with stride 2 and
    no padding (NCHW) run ``_max_pool_2x2_planes``, which skips the indices when they are
    not returned.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.arange(9.0).reshape(1, 1, 3, 3)
    >>> fastconv.max_pool2d(x, 2, stride=1)[0, 0]
    array([[4., 5.],
           [7., 8.]])
    """
    op = "max_pool2d"
    if check_device(op, device) == "cuda":
        from . import cuda

        return cuda.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, layout=layout,
                               return_indices=return_indices)
    x = check_array(op, "input", x)
    a = pool_args(op, x.shape, kernel_size, stride, padding, dilation, ceil_mode, layout)
    _check_flag(op, "return_indices", return_indices)
    x4 = _nchw(x, a.unbatched)
    y = allocate(op, "output", a.y_shape if not a.unbatched else (1,) + a.y_shape, x.dtype)
    fast = layout == "NCHW" and _is_2x2_stride_2(a)
    # the general kernels use the indices while they scan, so they always get them
    idx = allocate(op, "indices", y.shape if return_indices or not fast else (0,), np.int64)
    geom = (*a.kernel, *a.stride, *a.padding, *a.dilation)
    if y.size:
        with parallel_guard():
            if layout == "NCHW":
                planes = a.n * a.c
                x3 = x4.reshape(planes, a.h, a.w)
                y3 = y.reshape(planes, a.h_out, a.w_out)
                idx3 = idx.reshape(planes, a.h_out, a.w_out) if idx.size else idx.reshape(0, 0, 0)
                rows = _row_block(planes, a.h_out)
                if fast:
                    _max_pool_2x2_planes(x3, y3, idx3, bool(return_indices), rows)
                else:
                    _max_pool_planes(x3, y3, idx3, *geom, rows)
            else:
                _max_pool_nhwc(x4, y, idx, *geom)
    if not return_indices:
        return y[0] if a.unbatched else y
    return (y[0], idx[0]) if a.unbatched else (y, idx)


def max_unpool_args(op: str, grad_y, indices, input_shape, layout):
    """The checks of ``max_pool2d_backward``; returns (input_shape, n, c, h, w, h_out,
    w_out, unbatched)."""
    check_layout(op, layout)
    shape = _check_input_shape(op, input_shape)
    n, c, h, w, unbatched = _input_dims(op, shape, layout)
    grad_y = check_array(op, "grad_y", grad_y)
    if grad_y.ndim != len(shape):
        raise ValueError(f"{op}: grad_y is {grad_y.ndim}-D but input_shape {shape} is "
                         f"{len(shape)}-D")
    gn, gc, ho, wo, _ = _input_dims(op, grad_y.shape, layout)
    if (gn, gc) != (n, c):
        raise ValueError(f"{op}: grad_y of shape {grad_y.shape} does not match input_shape "
                         f"{shape}: batch and channel sizes must agree ({layout})")
    if not isinstance(indices, np.ndarray):
        raise TypeError(f"{op}: indices must be a numpy.ndarray, got {type(indices).__name__}")
    if indices.dtype != np.int64:
        raise TypeError(f"{op}: indices has dtype {indices.dtype}; expected int64 (as "
                        "returned by max_pool2d(..., return_indices=True))")
    if indices.shape != grad_y.shape:
        raise ValueError(f"{op}: indices must have the shape of grad_y {grad_y.shape}, got "
                         f"{indices.shape}")
    if indices.size and (indices.min() < -1 or indices.max() >= h * w):
        raise ValueError(f"{op}: indices must lie in [0, H*W) = [0, {h * w}) (or be -1), got "
                         f"values from {indices.min()} to {indices.max()}")
    return shape, n, c, h, w, ho, wo, unbatched


def max_pool2d_backward(grad_y, indices, input_shape, *, layout="NCHW", device="cpu"):
    """Gradient of ``max_pool2d``: grad_y[n, c, i, j] is added at indices[n, c, i, j].

    Parameters
    ----------
    grad_y : ndarray, shape of max_pool2d's output (caller's layout).
    indices : int64 ndarray, shape of grad_y, from ``max_pool2d(..., return_indices=True)``
        (-1 marks a window without input elements; it passes no gradient).
    input_shape : shape of max_pool2d's input (same layout, 3-D when unbatched).
    device : "cpu" (default) or "cuda": the same op on the GPU (``fastconv.cuda``).

    Returns
    -------
    grad_x : ndarray of input_shape, dtype of grad_y. Wraps ``_max_unpool_planes`` /
    ``_max_unpool_nhwc`` (one task per plane or per (image, channel block): no races when
    windows overlap).
    """
    op = "max_pool2d_backward"
    if check_device(op, device) == "cuda":
        from . import cuda

        return cuda.max_pool2d_backward(grad_y, indices, input_shape, layout=layout)
    shape, n, c, h, w, ho, wo, unbatched = max_unpool_args(op, grad_y, indices, input_shape,
                                                           layout)
    gy = _nchw(grad_y, unbatched)
    ix = _nchw(indices, unbatched)
    gx = allocate(op, "gradient", (1,) + shape if unbatched else shape, grad_y.dtype)
    gx[...] = 0
    if gy.size:
        with parallel_guard():
            if layout == "NCHW":
                _max_unpool_planes(gy.reshape(n * c, ho * wo), ix.reshape(n * c, ho * wo),
                                   gx.reshape(n * c, h * w))
            else:
                _max_unpool_nhwc(gy.reshape(n, ho * wo, c), ix.reshape(n, ho * wo, c),
                                 gx.reshape(n, h * w, c))
    return gx[0] if unbatched else gx


# ------------------------------------------------------------------------------ avg pool
@njit(inline="always")
def _inv_col_divisors(inv, sw, pw, kw, wd, include_pad):
    """inv[j] = 1 / (column extent of window j), 0 for an empty window. The divisor of
    window (i, j) is (row extent) * (column extent) under both counting rules."""
    for j in range(inv.size):
        c0, c1, ew = _avg_window(j, sw, pw, kw, wd)
        n = ew if include_pad else c1 - c0
        inv[j] = 1.0 / n if n > 0 and c0 < c1 else 0.0


@njit(inline="always")
def _avg_window(o, s, p, k, size):
    """Rows [lo, hi) of window o read from the input, and its extent for the divisor with
    count_include_pad (clipped at the end of the right padding, as torch)."""
    start = o * s - p
    end = min(start + k, size + p)
    return max(start, 0), min(end, size), end - start


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _avg_pool_planes(x, y, kh, kw, sh, sw, ph, pw, include_pad, rows):
    """x (P, H, W) -> y (P, Ho, Wo); one task per (plane, block of ``rows`` output rows).
    Each output row is summed in float64 by sweeping the input rows and column taps of
    its windows, then scaled by the reciprocal of each window's divisor."""
    n_planes, h, wd = x.shape
    _, ho, wo = y.shape
    n_blk = (ho + rows - 1) // rows
    for task in prange(n_planes * n_blk):
        p = task // n_blk
        i0 = (task % n_blk) * rows
        acc = np.empty(wo, np.float64)
        inv = np.empty(wo, np.float64)
        _inv_col_divisors(inv, sw, pw, kw, wd, include_pad)
        for i in range(i0, min(i0 + rows, ho)):
            r0, r1, eh = _avg_window(i, sh, ph, kh, h)
            n_rows = eh if include_pad else r1 - r0
            inv_r = 1.0 / n_rows if n_rows > 0 and r0 < r1 else 0.0
            acc[:] = 0.0
            for r in range(r0, r1):
                xrow = x[p, r]
                for b in range(kw):
                    off = b - pw
                    j_lo, j_hi = valid_range(wo, off, sw, wd)
                    if sw == 1:
                        _sum_taps(xrow, acc, j_lo, j_hi, off, 1)
                    elif sw == 2:
                        _sum_taps(xrow, acc, j_lo, j_hi, off, 2)
                    else:
                        _sum_taps(xrow, acc, j_lo, j_hi, off, sw)
            yrow = y[p, i]
            for j in range(wo):
                yrow[j] = acc[j] * inv[j] * inv_r


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _avg_pool_nhwc(x, y, kh, kw, sh, sw, ph, pw, include_pad):
    """x (N, H, W, C) -> y (N, Ho, Wo, C); one task per (image, output row)."""
    n_img, h, wd, c_all = x.shape
    _, ho, wo, _ = y.shape
    for task in prange(n_img * ho):
        n = task // ho
        i = task % ho
        acc = np.empty(c_all, np.float64)
        r0, r1, eh = _avg_window(i, sh, ph, kh, h)
        for j in range(wo):
            c0, c1, ew = _avg_window(j, sw, pw, kw, wd)
            count = eh * ew if include_pad else (r1 - r0) * (c1 - c0)
            acc[:] = 0.0
            for r in range(r0, r1):
                for col in range(c0, c1):
                    px = x[n, r, col]
                    for c in range(c_all):
                        acc[c] += px[c]
            out = y[n, i, j]
            if count > 0 and r0 < r1 and c0 < c1:
                for c in range(c_all):
                    out[c] = acc[c] / count
            else:
                out[:] = 0


@njit(inline="always")
def _covering_rows(r, sh, ph, kh, ho):
    """Output rows [lo, hi) whose windows contain input row r:
    i*sh - ph <= r < i*sh - ph + kh."""
    lo = max(0, -((kh - 1 - r - ph) // sh))
    hi = min(ho, (r + ph) // sh + 1)
    return lo, max(lo, hi)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _avg_unpool_planes(gy, gx, kh, kw, sh, sw, ph, pw, include_pad, rows):
    """gx (P, H, W), fully written, from grad_y (P, Ho, Wo): one task per (plane, block of
    ``rows`` input rows). Each input row is zeroed, then gathers grad_y / divisor from the
    output rows whose windows cover it, spread over each window's columns."""
    n_planes, h, wd = gx.shape
    _, ho, wo = gy.shape
    n_blk = (h + rows - 1) // rows
    for task in prange(n_planes * n_blk):
        p = task // n_blk
        r_start = (task % n_blk) * rows
        g = np.empty(wo, np.float64)
        inv = np.empty(wo, np.float64)
        _inv_col_divisors(inv, sw, pw, kw, wd, include_pad)
        for r in range(r_start, min(r_start + rows, h)):
            grow = gx[p, r]
            grow[:] = 0
            i_lo, i_hi = _covering_rows(r, sh, ph, kh, ho)
            for i in range(i_lo, i_hi):
                r0, r1, eh = _avg_window(i, sh, ph, kh, h)
                n_rows = eh if include_pad else r1 - r0
                inv_r = 1.0 / n_rows
                gyrow = gy[p, i]
                for j in range(wo):
                    g[j] = gyrow[j] * inv[j] * inv_r
                for b in range(kw):
                    off = b - pw
                    j_lo, j_hi = valid_range(wo, off, sw, wd)
                    if sw == 1:
                        _spread_taps(g, grow, j_lo, j_hi, off, 1)
                    elif sw == 2:
                        _spread_taps(g, grow, j_lo, j_hi, off, 2)
                    else:
                        _spread_taps(g, grow, j_lo, j_hi, off, sw)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _avg_unpool_nhwc(gy, gx, kh, kw, sh, sw, ph, pw, include_pad):
    """gx (N, H, W, C), fully written; one task per (image, input row), which is zeroed
    and gathers from the output rows whose windows cover it."""
    n_img, h, wd, c_all = gx.shape
    _, ho, wo, _ = gy.shape
    for task in prange(n_img * h):
        n = task // h
        r = task % h
        line = gx[n, r]
        line[:] = 0
        i_lo, i_hi = _covering_rows(r, sh, ph, kh, ho)
        for i in range(i_lo, i_hi):
            r0, r1, eh = _avg_window(i, sh, ph, kh, h)
            n_rows = eh if include_pad else r1 - r0
            for j in range(wo):
                c0, c1, ew = _avg_window(j, sw, pw, kw, wd)
                count = n_rows * (ew if include_pad else c1 - c0)
                if count <= 0 or c0 >= c1:
                    continue
                scale = 1.0 / count
                g = gy[n, i, j]
                for col in range(c0, c1):
                    px = line[col]
                    for c in range(c_all):
                        px[c] += g[c] * scale


def _avg_args(op, shape, kernel_size, stride, padding, ceil_mode, count_include_pad, layout):
    a = pool_args(op, shape, kernel_size, stride, padding, 1, ceil_mode, layout)
    include = _check_flag(op, "count_include_pad", count_include_pad)
    return a, (*a.kernel, *a.stride, *a.padding, include)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, *, layout="NCHW", device="cpu"):
    """2-D average pooling, as torch.nn.functional.avg_pool2d (no divisor_override).

    Parameters
    ----------
    x : ndarray (N, C, H, W) for "NCHW" or (N, H, W, C) for "NHWC"; 3-D is unbatched.
    kernel_size : int or (h, w); stride : int, (h, w) or None (= kernel_size).
    padding : int or (h, w), at most half the kernel size (zeros).
    ceil_mode : round the output size up (see ``max_pool2d``).
    count_include_pad : divide by the window size including padding (clipped at the end
        of the right padding, which matters in ceil_mode) rather than by the number of
        input elements in the window.
    device : "cpu" (default) or "cuda": the same op on the GPU (``fastconv.cuda``).

    Returns
    -------
    y : ndarray (N, C, H_out, W_out) / (N, H_out, W_out, C), dtype of x,
        H_out = floor((H + 2 p_h - k_h) / s_h) + 1 (ceil with ceil_mode). Sums are
        accumulated in float64. Wraps ``_avg_pool_planes`` / ``_avg_pool_nhwc``.
    """
    op = "avg_pool2d"
    if check_device(op, device) == "cuda":
        from . import cuda

        return cuda.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                               layout=layout)
    x = check_array(op, "input", x)
    a, geom = _avg_args(op, x.shape, kernel_size, stride, padding, ceil_mode,
                        count_include_pad, layout)
    x4 = _nchw(x, a.unbatched)
    y = allocate(op, "output", a.y_shape if not a.unbatched else (1,) + a.y_shape, x.dtype)
    if y.size:
        with parallel_guard():
            if layout == "NCHW":
                planes = a.n * a.c
                _avg_pool_planes(x4.reshape(planes, a.h, a.w),
                                 y.reshape(planes, a.h_out, a.w_out), *geom,
                                 _row_block(planes, a.h_out))
            else:
                _avg_pool_nhwc(x4, y, *geom)
    return y[0] if a.unbatched else y


def avg_pool2d_backward(grad_y, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, *, layout="NCHW",
                        device="cpu"):
    """Gradient of ``avg_pool2d`` (same arguments): each grad_y value, divided by its
    window's divisor, is added to every input element of its window.

    Returns grad_x of ``input_shape`` (caller's layout), dtype of grad_y. Wraps
    ``_avg_unpool_planes`` / ``_avg_unpool_nhwc``: each task owns a block of input rows
    and gathers from the windows covering them (no races when windows overlap).
    device="cuda" runs the same op on the GPU (``fastconv.cuda``).
    """
    op = "avg_pool2d_backward"
    if check_device(op, device) == "cuda":
        from . import cuda

        return cuda.avg_pool2d_backward(grad_y, input_shape, kernel_size, stride, padding,
                                        ceil_mode, count_include_pad, layout=layout)
    shape = _check_input_shape(op, input_shape)
    a, geom = _avg_args(op, shape, kernel_size, stride, padding, ceil_mode,
                        count_include_pad, layout)
    grad_y = _check_grad_y(op, grad_y, a.y_shape)
    gy = _nchw(grad_y, a.unbatched)
    gx = allocate(op, "gradient", (1,) + shape if a.unbatched else shape, grad_y.dtype)
    if gx.size:   # (the output is at least 1x1, so grad_y is empty only when gx is)
        with parallel_guard():
            if layout == "NCHW":
                planes = a.n * a.c
                _avg_unpool_planes(gy.reshape(planes, a.h_out, a.w_out),
                                   gx.reshape(planes, a.h, a.w), *geom,
                                   _row_block(planes, a.h))
            else:
                _avg_unpool_nhwc(gy, gx, *geom)
    return gx[0] if a.unbatched else gx


# ----------------------------------------------------------------------- global average
@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _mean_planes(x, y):
    """y[p] = mean of x[p, :] for x (P, H*W), float64 sums; one task per plane."""
    n_planes, m = x.shape
    for p in prange(n_planes):
        acc = 0.0
        for k in range(m):
            acc += x[p, k]
        y[p] = acc / m


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _mean_pixels_nhwc(x, y):
    """y[n, c] = mean over pixels of x (N, H*W, C); one task per (image, channel block)."""
    n_img, m, c_all = x.shape
    n_blk = (c_all + _C_BLOCK - 1) // _C_BLOCK
    for task in prange(n_img * n_blk):
        n = task // n_blk
        c0 = (task % n_blk) * _C_BLOCK
        c1 = min(c0 + _C_BLOCK, c_all)
        acc = np.zeros(c1 - c0, np.float64)
        for k in range(m):
            for c in range(c0, c1):
                acc[c - c0] += x[n, k, c]
        for c in range(c0, c1):
            y[n, c] = acc[c - c0] / m


def global_avg_pool2d(x, *, layout="NCHW"):
    """Mean over H and W: (N, C, H, W) -> (N, C, 1, 1), or (N, H, W, C) -> (N, 1, 1, C)
    (3-D in, 3-D out). Float64 sums. Wraps ``_mean_planes`` / ``_mean_pixels_nhwc``."""
    op = "global_avg_pool2d"
    x = check_array(op, "input", x)
    check_layout(op, layout)
    n, c, h, w, unbatched = _input_dims(op, x.shape, layout)
    if h * w == 0:
        raise ValueError(f"{op}: input has no pixels (H={h}, W={w}); the mean is undefined")
    x4 = _nchw(x, unbatched)
    y = np.empty((n, c), x.dtype)
    if y.size:
        with parallel_guard():
            if layout == "NCHW":
                _mean_planes(x4.reshape(n * c, h * w), y.reshape(n * c))
            else:
                _mean_pixels_nhwc(x4.reshape(n, h * w, c), y)
    y = y[:, :, None, None] if layout == "NCHW" else y[:, None, None, :]
    return y[0] if unbatched else y


def global_avg_pool2d_backward(grad_y, input_shape, *, layout="NCHW"):
    """Gradient of ``global_avg_pool2d``: grad_y / (H*W) broadcast over each plane.

    grad_y : (N, C, 1, 1) / (N, 1, 1, C) (3-D when unbatched); returns grad_x of
    ``input_shape``, dtype of grad_y."""
    op = "global_avg_pool2d_backward"
    check_layout(op, layout)
    shape = _check_input_shape(op, input_shape)
    n, c, h, w, unbatched = _input_dims(op, shape, layout)
    if h * w == 0:
        raise ValueError(f"{op}: input_shape {shape} has no pixels (H={h}, W={w})")
    want = (n, c, 1, 1) if layout == "NCHW" else (n, 1, 1, c)
    grad_y = _check_grad_y(op, grad_y, want[1:] if unbatched else want)
    gx = allocate(op, "gradient", shape, grad_y.dtype)
    gx[...] = grad_y / grad_y.dtype.type(h * w)
    return gx

