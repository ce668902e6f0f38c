"""Differentiable network ops (torch.nn.functional's names and signatures).

Each op is one :class:`~fastconv.autograd.Function`; conv2d, pooling and batch norm call
fastconv's kernels for both directions (``fastconv.conv2d`` / ``conv2d_backward``,
``max_pool2d(return_indices=True)`` / ``max_pool2d_backward``, ``avg_pool2d`` /
``avg_pool2d_backward``, ``global_avg_pool2d`` / ``global_avg_pool2d_backward``,
``batch_norm(return_stats=True)`` / ``batch_norm_backward``); conv2d lives in
``fastconv.nn._conv2d_op`` (a layer's problem validated once per shape), conv1d and
conv3d in ``fastconv.nn._conv_nd_ops``. Inputs may be Tensors or
ndarrays; results are Tensors. The losses live in ``fastconv.nn.losses``, resizing in
``fastconv.nn.interpolate`` and pad / unfold / fold in ``fastconv.nn.padfold``; all are
re-exported here.
"""

from __future__ import annotations

import numpy as np

from .. import _blas, _elementwise, devices
from .. import norm as _norm
from .. import pool as _pool
from .._args import batch_norm_backward_record, batch_norm_record
from ..autograd import (
    GELU,
    Function,
    LeakyReLU,
    LogSoftmax,
    Permute,
    Reshape,
    Softmax,
    Tensor,
    arrays,
)
from ..autograd import ReLU as _ReLU
from ..autograd import Sigmoid as _Sigmoid
from ..autograd import Tanh as _Tanh
from ..autograd.arrays import on_gpu
from ..autograd.dims import dim_index, flat_shape
from ..layout import get as _get_layout
from ..pool import ops as _pool_ops
from ..rng import default_generator
from . import _softmax_loss
from ._conv2d_op import Conv2d, conv2d  # noqa: F401
from ._conv_nd_ops import conv1d, conv3d  # noqa: F401
from ._targets import class_targets
from .interpolate import interpolate  # noqa: F401
from .losses import (  # noqa: F401
    REDUCTIONS,
    binary_cross_entropy_with_logits,
    check_reduction,
    mse_loss,
    nll_loss,
)
from .padfold import fold, pad, unfold  # noqa: F401
from .transpose import conv_transpose2d  # noqa: F401


def _tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


# -------------------------------------------------------------------------------- pooling
class MaxPool2d(Function):
    """Max pooling; ``relu``: max_pool2d(relu(x)) as relu(max_pool2d(x)), which is exact
    (``fastconv.nn.fused.relu_max_pool2d``). On the host that ReLU runs in place on the
    pooled map and its gradient inside the unpooling's scatter
    (``max_pool2d_backward(mask=...)``): no pass and no array of their own. The common
    layer (2x2 windows, stride 2) keeps each window's winning tap as an int32 code
    instead of an int64 index, with the ReLU inside the pooling's own pass
    (``fastconv.pool.ops.max_pool2d_codes``). LeNet's pools, one thread, CPU time of
    this op forward / backward, old and new code in alternating processes: NHWC
    (64, 28, 28, 6) 337-352 / 240-251 -> 281-291 / 201-206 us, (64, 10, 10, 16) 51-56 /
    73-76 -> 41-43 / 51-55; NCHW (64, 6, 28, 28) 274-277 / 191-205 -> 259-267 / 157-169,
    (64, 16, 10, 10) 131-145 / 66-67 -> 119-124 / 61-65."""

    gpu = True

    @staticmethod
    def forward(ctx, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                layout="NCHW", relu=False):
        device = devices.array_device(x)
        window = (kernel_size, stride, padding, dilation, ceil_mode)
        if not ctx.needs_input_grad[0]:      # no graph: the indices are not needed
            y = _pool.max_pool2d(x, *window, layout=layout, device=device)
            return _relu_of_own(y) if relu else y
        ctx.shape, ctx.layout = x.shape, layout
        coded = _pool_ops.max_pool2d_codes(x, window, layout, relu)
        if coded is not None:
            (y, ctx.codes), ctx.dtype = coded, x.dtype
            ctx.relu_out = y if relu else None
            return y
        ctx.codes = None
        y, idx = _pool.max_pool2d(x, *window, layout=layout, return_indices=True,
                                  device=device)
        ctx.save_for_backward(idx)
        ctx.relu_out = _relu_of_own(y) if relu else None
        return y if ctx.relu_out is None else ctx.relu_out

    @staticmethod
    def backward(ctx, g):
        if ctx.codes is not None:       # a host array of the output's dtype
            return _pool_ops.max_pool2d_codes_backward(np.asarray(g, ctx.dtype), ctx.codes,
                                                       ctx.shape, ctx.layout, ctx.relu_out)
        (idx,) = ctx.saved_tensors
        device = devices.array_device(g)
        mask = ctx.relu_out     # on the host the ReLU's gradient is masked in the scatter
        if mask is not None and device != "cpu":
            g, mask = arrays.relu_backward(g, mask), None
        return _pool.max_pool2d_backward(g, idx, ctx.shape, layout=ctx.layout, device=device,
                                         mask=mask)


def _relu_of_own(y):
    """ReLU of an array this op made (in place on the host, a new array on the GPU)."""
    return _elementwise.relu_in_place(y) if isinstance(y, np.ndarray) else arrays.relu(y)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *,
               layout="NCHW") -> Tensor:
    """Max pooling; the gradient goes to the first maximum of each window."""
    return MaxPool2d.apply(input, kernel_size=kernel_size, stride=stride, padding=padding,
                           dilation=dilation, ceil_mode=ceil_mode, layout=layout)


class AvgPool2d(Function):
    gpu = True

    @staticmethod
    def forward(ctx, x, kernel_size, stride=None, padding=0, ceil_mode=False,
                count_include_pad=True, layout="NCHW"):
        ctx.shape = x.shape
        ctx.args = (kernel_size, stride, padding, ceil_mode, count_include_pad)
        ctx.layout = layout
        return _pool.avg_pool2d(x, *ctx.args, layout=layout, device=devices.array_device(x))

    @staticmethod
    def backward(ctx, g):
        return _pool.avg_pool2d_backward(g, ctx.shape, *ctx.args, layout=ctx.layout,
                                         device=devices.array_device(g))


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, *, layout="NCHW") -> Tensor:
    """Average pooling (torch's count_include_pad and ceil_mode rules)."""
    return AvgPool2d.apply(input, kernel_size=kernel_size, stride=stride, padding=padding,
                           ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                           layout=layout)


class GlobalAvgPool2d(Function):
    gpu = True

    @staticmethod
    def forward(ctx, x, layout="NCHW"):
        ctx.shape, ctx.layout = x.shape, layout
        return _pool.global_avg_pool2d(x, layout=layout, device=devices.array_device(x))

    @staticmethod
    def backward(ctx, g):
        return _pool.global_avg_pool2d_backward(g, ctx.shape, layout=ctx.layout,
                                                device=devices.array_device(g))


def global_avg_pool2d(input, *, layout="NCHW") -> Tensor:
    """Mean over H and W: (N, C, H, W) -> (N, C, 1, 1) (NHWC: (N, 1, 1, C))."""
    return GlobalAvgPool2d.apply(input, layout=layout)


def adaptive_avg_pool2d(input, output_size, *, layout="NCHW") -> Tensor:
    """Only output_size 1 (global average pooling) is supported."""
    check_adaptive_output_size("adaptive_avg_pool2d", output_size)
    return GlobalAvgPool2d.apply(input, layout=layout)


def check_adaptive_output_size(op: str, output_size) -> None:
    if output_size not in (1, (1, 1), [1, 1]):
        raise ValueError(f"{op}: output_size={output_size!r} is not supported; only output "
                         "size 1 (global average pooling) is")


# ----------------------------------------------------------------------------- batch norm
class BatchNorm(Function):
    """Batch norm (then max(., 0) with ``relu``); with a ``residual`` (relu=True, host
    arrays its record takes: ``fastconv.nn.fused.batch_norm_add_relu``), max(batch
    norm + residual, 0) in the same pass, and the residual's gradient from the
    backward's second pass."""

    gpu = True

    @staticmethod
    def forward(ctx, x, weight, bias, residual=None, running_mean=None, running_var=None,
                training=False, momentum=0.1, eps=1e-5, layout="NCHW", relu=False):
        # relu: max(y, 0) in the normalising pass (fastconv.nn.fused.batch_norm_relu).
        # Host arrays the public function would take as they are: checked once per
        # layer's shapes (the record kept), then the kernels.
        a = batch_norm_record(x, running_mean, running_var, weight, bias, training,
                              momentum, eps, layout)
        if a is not None:
            y, mean, invstd = _norm.forward(x, running_mean, running_var, weight, bias, a,
                                            relu, residual)
        else:
            y, mean, invstd = _norm.batch_norm(x, running_mean, running_var, weight, bias,
                                               training, momentum, eps, layout=layout,
                                               return_stats=True,
                                               fuse_relu=relu and residual is None,
                                               device=devices.array_device(x))
            if residual is not None:
                y = _elementwise.add_relu(y, residual)
        ctx.save_for_backward(x, mean, invstd, weight, y if relu else None)
        ctx.training, ctx.layout, ctx.bias = training, layout, bias
        ctx.residual = residual is not None
        return y

    @staticmethod
    def backward(ctx, g):
        # y: the fused ReLU's output (host only), its gradient applied in the batch
        # norm's own passes: recomputed there from x where the record is kept and no
        # residual was added
        x, mean, invstd, weight, y = ctx.saved_tensors
        a = batch_norm_backward_record(g, x, mean, invstd, weight, ctx.training, ctx.layout,
                                       y)
        if a is not None:
            grads = _norm.gradients(g, x, mean, invstd, weight, a,
                                    y if ctx.residual else None,
                                    relu_from_x=y is not None and not ctx.residual,
                                    bias=ctx.bias, residual_grad=ctx.residual)
        else:
            if ctx.residual:
                g = _elementwise.relu_backward(g, y)
            grads = _norm.batch_norm_backward(g, x, mean, invstd, weight,
                                              training=ctx.training, layout=ctx.layout,
                                              device=devices.array_device(g),
                                              relu_output=None if ctx.residual else y)
            grads += (g,) if ctx.residual else ()
        gx, gw, gb = grads[:3]
        return (gx, None if weight is None else gw, None if ctx.bias is None else gb,
                *grads[3:])


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, layout="NCHW") -> Tensor:
    """Batch normalisation over N, H, W per channel (torch's F.batch_norm).

    Parameters
    ----------
    running_mean, running_var : (C,) ndarrays updated in place when training (momentum,
        unbiased variance); used to normalise when not training. May be None when
        training.
    weight, bias : (C,) Tensors (gamma, beta) or None.
    """
    return BatchNorm.apply(input, weight, bias, running_mean=running_mean,
                           running_var=running_var, training=training, momentum=momentum,
                           eps=eps, layout=layout)


# ---------------------------------------------------------------------------- dense & misc
class Linear(Function):
    """y = x @ W.T + b for x (*, in), W (out, in), b (out,). The products run through
    ``fastconv._blas.matmul`` (one BLAS thread for small layers); on the GPU through
    ``fastconv.cuda.linear`` (the GEMM kernel). ``relu``: max(y, 0) in the same op
    (the gradient passes where it is positive)."""

    gpu = True

    @staticmethod
    def forward(ctx, x, w, b, relu=False):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        y = Linear._affine(x, w, b)            # a fresh array
        ctx.relu_out = _relu_of_own(y) if relu else None
        return y if ctx.relu_out is None else ctx.relu_out

    @staticmethod
    def _affine(x, w, b):
        gpu = on_gpu("linear", x)
        if gpu is not None:
            return gpu(x, w, b)
        x2 = x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x
        y = _blas.matmul(x2, w.T).reshape(x.shape[:-1] + (w.shape[0],))
        if b is None:
            return y
        if np.result_type(y, b) == y.dtype:
            y += b                                 # y is a fresh array
            return y
        return y + b

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        if ctx.relu_out is not None:
            g = arrays.relu_backward(g, ctx.relu_out)
        need_x, need_w, need_b = ctx.needs_input_grad
        gpu = on_gpu("linear_backward", g)
        if gpu is not None:
            return gpu(g, x, w, (need_x, need_w, need_b and ctx.has_bias))
        g2 = g.reshape(-1, g.shape[-1])
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _blas.matmul(g2, w).reshape(x.shape)
        if ctx.needs_input_grad[1]:
            gw = _blas.matmul(g2.T, x.reshape(-1, x.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2.sum(axis=0)
        return gx, gw, gb


def linear(input, weight, bias=None, *, relu: bool = False) -> Tensor:
    """``input (*, in_features) @ weight.T (weight (out, in)) + bias (out,)``; with
    ``relu``, max(that, 0) in the same op."""
    x, w = _tensor(input), _tensor(weight)
    if x.ndim < 1 or w.ndim != 2 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"linear: input of shape {x.shape} does not match weight of shape "
                         f"{w.shape}: input's last axis must equal weight's in_features")
    if bias is not None and _tensor(bias).shape != (w.shape[0],):
        raise ValueError(f"linear: bias must have shape ({w.shape[0]},), got "
                         f"{_tensor(bias).shape}")
    return Linear.apply(x, w, bias, relu=relu)


class Dropout(Function):
    @staticmethod
    def forward(ctx, x, mask=None):
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, g):
        return g * ctx.saved_tensors[0]


def dropout(input, p: float = 0.5, training: bool = True, *, rng=None) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p) (training only).

    ``rng``: a numpy Generator; fastconv's default generator when None (manual_seed).
    """
    check_probability("dropout", p)
    x = _tensor(input)
    if not training or p == 0.0:
        return x
    return Dropout.apply(x, mask=_dropout_mask(x.shape, x.dtype, p, rng))


def check_probability(op: str, p) -> None:
    """ValueError naming ``op`` unless ``p`` is a number in [0, 1]."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) \
            or not 0.0 <= p <= 1.0:
        raise ValueError(f"{op}: p={p!r} must be a probability in [0, 1]")


def _dropout_mask(shape, dtype, p: float, rng) -> np.ndarray:
    """1 / (1 - p) where an element is kept (probability 1 - p), else 0 (all 0 for p=1)."""
    rng = default_generator() if rng is None else rng
    keep = rng.random(shape) >= p
    return keep.astype(dtype) * dtype.type(0.0 if p == 1.0 else 1.0 / (1.0 - p))


def dropout2d(input, p: float = 0.5, training: bool = True, *, layout: str = "NCHW",
              rng=None) -> Tensor:
    """Zero whole channels: each (sample, channel) map of a 4-D input (N, C, H, W)
    (NHWC: (N, H, W, C)) is zeroed with probability p, the rest scaled by 1/(1-p)
    (training only; p=0 or training=False return the input, p=1 zeros).

    ``rng``: a numpy Generator; fastconv's default generator when None (manual_seed).
    One draw per (sample, channel), in (N, C) order whatever the layout.
    """
    check_probability("dropout2d", p)
    lay = _get_layout("dropout2d", layout)
    x = _tensor(input)
    if x.ndim != 4:
        raise ValueError(f"dropout2d: input must be 4-D ({lay.name}), got shape {x.shape}")
    if not training or p == 0.0:
        return x
    n, c = x.shape[0], x.shape[lay.channel_axis]
    mask = _dropout_mask((n, c), x.dtype, p, rng)
    return Dropout.apply(x, mask=lay.from_canonical_view(mask[:, :, None, None]))


def leaky_relu(input, negative_slope: float = 0.01) -> Tensor:
    """input where input > 0, else negative_slope * input (any shape)."""
    if isinstance(negative_slope, bool) or not isinstance(
            negative_slope, (int, float, np.integer, np.floating)):
        raise TypeError(f"leaky_relu: negative_slope={negative_slope!r} must be a number")
    return LeakyReLU.apply(_float_tensor("leaky_relu", input),
                           negative_slope=float(negative_slope))


GELU_APPROXIMATIONS = ("none", "tanh")


def gelu(input, approximate: str = "none") -> Tensor:
    """x * Phi(x), Phi the standard normal CDF (approximate="none"), or torch's tanh
    approximation (approximate="tanh"); any shape."""
    if approximate not in GELU_APPROXIMATIONS:
        raise ValueError(f"gelu: approximate={approximate!r} is not known; acceptable "
                         f"values are {', '.join(map(repr, GELU_APPROXIMATIONS))}")
    return GELU.apply(_float_tensor("gelu", input), approximate=approximate)


def _float_tensor(op: str, x) -> Tensor:
    x = _tensor(x)
    if x.dtype.kind != "f":
        raise TypeError(f"{op}: input must be floating point, got dtype {x.dtype}")
    return x


def relu(input) -> Tensor:
    """max(input, 0) element-wise (any shape; NaN stays NaN)."""
    return _ReLU.apply(input)


def tanh(input) -> Tensor:
    """tanh element-wise (any shape)."""
    return _Tanh.apply(input)


def sigmoid(input) -> Tensor:
    """1 / (1 + exp(-input)) element-wise (any shape), without overflow."""
    return _Sigmoid.apply(input)


def softmax(input, dim: int = -1) -> Tensor:
    """Softmax along ``dim`` (any shape; the output has the input's shape)."""
    x = _tensor(input)
    return Softmax.apply(x, axis=dim_index(dim, x.ndim))


def log_softmax(input, dim: int = -1) -> Tensor:
    """Log of the softmax along ``dim``, computed stably (output shape = input shape)."""
    x = _tensor(input)
    return LogSoftmax.apply(x, axis=dim_index(dim, x.ndim))


def flatten(input, start_dim: int = 1, end_dim: int = -1, *, layout="NCHW") -> Tensor:
    """Merge axes start_dim..end_dim (default: everything but the batch axis).

    layout="NHWC": a 4-D (N, H, W, C) input is flattened in the order of its NCHW form,
    (C, H, W), as torch flattens a channels_last tensor, so that the weights of a following
    Linear layer are those of the NCHW network (numpy copies the input when H * W > 1).
    """
    x = _tensor(input)
    lay = _get_layout("flatten", layout)
    if not lay.is_canonical and x.ndim == 4:
        x = Permute.apply(x, axes=lay.to_canonical)
    return Reshape.apply(x, shape=flat_shape(x.shape, start_dim, end_dim))


# ---------------------------------------------------------------------------------- loss

class CrossEntropy(Function):
    gpu = True

    @staticmethod
    def forward(ctx, logits, target, reduction="mean"):
        ctx.reduction = reduction
        gpu = on_gpu("cross_entropy", logits)
        if gpu is not None:
            loss, logp = gpu(logits, target, reduction)
            ctx.save_for_backward(logp, target)
            return loss
        losses, logp = _softmax_loss.forward(logits, target)
        ctx.save_for_backward(logp, target)
        if reduction == "none":
            return losses
        total = losses.sum()
        return total / logits.dtype.type(logits.shape[0]) if reduction == "mean" else total

    @staticmethod
    def backward(ctx, g):
        logp, target = ctx.saved_tensors
        gpu = on_gpu("cross_entropy_backward", g)
        if gpu is not None:
            return gpu(g, logp, target, ctx.reduction), None
        n = logp.shape[0]
        if ctx.reduction == "mean":
            g = g / logp.dtype.type(n)
        scale = g if ctx.reduction == "none" else np.full(n, g, np.result_type(g, logp))
        return _softmax_loss.backward(logp, target, scale), None


def cross_entropy(input, target, reduction: str = "mean") -> Tensor:
    """Softmax cross entropy of logits (N, C) with integer class targets (N,).

    Computed as a fused, stable log-softmax + negative log-likelihood; reduction
    "mean" (default), "sum" or "none". Logits on "cuda" run on the GPU; the target may
    then be on the host (checked there, then copied over) or on the GPU (not read back:
    a value outside [0, C) gives a NaN loss instead of an error).
    """
    x = _tensor(input)
    check_reduction("cross_entropy", reduction)
    if x.ndim != 2:
        raise ValueError(f"cross_entropy: input must be 2-D logits (N, C), got shape {x.shape}")
    t = class_targets("cross_entropy", target, x.shape, x.device)
    return CrossEntropy.apply(x, t, reduction=reduction)
