"""Softmax cross entropy on the host: the log-softmax, the losses and the gradient of
a batch of logits in one compiled pass each.

A classifier's logits are small ((64, 10) for LeNet-5), so numpy's half a dozen
whole-array calls per direction (max, subtract, exp, sum, log, a fancy index; exp,
another fancy index, a product) cost more in call overhead than in arithmetic: about
47 + 15 us of a LeNet-5 training step, against a few microseconds for one kernel call
each way. Each row's log-softmax is computed as ``autograd.log_softmax_array``'s formula,
a - max - log(sum(exp(a - max))), in the logits' dtype. float32 and float64 logits (C-contiguous
or not) take the kernels; other dtypes numpy's calls. The kernels are compiled without
fastmath: reassociated, (a - max) - lse became a - (max + lse) and lost the small
log-probabilities of rows with large logits (0.0002 of 0.69 at logits of 1e4 in float32).

>>> import numpy as np
>>> logits = np.array([[2.0, 0.0], [0.0, 0.0]])
>>> losses, logp = forward(logits, np.array([0, 1]))
>>> np.round(losses, 4)
array([0.1269, 0.6931])
>>> np.round(backward(logp, np.array([0, 1]), np.full(2, 0.5)), 4)
array([[-0.0596,  0.0596],
       [ 0.25  , -0.25  ]])
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..autograd.activations import log_softmax_array


@njit(cache=True)
def _forward(logits, target, losses, logp):
    """logp[i] = the log-softmax of row i of logits; losses[i] = -logp[i, target[i]]."""
    n, c = logits.shape
    for i in range(n):
        top = logits[i, 0]
        for k in range(1, c):
            v = logits[i, k]
            top = v if v > top or v != v else top
        total = logits.dtype.type(0)
        for k in range(c):
            total += np.exp(logits[i, k] - top)
        lse = np.log(total)
        for k in range(c):
            logp[i, k] = (logits[i, k] - top) - lse
        losses[i] = -logp[i, target[i]]


@njit(cache=True)
def _backward(logp, target, scale, grad):
    """grad[i] = (softmax(row i) - onehot(target[i])) * scale[i]."""
    n, c = logp.shape
    for i in range(n):
        s = scale[i]
        for k in range(c):
            grad[i, k] = np.exp(logp[i, k]) * s
        grad[i, target[i]] = (np.exp(logp[i, target[i]]) - logp.dtype.type(1)) * s


def _kernels_take(a: np.ndarray) -> bool:
    return a.dtype in (np.float32, np.float64)


def forward(logits: np.ndarray, target: np.ndarray):
    """(losses (N,), logp (N, C)) of logits (N, C) and intp targets (N,) in [0, C)
    (checked by the caller), both in the logits' dtype."""
    if not _kernels_take(logits):
        logp = log_softmax_array(logits, axis=1)
        return -logp[np.arange(logits.shape[0]), target], logp
    logits = np.ascontiguousarray(logits)       # one compiled kernel per dtype
    losses = np.empty(logits.shape[0], logits.dtype)
    logp = np.empty(logits.shape, logits.dtype)
    _forward(logits, target, losses, logp)
    return losses, logp


def backward(logp: np.ndarray, target: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The gradient of ``forward``'s losses with respect to the logits, each row's
    scaled by scale (N,) (the gradient of the reduced loss with respect to that row's
    loss)."""
    if not _kernels_take(logp) or scale.dtype != logp.dtype:
        grad = np.exp(logp)
        grad[np.arange(logp.shape[0]), target] -= 1
        return grad * scale[:, None]
    grad = np.empty(logp.shape, logp.dtype)
    _backward(logp, target, scale, grad)
    return grad
