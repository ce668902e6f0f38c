"""Small kernels of the autograd layer on the GPU: ReLU, the sums of gradient
accumulation, the SGD update, linear's bias, and cross entropy (a fused row-wise
log-softmax + negative log-likelihood).

Element-wise kernels are grid-stride loops over 1-D views of contiguous arrays (one thread
per element, each writing only its own elements). Row kernels (cross entropy) take one
thread per row of an (N, C) array, column sums one thread per column: every output
element has one writer, no atomics, and the results do not depend on timing. The loss is
summed over the batch by one block (a shared-memory tree, ``_reduce.block_sum``).
Scalars (lr, momentum, ...) come in the arrays' dtype, so float32 stays float32.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
from numba import cuda

from ._reduce import _block_sum, device_function

block_sum = device_function(_block_sum, globals())  # see _reduce.device_function


@cuda.jit
def _relu(a, y):
    """y = a where a > 0, else 0 (NaN stays NaN); 1-D arrays."""
    zero = y.dtype.type(0)
    for t in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        v = a[t]
        y[t] = zero if v <= zero else v


@cuda.jit
def _relu_backward(g, y, gx):
    """gx = g where the forward's output y > 0 (the mask), else 0; 1-D arrays."""
    zero = gx.dtype.type(0)
    for t in range(cuda.grid(1), gx.shape[0], cuda.gridsize(1)):
        gx[t] = g[t] if y[t] > zero else zero


@cuda.jit
def _add(a, b, out):
    """out = a + b; 1-D arrays."""
    for t in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[t] = a[t] + b[t]


@cuda.jit
def _sgd(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, maximize, first):
    """One torch.optim.SGD step in place on p (and the momentum buffer buf); 1-D arrays::

        d = (-g if maximize else g) + weight_decay * p
        buf = d (first step), else momentum * buf + (1 - dampening) * d   (momentum != 0)
        d = d + momentum * buf (nesterov) or buf                          (momentum != 0)
        p -= lr * d
    """
    one = p.dtype.type(1)
    zero = p.dtype.type(0)
    for t in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        d = -g[t] if maximize else g[t]
        if weight_decay != zero:
            d += weight_decay * p[t]
        if momentum != zero:
            if first:
                b = d
            else:
                b = momentum * buf[t] + (one - dampening) * d
            buf[t] = b
            d = d + momentum * b if nesterov else b
        p[t] -= lr * d


@cuda.jit
def _bias_rows(y, b):
    """y[i, j] += b[j] for y (M, N)."""
    n = y.shape[1]
    for t in range(cuda.grid(1), y.shape[0] * n, cuda.gridsize(1)):
        y[t // n, t % n] += b[t % n]


@cuda.jit
def _column_sum(g, out):
    """out[j] = sum over i of g[i, j] for g (M, N): one thread per column."""
    for j in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        acc = out.dtype.type(0)
        for i in range(g.shape[0]):
            acc += g[i, j]
        out[j] = acc


@cuda.jit
def _log_softmax_nll(x, target, logp, losses):
    """Per row i of the logits x (N, C): logp[i] = x[i] - max - log(sum(exp(x[i] - max)))
    and losses[i] = -logp[i, target[i]]; NaN for a target outside [0, C)."""
    c = x.shape[1]
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        top = x[i, 0]
        for j in range(1, c):
            top = max(top, x[i, j])
        total = x.dtype.type(0)
        for j in range(c):
            total += math.exp(x[i, j] - top)
        shift = top + math.log(total)
        for j in range(c):
            logp[i, j] = x[i, j] - shift
        k = target[i]
        losses[i] = -logp[i, k] if 0 <= k < c else x.dtype.type(math.nan)


@functools.cache
def sum_kernel(dtype: str, threads: int):
    """``_sum_scaled(a, out, scale)``: out[0] = scale * sum(a) for a (N,); launch ``[1,
    threads]`` (one block, a shared-memory tree)."""
    nb_dtype = numba.from_dtype(np.dtype(dtype))

    @cuda.jit
    def _sum_scaled(a, out, scale):
        buf = cuda.shared.array(threads, nb_dtype)
        acc = out.dtype.type(0)
        for i in range(cuda.threadIdx.x, a.shape[0], cuda.blockDim.x):
            acc += a[i]
        total = block_sum(buf, acc)
        if cuda.threadIdx.x == 0:
            out[0] = total * scale

    return _sum_scaled


@cuda.jit
def _cross_entropy_grad(logp, target, g, per_row, scale, gx):
    """gx[i, j] = (softmax - onehot(target))[i, j] * g[i if per_row else 0] * scale, for
    logp (N, C), the saved log-softmax; NaN in rows whose target is outside [0, C)."""
    c = logp.shape[1]
    one = gx.dtype.type(1)
    zero = gx.dtype.type(0)
    for t in range(cuda.grid(1), logp.shape[0] * c, cuda.gridsize(1)):
        i = t // c
        j = t % c
        k = target[i]
        hit = one if j == k else zero
        v = math.exp(logp[i, j]) - hit
        if not 0 <= k < c:
            v = gx.dtype.type(math.nan)
        gx[i, j] = v * g[i if per_row else 0] * scale
