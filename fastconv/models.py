"""Small CNNs: LeNet-5 and a small ResNet of BasicBlocks (NCHW, float32 by default)."""

from __future__ import annotations

import numpy as np

from . import nn


def lenet5(in_channels: int = 1, num_classes: int = 10, input_size: int = 28, *, rng=None,
           dtype=np.float32) -> nn.Sequential:
    """LeNet-5 with ReLU and max pooling (the form of torch's tutorials)::

        conv5x5(in, 6, padding 2) - relu - maxpool2
        conv5x5(6, 16, padding p2) - relu - maxpool2
        flatten - linear(16*s*s, 120) - relu - linear(120, 84) - relu - linear(84, classes)

    For 28x28 input (MNIST) this is the classic network: 28 -> 14 -> 10 -> 5, p2 = 0.
    Small inputs are handled by adapting rather than resizing: when the first pooled map
    is smaller than 10x10 (a valid 5x5 conv would leave less than 6x6) the second conv
    pads by 2 as well, e.g. 8x8 digits: 8 -> 4 -> 4 -> 2, so the first linear layer
    has 16*2*2 inputs. ``input_size`` is the (square) side of the input images.
    """
    if not (isinstance(input_size, int) and input_size >= 4):
        raise ValueError(f"lenet5: input_size={input_size!r} must be an int >= 4")
    s = input_size // 2                       # after conv1 (same size) and pool
    pad2 = 0 if s >= 10 else 2
    s = (s + 2 * pad2 - 4) // 2               # after conv2 and pool
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2, rng=rng, dtype=dtype),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=pad2, rng=rng, dtype=dtype),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * s * s, 120, rng=rng, dtype=dtype),
        nn.ReLU(),
        nn.Linear(120, 84, rng=rng, dtype=dtype),
        nn.ReLU(),
        nn.Linear(84, num_classes, rng=rng, dtype=dtype),
    )


class ResNet(nn.Module):
    """A stem conv3x3-bn-relu, stages of BasicBlocks (the first block of every stage but
    the first halves the resolution), global average pooling and a linear classifier."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths=(16, 32, 64),
                 blocks_per_stage: int = 1, *, rng=None, dtype=np.float32):
        super().__init__()
        if not widths or blocks_per_stage < 1:
            raise ValueError(f"ResNet: widths={widths!r} must be non-empty and "
                             f"blocks_per_stage={blocks_per_stage} positive")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False, rng=rng, dtype=dtype),
            nn.BatchNorm2d(widths[0], dtype=dtype),
            nn.ReLU())
        blocks, planes = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(nn.BasicBlock(planes, w, stride, rng=rng, dtype=dtype))
                planes = w
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(planes, num_classes, rng=rng, dtype=dtype)

    def forward(self, x):
        """(N, C, H, W) -> (N, num_classes); one unbatched (C, H, W) image ->
        (num_classes,)."""
        if getattr(x, "ndim", 0) == 3:
            return nn.call_unbatched(self.forward, x)
        return self.fc(self.flatten(self.pool(self.layers(self.stem(x)))))


def resnet_small(in_channels: int = 1, num_classes: int = 10, widths=(16, 32, 64),
                 blocks_per_stage: int = 1, *, rng=None, dtype=np.float32) -> ResNet:
    """A small ResNet: stem of ``widths[0]`` channels, one stage per width with
    ``blocks_per_stage`` BasicBlocks (batch norm, residual connections). With the
    defaults an 8x8 input runs at 8x8, 4x4 and 2x2; 28x28 at 28, 14 and 7."""
    return ResNet(in_channels, num_classes, widths, blocks_per_stage, rng=rng, dtype=dtype)
