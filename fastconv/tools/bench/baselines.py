"""Plain-NumPy versions of pooling and batch norm (NCHW), the baselines fastconv's kernels
are timed against.

They are written the way one would write them in NumPy for speed: whole-array operations
over the kh*kw window offsets (each a strided view of the input) rather than reshaped
reductions over small axes, which NumPy runs about 20x slower here. No padding, dilation
or ceil_mode: the benchmark shapes do not need them. Results are checked against fastconv
in ``fastconv.tools.bench.ops`` before anything is timed. Arrays are NCHW: x (n, c, h, w).
"""

from __future__ import annotations

import numpy as np


def _out_size(n: int, k: int, s: int) -> int:
    """Output length of a k-wide window at stride s over n positions (no padding)."""
    return (n - k) // s + 1


def _window(x, a, b, s, ho, wo):
    """x[:, :, s*i + a, s*j + b] for all output (i, j): a strided view."""
    return x[:, :, a:a + s * (ho - 1) + 1:s, b:b + s * (wo - 1) + 1:s]


def max_pool2d(x, k, s=None, return_argmax=False):
    """Max over k x k windows with stride s (default k): x (n, c, h, w) -> (n, c, ho, wo).
    With return_argmax, also the offset a*k + b (int8 for k*k <= 127) of the first maximum
    in each window, of the output's shape."""
    s = k if s is None else s
    ho, wo = _out_size(x.shape[2], k, s), _out_size(x.shape[3], k, s)
    y = _window(x, 0, 0, s, ho, wo).copy()
    arg = np.zeros(y.shape, np.int8 if k * k <= 127 else np.int32) if return_argmax else None
    for a in range(k):
        for b in range(k):
            if a == b == 0:
                continue
            v = _window(x, a, b, s, ho, wo)
            if return_argmax:
                better = v > y
                arg[better] = a * k + b
                np.copyto(y, v, where=better)
            else:
                np.maximum(y, v, out=y)
    return (y, arg) if return_argmax else y


def max_pool2d_backward(gy, argmax, x_shape, k, s=None):
    """Each grad_y value to the position of its window's maximum (``argmax`` from
    ``max_pool2d(..., return_argmax=True)``); overlapping windows add up."""
    s = k if s is None else s
    ho, wo = gy.shape[2:]
    gx = np.zeros(x_shape, gy.dtype)
    for a in range(k):
        for b in range(k):
            # one whole-array add per offset: no index appears twice within it
            _window(gx, a, b, s, ho, wo)[...] += np.where(argmax == a * k + b, gy, 0)
    return gx


def avg_pool2d(x, k, s=None):
    """Mean over k x k windows with stride s (default k): x (n, c, h, w) -> (n, c, ho, wo)."""
    s = k if s is None else s
    ho, wo = _out_size(x.shape[2], k, s), _out_size(x.shape[3], k, s)
    y = _window(x, 0, 0, s, ho, wo).copy()
    for a in range(k):
        for b in range(k):
            if a or b:
                y += _window(x, a, b, s, ho, wo)
    y *= y.dtype.type(1.0 / (k * k))
    return y


def avg_pool2d_backward(gy, x_shape, k, s=None):
    """grad_y (n, c, ho, wo) / k**2 spread over each window of an input of ``x_shape``;
    overlapping windows add up."""
    s = k if s is None else s
    ho, wo = gy.shape[2:]
    g = gy * gy.dtype.type(1.0 / (k * k))
    # windows tiling the input exactly: each offset's view is written once, no zero fill
    tiles = s == k and all(n == _out_size(n, k, s) * s for n in x_shape[2:])
    gx = np.empty(x_shape, gy.dtype) if tiles else np.zeros(x_shape, gy.dtype)
    for a in range(k):
        for b in range(k):
            view = _window(gx, a, b, s, ho, wo)
            if tiles:
                view[...] = g
            else:
                view += g
    return gx


def batch_norm_train(x, running_mean, running_var, weight, bias, momentum=0.1, eps=1e-5):
    """Training-mode batch norm of x (n, c, h, w): batch statistics over (N, H, W), running
    estimates (c,) updated in place (unbiased variance). Returns (y (n, c, h, w), mean (c,),
    invstd (c,))."""
    axes = (0, 2, 3)
    m = x.size // x.shape[1]
    mean = x.mean(axis=axes)
    xc = x - mean[:, None, None]
    var = np.einsum("nchw,nchw->c", xc, xc) / m
    invstd = 1.0 / np.sqrt(var + eps)
    y = xc
    y *= (weight * invstd)[:, None, None]
    y += bias[:, None, None]
    running_mean *= 1 - momentum
    running_mean += momentum * mean
    running_var *= 1 - momentum
    running_var += momentum * var * (m / (m - 1))
    return y, mean, invstd


def batch_norm_backward(gy, x, mean, invstd, weight):
    """Training-mode gradient (through the batch statistics):
    grad_x = weight * invstd * (gy - mean(gy) - xhat * mean(gy * xhat)).
    Returns (grad_x, grad_weight, grad_bias)."""
    m = x.size // x.shape[1]
    xhat = (x - mean[:, None, None]) * invstd[:, None, None]
    grad_bias = gy.sum(axis=(0, 2, 3))
    grad_weight = np.einsum("nchw,nchw->c", gy, xhat)
    gx = xhat
    gx *= (grad_weight / m)[:, None, None]
    np.subtract(gy, gx, out=gx)
    gx -= (grad_bias / m)[:, None, None]
    gx *= (weight * invstd)[:, None, None]
    return gx, grad_weight, grad_bias
