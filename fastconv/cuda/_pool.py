"""max_pool2d / avg_pool2d and their gradients on the GPU: the checks of the pooling
records (``fastconv._args``, the same as the CPU's), then kernels on NCHW planes."""

from __future__ import annotations

import numpy as np
from numba import cuda

from .._args import (
    avg_pool_args,
    check_array,
    check_flag,
    check_grad_y,
    check_input_shape,
    max_unpool_args,
    pool_args,
)
from . import _layout
from . import _pool_kernels as K
from ._device import Residency, host_spec, launch


def _planes(d):
    """(N*C, H, W) view of a contiguous NCHW device array."""
    n, c, h, w = d.shape
    return d.reshape((n * c, h, w))


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *,
               layout="NCHW", return_indices=False):
    """fastconv.max_pool2d on the GPU: same arguments, results (indices int64) and errors.

    One thread per output element scans its window (kernel ``_max_pool``)."""
    op = "max_pool2d"
    xs = check_array(op, "input", host_spec(x))
    a = pool_args(op, xs.shape, kernel_size, stride, padding, dilation, ceil_mode, layout)
    check_flag(op, "return_indices", return_indices)
    res = Residency(x)
    dx = _layout.to_nchw(res.to_device(x), layout)
    y = cuda.device_array((a.n, a.c, a.h_out, a.w_out), xs.dtype)
    idx = cuda.device_array(y.shape, np.int64)
    launch(K._max_pool, y.size, _planes(dx), _planes(y), _planes(idx), *a.max_geometry)
    y = res.result(_layout.from_nchw(y, layout, a.unbatched))
    if not return_indices:
        return y
    return y, res.result(_layout.from_nchw(idx, layout, a.unbatched))


def max_pool2d_backward(grad_y, indices, input_shape, *, layout="NCHW"):
    """fastconv.max_pool2d_backward on the GPU: grad_y added at indices (atomic adds, since
    windows may share their maximum). Index values are checked on the host for host
    arrays; on the device, values outside [0, H*W) (and -1) pass nothing."""
    op = "max_pool2d_backward"
    s = max_unpool_args(op, host_spec(grad_y), host_spec(indices), input_shape, layout)
    res = Residency(grad_y, indices)
    dgy = _layout.to_nchw(res.to_device(grad_y), layout)
    didx = _layout.to_nchw(res.to_device(indices), layout)
    planes, n_out = s.n * s.c, s.h_out * s.w_out
    gx = _layout.zeros((s.n, s.c, s.h, s.w), dgy.dtype)
    launch(K._max_unpool, dgy.size, dgy.reshape((planes, n_out)), didx.reshape((planes, n_out)),
           gx.reshape((planes, s.h * s.w)))
    return res.result(_layout.from_nchw(gx, layout, s.unbatched))


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, *, layout="NCHW"):
    """fastconv.avg_pool2d on the GPU (kernel ``_avg_pool``, one thread per output)."""
    op = "avg_pool2d"
    xs = check_array(op, "input", host_spec(x))
    a = avg_pool_args(op, xs.shape, kernel_size, stride, padding, ceil_mode, count_include_pad,
                      layout)
    res = Residency(x)
    dx = _layout.to_nchw(res.to_device(x), layout)
    y = cuda.device_array((a.n, a.c, a.h_out, a.w_out), xs.dtype)
    launch(K._avg_pool, y.size, _planes(dx), _planes(y), *a.avg_geometry)
    return res.result(_layout.from_nchw(y, layout, a.unbatched))


def avg_pool2d_backward(grad_y, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, *, layout="NCHW"):
    """fastconv.avg_pool2d_backward on the GPU (``_avg_unpool``: one thread per input
    element gathers from the windows covering it; no atomics)."""
    op = "avg_pool2d_backward"
    shape = check_input_shape(op, input_shape)
    a = avg_pool_args(op, shape, kernel_size, stride, padding, ceil_mode, count_include_pad,
                      layout)
    gys = check_grad_y(op, host_spec(grad_y), a.y_shape)
    res = Residency(grad_y)
    dgy = _layout.to_nchw(res.to_device(grad_y), layout)
    gx = cuda.device_array((a.n, a.c, a.h, a.w), gys.dtype)
    launch(K._avg_unpool, gx.size, _planes(dgy), _planes(gx), *a.avg_geometry)
    return res.result(_layout.from_nchw(gx, layout, a.unbatched))
