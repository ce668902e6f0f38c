"""Element-wise functions (exp, log, relu, tanh, sigmoid) and softmax / log_softmax.

Every op maps an array ``a`` of any shape to an array ``y`` of the same shape and dtype.
All but Log write their derivative in terms of ``y``, so their forward keeps ``y`` (not
``a``) for the backward pass: :func:`_forward_keeping_output` (and, for softmax and
log_softmax, :func:`_forward_along_axis_keeping_output`) builds that forward.
"""

from __future__ import annotations

import numpy as np

from .. import _elementwise
from .function import Function


def _forward_keeping_output(fn):
    """The ``forward(ctx, a)`` of an element-wise op y = fn(a) whose derivative is a
    function of y: it saves y for ``backward`` (as ``ctx.saved_tensors[0]``)."""

    def forward(ctx, a):
        out = fn(a)
        ctx.save_for_backward(out)
        return out

    return staticmethod(forward)


def _forward_along_axis_keeping_output(fn):
    """The ``forward(ctx, a, axis=-1)`` of y = fn(a, axis) (softmax, log_softmax), whose
    derivative is a function of y along ``axis``: it saves y and ``ctx.axis``."""

    def forward(ctx, a, axis=-1):
        out = fn(a, axis)
        ctx.save_for_backward(out)
        ctx.axis = axis
        return out

    return staticmethod(forward)


def sigmoid_array(a: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-a)) of an ndarray, taking exp of non-positive numbers only (no
    overflow for large |a|)."""
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1 / (1 + e), e / (1 + e))


def softmax_array(a: np.ndarray, axis: int) -> np.ndarray:
    """Stable softmax of an ndarray along ``axis``: exp(a - max) / sum(exp(a - max))."""
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax_array(a: np.ndarray, axis: int) -> np.ndarray:
    """Stable log-softmax of an ndarray along ``axis``: a - max - log(sum(exp(a - max)))."""
    shifted = a - a.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


class Exp(Function):
    """exp(a); dy/da = y."""

    forward = _forward_keeping_output(np.exp)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.saved_tensors[0]


class Log(Function):
    """Natural log; dy/da = 1 / a."""

    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.log(a)

    @staticmethod
    def backward(ctx, g):
        return g / ctx.saved_tensors[0]


class ReLU(Function):
    """max(a, 0) (NaN stays NaN) by the one-pass kernels of ``fastconv._elementwise``;
    the gradient passes where y > 0."""

    forward = _forward_keeping_output(_elementwise.relu)

    @staticmethod
    def backward(ctx, g):
        return _elementwise.relu_backward(g, ctx.saved_tensors[0])


class Tanh(Function):
    """tanh(a); dy/da = 1 - y**2."""

    forward = _forward_keeping_output(np.tanh)

    @staticmethod
    def backward(ctx, g):
        y = ctx.saved_tensors[0]
        return g * (1 - y * y)


class Sigmoid(Function):
    """1 / (1 + exp(-a)) (see :func:`sigmoid_array`); dy/da = y (1 - y)."""

    forward = _forward_keeping_output(sigmoid_array)

    @staticmethod
    def backward(ctx, g):
        y = ctx.saved_tensors[0]
        return g * y * (1 - y)


class Softmax(Function):
    """exp(a - max) / sum(exp(a - max)) along ``axis`` (stable for large inputs);
    the gradient is y (g - sum(g y)) along ``axis``."""

    forward = _forward_along_axis_keeping_output(softmax_array)

    @staticmethod
    def backward(ctx, g):
        y = ctx.saved_tensors[0]
        return y * (g - (g * y).sum(axis=ctx.axis, keepdims=True))


class LogSoftmax(Function):
    """a - max - log(sum(exp(a - max))) along ``axis``; the gradient is
    g - exp(y) sum(g) along ``axis``."""

    forward = _forward_along_axis_keeping_output(log_softmax_array)

    @staticmethod
    def backward(ctx, g):
        y = ctx.saved_tensors[0]
        return g - np.exp(y) * g.sum(axis=ctx.axis, keepdims=True)
