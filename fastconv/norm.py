"""Batch normalisation over (N, H, W) per channel and its gradient (torch's definitions).

    y = weight * (x - mean) * invstd + bias,   invstd = 1 / sqrt(var + eps)

Training uses the batch mean and the biased batch variance, and moves the running
estimates towards the batch mean and the *unbiased* variance (``momentum``); evaluation
uses the running estimates.

Precision: statistics take one pass of float64 sums of the deviations d = x - k from a
shift k, the channel's first value (mean = k + sum(d) / n, var = sum(d**2) / n -
(sum(d) / n)**2: shifted by a value of the data, both terms stay near the variance
unless that value lies many standard deviations from the mean), and every
element is normalised in float64 and rounded once, so a float32 channel whose spread is
tiny next to its mean (mean 1e4, std 1e-2) keeps its precision. Training thus reads x
twice (the statistics, then the normalisation), the gradient reads grad_y and x twice.
Parallel reductions own their writes: NCHW runs one task per channel; NHWC
sums fixed blocks of ``_ROWS`` pixels into per-block partial sums (one task per block;
in SIMD registers, a float64 vector of channels at a time, where C is a whole number of
such vectors), then reduces the partials serially (the result does not depend on the
thread count).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numba import njit, prange
from numba import uint64 as U

from . import _lanes, config, devices
from ._args import batch_norm_backward_inputs, batch_norm_inputs, narrow, widen
from ._memory import allocate
from ._runtime import parallel_guard

_ROWS = 256  # pixels per partial sum in the NHWC reductions


# ----------------------------------------------------------------------------- kernels
@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _bn_train_nchw(x, weight, bias, eps, y, mean, var, relu):
    """x, y (N, C, M); weight, bias (C,) float64. Per channel (one task each): mean and
    biased var (one pass of shifted float64 sums, see the module docstring) into mean,
    var (C,), then y = (x - mean) * weight * invstd + bias while the channel is still in
    cache; with ``relu``, max(y, 0) (NaN stays NaN) in the same pass."""
    n_img, c_all, m = x.shape
    count = n_img * m
    for c in prange(c_all):
        shift = np.float64(x[0, c, 0])
        s = 0.0
        q = 0.0
        for n in range(n_img):
            for k in range(m):
                d = x[n, c, k] - shift
                s += d
                q += d * d
        ds = s / count
        mu = shift + ds
        v = max(q / count - ds * ds, 0.0)
        mean[c] = mu
        var[c] = v
        scale = weight[c] / np.sqrt(v + eps)
        shift = bias[c]
        for n in range(n_img):
            for k in range(m):
                v = (x[n, c, k] - mu) * scale + shift
                y[n, c, k] = 0.0 if relu and v <= 0.0 else v


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _bn_apply_nchw(x, mean, scale, shift, y, relu):
    """y = (x - mean[c]) * scale[c] + shift[c] for x, y (N, C, M), then max(y, 0) with
    ``relu``; one task per plane."""
    n_img, c_all, m = x.shape
    for task in prange(n_img * c_all):
        n = task // c_all
        c = task % c_all
        mu = mean[c]
        a = scale[c]
        b = shift[c]
        for k in range(m):
            v = (x[n, c, k] - mu) * a + b
            y[n, c, k] = 0.0 if relu and v <= 0.0 else v


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _block_sums_nhwc(u, u_shift, v, v_shift, part1, part2):
    """Per block t of ``_ROWS`` rows: part1[t, c] = sum of du and part2[t, c] = sum of
    du * dv over the block's rows r, du = u[r, c] - u_shift[c], dv = v[r, c] -
    v_shift[c]; u, v (P, C), part1, part2 (T, C). Moments: u = v = x, both shifts the
    shift; gradient sums: u = grad_y unshifted, v = x less the mean."""
    n_rows, c_all = u.shape
    for t in prange(part1.shape[0]):
        s1 = part1[t]
        s2 = part2[t]
        s1[:] = 0.0
        s2[:] = 0.0
        for r in range(t * _ROWS, min((t + 1) * _ROWS, n_rows)):
            for c in range(c_all):
                du = u[r, c] - u_shift[c]
                s1[c] += du
                s2[c] += du * (v[r, c] - v_shift[c])


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _block_sums_lanes(u, neg_u_shift, v, neg_v_shift, part1, part2):
    """``_block_sums_nhwc`` for C a whole number of float64 vectors, the shifts given
    negated: each vector of channels' two sums accumulate in registers (float64 lanes,
    float32 values widened), row by row as there (the loop over channels with the sums
    in memory ran at about half this speed on 16-32 channels)."""
    n_rows, c_all = u.shape
    uf, vf = u.reshape(u.size), v.reshape(v.size)
    nl = _lanes.count(part1)
    for t in prange(part1.shape[0]):
        s1, s2 = part1[t], part2[t]
        for c0 in range(0, c_all, nl):
            ku, kv = _lanes.load(neg_u_shift, U(c0)), _lanes.load(neg_v_shift, U(c0))
            a1, a2 = _lanes.zeros(s1), _lanes.zeros(s2)
            for r in range(t * _ROWS, min((t + 1) * _ROWS, n_rows)):
                o = U(r * c_all + c0)
                du = _lanes.add(_lanes.load_f64(uf, o), ku)
                a1 = _lanes.add(a1, du)
                a2 = _lanes.fma_lanes(a2, du, _lanes.add(_lanes.load_f64(vf, o), kv))
            _lanes.store(s1, U(c0), a1)
            _lanes.store(s2, U(c0), a2)


def _block_sums(u, u_shift, v, v_shift, part1, part2) -> None:
    """``_block_sums_nhwc``, in registers where C is a whole number of float64 vectors
    (``_block_sums_lanes``)."""
    if u.shape[1] % (_lanes.per_register(8)) == 0:
        _block_sums_lanes(np.ascontiguousarray(u), -u_shift, np.ascontiguousarray(v),
                          -v_shift, part1, part2)
    else:
        _block_sums_nhwc(u, u_shift, v, v_shift, part1, part2)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _bn_apply_nhwc(x, mean, scale, shift, y, relu):
    """y = (x - mean[c]) * scale[c] + shift[c] for x, y (P, C), then max(y, 0) with
    ``relu``; one task per row block."""
    n_rows, c_all = x.shape
    n_blocks = (n_rows + _ROWS - 1) // _ROWS
    for t in prange(n_blocks):
        for r in range(t * _ROWS, min((t + 1) * _ROWS, n_rows)):
            for c in range(c_all):
                v = (x[r, c] - mean[c]) * scale[c] + shift[c]
                y[r, c] = 0.0 if relu and v <= 0.0 else v


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
def _bn_backward_apply_nhwc(gy, x, mean, a, b, kx, gx):
    """gx = gy * a[c] + b[c] + (x - mean[c]) * kx[c] for gy, x, gx (P, C); per row block."""
    n_rows, c_all = x.shape
    n_blocks = (n_rows + _ROWS - 1) // _ROWS
    for t in prange(n_blocks):
        for r in range(t * _ROWS, min((t + 1) * _ROWS, n_rows)):
            for c in range(c_all):
                gx[r, c] = gy[r, c] * a[c] + b[c] + (x[r, c] - mean[c]) * kx[c]


# ------------------------------------------------------------------------ layouts
@dataclass(frozen=True)
class _LayoutKernels:
    """One layout's batch-norm kernels, each taking ``view``s of C-contiguous 4-D arrays
    in the layout (NCHW: (N, C, H*W); NHWC: (N*H*W, C)) and float64 (C,) vectors.

    - ``train(x, weight, bias, eps, y, relu) -> (mean, var)``: the batch mean and biased
      variance, and y normalised with them (then max(y, 0) with ``relu``).
    - ``apply(x, mean, scale, shift, y, relu)``: y = (x - mean) * scale + shift (then
      max(y, 0) with ``relu``).
    - ``backward(gy, x, mean, invstd, weight, training, gx) -> (sum_dy, sum_dy_xmu)``:
      gx, and the sums of gy and of gy * (x - mean) per channel.
    """

    view: Callable
    train: Callable
    apply: Callable
    backward: Callable


def _nchw_view(a):
    """(N, C, H*W): one channel's values of an image lie in one row."""
    return a.reshape(a.shape[0], a.shape[1], -1)


def _nchw_train(x, weight, bias, eps, y, relu):
    mean, var = np.empty(x.shape[1]), np.empty(x.shape[1])
    _bn_train_nchw(x, weight, bias, eps, y, mean, var, relu)
    return mean, var


def _nchw_backward(gy, x, mean, invstd, weight, training, gx):
    sum_dy, sum_dy_xmu = np.empty(x.shape[1]), np.empty(x.shape[1])
    _bn_backward_nchw(gy, x, mean, invstd, weight, training, gx, sum_dy, sum_dy_xmu)
    return sum_dy, sum_dy_xmu


def _nhwc_view(a):
    """(N*H*W, C): a pixel's channels lie in one row."""
    return a.reshape(-1, a.shape[3])


def _partials(x):
    """Room for the per-block partial sums of the NHWC reductions of x (P, C)."""
    return np.empty(((x.shape[0] + _ROWS - 1) // _ROWS, x.shape[1]))


@njit(inline="always")
def _partial_sums(p1, p2, c):
    """Channel c's block partials of p1 and p2 (T, C) added in order (float64)."""
    s1 = 0.0
    s2 = 0.0
    for t in range(p1.shape[0]):
        s1 += p1[t, c]
        s2 += p2[t, c]
    return s1, s2


@njit(cache=True)
def _moments(p1, p2, shift, count, eps, weight, stats):
    """The serial end of the NHWC statistics in one call (it was about ten numpy calls on
    (C,) vectors, 25-40 us inside a training step): from the block partials p1, p2
    (T, C) of ``_block_sums`` over x less ``shift``, stats (3, C) = the mean, the biased
    variance and weight / sqrt(var + eps). The partials are added in order (the result
    does not depend on the thread count)."""
    for c in range(p1.shape[1]):
        s1, s2 = _partial_sums(p1, p2, c)
        ds = s1 / count
        var = max(s2 / count - ds * ds, 0.0)
        stats[0, c] = shift[c] + ds
        stats[1, c] = var
        stats[2, c] = weight[c] / np.sqrt(var + eps)


@njit(cache=True)
def _grad_coefficients(p1, p2, weight, invstd, count, training, out):
    """The serial end of the NHWC gradient sums in one call: from the block partials p1,
    p2 (T, C) of grad_y and grad_y * (x - mean), out (5, C) = sum_dy, sum_dy_xmu and
    the coefficients a, b, kx of ``_bn_backward_apply_nhwc`` (b = kx = 0 outside
    training)."""
    for c in range(p1.shape[1]):
        s1, s2 = _partial_sums(p1, p2, c)
        a = weight[c] * invstd[c]
        out[0, c] = s1
        out[1, c] = s2
        out[2, c] = a
        out[3, c] = -a * s1 / count if training else 0.0
        out[4, c] = -a * invstd[c] * invstd[c] * s2 / count if training else 0.0


def _nhwc_train(x, weight, bias, eps, y, relu):
    p1, p2 = _partials(x), _partials(x)
    shift = x[0].astype(np.float64)
    _block_sums(x, shift, x, shift, p1, p2)
    stats = np.empty((3, x.shape[1]))
    _moments(p1, p2, shift, x.shape[0], eps, weight, stats)
    _bn_apply_nhwc(x, stats[0], stats[2], bias, y, relu)
    return stats[0], stats[1]


def _nhwc_backward(gy, x, mean, invstd, weight, training, gx):
    p1, p2 = _partials(x), _partials(x)
    _block_sums(gy, np.zeros(x.shape[1]), x, mean, p1, p2)
    co = np.empty((5, x.shape[1]))
    _grad_coefficients(p1, p2, weight, invstd, x.shape[0], training, co)
    _bn_backward_apply_nhwc(gy, x, mean, co[2], co[3], co[4], gx)
    return co[0], co[1]


_KERNELS = {
    "NCHW": _LayoutKernels(view=_nchw_view, train=_nchw_train, apply=_bn_apply_nchw,
                           backward=_nchw_backward),
    "NHWC": _LayoutKernels(view=_nhwc_view, train=_nhwc_train, apply=_bn_apply_nhwc,
                           backward=_nhwc_backward),
}


def _f64(a, c, fill):
    """A (C,) weight or bias in float64 for the kernels (which only read it)."""
    return np.full(c, fill, np.float64) if a is None else a.astype(np.float64, copy=False)


# ----------------------------------------------------------------------------- forward
def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, layout="NCHW", return_stats=False, device="cpu",
               fuse_relu=False):
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
    fuse_relu : return max(y, 0) (NaN stays NaN), computed in the normalising pass (CPU
        only; batch norm followed by ReLU, as in fastconv.nn's BasicBlock).

    Returns
    -------
    y : ndarray, shape, layout and dtype of x.
    mean, invstd : float64 (C,) arrays actually used to normalise (batch statistics in
        training, running ones in evaluation), invstd = 1/sqrt(var + eps); with
        return_stats=True. Pass them to ``batch_norm_backward``.

    Notes
    -----
    Array arguments may be array-likes (``fastconv._args.check_array``; without a copy
    where numpy can share memory), except the running statistics when training: they
    are updated in place, so they must be numpy arrays (subclasses are updated through
    a view). float16 is computed in float32 and y rounded once to float16 (float16
    running statistics are updated in float64 and rounded); y is a plain ndarray.
    Training needs more than one value per channel (N*H*W > 1), as in torch. An empty
    batch gives an empty y, NaN statistics and no running update. Runs
    ``_bn_train_nchw`` / ``_bn_apply_nchw`` (one task per channel / plane) and the NHWC
    block kernels (see the module docstring).
    """
    op = "batch_norm"
    gpu = devices.gpu_op(op, device)
    if gpu is not None and fuse_relu:
        raise ValueError(f"{op}: fuse_relu=True runs on the CPU only, not on device={device!r}")
    if gpu is not None:
        return gpu(x, running_mean, running_var, weight, bias, training, momentum, eps,
                   layout=layout, return_stats=return_stats)
    a, (x, running_mean, running_var, weight, bias) = batch_norm_inputs(
        op, x, running_mean, running_var, weight, bias, training, momentum, eps, layout,
        return_stats, half=True)
    half, (x,) = widen(x)   # float16: computed in float32
    k = _KERNELS[a.layout]
    y = allocate(op, "output", x.shape, x.dtype)
    w64, b64 = _f64(weight, a.c, 1.0), _f64(bias, a.c, 0.0)
    if a.training and a.count == 0:
        mean, invstd = np.full(a.c, np.nan), np.full(a.c, np.nan)
    elif a.training:
        with parallel_guard():
            mean, var = k.train(k.view(np.ascontiguousarray(x)), w64, b64, a.eps, k.view(y),
                                bool(fuse_relu))
        invstd = 1.0 / np.sqrt(var + a.eps)
        if running_mean is not None:
            unbiased = var * (a.count / (a.count - 1))
            running_mean[...] = (1 - a.momentum) * running_mean + a.momentum * mean
            running_var[...] = (1 - a.momentum) * running_var + a.momentum * unbiased
    else:
        mean = running_mean.astype(np.float64)
        invstd = 1.0 / np.sqrt(running_var.astype(np.float64) + a.eps)
        if y.size:
            with parallel_guard():
                k.apply(k.view(np.ascontiguousarray(x)), mean, w64 * invstd, b64, k.view(y),
                        bool(fuse_relu))
    y = narrow(y) if half else y
    return (y, mean, invstd) if return_stats else y


# ---------------------------------------------------------------------------- backward
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
    Sums are float64. Array arguments may be array-likes, as in ``batch_norm``; float16
    is computed in float32 and the gradients rounded once to float16. Runs
    ``_bn_backward_nchw`` (one task per channel) /
    ``_block_sums_nhwc`` + ``_bn_backward_apply_nhwc``.
    """
    op = "batch_norm_backward"
    gpu = devices.gpu_op(op, device)
    if gpu is not None:
        return gpu(grad_y, x, mean, invstd, weight, training=training, layout=layout)
    a, (grad_y, x, mean, invstd, weight) = batch_norm_backward_inputs(
        op, grad_y, x, mean, invstd, weight, training, layout, half=True)
    half, (grad_y, x) = widen(grad_y, x)   # float16: computed in float32
    k = _KERNELS[a.layout]
    mean64, invstd64 = mean.astype(np.float64, copy=False), invstd.astype(np.float64, copy=False)
    gx = allocate(op, "gradient", x.shape, x.dtype)
    sum_dy, sum_dy_xmu = np.zeros(a.c), np.zeros(a.c)
    if a.count > 0:
        g3, x3 = k.view(np.ascontiguousarray(grad_y)), k.view(np.ascontiguousarray(x))
        with parallel_guard():
            sum_dy, sum_dy_xmu = k.backward(g3, x3, mean64, invstd64, _f64(weight, a.c, 1.0),
                                            a.training, k.view(gx))
    grad_weight = (sum_dy_xmu * invstd64).astype(x.dtype)
    grad_bias = sum_dy.astype(x.dtype)
    return narrow((gx, grad_weight, grad_bias)) if half else (gx, grad_weight, grad_bias)
