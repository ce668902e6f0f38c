"""Element-wise functions (exp, log, relu, leaky_relu, gelu, tanh, sigmoid) and softmax /
log_softmax.

Every op maps an array ``a`` of any shape to an array ``y`` of the same shape and dtype.
All but Log, LeakyReLU and GELU write their derivative in terms of ``y``, so their
forward keeps ``y`` (not ``a``) for the backward pass: :func:`_forward_keeping_output`
(and, for softmax and log_softmax, :func:`_forward_along_axis_keeping_output`) builds
that forward.
"""

from __future__ import annotations

import math

import numpy as np

from . import arrays
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
    """max(a, 0) (NaN stays NaN) by the one-pass kernels of ``fastconv._elementwise``
    (on the GPU, ``fastconv.cuda``'s); the gradient passes where y > 0."""

    gpu = True
    forward = _forward_keeping_output(arrays.relu)

    @staticmethod
    def backward(ctx, g):
        return arrays.relu_backward(g, ctx.saved_tensors[0])


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


class LeakyReLU(Function):
    """a where a > 0, else negative_slope * a (NaN stays NaN); the gradient is 1 where
    a > 0 and negative_slope elsewhere (at 0 too, as torch)."""

    @staticmethod
    def forward(ctx, a, negative_slope=0.01):
        positive = a > 0
        ctx.save_for_backward(positive)
        ctx.slope = a.dtype.type(negative_slope)
        return np.where(positive, a, a * ctx.slope)

    @staticmethod
    def backward(ctx, g):
        return np.where(ctx.saved_tensors[0], g, g * ctx.slope)


def _erf(a: np.ndarray) -> np.ndarray:
    """scipy's erf (imported on first use: scipy.special is slow to import)."""
    from scipy.special import erf

    return erf(a)


_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_GELU_CUBIC = 0.044715


class GELU(Function):
    """Gaussian error linear unit, torch's two forms:

    - approximate="none": a * Phi(a) = a / 2 (1 + erf(a / sqrt 2)); the derivative is
      Phi(a) + a phi(a) with phi the standard normal density;
    - approximate="tanh": a / 2 (1 + tanh(k (a + 0.044715 a**3))), k = sqrt(2 / pi); the
      derivative is (1 + t) / 2 + a / 2 (1 - t**2) k (1 + 3 * 0.044715 a**2).
    """

    @staticmethod
    def forward(ctx, a, approximate="none"):
        ctx.save_for_backward(a)
        ctx.approximate = approximate
        one, half = a.dtype.type(1), a.dtype.type(0.5)
        if approximate == "tanh":
            k, c = a.dtype.type(_SQRT_2_OVER_PI), a.dtype.type(_GELU_CUBIC)
            return half * a * (one + np.tanh(k * (a + c * a * a * a)))
        return (half * a * (one + _erf(a * a.dtype.type(math.sqrt(0.5))))).astype(a.dtype,
                                                                                copy=False)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        t = a.dtype.type
        if ctx.approximate == "tanh":
            k, c = t(_SQRT_2_OVER_PI), t(_GELU_CUBIC)
            th = np.tanh(k * (a + c * a * a * a))
            d = t(0.5) * (t(1) + th) + t(0.5) * a * (t(1) - th * th) * k * (
                t(1) + t(3) * c * a * a)
        else:
            cdf = t(0.5) * (t(1) + _erf(a * t(math.sqrt(0.5))))
            pdf = np.exp(t(-0.5) * a * a) * t(1 / math.sqrt(2 * math.pi))
            d = cdf + a * pdf
        return g * d
