"""max_pool2d / avg_pool2d and their gradients on the GPU: the CPU's checks, then kernels."""

from __future__ import annotations

import numpy as np
from numba import cuda

from .. import pool as cpu
from .._args import check_array
from . import _layout
from . import _pool_kernels as K
from ._device import Residency, host_spec, launch_1d


def _launch(kernel, total, *params):
    if total > 0:
        blocks, threads = launch_1d(total)
        kernel[blocks, threads](*params)


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
    a = cpu.pool_args(op, xs.shape, kernel_size, stride, padding, dilation, ceil_mode, layout)
    cpu._check_flag(op, "return_indices", return_indices)
    res = Residency(x)
    dx = _layout.to_nchw(res.to_device(x), layout)
    y = cuda.device_array((a.n, a.c, a.h_out, a.w_out), xs.dtype)
    idx = cuda.device_array(y.shape, np.int64)
    _launch(K._max_pool, y.size, _planes(dx), _planes(y), _planes(idx), *a.kernel, *a.stride,
            *a.padding, *a.dilation)
    y = res.result(_layout.from_nchw(y, layout, a.unbatched))
    if not return_indices:
        return y
    return y, res.result(_layout.from_nchw(idx, layout, a.unbatched))


def max_pool2d_backward(grad_y, indices, input_shape, *, layout="NCHW"):
    """fastconv.max_pool2d_backward on the GPU: grad_y added at indices (atomic adds, since
    windows may share their maximum). Index values are checked on the host for host
    arrays; on the device, values outside [0, H*W) (and -1) pass nothing."""
    op = "max_pool2d_backward"
    _, n, c, h, w, _, _, unbatched = cpu.max_unpool_args(op, host_spec(grad_y),
                                                         host_spec(indices), input_shape, layout)
    res = Residency(grad_y, indices)
    dgy = _layout.to_nchw(res.to_device(grad_y), layout)
    didx = _layout.to_nchw(res.to_device(indices), layout)
    ho, wo = dgy.shape[2], dgy.shape[3]
    gx = _layout.zeros((n, c, h, w), dgy.dtype)
    _launch(K._max_unpool, dgy.size, dgy.reshape((n * c, ho * wo)),
            didx.reshape((n * c, ho * wo)), gx.reshape((n * c, h * w)))
    return res.result(_layout.from_nchw(gx, layout, unbatched))


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, *, layout="NCHW"):
    """fastconv.avg_pool2d on the GPU (kernel ``_avg_pool``, one thread per output)."""
    op = "avg_pool2d"
    xs = check_array(op, "input", host_spec(x))
    a, geom = cpu._avg_args(op, xs.shape, kernel_size, stride, padding, ceil_mode,
                            count_include_pad, layout)
    res = Residency(x)
    dx = _layout.to_nchw(res.to_device(x), layout)
    y = cuda.device_array((a.n, a.c, a.h_out, a.w_out), xs.dtype)
    _launch(K._avg_pool, y.size, _planes(dx), _planes(y), *geom)
    return res.result(_layout.from_nchw(y, layout, a.unbatched))


def avg_pool2d_backward(grad_y, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, *, layout="NCHW"):
    """fastconv.avg_pool2d_backward on the GPU (``_avg_unpool``: one thread per input
    element gathers from the windows covering it; no atomics)."""
    op = "avg_pool2d_backward"
    shape = cpu._check_input_shape(op, input_shape)
    a, geom = cpu._avg_args(op, shape, kernel_size, stride, padding, ceil_mode,
                            count_include_pad, layout)
    gys = cpu._check_grad_y(op, host_spec(grad_y), a.y_shape)
    res = Residency(grad_y)
    dgy = _layout.to_nchw(res.to_device(grad_y), layout)
    gx = cuda.device_array((a.n, a.c, a.h, a.w), gys.dtype)
    _launch(K._avg_unpool, gx.size, _planes(dgy), _planes(gx), *geom)
    return res.result(_layout.from_nchw(gx, layout, a.unbatched))
