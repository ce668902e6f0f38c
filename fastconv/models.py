"""Small CNNs: LeNet-5 and a small ResNet of BasicBlocks (float32 by default).

Both take ``layout``: "NCHW" (default) or "NHWC", in which every layer runs channels
last (input (N, H, W, C)) with no layout copy between layers; the parameters, their
shapes and the state dict are the same in both layouts (and torch's), so a model trained
in one layout loads into the other. The flatten before LeNet's first linear layer takes
the NCHW order (a copy of the small 16x5x5 maps in NHWC), as torch's channels_last does.

>>> import numpy as np
>>> from fastconv import models
>>> a = models.resnet_small(rng=np.random.default_rng(0))
>>> b = models.resnet_small(rng=np.random.default_rng(1), layout="NHWC")
>>> _ = b.load_state_dict(a.state_dict())
>>> x = np.random.default_rng(2).random((2, 1, 8, 8), dtype=np.float32)
>>> ya, yb = a(x), b(x.transpose(0, 2, 3, 1))
>>> ya.shape, bool(np.allclose(ya.data, yb.data, atol=1e-5))
((2, 10), True)
"""

from __future__ import annotations

import numpy as np

from . import nn
from .layout import get as get_layout


def lenet5(in_channels: int = 1, num_classes: int = 10, input_size: int = 28, *, rng=None,
           dtype=np.float32, layout: str = "NCHW") -> nn.Sequential:
    """LeNet-5 with ReLU and max pooling (the form of torch's tutorials)::

        conv5x5(in, 6, padding 2) - relu - maxpool2
        conv5x5(6, 16, padding p2) - relu - maxpool2
        flatten - linear(16*s*s, 120) - relu - linear(120, 84) - relu - linear(84, classes)

    For 28x28 input (MNIST) this is the classic network: 28 -> 14 -> 10 -> 5, p2 = 0.
    Small inputs are handled by adapting rather than resizing: when the first pooled map
    is smaller than 10x10 (a valid 5x5 conv would leave less than 6x6) the second conv
    pads by 2 as well, e.g. 8x8 digits: 8 -> 4 -> 4 -> 2, so the first linear layer
    has 16*2*2 inputs. ``input_size`` is the (square) side of the input images.
    ``layout`` "NHWC" runs it channels last (see the module docstring).
    """
    if not (isinstance(input_size, int) and input_size >= 4):
        raise ValueError(f"lenet5: input_size={input_size!r} must be an int >= 4")
    s = input_size // 2                       # after conv1 (same size) and pool
    pad2 = 0 if s >= 10 else 2
    s = (s + 2 * pad2 - 4) // 2               # after conv2 and pool
    lay = {"layout": get_layout("lenet5", layout).name}
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2, rng=rng, dtype=dtype, **lay),
        nn.ReLU(),
        nn.MaxPool2d(2, **lay),
        nn.Conv2d(6, 16, 5, padding=pad2, rng=rng, dtype=dtype, **lay),
        nn.ReLU(),
        nn.MaxPool2d(2, **lay),
        nn.Flatten(**lay),
        nn.Linear(16 * s * s, 120, rng=rng, dtype=dtype),
        nn.ReLU(),
        nn.Linear(120, 84, rng=rng, dtype=dtype),
        nn.ReLU(),
        nn.Linear(84, num_classes, rng=rng, dtype=dtype),
    )


class ResNet(nn.Module):
    """A stem conv3x3-bn-relu, stages of BasicBlocks (the first block of every stage but
    the first halves the resolution), global average pooling and a linear classifier;
    every layer in ``layout`` ("NCHW" or "NHWC")."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths=(16, 32, 64),
                 blocks_per_stage: int = 1, *, rng=None, dtype=np.float32,
                 layout: str = "NCHW"):
        super().__init__()
        self.layout = get_layout("ResNet", layout).name
        kw = {"dtype": dtype, "layout": self.layout}
        if not widths or blocks_per_stage < 1:
            raise ValueError(f"ResNet: widths={widths!r} must be non-empty and "
                             f"blocks_per_stage={blocks_per_stage} positive")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False, rng=rng, **kw),
            nn.BatchNorm2d(widths[0], **kw),
            nn.ReLU())
        blocks, planes = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(nn.BasicBlock(planes, w, stride, rng=rng, **kw))
                planes = w
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1, layout=self.layout)
        self.flatten = nn.Flatten(layout=self.layout)
        self.fc = nn.Linear(planes, num_classes, rng=rng, dtype=dtype)

    def forward(self, x):
        """(N, C, H, W) (NHWC: (N, H, W, C)) -> (N, num_classes); one unbatched image
        (C, H, W) (NHWC: (H, W, C)) -> (num_classes,)."""
        if getattr(x, "ndim", 0) == 3:
            return nn.call_unbatched(self.forward, x)
        return self.fc(self.flatten(self.pool(self.layers(self.stem(x)))))


def resnet_small(in_channels: int = 1, num_classes: int = 10, widths=(16, 32, 64),
                 blocks_per_stage: int = 1, *, rng=None, dtype=np.float32,
                 layout: str = "NCHW") -> ResNet:
    """A small ResNet: stem of ``widths[0]`` channels, one stage per width with
    ``blocks_per_stage`` BasicBlocks (batch norm, residual connections). With the
    defaults an 8x8 input runs at 8x8, 4x4 and 2x2; 28x28 at 28, 14 and 7. ``layout``
    "NHWC" runs it channels last (see the module docstring)."""
    return ResNet(in_channels, num_classes, widths, blocks_per_stage, rng=rng, dtype=dtype,
                  layout=layout)
