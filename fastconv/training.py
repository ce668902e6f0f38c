"""A small training loop: one epoch, evaluation, and the ``fastconv train`` run.

``run`` builds the dataset, model and optimiser from plain arguments, trains with a
cosine learning-rate schedule, and writes the weights (.npz) and metrics (JSON).
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from . import data, models, nn, optim
from .autograd import no_grad
from .nn import functional as F
from .rng import manual_seed

DATASETS = ("digits", "synthetic", "mnist")
MODELS = ("lenet", "resnet")
OPTIMIZERS = ("sgd", "adam")


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 256):
    """Mean cross-entropy and accuracy of ``model`` (put in eval mode) on (x, y)."""
    model.eval()
    total, correct = 0.0, 0
    with no_grad():
        for xb, yb in data.DataLoader((x, y), batch_size):
            logits = model(xb)
            total += float(F.cross_entropy(logits, yb, reduction="sum").item())
            correct += int((logits.data.argmax(axis=1) == yb).sum())
    return total / len(y), correct / len(y)


def train_epoch(model: nn.Module, loader: data.DataLoader, optimizer: optim.Optimizer,
                progress=None) -> dict:
    """One pass over ``loader`` (model in train mode). Returns the mean loss, accuracy,
    seconds, images/s and the per-batch losses (python floats).

    ``progress`` (optional) is called after every batch with (batch losses so far,
    images seen, correct so far, seconds so far).
    """
    model.train()
    losses, seen, correct = [], 0, 0
    start = time.perf_counter()
    for xb, yb in loader:
        optimizer.zero_grad()
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.item()))
        seen += len(yb)
        correct += int((logits.data.argmax(axis=1) == yb).sum())
        if progress is not None:
            progress(losses, seen, correct, time.perf_counter() - start)
    seconds = time.perf_counter() - start
    return {"loss": float(np.mean(losses)), "accuracy": correct / max(seen, 1),
            "seconds": seconds, "images_per_s": seen / seconds if seconds > 0 else 0.0,
            "batch_losses": losses}


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


def build_model(name: str, in_channels: int, num_classes: int, input_size: int, rng):
    if name == "lenet":
        return models.lenet5(in_channels, num_classes, input_size, rng=rng)
    if name == "resnet":
        return models.resnet_small(in_channels, num_classes, rng=rng)
    raise ValueError(f"train: model={name!r} is not known; acceptable values are "
                     f"{', '.join(map(repr, MODELS))}")


def build_optimizer(name: str, params, lr: float) -> optim.Optimizer:
    if name == "sgd":
        return optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    if name == "adam":
        return optim.Adam(params, lr=lr)
    raise ValueError(f"train: optimizer={name!r} is not known; acceptable values are "
                     f"{', '.join(map(repr, OPTIMIZERS))}")


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="batch", file=sys.stderr, leave=True)


def run(model: str = "lenet", dataset: str = "digits", epochs: int = 10,
        batch_size: int = 32, lr: float = 0.05, seed: int = 0, optimizer: str = "sgd",
        out: str | None = None, progress: bool = True, log=print) -> dict:
    """Train ``model`` on ``dataset`` and return the metrics (see module docstring).

    Seeding: the weights come from ``default_rng(seed)``, the shuffling from
    ``default_rng(seed + 1)``, the split from ``seed``; fastconv's default generator is
    seeded with ``seed`` too, so a run is repeatable bit for bit on one machine.
    """
    if not (isinstance(epochs, int) and epochs > 0):
        raise ValueError(f"train: epochs={epochs!r} must be a positive int")
    if not lr > 0:
        raise ValueError(f"train: lr={lr!r} must be positive")
    manual_seed(seed)
    x_tr, y_tr, x_te, y_te, n_classes = load_dataset(dataset, seed)
    net = build_model(model, x_tr.shape[1], n_classes, x_tr.shape[-1],
                      np.random.default_rng(seed))
    opt = build_optimizer(optimizer, net.parameters(), lr)
    sched = optim.CosineAnnealingLR(opt, T_max=epochs)
    loader = data.DataLoader((x_tr, y_tr), batch_size, shuffle=True, seed=seed + 1)
    log(f"{model} on {dataset}: {len(y_tr)} training / {len(y_te)} test images of shape "
        f"{x_tr.shape[1:]}, {sum(p.numel() for p in net.parameters())} parameters")

    history, start = [], time.perf_counter()
    for epoch in range(1, epochs + 1):
        bar = _bar(len(loader), f"epoch {epoch}/{epochs}", progress)

        def show(losses, seen, correct, secs, bar=bar):
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", acc=f"{correct / seen:.3f}",
                            img_s=f"{seen / secs:.0f}" if secs > 0 else "-")

        stats = train_epoch(net, loader, opt, show if bar is not None else None)
        if bar is not None:
            bar.close()
        test_loss, test_acc = evaluate(net, x_te, y_te)
        history.append({"epoch": epoch, "lr": opt.param_groups[0]["lr"],
                        "train_loss": stats["loss"], "train_accuracy": stats["accuracy"],
                        "test_loss": test_loss, "test_accuracy": test_acc,
                        "seconds": stats["seconds"], "images_per_s": stats["images_per_s"],
                        "batch_losses": stats["batch_losses"]})
        sched.step()
        if not progress:
            log(f"epoch {epoch}: loss {stats['loss']:.4f}, train acc {stats['accuracy']:.4f}, "
                f"test acc {test_acc:.4f}, {stats['images_per_s']:.0f} images/s")
    metrics = {
        "config": {"model": model, "dataset": dataset, "epochs": epochs,
                   "batch_size": batch_size, "lr": lr, "seed": seed, "optimizer": optimizer},
        "test_accuracy": history[-1]["test_accuracy"],
        "test_loss": history[-1]["test_loss"],
        "train_seconds": time.perf_counter() - start,
        "epochs": history,
    }
    n_right = round(metrics["test_accuracy"] * len(y_te))
    log(f"test accuracy: {100 * metrics['test_accuracy']:.2f}% ({n_right}/{len(y_te)}) after "
        f"{epochs} epochs, {metrics['train_seconds']:.1f} s")
    if out:
        os.makedirs(out, exist_ok=True)
        nn.save(net.state_dict(), os.path.join(out, "weights.npz"))
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        log(f"wrote {os.path.join(out, 'weights.npz')} and metrics.json")
    metrics["model"] = net
    return metrics
