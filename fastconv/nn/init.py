"""Weight initialisation, in place, as torch.nn.init (same formulas; numpy's generator).

Every function takes ``rng`` (a numpy Generator); None means fastconv's default
generator, seeded by ``fastconv.manual_seed``.
"""

from __future__ import annotations

import math

import numpy as np

from ..autograd import Tensor
from ..rng import default_generator


def _rng(rng) -> np.random.Generator:
    return default_generator() if rng is None else rng


def calculate_fan_in_and_fan_out(shape) -> tuple[int, int]:
    """fan_in = shape[1] * receptive field, fan_out = shape[0] * receptive field
    (Linear (out, in); Conv2d OIHW (out, in/groups, kh, kw))."""
    if len(shape) < 2:
        raise ValueError(f"init: fan in and fan out need at least 2 dimensions, got shape "
                         f"{tuple(shape)}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity: str, param=None) -> float:
    """torch's recommended gains: linear/conv/sigmoid 1, tanh 5/3, relu sqrt(2),
    leaky_relu sqrt(2 / (1 + a^2)) with a = param (default 0.01)."""
    if nonlinearity in ("linear", "conv2d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        a = 0.01 if param is None else param
        return math.sqrt(2.0 / (1 + a * a))
    raise ValueError(f"calculate_gain: nonlinearity={nonlinearity!r} is not known; "
                     "acceptable values are 'linear', 'conv2d', 'sigmoid', 'tanh', 'relu', "
                     "'leaky_relu'")


def uniform_(tensor: Tensor, a: float = 0.0, b: float = 1.0, *, rng=None) -> Tensor:
    """Fill with U(a, b) in the tensor's dtype."""
    tensor.data[...] = _rng(rng).uniform(a, b, tensor.shape)
    return tensor


def zeros_(tensor: Tensor) -> Tensor:
    tensor.data[...] = 0
    return tensor


def ones_(tensor: Tensor) -> Tensor:
    tensor.data[...] = 1
    return tensor


def kaiming_uniform_(tensor: Tensor, a: float = 0.0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu", *, rng=None) -> Tensor:
    """U(-bound, bound) with bound = gain * sqrt(3 / fan). With a = sqrt(5) (the default
    for Conv2d and Linear weights) bound = 1 / sqrt(fan_in)."""
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"kaiming_uniform_: mode={mode!r} must be 'fan_in' or 'fan_out'")
    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor.shape)
    fan = fan_in if mode == "fan_in" else fan_out
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / fan)
    return uniform_(tensor, -bound, bound, rng=rng)
