"""global_avg_pool2d and its gradient on the GPU: the CPU's checks
(``fastconv._args.global_pool_args``), then kernels on NCHW planes viewed as (P = N*C, H*W).

The forward is a block reduction per plane (one block per plane, the partial sums added
in a shared-memory tree, ``_reduce.block_sum``; no atomics, the result does not depend on
timing). The gradient spreads grad_y / (H*W) over each plane, one thread per element.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from numba import cuda

from .._args import check_array, check_grad_y, check_input_shape, global_pool_args
from . import _layout
from ._device import Residency, host_spec, launch
from ._reduce import _block_sum, device_function, reduce_threads

block_sum = device_function(_block_sum, globals())  # see _reduce.device_function


@functools.cache
def plane_mean_kernel(dtype: str, threads: int):
    """``_plane_mean(x, y)``: y[p] = mean of x[p, :] for x (P, HW); launch ``[P, threads]``."""
    nb_dtype = numba.from_dtype(np.dtype(dtype))

    @cuda.jit
    def _plane_mean(x, y):
        buf = cuda.shared.array(threads, nb_dtype)
        p = cuda.blockIdx.x
        hw = x.shape[1]
        acc = y.dtype.type(0)
        for s in range(cuda.threadIdx.x, hw, cuda.blockDim.x):
            acc += x[p, s]
        total = block_sum(buf, acc)
        if cuda.threadIdx.x == 0:
            y[p] = total / y.dtype.type(hw)

    return _plane_mean


@cuda.jit
def _spread(gy, gx):
    """gx[p, s] = gy[p] / HW for gy (P,) and gx (P, HW)."""
    hw = gx.shape[1]
    count = gx.dtype.type(hw)
    for t in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
        gx[t // hw, t % hw] = gy[t // hw] / count


def global_avg_pool2d(x, *, layout="NCHW"):
    """fastconv.global_avg_pool2d on the GPU: (N, C, H, W) -> (N, C, 1, 1), or
    (N, H, W, C) -> (N, 1, 1, C) (3-D in, 3-D out); same checks and errors as the CPU.
    Sums in x's dtype (a tree per plane), the CPU's in float64."""
    op = "global_avg_pool2d"
    xs = check_array(op, "input", host_spec(x))
    s = global_pool_args(op, xs.shape, layout)
    res = Residency(x)
    planes = s.n * s.c
    y = cuda.device_array(planes, xs.dtype)
    if planes > 0:
        dx = _layout.to_nchw(res.to_device(x), s.layout)
        threads = reduce_threads()
        kernel = plane_mean_kernel(np.dtype(xs.dtype).name, threads)
        kernel[planes, threads](dx.reshape((planes, s.h * s.w)), y)
    return res.result(y.reshape(s.y_shape))


def global_avg_pool2d_backward(grad_y, input_shape, *, layout="NCHW"):
    """fastconv.global_avg_pool2d_backward on the GPU: grad_x of ``input_shape`` (the
    caller's layout), grad_y / (H*W) on every element of its plane."""
    op = "global_avg_pool2d_backward"
    shape = check_input_shape(op, input_shape)
    s = global_pool_args(op, shape, layout, what=f"input_shape {shape}")
    gys = check_grad_y(op, host_spec(grad_y), s.y_shape)
    res = Residency(grad_y)
    planes = s.n * s.c
    gx = cuda.device_array((s.n, s.c, s.h, s.w), gys.dtype)
    dgy = _layout.contiguous(res.to_device(grad_y)).reshape(planes)
    launch(_spread, gx.size, dgy, gx.reshape((planes, s.h * s.w)))
    return res.result(_layout.from_nchw(gx, s.layout, s.unbatched))
