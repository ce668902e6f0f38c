"""The batch-norm record: the checks of ``batch_norm`` and ``batch_norm_backward``.

Input is 4-D in the caller's layout; per-channel vectors (running statistics, weight,
bias, mean, invstd) are (C,) arrays. Errors name the op, the rule and the values.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from .. import layout as _layout
from .checks import check_array, check_flag, check_layout, check_same_dtype, plain_float
from .memo import kept, key_of


@dataclass(frozen=True)
class BatchNormArgs:
    """A batch-norm problem: ``c`` channels of ``count`` = N*H*W values each, in
    ``layout``; ``training`` selects the batch statistics (and, backward, the gradient
    through them). ``momentum`` and ``eps`` are the forward's (the backward record keeps
    the defaults and does not use them)."""

    c: int
    count: int
    training: bool
    layout: str
    momentum: float = 0.1
    eps: float = 1e-5


def _check_real(op, name, value, lo, hi=None) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{op}: {name}={value!r} must be a real number")
    value = float(value)
    if not np.isfinite(value) or value < lo or (hi is not None and value > hi):
        rule = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{op}: {name}={value!r} must be finite and {rule}")
    return value


def _check_input(op, x, layout, half):
    """(x, c, count): x a 4-D float array (float16 too when ``half``) in ``layout``, its
    channel count and the number of values per channel N*H*W."""
    dims = _layout.LAYOUTS[check_layout(op, layout)]
    x = check_array(op, "input", x, half)
    if x.ndim != 4:
        raise ValueError(f"{op}: input must be 4-D ({', '.join(dims.name)}) for layout "
                         f"{layout}, got {x.ndim}-D shape {x.shape}")
    c = x.shape[dims.channel_axis]
    return x, c, x.size // c if c else 0


def _check_channel_vector(op, name, a, c, dtype=None, half=False):
    """None, or a (C,) float array (of ``dtype`` when given; float16 too when ``half``)."""
    if a is None:
        return None
    a = check_array(op, name, a, half)
    if a.shape != (c,):
        raise ValueError(f"{op}: {name} must have shape (C,) = ({c},), got {a.shape}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{op}: {name} has dtype {a.dtype} but input has dtype {dtype}; "
                        "they must match")
    return a


def batch_norm_inputs(op, x, running_mean, running_var, weight, bias, training, momentum,
                      eps, layout, return_stats, half=False):
    """The checks of ``batch_norm``: (record, (x, running_mean, running_var, weight,
    bias)) with every array a plain ndarray (array-likes converted, as
    :func:`~fastconv._args.checks.check_array`). Running statistics are both None
    (training only) or (C,) arrays of x's dtype; in training they are updated in place,
    so they must then be writeable numpy arrays (a subclass's memory is updated through
    a view); momentum in [0, 1]; eps >= 0; training needs more than one value per
    channel. ``half``: float16 arrays are accepted (the CPU front end)."""
    x, c, count = _check_input(op, x, layout, half)
    training = check_flag(op, "training", training)
    check_flag(op, "return_stats", return_stats)
    momentum = _check_real(op, "momentum", momentum, 0.0, 1.0)
    eps = _check_real(op, "eps", eps, 0.0)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: running_mean and running_var must both be arrays or both "
                         "be None")
    if running_mean is None and not training:
        raise ValueError(f"{op}: running_mean and running_var are required when "
                         "training=False")
    stats = []
    for name, a in (("running_mean", running_mean), ("running_var", running_var)):
        if a is not None and training and not isinstance(a, np.ndarray):
            raise TypeError(f"{op}: {name} must be a numpy.ndarray when training (it is "
                            f"updated in place), got {type(a).__name__}; np.asarray shares "
                            "the memory of a CPU tensor or a writeable buffer")
        given, a = a, _check_channel_vector(op, name, a, c, x.dtype, half)
        if a is not None and training:
            if a is not given and not np.may_share_memory(a, given):
                raise TypeError(f"{op}: {name} has dtype {given.dtype} (non-native byte "
                                "order); training updates it in place, which needs the "
                                "native order")
            if not a.flags.writeable:
                raise ValueError(f"{op}: {name} is read-only; training updates it in place")
        stats.append(a)
    weight = _check_channel_vector(op, "weight", weight, c, x.dtype, half)
    bias = _check_channel_vector(op, "bias", bias, c, x.dtype, half)
    if training and count == 1:
        raise ValueError(f"{op}: expected more than 1 value per channel when training, got "
                         f"input shape {x.shape}")
    return BatchNormArgs(c, count, training, layout, momentum, eps), (x, *stats, weight, bias)


def batch_norm_args(op, x, running_mean, running_var, weight, bias, training, momentum,
                    eps, layout, return_stats) -> BatchNormArgs:
    """The record of :func:`batch_norm_inputs` (its checks, without the arrays)."""
    return batch_norm_inputs(op, x, running_mean, running_var, weight, bias, training,
                             momentum, eps, layout, return_stats)[0]


def batch_norm_backward_inputs(op, grad_y, x, mean, invstd, weight, training, layout,
                               half=False, relu_output=None):
    """The checks of ``batch_norm_backward``: (record, (grad_y, x, mean, invstd, weight,
    relu_output)) with every array a plain ndarray. grad_y of x's shape and dtype, mean
    and invstd (C,) float arrays (required), weight (C,) of x's dtype or None,
    relu_output None or of x's shape and dtype; float16 too when ``half``."""
    x, c, count = _check_input(op, x, layout, half)
    grad_y = check_array(op, "grad_y", grad_y, half)
    check_same_dtype(op, grad_y=grad_y, input=x)
    if grad_y.shape != x.shape:
        raise ValueError(f"{op}: grad_y must have the shape of the input {x.shape}, got "
                         f"{grad_y.shape}")
    training = check_flag(op, "training", training)
    mean = _check_channel_vector(op, "mean", mean, c, half=half)
    invstd = _check_channel_vector(op, "invstd", invstd, c, half=half)
    if mean is None or invstd is None:
        raise TypeError(f"{op}: mean and invstd are required (from batch_norm(..., "
                        "return_stats=True))")
    weight = _check_channel_vector(op, "weight", weight, c, x.dtype, half)
    arrays = (grad_y, x, mean, invstd, weight)
    if relu_output is not None:
        relu_output = check_array(op, "relu_output", relu_output, half)
        check_same_dtype(op, relu_output=relu_output, input=x)
        if relu_output.shape != x.shape:
            raise ValueError(f"{op}: relu_output must have the shape of the input "
                             f"{x.shape}, got {relu_output.shape}")
    return BatchNormArgs(c, count, training, layout), arrays + (relu_output,)


def batch_norm_backward_args(op, grad_y, x, mean, invstd, weight, training,
                             layout) -> BatchNormArgs:
    """The record of :func:`batch_norm_backward_inputs` (its checks, without the arrays)."""
    return batch_norm_backward_inputs(op, grad_y, x, mean, invstd, weight, training,
                                      layout)[0]


# ------------------------------------------------------- records kept per signature
_records: dict = {}     # batch_norm_record's and batch_norm_backward_record's


def _signatures(arrays, dtype):
    """Per array, None for None and (shape, writeable) for a plain ndarray of ``dtype``;
    None (a call that converts arrays, not kept) when any is something else."""
    out = []
    for v in arrays:
        if v is None:
            out.append(None)
        elif type(v) is not np.ndarray or v.dtype != dtype:
            return None
        else:
            out.append((v.shape, v.flags.writeable))
    return tuple(out)


def batch_norm_record(x, running_mean, running_var, weight, bias, training, momentum,
                      eps, layout) -> BatchNormArgs | None:
    """``batch_norm``'s record for arrays it takes as they are (x a plain float32 or
    float64 ndarray, the vectors None or plain ndarrays of its dtype), checked as
    ``batch_norm_inputs`` checks them, with its errors, once per signature (shapes,
    dtype, the running statistics' writeability, the arguments; ``memo.kept``); None
    for any other call (it goes through ``batch_norm``). The autograd op asks on every
    call of a layer, and the same few layers come back every training step."""
    if not plain_float(x):
        return None
    vectors = _signatures((running_mean, running_var, weight, bias), x.dtype)
    if vectors is None:
        return None
    key = ("forward", x.shape, x.dtype.str, vectors,
           key_of(layout, training, momentum, eps))
    return kept(_records, key, lambda: batch_norm_inputs(
        "batch_norm", x, running_mean, running_var, weight, bias, training, momentum,
        eps, layout, False)[0])


def batch_norm_backward_record(grad_y, x, mean, invstd, weight, training, layout,
                               relu_output) -> BatchNormArgs | None:
    """``batch_norm_backward``'s record as ``batch_norm_record`` keeps the forward's:
    grad_y, x and relu_output (or None) plain ndarrays of one dtype, float32 or
    float64, mean and invstd plain float32 or float64 ndarrays, weight None or of x's
    dtype; None for any other call."""
    if not (plain_float(x) and plain_float(mean) and plain_float(invstd)):
        return None
    arrays = _signatures((grad_y, relu_output, weight), x.dtype)
    if arrays is None:
        return None
    key = ("backward", x.shape, x.dtype.str, arrays, mean.shape, mean.dtype.str,
           invstd.shape, invstd.dtype.str, key_of(layout, training))
    return kept(_records, key, lambda: batch_norm_backward_inputs(
        "batch_norm_backward", grad_y, x, mean, invstd, weight, training, layout,
        relu_output=relu_output)[0])
