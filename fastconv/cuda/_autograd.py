"""The GPU paths of the autograd layer's own ops, on device arrays (results stay on the
GPU; nothing is copied to the host): ReLU, gradient accumulation (add, ones, zeros,
casts), linear (the GEMM of ``_gemm`` and the bias kernels), cross entropy, and the SGD
update. ``fastconv.autograd`` and ``fastconv.optim`` reach them through
``fastconv.devices.gpu_op(name, "cuda")``; the kernels are in ``_elementwise``.

Inputs are numba device arrays (or anything with ``__cuda_array_interface__``); the
callers (the autograd Functions) have checked shapes and dtypes already.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from . import _elementwise as K
from . import _gemm, _layout
from ._device import as_device_array, launch
from ._reduce import reduce_threads


def _contiguous(a):
    """``a`` (a device array) itself when C-contiguous, else a contiguous copy (1-, 3- or
    4-D; ValueError for other strided arrays)."""
    a = as_device_array(cuda, a)
    if not a.is_c_contiguous() and a.ndim not in (1, 3, 4):
        raise ValueError(f"fastconv.cuda: a non-contiguous {a.ndim}-D device array of shape "
                         f"{tuple(a.shape)} is not supported here; pass a contiguous one")
    return _layout.contiguous(a)


def _flat(a):
    """A contiguous 1-D view (a copy only when ``a`` is not contiguous)."""
    a = _contiguous(a)
    return a.reshape(a.size)


def _like(a, dtype=None):
    return cuda.device_array(a.shape, a.dtype if dtype is None else dtype)


# --------------------------------------------------------------- element-wise and sums
def relu(a):
    """max(a, 0) element-wise (NaN stays NaN), a new device array."""
    y = _like(a)
    launch(K._relu, y.size, _flat(a), y.reshape(y.size))
    return y


def relu_backward(g, y):
    """g where the forward's output ``y`` > 0, else 0."""
    gx = _like(g)
    launch(K._relu_backward, gx.size, _flat(g), _flat(y), gx.reshape(gx.size))
    return gx


def add(a, b):
    """a + b (same shape and dtype), a new device array."""
    out = _like(a)
    launch(K._add, out.size, _flat(a), _flat(b), out.reshape(out.size))
    return out


def full_like(a, value, dtype=None):
    """A device array of a's shape filled with ``value``."""
    out = _like(a, dtype)
    launch(_layout._fill, out.size, out.reshape(out.size), out.dtype.type(value))
    return out


def astype(a, dtype):
    """``a`` as ``dtype``: ``a`` itself when it has that dtype, else a converted copy."""
    if np.dtype(a.dtype) == np.dtype(dtype):
        return a
    out = _like(a, dtype)
    launch(_layout._copy1, out.size, _flat(a), out.reshape(out.size))
    return out


def copy(a):
    """A contiguous copy of ``a`` on the device."""
    out = _like(a)
    launch(_layout._copy1, out.size, _flat(a), out.reshape(out.size))
    return out


def permute(a, axes):
    """A contiguous copy of the 4-D device array ``a`` laid out as ``a.transpose(axes)``."""
    a = as_device_array(cuda, a)
    if a.ndim != 4:
        raise ValueError(f"fastconv.cuda.permute: only 4-D device arrays are permuted on the "
                         f"GPU, got shape {tuple(a.shape)}")
    return _layout.permute(a, axes)


# --------------------------------------------------------------------------- linear
def _rows(a):
    """(1, M, K) view of ``a`` (*, K) for the batched GEMM."""
    a = _contiguous(a)
    k = tuple(a.shape)[-1]
    return a.reshape((1, a.size // k, k))


def linear(x, w, b=None):
    """x (*, in) @ w.T (w (out, in)) + b (out,) on the GEMM kernel."""
    x3, w3 = _rows(x), _rows(w)
    y = cuda.device_array((1, x3.shape[1], w3.shape[1]), x3.dtype)
    _gemm.gemm(x3, w3, y, trans_b=True)
    if b is not None:
        launch(K._bias_rows, y.size, y.reshape(y.shape[1:]), _flat(b))
    return y.reshape(tuple(x.shape[:-1]) + (w3.shape[1],))


def linear_backward(g, x, w, needs_input_grad=(True, True, True)):
    """(grad_x, grad_w, grad_b) of :func:`linear` for the output gradient g (*, out);
    a gradient not asked for in ``needs_input_grad`` is None and not computed."""
    g3, x3, w3 = _rows(g), _rows(x), _rows(w)
    gx = gw = gb = None
    if needs_input_grad[0]:
        gx = cuda.device_array(x3.shape, x3.dtype)
        _gemm.gemm(g3, w3, gx)                                  # g @ w
        gx = gx.reshape(tuple(x.shape))
    if needs_input_grad[1]:
        gw = cuda.device_array(w3.shape, w3.dtype)
        _gemm.gemm(g3, x3, gw, trans_a=True)                    # g.T @ x
        gw = gw.reshape(tuple(w.shape))
    if needs_input_grad[2]:
        gb = cuda.device_array(w3.shape[1], g3.dtype)
        launch(K._column_sum, gb.size, g3.reshape(g3.shape[1:]), gb)
    return gx, gw, gb


# ----------------------------------------------------------------------- cross entropy
def cross_entropy(logits, target, reduction="mean"):
    """(loss, logp): the per-row losses (N,) (reduction "none") or their mean or sum (a
    0-D device array), and the log-softmax (N, C) that the backward pass needs. A target
    outside [0, C) gives a NaN loss (it is not checked on the host: that would copy)."""
    x = as_device_array(cuda, logits)
    n = x.shape[0]
    logp = _like(x)
    losses = cuda.device_array(n, x.dtype)
    launch(K._log_softmax_nll, n, x, as_device_array(cuda, target), logp, losses)
    if reduction == "none":
        return losses, logp
    out = cuda.device_array(1, x.dtype)
    scale = 1.0 / n if reduction == "mean" and n else 1.0
    threads = reduce_threads()
    K.sum_kernel(np.dtype(x.dtype).name, threads)[1, threads](losses, out,
                                                              x.dtype.type(scale))
    return out.reshape(()), logp


def cross_entropy_backward(g, logp, target, reduction="mean"):
    """The gradient of :func:`cross_entropy` for the logits, given the output's gradient
    g (0-D, or (N,) for reduction "none")."""
    n = logp.shape[0]
    gx = _like(logp)
    scale = 1.0 / n if reduction == "mean" and n else 1.0
    launch(K._cross_entropy_grad, gx.size, logp, as_device_array(cuda, target),
           _flat(g), int(reduction == "none"), gx.dtype.type(scale), gx)
    return gx


# -------------------------------------------------------------------------------- SGD
def sgd_step(p, g, buf, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
             nesterov=False, maximize=False):
    """torch.optim.SGD's update in place on the device array ``p`` (contiguous) for the
    gradient ``g``. Returns the momentum buffer: ``buf`` updated, or a new one when
    ``buf`` is None (the first step) and momentum is non-zero; None without momentum."""
    t = np.dtype(p.dtype).type
    first = buf is None
    if momentum != 0 and first:
        buf = _like(p)
    flat_buf = buf.reshape(buf.size) if buf is not None else p.reshape(p.size)
    launch(K._sgd, p.size, p.reshape(p.size), _flat(g), flat_buf, t(lr), t(momentum),
           t(dampening), t(weight_decay), int(nesterov), int(maximize), int(first))
    return buf
