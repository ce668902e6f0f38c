"""Activation layers (torch.nn's names and defaults): LeakyReLU, Sigmoid, Tanh, GELU,
Softmax. ReLU lives in ``fastconv.nn.layers``; the ops are in ``fastconv.nn.functional``.

Examples
--------
>>> import numpy as np
>>> from fastconv import nn
>>> nn.LeakyReLU(0.1)(np.array([-2.0, 3.0])).numpy()
array([-0.2,  3. ])
>>> nn.Softmax(dim=1)(np.zeros((1, 4))).numpy()
array([[0.25, 0.25, 0.25, 0.25]])
"""

from __future__ import annotations

import warnings

import numpy as np

from ..autograd.dims import dim_index
from . import functional as F
from .module import Module


class LeakyReLU(Module):
    """x where x > 0, else negative_slope * x. ``inplace`` is accepted for torch
    compatibility; ops never run in place."""

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Sigmoid(Module):
    """1 / (1 + exp(-x)), without overflow."""

    def forward(self, x):
        return F.sigmoid(x)


class Tanh(Module):
    """tanh(x)."""

    def forward(self, x):
        return F.tanh(x)


class GELU(Module):
    """x * Phi(x) (approximate="none") or torch's tanh approximation ("tanh")."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in F.GELU_APPROXIMATIONS:
            raise ValueError(f"GELU: approximate={approximate!r} is not known; acceptable "
                             f"values are {', '.join(map(repr, F.GELU_APPROXIMATIONS))}")
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


def implicit_softmax_dim(ndim: int) -> int:
    """torch's axis for a Softmax built without ``dim``: 0 for 0-, 1- and 3-D input,
    else 1."""
    return 0 if ndim in (0, 1, 3) else 1


class Softmax(Module):
    """Softmax along ``dim``. dim=None (torch's deprecated default) picks the axis by
    :func:`implicit_softmax_dim` with a UserWarning, as torch does."""

    def __init__(self, dim: int | None = None):
        super().__init__()
        if dim is not None:
            dim_index(dim, 1 << 30)              # an int; range is checked per input
        self.dim = dim

    def forward(self, x):
        dim = self.dim
        if dim is None:
            dim = implicit_softmax_dim(np.ndim(x))
            warnings.warn("Softmax: dim=None picks the axis implicitly (deprecated in "
                          f"torch); the input's axis {dim} is used. Pass dim explicitly.",
                          UserWarning, stacklevel=2)
        return F.softmax(x, dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
