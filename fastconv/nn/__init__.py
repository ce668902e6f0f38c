"""Layers, containers and losses for training small CNNs (torch.nn's names).

``fastconv.nn.functional`` holds the differentiable ops; ``fastconv.nn.init`` the
initialisers; :func:`save` / :func:`load` write and read state dicts as .npz.
"""

from . import functional, init  # noqa: F401
from .layers import (  # noqa: F401
    AdaptiveAvgPool2d,
    AvgPool2d,
    BasicBlock,
    BatchNorm2d,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Flatten,
    GlobalAvgPool2d,
    Linear,
    MaxPool2d,
    ReLU,
)
from .module import Module, Parameter, Sequential, load, save  # noqa: F401
