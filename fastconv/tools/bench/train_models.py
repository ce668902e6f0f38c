"""The networks of the training benchmark, in fastconv and in torch, with one state dict.

Each :class:`Spec` names a network (its fastconv builder, its input and its default
batch); :func:`torch_model` builds the torch network whose ``state_dict`` keys and shapes
are fastconv's, so that torch starts from fastconv's initial weights.

>>> SPECS["resnet-small"].input_shape, SPECS["resnet-small"].batch
((1, 28, 28), 32)
>>> sorted(SPECS)
['lenet', 'resnet-small', 'resnet-wide']
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastconv import models


@dataclass(frozen=True)
class Spec:
    """One benchmark network: ``build(rng, layout)`` gives the fastconv model; inputs are
    (batch, *input_shape) NCHW images of 10 classes; ``widths`` is None for LeNet-5."""

    title: str
    input_shape: tuple[int, int, int]
    batch: int
    widths: tuple[int, ...] | None = None

    def build(self, rng, layout: str = "NCHW"):
        c, h, _ = self.input_shape
        if self.widths is None:
            return models.lenet5(c, 10, h, rng=rng, layout=layout)
        return models.resnet_small(c, 10, self.widths, rng=rng, layout=layout)


SPECS = {
    "lenet": Spec("LeNet-5", (1, 28, 28), 64),
    "resnet-small": Spec("ResNet 16/32/64", (1, 28, 28), 32, (16, 32, 64)),
    "resnet-wide": Spec("ResNet 32/64/128", (3, 32, 32), 64, (32, 64, 128)),
}


def torch_model(torch, spec: Spec):
    """torch's network of ``spec`` with fastconv's module names (so state dicts match)."""
    tnn = torch.nn
    c, h, _ = spec.input_shape
    if spec.widths is None:
        s = h // 2
        pad2 = 0 if s >= 10 else 2
        s = (s + 2 * pad2 - 4) // 2
        return tnn.Sequential(tnn.Conv2d(c, 6, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(2),
                              tnn.Conv2d(6, 16, 5, padding=pad2), tnn.ReLU(),
                              tnn.MaxPool2d(2), tnn.Flatten(), tnn.Linear(16 * s * s, 120),
                              tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(),
                              tnn.Linear(84, 10))

    class Block(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout)
            self.relu = tnn.ReLU()
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False),
                                                 tnn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            w = spec.widths
            self.stem = tnn.Sequential(tnn.Conv2d(c, w[0], 3, padding=1, bias=False),
                                       tnn.BatchNorm2d(w[0]), tnn.ReLU())
            self.layers = tnn.Sequential(*(Block(a, b, 1 if i == 0 else 2) for i, (a, b)
                                           in enumerate(zip((w[0],) + w[:-1], w, strict=True))))
            self.pool = tnn.AdaptiveAvgPool2d(1)
            self.flatten = tnn.Flatten()
            self.fc = tnn.Linear(w[-1], 10)

        def forward(self, x):
            return self.fc(self.flatten(self.pool(self.layers(self.stem(x)))))

    return Net()


def load_into_torch(torch, theirs, ours) -> None:
    """Copy fastconv model ``ours``'s state dict into torch module ``theirs``."""
    theirs.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
                            ours.state_dict().items()})
