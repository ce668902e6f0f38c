"""Losses with torch's names, arguments and reductions: mean squared error, binary cross
entropy on logits, negative log-likelihood, as functions and as modules.

Every loss takes ``reduction``: "mean" (default), "sum" or "none" (the per-element
losses, shaped as torch's). Each is one :class:`~fastconv.autograd.Function` whose
backward sits next to its forward.

Examples
--------
>>> import numpy as np
>>> from fastconv.nn import losses
>>> float(losses.mse_loss(np.array([1.0, 2.0]), np.array([0.0, 0.0])).item())
2.5
>>> logp = np.log(np.array([[0.5, 0.5], [0.25, 0.75]]))
>>> round(float(losses.nll_loss(logp, np.array([0, 1])).item()), 6)
0.490415
"""

from __future__ import annotations

import numpy as np

from ..autograd import Function, Tensor, unbroadcast
from ..autograd.activations import sigmoid_array
from .module import Module

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(op: str, reduction) -> None:
    """ValueError naming ``op`` unless ``reduction`` is one of :data:`REDUCTIONS`."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction={reduction!r} is not known; acceptable values "
                         f"are {', '.join(map(repr, REDUCTIONS))}")


def _tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def _reduce(losses: np.ndarray, reduction: str) -> np.ndarray:
    if reduction == "none":
        return losses
    total = losses.sum(dtype=losses.dtype)
    return total / losses.dtype.type(losses.size) if reduction == "mean" else total


def _reduced_grad(g: np.ndarray, shape: tuple, reduction: str) -> np.ndarray:
    """The gradient of each per-element loss of ``shape`` given the output's ``g``."""
    if reduction == "none":
        return g
    if reduction == "mean":
        size = int(np.prod(shape))
        g = g / g.dtype.type(size) if size else g
    return np.broadcast_to(g, shape)


def _float_pair(op: str, input, target) -> tuple[Tensor, Tensor]:
    """``input`` and ``target`` as floating-point Tensors of one shape."""
    x, t = _tensor(input), _tensor(target)
    for name, a in (("input", x), ("target", t)):
        if a.dtype.kind != "f":
            raise TypeError(f"{op}: {name} must be floating point, got dtype {a.dtype}")
    if x.shape != t.shape:
        raise ValueError(f"{op}: target of shape {t.shape} must have the input's shape "
                         f"{x.shape}")
    return x, t


# --------------------------------------------------------------------------- squared error
class MSE(Function):
    """(input - target)**2, reduced; d/dinput = 2 (input - target) = -d/dtarget."""

    @staticmethod
    def forward(ctx, x, t, reduction="mean"):
        diff = x - t
        ctx.save_for_backward(diff)
        ctx.reduction = reduction
        return _reduce(diff * diff, reduction)

    @staticmethod
    def backward(ctx, g):
        (diff,) = ctx.saved_tensors
        gx = _reduced_grad(g, diff.shape, ctx.reduction) * (2 * diff)
        return gx, -gx if ctx.needs_input_grad[1] else None


def mse_loss(input, target, reduction: str = "mean") -> Tensor:
    """Mean squared error (torch's F.mse_loss) of input and target of one shape (any).

    Unlike torch, a target of another shape is an error rather than broadcast with a
    warning. Both arguments are differentiable. Returns a 0-d Tensor, or the input's
    shape for reduction="none".
    """
    check_reduction("mse_loss", reduction)
    x, t = _float_pair("mse_loss", input, target)
    return MSE.apply(x, t, reduction=reduction)


# ------------------------------------------------------------------ binary cross entropy
class BCEWithLogits(Function):
    """-w [p y log s(x) + (1 - y) log(1 - s(x))] with s the sigmoid, p the positive
    weight and w the weight, computed stably as w [(1 - y) x + l softplus(-x)] with
    l = 1 + (p - 1) y and ``softplus(-x) = log1p(exp(-|x|)) + max(-x, 0)`` (torch's formula),
    its first part (1 - y) x + softplus(-x) as ``max(x, 0) - x y + log1p(exp(-|x|))`` so that
    a confident right answer does not lose its small loss to cancellation.

    Gradients: x: w [(1 - y) + l (s(x) - 1)]; y: w [(p - 1) softplus(-x) - x];
    w: the unweighted loss; p: w y softplus(-x) (the last two summed to their shapes).
    """

    @staticmethod
    def forward(ctx, x, y, weight=None, pos_weight=None, reduction="mean"):
        one = x.dtype.type(1)
        log1p_exp = np.log1p(np.exp(-np.abs(x)))
        softplus = log1p_exp + np.maximum(-x, 0)
        # (1 - y) x + softplus(-x) without the cancellation of its two terms
        losses = np.maximum(x, 0) - x * y + log1p_exp
        if pos_weight is None:
            lw = one
        else:
            lw = one + (pos_weight - one) * y
            losses = losses + (lw - one) * softplus
        ctx.save_for_backward(x, y, weight, pos_weight, softplus, lw, losses)
        ctx.reduction = reduction
        if weight is not None:
            losses = losses * weight
        return _reduce(losses, reduction)

    @staticmethod
    def backward(ctx, g):
        x, y, weight, pos_weight, softplus, lw, losses = ctx.saved_tensors
        one = x.dtype.type(1)
        g = _reduced_grad(g, x.shape, ctx.reduction)
        gw = g if weight is None else g * weight
        need_x, need_y, need_w, need_p = ctx.needs_input_grad
        gx = gy = gweight = gpos = None
        if need_x:
            # (1 - y) + l (s(x) - 1) = (1 - y) s(x) - (l - 1 + y) s(-x): no cancellation
            # when the logit is confidently right
            gx = gw * ((one - y) * sigmoid_array(x) - (lw - one + y) * sigmoid_array(-x))
        if need_y:
            p_minus_1 = 0 if pos_weight is None else pos_weight - one
            gy = gw * (p_minus_1 * softplus - x)
        if need_w:
            gweight = unbroadcast(g * losses, weight.shape)
        if need_p:
            gpos = unbroadcast(gw * y * softplus, pos_weight.shape)
        return gx, gy, gweight, gpos


def _broadcasts_to(op: str, name: str, a: Tensor | None, shape: tuple) -> None:
    if a is None:
        return
    try:
        ok = np.broadcast_shapes(a.shape, shape) == shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{op}: {name} of shape {a.shape} does not broadcast to the "
                         f"input's shape {shape}")


def binary_cross_entropy_with_logits(input, target, weight=None, reduction: str = "mean",
                                     pos_weight=None) -> Tensor:
    """Sigmoid + binary cross entropy in one stable op (torch's
    F.binary_cross_entropy_with_logits).

    Parameters
    ----------
    input : logits of any shape; target : probabilities in [0, 1] of the same shape.
    weight : rescales each element's loss; broadcasts to the input's shape.
    pos_weight : weight of the positive term per class (the last axis), e.g. (C,);
        broadcasts to the input's shape.
    All four are differentiable. Returns a 0-d Tensor, or the input's shape for
    reduction="none".
    """
    op = "binary_cross_entropy_with_logits"
    check_reduction(op, reduction)
    x, t = _float_pair(op, input, target)
    w = None if weight is None else _tensor(weight)
    p = None if pos_weight is None else _tensor(pos_weight)
    _broadcasts_to(op, "weight", w, x.shape)
    _broadcasts_to(op, "pos_weight", p, x.shape)
    return BCEWithLogits.apply(x, t, w, p, reduction=reduction)


# ------------------------------------------------------------- negative log-likelihood
class NLL(Function):
    """-weight[t] * x[t] per row of x (rows, C) with class targets t (rows,); rows whose
    target is ignore_index count for nothing. "mean" divides by the sum of the weights of
    the counted rows (torch's rule; NaN when none is counted)."""

    @staticmethod
    def forward(ctx, x, t, weight=None, ignore_index=-100, reduction="mean", shape=None):
        rows = np.arange(x.shape[0])
        keep = t != ignore_index
        safe = np.where(keep, t, 0)
        w = np.ones(x.shape[1], x.dtype) if weight is None else weight.astype(x.dtype)
        wt = np.where(keep, w[safe], x.dtype.type(0))        # each row's weight
        losses = -wt * x[rows, safe]
        ctx.save_for_backward(safe, wt)
        ctx.reduction, ctx.x_shape = reduction, x.shape
        if reduction == "none":
            return losses.reshape(shape)
        total = losses.sum(dtype=x.dtype)
        if reduction == "sum":
            return total
        ctx.denominator = wt.sum(dtype=x.dtype)
        with np.errstate(invalid="ignore", divide="ignore"):
            return total / ctx.denominator

    @staticmethod
    def backward(ctx, g):
        safe, wt = ctx.saved_tensors
        if ctx.reduction == "none":
            g = g.reshape(-1)
        elif ctx.reduction == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                g = g / ctx.denominator
        gx = np.zeros(ctx.x_shape, wt.dtype)
        gx[np.arange(len(safe)), safe] = -wt * g
        return gx, None


def nll_loss(input, target, weight=None, ignore_index: int = -100,
             reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of log-probabilities (torch's F.nll_loss).

    Parameters
    ----------
    input : (N, C), (N, C, d1, ...) or unbatched (C,) log-probabilities.
    target : integer classes in [0, C) (or ``ignore_index``) of shape (N,),
        (N, d1, ...) or ().
    weight : (C,) per-class weights (not differentiable; an ndarray or a Tensor that
        does not require grad).
    Returns a 0-d Tensor, or the target's shape for reduction="none".
    """
    op = "nll_loss"
    check_reduction(op, reduction)
    x = _tensor(input)
    t = np.asarray(target.data if isinstance(target, Tensor) else target)
    if x.dtype.kind != "f":
        raise TypeError(f"{op}: input must be floating point, got dtype {x.dtype}")
    if t.dtype.kind not in "iu":
        raise TypeError(f"{op}: target must hold integer class indices, got dtype {t.dtype}")
    if x.ndim < 1:
        raise ValueError(f"{op}: input must be (N, C), (N, C, d1, ...) or (C,), got a 0-d "
                         "tensor")
    c = x.shape[0] if x.ndim == 1 else x.shape[1]
    want = () if x.ndim == 1 else x.shape[:1] + x.shape[2:]
    if t.shape != want:
        raise ValueError(f"{op}: target of shape {t.shape} does not match input of shape "
                         f"{x.shape}: expected target shape {want}")
    if weight is not None:
        if isinstance(weight, Tensor) and weight.requires_grad:
            raise ValueError(f"{op}: weight does not get a gradient; pass it without "
                             "requires_grad")
        weight = np.asarray(weight.data if isinstance(weight, Tensor) else weight)
        if weight.shape != (c,):
            raise ValueError(f"{op}: weight must have shape (C,) = ({c},), got "
                             f"{weight.shape}")
    bad = (t != ignore_index) & ((t < 0) | (t >= c))
    if bad.any():
        raise ValueError(f"{op}: target value {t[bad].flat[0]} is out of range for C={c} "
                         f"classes (must be in [0, {c - 1}] or ignore_index={ignore_index})")
    # classes on the last axis, one row per prediction
    rows = x.reshape(1, c) if x.ndim == 1 else x
    if x.ndim > 2:
        rows = rows.permute(0, *range(2, x.ndim), 1)
    rows = rows.reshape(-1, c)
    return NLL.apply(rows, t.reshape(-1).astype(np.intp), weight=weight,
                     ignore_index=ignore_index, reduction=reduction, shape=t.shape)


# ---------------------------------------------------------------------------- modules
class _Loss(Module):
    def __init__(self, reduction: str = "mean"):
        super().__init__()
        check_reduction(type(self).__name__, reduction)
        self.reduction = reduction

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class MSELoss(_Loss):
    """Mean squared error (see :func:`mse_loss`)."""

    def forward(self, input, target):
        return mse_loss(input, target, self.reduction)


class BCEWithLogitsLoss(_Loss):
    """Sigmoid + binary cross entropy (see :func:`binary_cross_entropy_with_logits`);
    ``weight`` and ``pos_weight`` are buffers (in the state dict, as torch's, and without
    gradients)."""

    def __init__(self, weight=None, reduction: str = "mean", pos_weight=None):
        super().__init__(reduction)
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, input, target):
        return binary_cross_entropy_with_logits(input, target, self.weight, self.reduction,
                                                self.pos_weight)


class NLLLoss(_Loss):
    """Negative log-likelihood of log-probabilities (see :func:`nll_loss`); ``weight``
    is a buffer, as torch's."""

    def __init__(self, weight=None, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__(reduction)
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index

    def forward(self, input, target):
        return nll_loss(input, target, self.weight, self.ignore_index, self.reduction)
