"""Reductions (sum, mean) and shape ops (reshape, permute, indexing)."""

from __future__ import annotations

import numpy as np

from . import arrays
from .function import Function


class Sum(Function):
    """Sum of ``a`` over ``axis`` (a sorted tuple of axes, or None for all); the
    gradient is broadcast back to a's shape."""

    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.shape, ctx.axis, ctx.keepdims = a.shape, axis, keepdims
        return np.sum(a, axis=axis, keepdims=keepdims)

    @staticmethod
    def backward(ctx, g):
        if not ctx.keepdims and ctx.axis is not None:
            g = np.expand_dims(g, ctx.axis)
        return np.broadcast_to(g, ctx.shape)


class Mean(Function):
    """Mean of ``a`` over ``axis`` (as :class:`Sum`); the gradient is g / count,
    broadcast back to a's shape."""

    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.shape, ctx.axis, ctx.keepdims = a.shape, axis, keepdims
        ctx.count = a.size if axis is None else int(np.prod([a.shape[i] for i in axis]))
        return np.mean(a, axis=axis, keepdims=keepdims)

    @staticmethod
    def backward(ctx, g):
        if not ctx.keepdims and ctx.axis is not None:
            g = np.expand_dims(g, ctx.axis)
        return np.broadcast_to(g / ctx.count, ctx.shape)


class Reshape(Function):
    """``a`` in ``shape`` (same size); the gradient is reshaped back. Also on the GPU."""

    gpu = True

    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        return arrays.reshape(a, shape)

    @staticmethod
    def backward(ctx, g):
        return arrays.reshape(g, ctx.shape)


class Permute(Function):
    """``a.transpose(axes)``; the gradient is permuted back by the inverse order. On the
    GPU (4-D tensors) a permuted copy."""

    gpu = True

    @staticmethod
    def forward(ctx, a, axes):
        ctx.axes = axes
        return arrays.transpose(a, axes)

    @staticmethod
    def backward(ctx, g):
        # the inverse order (np.argsort of a tuple cost about 10 us a call)
        return arrays.transpose(g, tuple(sorted(range(len(ctx.axes)),
                                                key=ctx.axes.__getitem__)))


class GetItem(Function):
    """``a[index]`` (numpy indexing); the gradient is scattered into zeros of a's
    shape, entries picked twice receiving both contributions."""

    @staticmethod
    def forward(ctx, a, index):
        ctx.shape, ctx.dtype, ctx.index = a.shape, a.dtype, index
        return a[index]

    @staticmethod
    def backward(ctx, g):
        out = np.zeros(ctx.shape, ctx.dtype)
        np.add.at(out, ctx.index, g)  # repeated indices accumulate
        return out

