"""Batch normalisation over (N, H, W) per channel and its gradient (torch's definitions).

    y = weight * (x - mean) * invstd + bias,   invstd = 1 / sqrt(var + eps)

Training uses the batch mean and the biased batch variance, and moves the running
estimates towards the batch mean and the *unbiased* variance (``momentum``); evaluation
uses the running estimates.

Precision: statistics take two passes (the mean, then the mean of squared deviations) with
float64 accumulators, and every element is normalised in float64 and rounded once, so a
float32 channel whose spread is tiny next to its mean (mean 1e4, std 1e-2) keeps its
precision. Parallel reductions own their writes: NCHW runs one task per channel; NHWC
sums fixed blocks of ``_ROWS`` pixels into per-block partial sums (one task per block),
then reduces the partials serially (the result does not depend on the thread count).
"""

from __future__ import annotations

import numbers

import numpy as np
from numba import njit, prange

from . import config
from ._args import check_array, check_device, check_layout, check_same_dtype
from ._memory import allocate
from ._runtime import parallel_guard

_ROWS = 256  # pixels per partial sum in the NHWC reductions


# ----------------------------------------------------------------------------- kernels
@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _bn_train_nchw(x, weight, bias, eps, y, mean, var):
    """x, y (N, C, M); weight, bias (C,) float64. Per channel (one task each): mean and
    biased var (two float64 passes) into mean, var (C,), then y = (x - mean) * weight *
    invstd + bias while the channel is still in cache."""
    n_img, c_all, m = x.shape
    count = n_img * m
    for c in prange(c_all):
        s = 0.0
        for n in range(n_img):
            for k in range(m):
                s += x[n, c, k]
        mu = s / count
        q = 0.0
        for n in range(n_img):
            for k in range(m):
                d = x[n, c, k] - mu
                q += d * d
        v = q / count
        mean[c] = mu
        var[c] = v
        scale = weight[c] / np.sqrt(v + eps)
        shift = bias[c]
        for n in range(n_img):
            for k in range(m):
                y[n, c, k] = (x[n, c, k] - mu) * scale + shift


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _bn_apply_nchw(x, mean, scale, shift, y):
    """y = (x - mean[c]) * scale[c] + shift[c] for x, y (N, C, M); one task per plane."""
    n_img, c_all, m = x.shape
    for task in prange(n_img * c_all):
        n = task // c_all
        c = task % c_all
        mu = mean[c]
        a = scale[c]
        b = shift[c]
        for k in range(m):
            y[n, c, k] = (x[n, c, k] - mu) * a + b


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _block_sums_nhwc(x, part):
    """part[t, c] = sum of x[r, c] over the rows r of block t; x (P, C), part (T, C)."""
    n_rows, c_all = x.shape
    for t in prange(part.shape[0]):
        acc = part[t]
        acc[:] = 0.0
        for r in range(t * _ROWS, min((t + 1) * _ROWS, n_rows)):
            for c in range(c_all):
                acc[c] += x[r, c]


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _block_sqdev_nhwc(x, mean, part):
    """part[t, c] = sum of (x[r, c] - mean[c])**2 over the rows r of block t."""
    n_rows, c_all = x.shape
    for t in prange(part.shape[0]):
        acc = part[t]
        acc[:] = 0.0
        for r in range(t * _ROWS, min((t + 1) * _ROWS, n_rows)):
            for c in range(c_all):
                d = x[r, c] - mean[c]
                acc[c] += d * d


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _bn_apply_nhwc(x, mean, scale, shift, y):
    """y = (x - mean[c]) * scale[c] + shift[c] for x, y (P, C); one task per row block."""
    n_rows, c_all = x.shape
    n_blocks = (n_rows + _ROWS - 1) // _ROWS
    for t in prange(n_blocks):
        for r in range(t * _ROWS, min((t + 1) * _ROWS, n_rows)):
            for c in range(c_all):
                y[r, c] = (x[r, c] - mean[c]) * scale[c] + shift[c]


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _bn_backward_nchw(gy, x, mean, invstd, weight, training, gx, sum_dy, sum_dy_xmu):
    """gy, x, gx (N, C, M). Per channel (one task each): sum_dy = sum gy and sum_dy_xmu =
    sum gy * (x - mean) in float64, then
    gx = weight * invstd * (gy - [sum_dy + (x - mean) * invstd**2 * sum_dy_xmu] / count)
    with the bracket only in training (the gradient through the batch statistics)."""
    n_img, c_all, m = x.shape
    count = n_img * m
    for c in prange(c_all):
        mu = mean[c]
        s1 = 0.0
        s2 = 0.0
        for n in range(n_img):
            for k in range(m):
                g = gy[n, c, k]
                s1 += g
                s2 += g * (x[n, c, k] - mu)
        sum_dy[c] = s1
        sum_dy_xmu[c] = s2
        a = weight[c] * invstd[c]
        b = 0.0
        kx = 0.0
        if training:
            b = -a * s1 / count
            kx = -a * invstd[c] * invstd[c] * s2 / count
        for n in range(n_img):
            for k in range(m):
                gx[n, c, k] = gy[n, c, k] * a + b + (x[n, c, k] - mu) * kx


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _block_grad_sums_nhwc(gy, x, mean, part_dy, part_dy_xmu):
    """Per row block t: part_dy[t, c] = sum gy[r, c], part_dy_xmu[t, c] = sum gy[r, c] *
    (x[r, c] - mean[c]); gy, x (P, C)."""
    n_rows, c_all = x.shape
    for t in prange(part_dy.shape[0]):
        s1 = part_dy[t]
        s2 = part_dy_xmu[t]
        s1[:] = 0.0
        s2[:] = 0.0
        for r in range(t * _ROWS, min((t + 1) * _ROWS, n_rows)):
            for c in range(c_all):
                g = gy[r, c]
                s1[c] += g
                s2[c] += g * (x[r, c] - mean[c])


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _bn_backward_apply_nhwc(gy, x, mean, a, b, kx, gx):
    """gx = gy * a[c] + b[c] + (x - mean[c]) * kx[c] for gy, x, gx (P, C); per row block."""
    n_rows, c_all = x.shape
    n_blocks = (n_rows + _ROWS - 1) // _ROWS
    for t in prange(n_blocks):
        for r in range(t * _ROWS, min((t + 1) * _ROWS, n_rows)):
            for c in range(c_all):
                gx[r, c] = gy[r, c] * a[c] + b[c] + (x[r, c] - mean[c]) * kx[c]


# ----------------------------------------------------------------------------- helpers
def _check_bool(op, name, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name}={value!r} must be a bool")
    return bool(value)


def _check_real(op, name, value, lo, hi=None) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{op}: {name}={value!r} must be a real number")
    value = float(value)
    if not np.isfinite(value) or value < lo or (hi is not None and value > hi):
        rule = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{op}: {name}={value!r} must be finite and {rule}")
    return value


def _check_input(op, x, layout):
    """(x, c, count): x a 4-D float array in ``layout``, its channel count and the number
    of values per channel N*H*W."""
    check_layout(op, layout)
    x = check_array(op, "input", x)
    if x.ndim != 4:
        dims = "(N, C, H, W)" if layout == "NCHW" else "(N, H, W, C)"
        raise ValueError(f"{op}: input must be 4-D {dims} for layout {layout}, got "
                         f"{x.ndim}-D shape {x.shape}")
    c = x.shape[1] if layout == "NCHW" else x.shape[3]
    return x, c, x.size // c if c else 0


def _check_channel_vector(op, name, a, c, dtype=None):
    """None, or a (C,) float array (of ``dtype`` when given)."""
    if a is None:
        return None
    a = check_array(op, name, a)
    if a.shape != (c,):
        raise ValueError(f"{op}: {name} must have shape (C,) = ({c},), got {a.shape}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{op}: {name} has dtype {a.dtype} but input has dtype {dtype}; "
                        "they must match")
    return a


def _channels_view(a, layout):
    """(N, C, M) view for NCHW, (P, C) view for NHWC, of a C-contiguous 4-D array."""
    if layout == "NCHW":
        return a.reshape(a.shape[0], a.shape[1], -1)
    return a.reshape(-1, a.shape[3])


def _f64(a, c, fill):
    return np.full(c, fill, np.float64) if a is None else a.astype(np.float64)


# ----------------------------------------------------------------------------- forward
def batch_norm_args(op, x, running_mean, running_var, weight, bias, training, momentum,
                    eps, layout, return_stats):
    """The checks of ``batch_norm``; returns (c, count, training, momentum, eps)."""
    x, c, count = _check_input(op, x, layout)
    training = _check_bool(op, "training", training)
    _check_bool(op, "return_stats", return_stats)
    momentum = _check_real(op, "momentum", momentum, 0.0, 1.0)
    eps = _check_real(op, "eps", eps, 0.0)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: running_mean and running_var must both be arrays or both "
                         "be None")
    if running_mean is None and not training:
        raise ValueError(f"{op}: running_mean and running_var are required when "
                         "training=False")
    for name, a in (("running_mean", running_mean), ("running_var", running_var)):
        if a is not None and not isinstance(a, np.ndarray):
            raise TypeError(f"{op}: {name} must be a numpy.ndarray (it is updated in place), "
                            f"got {type(a).__name__}")
        _check_channel_vector(op, name, a, c, x.dtype)
        if a is not None and training and not a.flags.writeable:
            raise ValueError(f"{op}: {name} is read-only; training updates it in place")
    _check_channel_vector(op, "weight", weight, c, x.dtype)
    _check_channel_vector(op, "bias", bias, c, x.dtype)
    if training and count == 1:
        raise ValueError(f"{op}: expected more than 1 value per channel when training, got "
                         f"input shape {x.shape}")
    return c, count, training, momentum, eps


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, layout="NCHW", return_stats=False, device="cpu"):
    """Batch normalisation, as torch.nn.functional.batch_norm on 4-D input.

    Parameters
    ----------
    x : ndarray (N, C, H, W) for "NCHW" or (N, H, W, C) for "NHWC".
    running_mean, running_var : ndarrays (C,) of x's dtype, or None (only when
        training=True: no running update then). Updated in place when training:
        running = (1 - momentum) * running + momentum * batch_statistic, with the
        unbiased batch variance.
    weight, bias : (C,) of x's dtype or None (ones / zeros).
    training : normalise with the batch statistics (True) or the running ones (False).
    momentum : in [0, 1]. eps : >= 0, added to the variance.
    return_stats : also return the mean and invstd used.
    device : "cpu" (default) or "cuda": the same op on the GPU (``fastconv.cuda``).

    Returns
    -------
    y : ndarray, shape, layout and dtype of x.
    mean, invstd : float64 (C,) arrays actually used to normalise (batch statistics in
        training, running ones in evaluation), invstd = 1/sqrt(var + eps); with
        return_stats=True. Pass them to ``batch_norm_backward``.

    Notes
    -----
    Training needs more than one value per channel (N*H*W > 1), as in torch. An empty
    batch gives an empty y, NaN statistics and no running update. Wraps
    ``_bn_train_nchw`` / ``_bn_apply_nchw`` (one task per channel / plane) and the NHWC
    block kernels (see the module docstring).
    """
    op = "batch_norm"
    if check_device(op, device) == "cuda":
        from . import cuda

        return cuda.batch_norm(x, running_mean, running_var, weight, bias, training, momentum,
                               eps, layout=layout, return_stats=return_stats)
    c, count, training, momentum, eps = batch_norm_args(
        op, x, running_mean, running_var, weight, bias, training, momentum, eps, layout,
        return_stats)

    xc = np.ascontiguousarray(x)
    y = allocate(op, "output", x.shape, x.dtype)
    w64, b64 = _f64(weight, c, 1.0), _f64(bias, c, 0.0)
    if training:
        if count == 0:
            mean = np.full(c, np.nan)
            invstd = np.full(c, np.nan)
            return (y, mean, invstd) if return_stats else y
        mean, var = np.empty(c), np.empty(c)
        with parallel_guard():
            if layout == "NCHW":
                _bn_train_nchw(_channels_view(xc, layout), w64, b64, eps,
                               _channels_view(y, layout), mean, var)
            else:
                x2 = _channels_view(xc, layout)
                part = np.empty(((count + _ROWS - 1) // _ROWS, c))
                _block_sums_nhwc(x2, part)
                mean = part.sum(axis=0) / count     # serial reduction of the partials
                _block_sqdev_nhwc(x2, mean, part)
                var = part.sum(axis=0) / count
                _bn_apply_nhwc(x2, mean, w64 / np.sqrt(var + eps), b64,
                               _channels_view(y, layout))
        invstd = 1.0 / np.sqrt(var + eps)
        if running_mean is not None:
            unbiased = var * (count / (count - 1))
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
            running_var[...] = (1 - momentum) * running_var + momentum * unbiased
    else:
        mean = running_mean.astype(np.float64)
        invstd = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
        if y.size:
            kernel = _bn_apply_nchw if layout == "NCHW" else _bn_apply_nhwc
            with parallel_guard():
                kernel(_channels_view(xc, layout), mean, w64 * invstd, b64,
                       _channels_view(y, layout))
    return (y, mean, invstd) if return_stats else y


# ---------------------------------------------------------------------------- backward
def batch_norm_backward_args(op, grad_y, x, mean, invstd, weight, training, layout):
    """The checks of ``batch_norm_backward``; returns (c, count, training)."""
    x, c, count = _check_input(op, x, layout)
    grad_y = check_array(op, "grad_y", grad_y)
    check_same_dtype(op, grad_y=grad_y, input=x)
    if grad_y.shape != x.shape:
        raise ValueError(f"{op}: grad_y must have the shape of the input {x.shape}, got "
                         f"{grad_y.shape}")
    training = _check_bool(op, "training", training)
    mean = _check_channel_vector(op, "mean", mean, c)
    invstd = _check_channel_vector(op, "invstd", invstd, c)
    if mean is None or invstd is None:
        raise TypeError(f"{op}: mean and invstd are required (from batch_norm(..., "
                        "return_stats=True))")
    _check_channel_vector(op, "weight", weight, c, x.dtype)
    return c, count, training


def batch_norm_backward(grad_y, x, mean, invstd, weight=None, *, training=True,
                        layout="NCHW", device="cpu"):
    """Gradient of ``batch_norm``.

    Parameters
    ----------
    grad_y, x : ndarrays of the same shape (N, C, H, W) / (N, H, W, C) and dtype.
    mean, invstd : (C,) float arrays, as returned by ``batch_norm(..., return_stats=True)``.
    weight : (C,) of x's dtype or None (ones).
    training : True for the gradient through the batch statistics (torch's formula)

            grad_x = weight * invstd * (grad_y - mean(grad_y)
                                        - xhat * mean(grad_y * xhat)),

        with xhat = (x - mean) * invstd and means over (N, H, W); False for the affine
        map only (grad_x = weight * invstd * grad_y).
    device : "cpu" (default) or "cuda": the same op on the GPU (``fastconv.cuda``).

    Returns
    -------
    grad_x : shape, layout and dtype of x.
    grad_weight : (C,) = sum grad_y * xhat;  grad_bias : (C,) = sum grad_y (dtype of x;
        computed even when weight is None).

    Notes
    -----
    Sums are float64. Wraps ``_bn_backward_nchw`` (one task per channel) /
    ``_block_grad_sums_nhwc`` + ``_bn_backward_apply_nhwc``.
    """
    op = "batch_norm_backward"
    if check_device(op, device) == "cuda":
        from . import cuda

        return cuda.batch_norm_backward(grad_y, x, mean, invstd, weight, training=training,
                                        layout=layout)
    c, count, training = batch_norm_backward_args(op, grad_y, x, mean, invstd, weight,
                                                  training, layout)

    mean64, invstd64 = mean.astype(np.float64), invstd.astype(np.float64)
    w64 = _f64(weight, c, 1.0)

    gx = allocate(op, "gradient", x.shape, x.dtype)
    sum_dy, sum_dy_xmu = np.zeros(c), np.zeros(c)
    if count > 0:
        gyc, xc = np.ascontiguousarray(grad_y), np.ascontiguousarray(x)
        g3, x3, gx3 = (_channels_view(a, layout) for a in (gyc, xc, gx))
        with parallel_guard():
            if layout == "NCHW":
                _bn_backward_nchw(g3, x3, mean64, invstd64, w64, training, gx3, sum_dy,
                                  sum_dy_xmu)
            else:
                n_blocks = (count + _ROWS - 1) // _ROWS
                p1, p2 = np.empty((n_blocks, c)), np.empty((n_blocks, c))
                _block_grad_sums_nhwc(g3, x3, mean64, p1, p2)
                sum_dy, sum_dy_xmu = p1.sum(axis=0), p2.sum(axis=0)   # serial reduction
                a = w64 * invstd64
                if training:
                    b = -a * sum_dy / count
                    kx = -a * invstd64 * invstd64 * sum_dy_xmu / count
                else:
                    b = kx = np.zeros(c)
                _bn_backward_apply_nhwc(g3, x3, mean64, a, b, kx, gx3)
    grad_weight = (sum_dy_xmu * invstd64).astype(x.dtype)
    grad_bias = sum_dy.astype(x.dtype)
    return gx, grad_weight, grad_bias
