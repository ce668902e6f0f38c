"""CUDA kernels of batch normalisation and its gradient (the CPU's formulas and precision).

Arrays are contiguous NCHW viewed as (N, C, M = H*W). Per-channel statistics are block
reductions (one block per channel, float64 partial sums per thread, then a shared-memory
tree: see ``_reduce.block_sum``), in two passes (the mean, then the squared deviations)
like the CPU; element-wise kernels compute in float64 and round once.

Values are widened with ``float(...)`` wherever float64 arithmetic is meant: compiled,
numba would widen anyway, but the CUDA simulator runs the kernels as Python under
NumPy 2's promotion rules, where ``0.0 + float32`` stays float32.
"""

from __future__ import annotations

import functools
import math

import numba
from numba import cuda

from ._reduce import _block_sum, device_function

block_sum = device_function(_block_sum, globals())  # see device_function


@functools.cache
def _reduction_kernels(threads: int):
    """The per-channel reduction kernels for blocks of ``threads`` threads (one block per
    channel; the shared buffer's size must be a compile-time constant, hence one pair of
    kernels per block size)."""

    @cuda.jit
    def _bn_stats(x, eps, mean, var, invstd):
        """mean, biased var and invstd = 1/sqrt(var + eps) of channel blockIdx.x (float64)."""
        buf = cuda.shared.array(threads, numba.float64)
        c = cuda.blockIdx.x
        m = x.shape[2]
        count = x.shape[0] * m
        s = 0.0
        for q in range(cuda.threadIdx.x, count, cuda.blockDim.x):
            s += float(x[q // m, c, q % m])
        mu = block_sum(buf, s) / count
        s = 0.0
        for q in range(cuda.threadIdx.x, count, cuda.blockDim.x):
            d = float(x[q // m, c, q % m]) - mu
            s += d * d
        v = block_sum(buf, s) / count
        if cuda.threadIdx.x == 0:
            mean[c] = mu
            var[c] = v
            invstd[c] = 1.0 / math.sqrt(v + eps)

    @cuda.jit
    def _bn_grad_sums(gy, x, mean, sum_dy, sum_dy_xmu):
        """sum gy and sum gy * (x - mean) over channel blockIdx.x (float64)."""
        buf = cuda.shared.array(threads, numba.float64)
        c = cuda.blockIdx.x
        m = x.shape[2]
        mu = mean[c]
        s1 = 0.0
        s2 = 0.0
        for q in range(cuda.threadIdx.x, x.shape[0] * m, cuda.blockDim.x):
            g = float(gy[q // m, c, q % m])
            s1 += g
            s2 += g * (float(x[q // m, c, q % m]) - mu)
        t1 = block_sum(buf, s1)
        t2 = block_sum(buf, s2)
        if cuda.threadIdx.x == 0:
            sum_dy[c] = t1
            sum_dy_xmu[c] = t2

    return _bn_stats, _bn_grad_sums


def stats_kernel(threads: int):
    """``_bn_stats(x, eps, mean, var, invstd)`` for blocks of ``threads``; launch one
    block per channel: ``[C, threads]``."""
    return _reduction_kernels(threads)[0]


def grad_sums_kernel(threads: int):
    """``_bn_grad_sums(gy, x, mean, sum_dy, sum_dy_xmu)`` for blocks of ``threads``;
    launch one block per channel: ``[C, threads]``."""
    return _reduction_kernels(threads)[1]


@cuda.jit
def _bn_running_update(mean, var, count, momentum, running_mean, running_var):
    """running = (1 - momentum) * running + momentum * batch stat (unbiased variance)."""
    for c in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        unbiased = var[c] * (count / (count - 1.0))
        running_mean[c] = (1.0 - momentum) * float(running_mean[c]) + momentum * mean[c]
        running_var[c] = (1.0 - momentum) * float(running_var[c]) + momentum * unbiased


@cuda.jit
def _bn_eval_stats(running_mean, running_var, eps, mean, invstd):
    """float64 mean and invstd = 1/sqrt(running_var + eps) for evaluation."""
    for c in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        mean[c] = float(running_mean[c])
        invstd[c] = 1.0 / math.sqrt(float(running_var[c]) + eps)


@cuda.jit
def _bn_apply(x, mean, invstd, weight, has_weight, bias, has_bias, y):
    """y = (x - mean) * (weight * invstd) + bias, in float64, rounded once."""
    n_all, c_all, m = x.shape
    for t in range(cuda.grid(1), n_all * c_all * m, cuda.gridsize(1)):
        k = t % m
        c = (t // m) % c_all
        n = t // (m * c_all)
        scale = invstd[c] * float(weight[c]) if has_weight else invstd[c]
        shift = float(bias[c]) if has_bias else 0.0
        y[n, c, k] = (float(x[n, c, k]) - mean[c]) * scale + shift


@cuda.jit
def _bn_grad_apply(gy, x, mean, invstd, weight, has_weight, training, sum_dy, sum_dy_xmu,
                   gx):
    """gx = a*gy + b + (x - mean)*kx with a = weight*invstd and, in training,
    b = -a*sum_dy/count, kx = -a*invstd**2*sum_dy_xmu/count (else 0): the CPU's formula."""
    n_all, c_all, m = x.shape
    count = n_all * m
    for t in range(cuda.grid(1), n_all * c_all * m, cuda.gridsize(1)):
        k = t % m
        c = (t // m) % c_all
        n = t // (m * c_all)
        a = invstd[c] * float(weight[c]) if has_weight else invstd[c]
        b = 0.0
        kx = 0.0
        if training:
            b = -a * sum_dy[c] / count
            kx = -a * invstd[c] * invstd[c] * sum_dy_xmu[c] / count
        gx[n, c, k] = float(gy[n, c, k]) * a + b + (float(x[n, c, k]) - mean[c]) * kx


@cuda.jit
def _bn_grad_params(sum_dy, sum_dy_xmu, invstd, grad_weight, grad_bias):
    """grad_weight = sum_dy_xmu * invstd, grad_bias = sum_dy (rounded to x's dtype)."""
    for c in range(cuda.grid(1), sum_dy.shape[0], cuda.gridsize(1)):
        grad_weight[c] = sum_dy_xmu[c] * invstd[c]
        grad_bias[c] = sum_dy[c]
