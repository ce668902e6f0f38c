"""The pooling kernels of each layout, in one table keyed by layout name.

NCHW and NHWC each have kernels of their own (NCHW sweeps the rows of (N*C, H, W)
planes, NHWC runs the channels of (N, H, W, C) images in its innermost loops), so no op
ever copies an array into another layout. A :class:`LayoutKernels` row says, per op, how
that layout's kernel views the arrays; the public ops (``ops``) look the row up by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import _avg_kernels as A
from . import _max_kernels as M
from ._common import row_block


@dataclass(frozen=True)
class LayoutKernels:
    """One layout's pooling kernels. Each entry takes the problem's record (``PoolArgs``,
    or ``PoolShapes`` for the gradient of max and global pooling) and 4-D C-contiguous
    arrays in the layout (batch axis present), and fills its output array in place.

    - ``max_pool(a, x, y, idx, with_idx)``: y, the maxima; idx, their flat indices h*W + w
      (int64), computed when ``with_idx`` or when ``max_pool_scans_indices(a)``; else idx
      may be empty.
    - ``max_unpool(s, gy, idx, gx, mask) -> int``: gx = 0, then += gy at idx (gx fully
      written), only where ``mask`` (None, or an array of gy's shape) is positive;
      returns the count of indices outside [0, H*W) other than -1 (skipped).
    - ``max_pool_codes(a, x, y, codes, relu)`` and ``max_unpool_codes(a, gy, codes, gx,
      mask)``: the 2x2, stride-2 layer (``_max_kernels.is_2x2_stride_2``) with each
      window's winning tap kept as an int32 code 2a + b, y relu'd with ``relu``, and its
      gradient from the codes (gx fully written); the autograd op's path.
    - ``avg_pool(a, x, y)`` and ``avg_unpool(a, gy, gx)`` (gx fully written).
    - ``mean(s, x, y)``: y (N, C), the mean over each plane.
    """

    max_pool: Callable
    max_pool_scans_indices: Callable
    max_unpool: Callable
    max_pool_codes: Callable
    max_unpool_codes: Callable
    avg_pool: Callable
    avg_unpool: Callable
    mean: Callable


#: Empty index and code arrays of 2 and 4 dimensions: the 2x2 kernels' "not wanted".
_NO_INDICES = {d: np.zeros((0,) * d, np.int64) for d in (2, 4)}
_NO_CODES = {d: np.zeros((0,) * d, np.int32) for d in (2, 4)}


# ------------------------------------------------------------------------------- NCHW
def _planes(s, arr, *plane_shape):
    """An NCHW array of the problem ``s`` as (N*C, *plane_shape) planes."""
    return arr.reshape(s.n * s.c, *plane_shape)


def _nchw_max_pool(a, x, y, idx, with_idx):
    rows = row_block(a.n * a.c, a.h_out)
    if M.is_2x2_stride_2(a):      # idx is empty unless with_idx
        flat = _planes(a, idx, a.h_out * a.w_out) if idx.size else _NO_INDICES[2]
        M._max_pool_2x2_planes(_planes(a, x, a.h * a.w), _planes(a, y, a.h_out * a.w_out),
                               flat, _NO_CODES[2], False, (a.w, a.h_out, a.w_out), rows)
        return
    M._max_pool_planes(_planes(a, x, a.h, a.w), _planes(a, y, a.h_out, a.w_out),
                       _planes(a, idx, a.h_out, a.w_out), *a.max_geometry, rows)


def _nchw_max_pool_codes(a, x, y, codes, relu):
    M._max_pool_2x2_planes(_planes(a, x, a.h * a.w), _planes(a, y, a.h_out * a.w_out),
                           _NO_INDICES[2], _planes(a, codes, a.h_out * a.w_out), relu,
                           (a.w, a.h_out, a.w_out), row_block(a.n * a.c, a.h_out))


def _nchw_max_unpool_codes(a, gy, codes, gx, mask):
    _unpool_codes(a, gy, codes, gx, mask, a.n * a.c, 1, row_block(a.n * a.c, a.h_out))


def _nchw_max_pool_scans_indices(a) -> bool:
    return not M.is_2x2_stride_2(a)  # the 2x2 kernel writes indices only when asked


def _unpool(kernel, view, s, gy, idx, gx, mask):
    """A layout's unpooling ``kernel`` on its ``view`` of the arrays (``mask`` None:
    grad_y stands in for it, unread)."""
    out = s.h_out * s.w_out
    g = view(s, gy, out)
    return kernel(g, view(s, idx, out), view(s, gx, s.h * s.w),
                  g if mask is None else view(s, mask, out), mask is not None)


def _nchw_max_unpool(s, gy, idx, gx, mask):
    return _unpool(M._max_unpool_planes, _planes, s, gy, idx, gx, mask)


def _nchw_avg_pool(a, x, y):
    A._avg_pool_planes(_planes(a, x, a.h, a.w), _planes(a, y, a.h_out, a.w_out),
                       *a.avg_geometry, row_block(a.n * a.c, a.h_out))


def _nchw_avg_unpool(a, gy, gx):
    A._avg_unpool_planes(_planes(a, gy, a.h_out, a.w_out), _planes(a, gx, a.h, a.w),
                         *a.avg_geometry, row_block(a.n * a.c, a.h))


def _nchw_mean(s, x, y):
    A._mean_planes(_planes(s, x, s.h * s.w), y.reshape(s.n * s.c))


# ------------------------------------------------------------------------------- NHWC
def _pixels(s, arr, n_pixels):
    """An NHWC array of the problem ``s`` as (N, n_pixels, C)."""
    return arr.reshape(s.n, n_pixels, s.c)


def _nhwc_max_pool(a, x, y, idx, with_idx):
    if M.is_2x2_stride_2(a):      # idx is empty unless with_idx
        M._max_pool_2x2_nhwc(x, y, idx if idx.size else _NO_INDICES[4], _NO_CODES[4], False)
    else:
        M._max_pool_nhwc(x, y, idx, *a.max_geometry)


def _nhwc_max_pool_codes(a, x, y, codes, relu):
    M._max_pool_2x2_nhwc(x, y, _NO_INDICES[4], codes, relu)


def _nhwc_max_unpool_codes(a, gy, codes, gx, mask):
    _unpool_codes(a, gy, codes, gx, mask, a.n, a.c, row_block(a.n, a.h_out, 64))


def _unpool_codes(a, gy, codes, gx, mask, images, channels, rows):
    """``_max_unpool_2x2`` on the arrays as ``images`` flat images of ``channels``."""
    g = gy.reshape(images, -1)
    M._max_unpool_2x2(g, codes.reshape(images, -1), gx.reshape(images, -1),
                      g if mask is None else mask.reshape(images, -1), mask is not None,
                      (a.h, a.w, a.h_out, a.w_out, channels), rows)


def _nhwc_max_pool_scans_indices(a) -> bool:
    # the general NHWC kernel keeps the indices of its running maxima; the 2x2 kernel
    # writes them only when asked
    return not M.is_2x2_stride_2(a)


def _nhwc_max_unpool(s, gy, idx, gx, mask):
    return _unpool(M._max_unpool_nhwc, _pixels, s, gy, idx, gx, mask)


def _nhwc_avg_pool(a, x, y):
    A._avg_pool_nhwc(x, y, *a.avg_geometry)


def _nhwc_avg_unpool(a, gy, gx):
    A._avg_unpool_nhwc(gy, gx, *a.avg_geometry)


def _nhwc_mean(s, x, y):
    A._mean_pixels_nhwc(_pixels(s, x, s.h * s.w), y, np.empty((s.n, s.c)))


KERNELS = {
    "NCHW": LayoutKernels(
        max_pool=_nchw_max_pool, max_pool_scans_indices=_nchw_max_pool_scans_indices,
        max_unpool=_nchw_max_unpool, max_pool_codes=_nchw_max_pool_codes,
        max_unpool_codes=_nchw_max_unpool_codes, avg_pool=_nchw_avg_pool,
        avg_unpool=_nchw_avg_unpool, mean=_nchw_mean),
    "NHWC": LayoutKernels(
        max_pool=_nhwc_max_pool, max_pool_scans_indices=_nhwc_max_pool_scans_indices,
        max_unpool=_nhwc_max_unpool, max_pool_codes=_nhwc_max_pool_codes,
        max_unpool_codes=_nhwc_max_unpool_codes, avg_pool=_nhwc_avg_pool,
        avg_unpool=_nhwc_avg_unpool, mean=_nhwc_mean),
}
