"""batch_norm and batch_norm_backward on the GPU: the checks of the batch-norm record
(``fastconv._args``, the same as the CPU's), then kernels on NCHW (N, C, H*W) views."""

from __future__ import annotations

import numpy as np
from numba import cuda

from .._args import batch_norm_args, batch_norm_backward_args
from . import _layout
from . import _norm_kernels as K
from ._device import Residency, host_spec, launch
from ._reduce import reduce_threads


def _channels(d):
    """(N, C, H*W) view of a contiguous NCHW device array."""
    n, c, h, w = d.shape
    return d.reshape((n, c, h * w))


def _vector(res, a, c, dtype):
    """(device array, flag) for an optional (C,) parameter; a never-read dummy for None."""
    if a is None:
        return cuda.device_array(max(c, 1), dtype), 0
    return _layout.contiguous(res.to_device(a)), 1


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, layout="NCHW", return_stats=False):
    """fastconv.batch_norm on the GPU: same arguments, results and errors.

    Training: one block per channel computes the float64 mean and biased variance (two
    passes, ``_bn_stats``), then the running estimates move in place (on the device, or
    copied back into host arrays). mean and invstd are float64 (C,) arrays, as on the CPU.
    """
    op = "batch_norm"
    a = batch_norm_args(op, host_spec(x), host_spec(running_mean), host_spec(running_var),
                        host_spec(weight), host_spec(bias), training, momentum, eps, layout,
                        return_stats)
    c, count = a.c, a.count
    res = Residency(x, running_mean, running_var, weight, bias)
    dtype = np.dtype(x.dtype)
    dx = _layout.to_nchw(res.to_device(x), layout)
    y = cuda.device_array(dx.shape, dtype)
    mean = cuda.device_array(c, np.float64)
    invstd = cuda.device_array(c, np.float64)
    if a.training and count == 0:
        mean = cuda.to_device(np.full(c, np.nan))
        invstd = cuda.to_device(np.full(c, np.nan))
    elif a.training:
        var = cuda.device_array(c, np.float64)
        threads = reduce_threads()
        K.stats_kernel(threads)[c, threads](_channels(dx), a.eps, mean, var, invstd)
        if running_mean is not None:
            drm = res.to_device(running_mean)
            drv = res.to_device(running_var)
            launch(K._bn_running_update, c, mean, var, count, a.momentum, drm, drv)
            if not _on_device(running_mean):
                running_mean[...] = drm.copy_to_host()
                running_var[...] = drv.copy_to_host()
    else:
        launch(K._bn_eval_stats, c, res.to_device(running_mean), res.to_device(running_var),
               a.eps, mean, invstd)
    dw, has_w = _vector(res, weight, c, dtype)
    db, has_b = _vector(res, bias, c, dtype)
    if count:
        launch(K._bn_apply, y.size, _channels(dx), mean, invstd, dw, has_w, db, has_b,
               _channels(y))
    y = res.result(_layout.from_nchw(y, layout))
    return (y, res.result(mean), res.result(invstd)) if return_stats else y


def _on_device(a) -> bool:
    return not isinstance(a, np.ndarray)


def batch_norm_backward(grad_y, x, mean, invstd, weight=None, *, training=True,
                        layout="NCHW"):
    """fastconv.batch_norm_backward on the GPU -> (grad_x, grad_weight, grad_bias).

    One block per channel sums grad_y and grad_y * (x - mean) in float64
    (``_bn_grad_sums``); an element-wise kernel applies the CPU's formula."""
    op = "batch_norm_backward"
    a = batch_norm_backward_args(op, host_spec(grad_y), host_spec(x), host_spec(mean),
                                 host_spec(invstd), host_spec(weight), training, layout)
    c, count = a.c, a.count
    res = Residency(grad_y, x, mean, invstd, weight)
    dtype = np.dtype(x.dtype)
    dgy = _layout.to_nchw(res.to_device(grad_y), layout)
    dx = _layout.to_nchw(res.to_device(x), layout)
    dmean = _f64(res, mean)
    dinvstd = _f64(res, invstd)
    dw, has_w = _vector(res, weight, c, dtype)
    gx = cuda.device_array(dx.shape, dtype)
    sum_dy = _layout.zeros(c, np.float64)
    sum_dy_xmu = _layout.zeros(c, np.float64)
    if count:
        threads = reduce_threads()
        K.grad_sums_kernel(threads)[c, threads](_channels(dgy), _channels(dx), dmean, sum_dy,
                                                 sum_dy_xmu)
        launch(K._bn_grad_apply, gx.size, _channels(dgy), _channels(dx), dmean, dinvstd, dw,
               has_w, int(a.training), sum_dy, sum_dy_xmu, _channels(gx))
    gw = cuda.device_array(c, dtype)
    gb = cuda.device_array(c, dtype)
    launch(K._bn_grad_params, c, sum_dy, sum_dy_xmu, dinvstd, gw, gb)
    return res.result(_layout.from_nchw(gx, layout)), res.result(gw), res.result(gb)


def _f64(res, a):
    """A float64 device copy of a (C,) statistic (host: converted before the copy)."""
    if isinstance(a, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(a, np.float64))
    d = _layout.contiguous(res.to_device(a))
    if d.dtype == np.float64:
        return d
    return cuda.to_device(d.copy_to_host().astype(np.float64))  # (C,): a few bytes
