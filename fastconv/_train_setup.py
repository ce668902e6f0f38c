"""What ``fastconv.training.run`` builds from plain arguments: the dataset (limited,
laid out), the model and the optimiser, and the check that a ``device="cuda"`` run has a
GPU path for all of them.

>>> import numpy as np
>>> x = np.zeros((5, 1, 4, 3), np.float32)
>>> [a.shape for a in prepare_data((x, np.arange(5), x, np.arange(5)), "NHWC", limit=2)]
[(2, 4, 3, 1), (2,), (2, 4, 3, 1), (2,)]
>>> check_device("lenet", "adam", "cuda")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: train: optimizer='adam' has no GPU path yet (...); use --optimizer sgd or ...
"""

from __future__ import annotations

import numpy as np

from . import data, models, optim

DATASETS = ("digits", "synthetic", "mnist")
MODELS = ("lenet", "resnet")
OPTIMIZERS = ("sgd", "adam", "adamw")
LAYOUTS = ("NCHW", "NHWC")
DEVICES = ("cpu", "cuda")
# what a device="cuda" run lacks, per model and optimiser without a GPU path
_NO_GPU = {"model": {"resnet": "its fused batch norm + ReLU and residual add run on the "
                               "CPU only"},
           "optimizer": {"adam": "Adam.step runs on the CPU only",
                         "adamw": "AdamW.step runs on the CPU only"}}
_GPU_CHOICE = {"model": "lenet", "optimizer": "sgd"}


def load_dataset(name: str, seed: int = 0):
    """(x_train, y_train, x_test, y_test, num_classes) for a dataset name.

    digits: scikit-learn's 8x8 digits, seeded 80/20 split. synthetic: 2000 16x16
    shapes (``data.make_shapes``), seeded 80/20 split. mnist: the standard 60k/10k
    split (downloaded once, see ``data.load_mnist``).
    """
    if name == "digits":
        x, y = data.load_digits()
        x_tr, x_te, y_tr, y_te = data.train_test_split(x, y, test_size=0.2, seed=seed)
        return x_tr, y_tr, x_te, y_te, 10
    if name == "synthetic":
        x, y = data.make_shapes(2000, 16, seed=seed)
        x_tr, x_te, y_tr, y_te = data.train_test_split(x, y, test_size=0.2, seed=seed)
        return x_tr, y_tr, x_te, y_te, len(data.SHAPE_CLASSES)
    if name == "mnist":
        x_tr, y_tr = data.load_mnist(train=True)
        x_te, y_te = data.load_mnist(train=False)
        return x_tr, y_tr, x_te, y_te, 10
    raise ValueError(f"train: dataset={name!r} is not known; acceptable values are "
                     f"{', '.join(map(repr, DATASETS))}")


def prepare_data(arrays, layout: str = "NCHW", limit: int | None = None):
    """(x_train, y_train, x_test, y_test) cut to their first ``limit`` images each (None:
    all), the images transposed once, up front, to ``layout`` (NCHW data -> (N, H, W, C)
    for "NHWC", contiguous) so no batch is copied for the layout."""
    if layout not in LAYOUTS:
        raise ValueError(f"train: layout={layout!r} is not known; acceptable values are "
                         f"{', '.join(map(repr, LAYOUTS))}")
    if limit is not None and not (isinstance(limit, int) and limit > 0):
        raise ValueError(f"train: limit={limit!r} must be a positive int or None")
    out = [a[:limit] for a in arrays]
    if layout == "NHWC":
        out[0::2] = [np.ascontiguousarray(x.transpose(0, 2, 3, 1)) for x in out[0::2]]
    return out


def check_device(model: str, optimizer: str, device: str) -> None:
    """ValueError (one line naming what is missing) unless ``device`` is known and, for
    "cuda", ``model`` and ``optimizer`` have a GPU path."""
    if device not in DEVICES:
        raise ValueError(f"train: device={device!r} is not known; acceptable values are "
                         f"{', '.join(map(repr, DEVICES))}")
    if device == "cpu":
        return
    for kind, name in (("model", model), ("optimizer", optimizer)):
        why = _NO_GPU[kind].get(name)
        if why is not None:
            raise ValueError(f"train: {kind}={name!r} has no GPU path yet ({why}); use "
                             f"--{kind} {_GPU_CHOICE[kind]} or --device cpu")


def build_model(name: str, in_channels: int, num_classes: int, input_size: int, rng,
                layout: str = "NCHW"):
    """LeNet-5 ("lenet") or the small ResNet ("resnet"), in ``layout``."""
    if name == "lenet":
        return models.lenet5(in_channels, num_classes, input_size, rng=rng, layout=layout)
    if name == "resnet":
        return models.resnet_small(in_channels, num_classes, rng=rng, layout=layout)
    raise ValueError(f"train: model={name!r} is not known; acceptable values are "
                     f"{', '.join(map(repr, MODELS))}")


def build_optimizer(name: str, params, lr: float) -> optim.Optimizer:
    """SGD (momentum 0.9, weight decay 5e-4), Adam or AdamW (torch's defaults)."""
    if name == "sgd":
        return optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    if name == "adam":
        return optim.Adam(params, lr=lr)
    if name == "adamw":
        return optim.AdamW(params, lr=lr)
    raise ValueError(f"train: optimizer={name!r} is not known; acceptable values are "
                     f"{', '.join(map(repr, OPTIMIZERS))}")
