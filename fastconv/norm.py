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
sums fixed blocks of pixels into per-block partial sums, then reduces the partials
serially (``fastconv._norm_nhwc``; the result does not depend on the thread count).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from . import _norm_nhwc, _norm_relu, config, devices
from ._args import batch_norm_backward_inputs, batch_norm_inputs, narrow, widen
from ._memory import allocate
from ._runtime import guarded


# ----------------------------------------------------------------------------- kernels
@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _bn_train_nchw(x, weight, bias, eps, y, stats, relu, res, with_res):
    """x, y (N, C, M); weight, bias (C,) float64. Per channel (one task each): the mean,
    the biased var (one pass of shifted float64 sums, see the module docstring) and
    invstd = 1 / sqrt(var + eps) into stats (3, C), then y = (x - mean) * weight *
    invstd + bias while the channel is still in cache; with ``with_res``, plus res (N,
    C, M) (in float64, rounded once); with ``relu``, max(y, 0) (NaN stays NaN) in the
    same pass."""
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
        stats[0, c] = mu
        stats[1, c] = v
        stats[2, c] = 1.0 / np.sqrt(v + eps)
        scale = weight[c] * stats[2, c]
        shift = bias[c]
        for n in range(n_img):
            for k in range(m):
                y[n, c, k] = _norm_relu.output(x[n, c, k], mu, scale, shift, relu,
                                               res[n, c, k], with_res)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _bn_apply_nchw(x, mean, scale, shift, y, relu, res, with_res):
    """y = (x - mean[c]) * scale[c] + shift[c] for x, y (N, C, M), plus res (N, C, M)
    with ``with_res``, then max(y, 0) with ``relu``; one task per plane."""
    n_img, c_all, m = x.shape
    for task in prange(n_img * c_all):
        n = task // c_all
        c = task % c_all
        mu = mean[c]
        a = scale[c]
        b = shift[c]
        for k in range(m):
            y[n, c, k] = _norm_relu.output(x[n, c, k], mu, a, b, relu, res[n, c, k], with_res)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _bn_backward_nchw(gy, x, mean, invstd, weight, training, gx, grad_w, grad_b, relu,
                      mask, bias, g_res, with_res):
    """gy, x, gx (N, C, M). Per channel (one task each): sum_dy = sum g and sum_dy_xmu =
    sum g * (x - mean) in float64, grad_b = sum_dy and grad_w = sum_dy_xmu * invstd
    ((C,) each, rounded once to their dtype), then
    gx = weight * invstd * (g - [sum_dy + (x - mean) * invstd**2 * sum_dy_xmu] / count)
    with the bracket only in training (the gradient through the batch statistics); g =
    gy where the ReLU after the batch norm passed it (``_norm_relu.gated``: ``relu``
    ``OUTPUT``, mask (N, C, M) its output; ``REDONE``, from x with scale = weight *
    invstd and bias (C,) float64; ``NONE``, all of gy); with ``with_res``, g itself into
    g_res (N, C, M) (a residual's gradient), in a loop of its own after gx's: written in
    gx's loop, the code numba compiled in a process and the same kernel loaded from its
    cache in another computed gx differently in the last bits (float32, grad_y of
    ones), and processes that load the cache must give the compiling one's results."""
    n_img, c_all, m = x.shape
    count = n_img * m
    for c in prange(c_all):
        mu = mean[c]
        a = weight[c] * invstd[c]
        sh = bias[c]
        s1 = 0.0
        s2 = 0.0
        for n in range(n_img):
            for k in range(m):
                g = _norm_relu.gated(gy[n, c, k], relu, mask[n, c, k], x[n, c, k], mu, a, sh,
                                     x)
                s1 += g
                s2 += g * (x[n, c, k] - mu)
        grad_b[c] = s1
        grad_w[c] = s2 * invstd[c]
        b = 0.0
        kx = 0.0
        if training:
            b = -a * s1 / count
            kx = -a * invstd[c] * invstd[c] * s2 / count
        for n in range(n_img):
            for k in range(m):
                g = _norm_relu.gated(gy[n, c, k], relu, mask[n, c, k], x[n, c, k], mu, a, sh,
                                     x)
                gx[n, c, k] = g * a + b + (x[n, c, k] - mu) * kx
        if with_res:    # a loop of its own (the docstring)
            for n in range(n_img):
                for k in range(m):
                    g_res[n, c, k] = _norm_relu.gated(gy[n, c, k], relu, mask[n, c, k],
                                                      x[n, c, k], mu, a, sh, x)


# ------------------------------------------------------------------------ layouts
@dataclass(frozen=True)
class _LayoutKernels:
    """One layout's batch-norm kernels, each taking ``view``s of C-contiguous 4-D arrays
    in the layout (NCHW: (N, C, H*W); NHWC: (N*H*W, C)) and float64 (C,) vectors.

    - ``train(x, weight, bias, eps, y, relu, res) -> (mean, var, invstd)``: the batch
      mean, biased variance and 1 / sqrt(var + eps), and y normalised with them (plus
      res, a view like x, unless None; then max(y, 0) with ``relu``).
    - ``apply(x, mean, scale, shift, y, relu, res)``: y = (x - mean) * scale + shift
      (plus res unless None; then max(y, 0) with ``relu``).
    - ``backward(gy, x, mean, invstd, weight, training, gx, grad_w, grad_b, relu, mask,
      bias, g_res)``: gx, grad_b = the sum of g and grad_w = the sum of g * (x - mean)
      times invstd per channel ((C,) arrays of x's dtype); g = gy where a fused ReLU
      passed it (``_norm_relu.gated``: mask a view like the others, its output, bias
      float64 (C,); each read only in its own ``relu`` mode, a stand-in otherwise); g
      itself into g_res (a view like gx) unless None.
    """

    view: Callable
    train: Callable
    apply: Callable
    backward: Callable


def _nchw_view(a):
    """(N, C, H*W): one channel's values of an image lie in one row."""
    return a.reshape(a.shape[0], a.shape[1], -1)


def _given(a, stand_in):
    """(a, True), or (stand_in, False) for a None: a kernel's optional array and its flag
    (the stand-in, of the same type, is not read)."""
    return (stand_in, False) if a is None else (a, True)


def _nchw_train(x, weight, bias, eps, y, relu, res):
    stats = np.empty((3, x.shape[1]))
    _bn_train_nchw(x, weight, bias, eps, y, stats, relu, *_given(res, x))
    return stats[0], stats[1], stats[2]


def _nchw_apply(x, mean, scale, shift, y, relu, res):
    _bn_apply_nchw(x, mean, scale, shift, y, relu, *_given(res, x))


def _nchw_backward(gy, x, mean, invstd, weight, training, gx, grad_w, grad_b, relu, mask,
                   bias, g_res):
    _bn_backward_nchw(gy, x, mean, invstd, weight, training, gx, grad_w, grad_b, relu,
                      mask, bias, *_given(g_res, gx))


def _nhwc_train(x, weight, bias, eps, y, relu, res):
    stats = np.empty((3, x.shape[1]))
    _norm_nhwc.train(x, weight, bias, eps, y, relu, stats,
                     _norm_nhwc.in_registers(x.shape[1], x.dtype), *_given(res, x))
    return stats[0], stats[1], stats[2]


def _nhwc_apply(x, mean, scale, shift, y, relu, res):
    _norm_nhwc.apply(x, mean, scale, shift, y, relu,
                     _norm_nhwc.in_registers(x.shape[1], x.dtype), *_given(res, x))


def _nhwc_backward(gy, x, mean, invstd, weight, training, gx, grad_w, grad_b, relu, mask,
                   bias, g_res):
    _norm_nhwc.backward(gy, x, mean, invstd, weight, training, gx, grad_w, grad_b,
                        _norm_nhwc.in_registers(x.shape[1], x.dtype), relu, mask, bias,
                        *_given(g_res, gx))


_KERNELS = {
    "NCHW": _LayoutKernels(view=_nchw_view, train=_nchw_train, apply=_nchw_apply,
                           backward=_nchw_backward),
    "NHWC": _LayoutKernels(view=_norm_nhwc.view, train=_nhwc_train, apply=_nhwc_apply,
                           backward=_nhwc_backward),
}


@njit(cache=True)
def _move_running_kernel(running_mean, running_var, mean, var, count, momentum):
    unbias = count / (count - 1)
    for c in range(mean.shape[0]):
        running_mean[c] = (1 - momentum) * np.float64(running_mean[c]) + momentum * mean[c]
        running_var[c] = ((1 - momentum) * np.float64(running_var[c])
                          + momentum * (var[c] * unbias))


def _move_running(running_mean, running_var, mean, var, count, momentum) -> None:
    """running = (1 - momentum) * running + momentum * the batch statistic (the mean; the
    unbiased variance), in float64 and rounded once; one compiled call for float32 and
    float64 statistics (numpy's dozen calls on (C,) vectors took 5 us), numpy for
    float16."""
    if running_mean.dtype.char in "fd":
        _move_running_kernel(running_mean, running_var, mean, var, count, momentum)
        return
    running_mean[...] = (1 - momentum) * running_mean.astype(np.float64) + momentum * mean
    running_var[...] = ((1 - momentum) * running_var.astype(np.float64)
                        + momentum * (var * (count / (count - 1))))


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
    y, mean, invstd = forward(x, running_mean, running_var, weight, bias, a, fuse_relu)
    y = narrow(y) if half else y
    return (y, mean, invstd) if return_stats else y


def forward(x, running_mean, running_var, weight, bias, a, fuse_relu=False, residual=None):
    """``batch_norm``'s (y, mean, invstd) on checked arrays of float32 or float64
    (``batch_norm_inputs``, or the record ``fastconv._args.batch_norm_record`` keeps):
    the running statistics updated in training. ``residual``: None, or an array of x's
    shape and dtype added to the normalised values (in float64, the sum rounded once)
    before the fused ReLU: relu(batch_norm(x) + residual), a residual block's end, in
    the normalising pass."""
    k = _KERNELS[a.layout]
    res = None if residual is None else k.view(np.ascontiguousarray(residual))
    y = allocate("batch_norm", "output", x.shape, x.dtype)
    w64, b64 = _f64(weight, a.c, 1.0), _f64(bias, a.c, 0.0)
    if a.training and a.count == 0:
        mean, invstd = np.full(a.c, np.nan), np.full(a.c, np.nan)
    elif a.training:
        mean, var, invstd = guarded(k.train)(k.view(np.ascontiguousarray(x)), w64, b64,
                                             a.eps, k.view(y), bool(fuse_relu), res)
        if running_mean is not None:
            _move_running(running_mean, running_var, mean, var, a.count, a.momentum)
    else:
        mean = running_mean.astype(np.float64)
        invstd = 1.0 / np.sqrt(running_var.astype(np.float64) + a.eps)
        if y.size:
            guarded(k.apply)(k.view(np.ascontiguousarray(x)), mean, w64 * invstd, b64,
                             k.view(y), bool(fuse_relu), res)
    return y, mean, invstd


# ---------------------------------------------------------------------------- backward
def batch_norm_backward(grad_y, x, mean, invstd, weight=None, *, training=True,
                        layout="NCHW", device="cpu", relu_output=None):
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
    relu_output : None, or the forward's max(y, 0) (``batch_norm(..., fuse_relu=True)``;
        x's shape and dtype): grad_y is then the gradient of that output, and the
        ReLU's (grad_y where relu_output > 0, else 0) is applied in the same passes
        (CPU only).

    Returns
    -------
    grad_x : shape, layout and dtype of x.
    grad_weight : (C,) = sum grad_y * xhat;  grad_bias : (C,) = sum grad_y (dtype of x;
        computed even when weight is None).

    Notes
    -----
    Sums are float64. Array arguments may be array-likes, as in ``batch_norm``; float16
    is computed in float32 and the gradients rounded once to float16. Runs
    ``_bn_backward_nchw`` (one task per channel) / ``_norm_nhwc.backward``.
    """
    op = "batch_norm_backward"
    gpu = devices.gpu_op(op, device)
    if gpu is not None and relu_output is not None:
        raise ValueError(f"{op}: relu_output runs on the CPU only, not on device={device!r}")
    if gpu is not None:
        return gpu(grad_y, x, mean, invstd, weight, training=training, layout=layout)
    a, (grad_y, x, mean, invstd, weight, relu_output) = batch_norm_backward_inputs(
        op, grad_y, x, mean, invstd, weight, training, layout, half=True,
        relu_output=relu_output)
    half, (grad_y, x, relu_output) = widen(grad_y, x, relu_output)   # float16: in float32
    grads = gradients(grad_y, x, mean, invstd, weight, a, relu_output)
    return narrow(grads) if half else grads


def gradients(grad_y, x, mean, invstd, weight, a, relu_output=None, *, relu_from_x=False,
              bias=None, residual_grad=False):
    """``batch_norm_backward``'s (grad_x, grad_weight, grad_bias) on checked arrays of
    float32 or float64 (``batch_norm_backward_inputs``, or the record
    ``fastconv._args.batch_norm_backward_record`` keeps). A fused ReLU's gradient comes
    from its output (``relu_output``), or with ``relu_from_x`` from x: where the
    normalised value the forward stored was positive, recomputed with the forward's
    ``bias`` (None: zeros), weight, mean and invstd (``fastconv._norm_relu``; the same
    result, one array fewer read). ``residual_grad``: also return the gradient of a
    residual the forward added before its ReLU (grad_y where relu_output > 0), written
    in the same pass: (grad_x, grad_weight, grad_bias, grad_residual)."""
    k = _KERNELS[a.layout]
    mean64, invstd64 = mean.astype(np.float64, copy=False), invstd.astype(np.float64, copy=False)
    gx = allocate("batch_norm_backward", "gradient", x.shape, x.dtype)
    g_res = allocate("batch_norm_backward", "gradient", x.shape, x.dtype) \
        if residual_grad else None
    if a.count == 0:        # nothing summed (invstd NaN in training: so is grad_weight)
        grads = gx, (np.zeros(a.c) * invstd64).astype(x.dtype), np.zeros(a.c, x.dtype)
        return grads + (g_res,) if residual_grad else grads
    grad_w, grad_b = np.empty(a.c, x.dtype), np.empty(a.c, x.dtype)
    g3, x3 = k.view(np.ascontiguousarray(grad_y)), k.view(np.ascontiguousarray(x))
    relu, mask, shift = _norm_relu.NONE, g3, mean64          # stand-ins, not read
    if relu_from_x:
        relu, shift = _norm_relu.REDONE, _f64(bias, a.c, 0.0)
    elif relu_output is not None:
        relu, mask = _norm_relu.OUTPUT, k.view(np.ascontiguousarray(relu_output))
    guarded(k.backward)(g3, x3, mean64, invstd64, _f64(weight, a.c, 1.0), a.training,
                        k.view(gx), grad_w, grad_b, relu, mask, shift,
                        None if g_res is None else k.view(g_res))
    return (gx, grad_w, grad_b, g_res) if residual_grad else (gx, grad_w, grad_b)
