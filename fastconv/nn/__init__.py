"""Layers, containers and losses for training small CNNs (torch.nn's names).

``fastconv.nn.functional`` holds the differentiable ops (losses in ``nn.losses``, resizing
in ``nn.interpolate``, pad / unfold / fold and their layers in ``nn.padfold``);
``fastconv.nn.activations`` the activation layers;
``fastconv.nn.init`` the initialisers; :func:`save` / :func:`load` write and read state
dicts as .npz.
"""

from . import functional, init, losses  # noqa: F401
from .activations import GELU, LeakyReLU, Sigmoid, Softmax, Tanh  # noqa: F401
from .conv_nd import Conv1d, Conv3d  # noqa: F401
from .layers import (  # noqa: F401
    AdaptiveAvgPool2d,
    AvgPool2d,
    BasicBlock,
    BatchNorm2d,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Dropout2d,
    Flatten,
    GlobalAvgPool2d,
    Identity,
    Linear,
    MaxPool2d,
    ReLU,
    Upsample,
)
from .losses import BCEWithLogitsLoss, MSELoss, NLLLoss  # noqa: F401
from .module import Module, Parameter, Sequential, call_unbatched, load, save  # noqa: F401
from .padfold import (  # noqa: F401
    ConstantPad2d,
    Fold,
    ReflectionPad2d,
    ReplicationPad2d,
    Unfold,
    ZeroPad2d,
)
from .transpose import ConvTranspose2d  # noqa: F401
