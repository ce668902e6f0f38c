"""A small training loop: one epoch, evaluation, and the ``fastconv train`` run.

``run`` builds the dataset, model and optimiser from plain arguments, trains with a
cosine learning-rate schedule, and writes the weights (.npz) and metrics (JSON).
``fit`` is the loop under it: checkpoints every N epochs, resuming (bit for bit, also
from the middle of an epoch), Ctrl-C writing a checkpoint at the end of the current
batch (:class:`Interrupted`), and a NaN/Inf loss stopping the run with the layer where
the first non-finite value appeared (:class:`NonFiniteLossError`).
"""

from __future__ import annotations

import copy
import json
import os
import signal
import sys
import threading
import time

import numpy as np

from . import _compile_split, data, devices, nn, optim
from . import checkpoint as ckpt
from ._train_setup import (  # noqa: F401  (build_model etc. are part of this module's API)
    DATASETS,
    MODELS,
    OPTIMIZERS,
    build_model,
    build_optimizer,
    check_device,
    load_dataset,
    prepare_data,
)
from .autograd import Tensor, no_grad
from .nn import functional as F
from .rng import default_generator, manual_seed


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 256):
    """Mean cross-entropy and accuracy of ``model`` (put in eval mode) on (x, y): host
    arrays, each batch moved to the model's device (the logits and the loss come back)."""
    model.eval()
    device, total, correct = _device_of(model), 0.0, 0
    with no_grad():
        for xb, yb in data.DataLoader((x, y), batch_size):
            logits = model(Tensor(xb).to(device))
            total += float(F.cross_entropy(logits, yb, reduction="sum").item())
            correct += int((logits.numpy().argmax(axis=1) == yb).sum())
    return total / len(y), correct / len(y)


def train_epoch(model: nn.Module, loader: data.DataLoader, optimizer: optim.Optimizer,
                progress=None) -> dict:
    """One pass over ``loader`` (model in train mode). Returns the mean loss, accuracy,
    seconds, images/s and the per-batch losses (python floats).

    ``progress`` (optional) is called after every batch with (batch losses so far,
    images seen, correct so far, seconds so far). A NaN or Inf loss raises
    :class:`NonFiniteLossError` before the step.
    """
    try:
        return _summary(_run_epoch(model, loader, optimizer, progress))
    except _Stop:
        raise KeyboardInterrupt from None


def _device_of(model: nn.Module) -> str:
    """Where the model's parameters live ("cpu" without parameters)."""
    return next((p.device for p in model.parameters()), "cpu")


class NonFiniteLossError(FloatingPointError):
    """A NaN or Inf loss; ``step`` (1-based, counted over the run) and ``layer`` (the
    module where the step's forward first produced a non-finite value, or None)."""

    def __init__(self, message: str, step: int, layer: str | None):
        super().__init__(message)
        self.step, self.layer = step, layer


class Interrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C; ``checkpoint`` is the file written (None when the
    interrupt came inside a step, whose half-done update cannot be saved)."""

    def __init__(self, message: str, checkpoint: str | None):
        super().__init__(message)
        self.message, self.checkpoint = message, checkpoint


class _Stop(Exception):
    """Internal: stop after a complete batch (Ctrl-C at a batch boundary)."""


def _nonfinite(out) -> bool:
    if isinstance(out, (tuple, list)):
        return any(_nonfinite(o) for o in out)
    arr = out.data if isinstance(out, Tensor) else out
    return isinstance(arr, np.ndarray) and arr.dtype.kind in "fc" and not np.isfinite(
        arr).all()


def locate_nonfinite(model: nn.Module, x) -> str:
    """Where a forward pass of ``model`` on ``x`` first produces a NaN or Inf: the first
    module (dotted name and type) whose output holds one, the input, or the loss.

    The forward re-runs without gradients; the buffers (batch norm statistics) and
    fastconv's generator are restored afterwards. Non-finite parameters are listed.

    >>> import numpy as np
    >>> from fastconv import nn
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    >>> net[2].weight.data[:] = np.inf
    >>> locate_nonfinite(net, np.ones((1, 2), np.float32))
    "layer '2' (Linear); non-finite parameters: 2.weight"

    A model on the GPU is searched on the host (moved there and back).
    """
    device = _device_of(model)
    if device != "cpu":
        model.to("cpu")
        try:
            return locate_nonfinite(model, Tensor(x).numpy() if isinstance(x, Tensor) else x)
        finally:
            model.to(device)
    x = x.data if isinstance(x, Tensor) else np.asarray(x)
    if x.dtype.kind in "fc" and not np.isfinite(x).all():
        return "the input batch"
    found, modules = [], list(model.named_modules())
    buffers = [(b, b.copy()) for _, b in model.named_buffers()]
    rng_state = default_generator().bit_generator.state
    for name, m in modules:
        def checked(*args, _m=m, _name=name, _forward=m.forward, **kwargs):
            out = _forward(*args, **kwargs)
            if not found and _nonfinite(out):
                found.append(f"layer {_name!r} ({type(_m).__name__})" if _name else
                             f"the forward of {type(_m).__name__} itself")
            return out
        object.__setattr__(m, "forward", checked)
    try:
        with no_grad(), np.errstate(all="ignore"):
            model(x)
    finally:
        for _, m in modules:
            m.__dict__.pop("forward", None)
        for b, saved in buffers:
            np.copyto(b, saved)
        default_generator().bit_generator.state = rng_state
    where = found[0] if found else "the loss (the model's outputs are finite)"
    bad = [k for k, p in model.named_parameters() if not np.isfinite(p.data).all()]
    return where + (f"; non-finite parameters: {', '.join(bad)}" if bad else "")


def _run_epoch(model, loader, optimizer, progress=None, stop=None, skip: int = 0,
               partial: dict | None = None, first_step: int = 1) -> dict:
    """The batches of one epoch from batch ``skip`` on; returns the running totals.
    Raises _Stop (totals in its args) after a batch when ``stop()`` says so or the
    progress callback raised KeyboardInterrupt."""
    model.train()
    tot = dict(partial or {"losses": [], "seen": 0, "correct": 0, "seconds": 0.0})
    tot["losses"] = list(tot["losses"])
    start = time.perf_counter() - tot["seconds"]
    device = _device_of(model)
    for i, (xb, yb) in enumerate(loader):
        if i < skip:
            continue
        optimizer.zero_grad()
        rng_state = default_generator().bit_generator.state
        logits = model(Tensor(xb).to(device))
        loss = F.cross_entropy(logits, yb)
        value = float(loss.item())          # on the GPU: the one read-back of the step
        if not np.isfinite(value):
            default_generator().bit_generator.state = rng_state
            where = locate_nonfinite(model, xb)
            step = first_step + i
            raise NonFiniteLossError(f"train: the loss is {value} at step {step} (batch "
                                     f"{i + 1} of the epoch); the first non-finite value "
                                     f"appeared in {where}", step, where)
        loss.backward()
        optimizer.step()
        tot["losses"].append(value)
        tot["seen"] += len(yb)
        tot["correct"] += int((logits.numpy().argmax(axis=1) == yb).sum())
        tot["seconds"] = time.perf_counter() - start
        tot["batch"] = i + 1
        try:
            if progress is not None:
                progress(tot["losses"], tot["seen"], tot["correct"], tot["seconds"])
        except KeyboardInterrupt:
            raise _Stop(tot) from None
        if stop is not None and stop():
            raise _Stop(tot)
    return tot


def _summary(tot: dict) -> dict:
    secs, seen = tot["seconds"], tot["seen"]
    return {"loss": float(np.mean(tot["losses"])), "accuracy": tot["correct"] / max(seen, 1),
            "seconds": secs, "images_per_s": seen / secs if secs > 0 else 0.0,
            "batch_losses": tot["losses"]}


class _DeferredSigint:
    """While active (main thread only), a first Ctrl-C only sets a flag that the loop
    reads after each batch; a second one raises KeyboardInterrupt at once."""

    def __init__(self):
        self.requested, self._old = False, None

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def warm_up(model: nn.Module, optimizer: optim.Optimizer, x, y, x_eval=None, *,
            device: str = "cpu") -> float:
    """One untimed training step (forward, loss, backward, optimiser step) on the batch
    (x, y) and one evaluation forward on ``x_eval`` (default ``x``), run on a copy of
    ``model`` and ``optimizer``: every kernel that training and evaluation call is
    compiled (or loaded from numba's cache) here, so no compile time lands in a timed
    epoch (on a cold cache a child process compiles the backward's meanwhile:
    ``fastconv._compile_split``). ``model``, ``optimizer`` and fastconv's generator are
    left as they were (training afterwards is bit for bit the same); returns the seconds.
    ``device``: where the copy runs ("cuda": the GPU kernels compile; ``model`` on the
    host, the arrays too).

    >>> import numpy as np
    >>> from fastconv import nn, optim
    >>> net = nn.Sequential(nn.Linear(3, 2))
    >>> before = net[0].weight.data.copy()
    >>> secs = warm_up(net, optim.SGD(net.parameters(), lr=1.0),
    ...                np.ones((4, 3), np.float32), np.array([0, 1, 0, 1]))
    >>> bool((net[0].weight.data == before).all()) and net[0].weight.grad is None
    True
    """
    start = time.perf_counter()
    rng_state = default_generator().bit_generator.state
    net, opt = copy.deepcopy((model, optimizer))  # one memo: opt steps net's parameters
    try:
        net.to(device)                  # in place: opt's parameters move with it
        net.train()
        opt.zero_grad()
        with _compile_split.for_step(net, x, device):  # leaving it waits for the child
            loss = F.cross_entropy(net(Tensor(x).to(device)), y)
        loss.backward()
        opt.step()
        net.eval()
        with no_grad():
            net(Tensor(x if x_eval is None else x_eval).to(device))
    finally:
        default_generator().bit_generator.state = rng_state
    return time.perf_counter() - start


def _differences(had, meta) -> str:
    """'<had>, this run has <meta>', for dicts only the keys whose values differ."""
    if isinstance(had, dict) and isinstance(meta, dict):
        keys = [k for k in {**had, **meta} if had.get(k) != meta.get(k)]
        had, meta = ({k: d.get(k) for k in keys} for d in (had, meta))
        had, meta = (", ".join(f"{k}={v!r}" for k, v in d.items()) for d in (had, meta))
    return f"{had}, this run has {meta}"


def _generator_at(state: dict) -> np.random.Generator:
    gen = np.random.default_rng()
    gen.bit_generator.state = state
    return gen


def fit(model: nn.Module, loader: data.DataLoader, optimizer: optim.Optimizer,
        scheduler=None, epochs: int = 1, *, checkpoint: str | None = None,
        checkpoint_every: int | None = None, resume: str | None = None, progress=None,
        on_epoch=None, on_epoch_start=None, meta=None, meta_defaults=None) -> list:
    """Train for ``epochs`` epochs (scheduler stepped after each); returns the history.

    checkpoint : the file that ``checkpoint_every`` (epochs) and Ctrl-C write
        (:mod:`fastconv.checkpoint`: model, optimiser, schedule, position, history, the
        random states of fastconv's generator and of the loader's own shuffling
        generator). A Ctrl-C stops after the current batch, writes ``checkpoint`` (when
        given) and raises :class:`Interrupted`.
    resume : a checkpoint to continue from; the weights at the end equal, bit for bit,
        those of an uninterrupted run with the same seeds. (From the middle of an epoch
        this needs a loader shuffling with its own generator, ``DataLoader(...,
        seed=...)``; one drawing from fastconv's default generator resumes exactly from
        epoch-end checkpoints only.)
    progress : called after every batch with (losses, images, correct, seconds) of the
        epoch so far (a KeyboardInterrupt raised there stops like Ctrl-C).
    on_epoch : ``on_epoch(epoch, stats) -> record`` (JSON-able) for the history;
        default: the epoch's stats. ``on_epoch_start(epoch, batches_done)`` (optional)
        is called before each epoch's batches.
    meta : a JSON-able value stored in the checkpoint; resuming requires it to match.
        ``meta_defaults`` (a dict): values of keys that older checkpoints' dict metas
        lack (they resume when this run has those values).
    """
    for key, val in (("epochs", epochs), ("checkpoint_every", checkpoint_every)):
        if val is not None and not (isinstance(val, int) and val > 0):
            raise ValueError(f"train: {key}={val!r} must be a positive int")
    if checkpoint_every is not None and checkpoint is None:
        raise ValueError("train: checkpoint_every needs a checkpoint path")
    shuffler = loader.generator if loader.shuffle else None
    gens = {"shuffle": shuffler} if shuffler is not None else {}
    epoch, skip, partial, history = 1, 0, None, []
    if resume is not None:
        got = ckpt.load(resume, model=model, optimizer=optimizer, scheduler=scheduler,
                        generators=gens)
        had = got.extra.get("meta") if isinstance(got.extra, dict) else None
        if isinstance(had, dict) and meta_defaults:
            had = {**meta_defaults, **had}
        if had != meta:
            raise ckpt.CheckpointError(f"train: {resume} was written by a run with "
                                       f"{_differences(had, meta)}")
        epoch, skip = got.epoch, got.extra["batch"]
        partial, history = got.extra["partial"], got.extra["history"]
    n = len(loader)

    def save(e, b, tot, shuffle_state):
        extra = {"batch": b, "partial": tot, "history": history, "meta": meta}
        g = {"shuffle": _generator_at(shuffle_state)} if shuffler is not None else None
        ckpt.save(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler,
                  epoch=e, extra=extra, generators=g)

    with _DeferredSigint() as sigint:
        while epoch <= epochs:
            shuffle_state = shuffler.bit_generator.state if shuffler is not None else None
            if on_epoch_start is not None:
                on_epoch_start(epoch, skip)
            try:
                tot = _run_epoch(model, loader, optimizer, progress, sigint, skip, partial,
                                 (epoch - 1) * n + 1)
            except _Stop as stop:
                tot = stop.args[0]
                where = f"epoch {epoch}, batch {tot['batch']}/{n}"
                if checkpoint is None:
                    raise Interrupted(f"interrupted at {where}; no checkpoint path, nothing "
                                      "saved", None) from None
                save(epoch, tot["batch"], tot, shuffle_state)
                raise Interrupted(f"interrupted at {where}; wrote {checkpoint} (continue "
                                  f"with --resume {checkpoint})", checkpoint) from None
            except KeyboardInterrupt:
                raise Interrupted(f"interrupted inside a step of epoch {epoch}; nothing "
                                  "saved (the last checkpoint, if any, is whole)",
                                  None) from None
            stats = _summary(tot)
            history.append(on_epoch(epoch, stats) if on_epoch is not None else stats)
            if scheduler is not None:
                scheduler.step()
            epoch, skip, partial = epoch + 1, 0, None
            if checkpoint_every is not None and (epoch - 1) % checkpoint_every == 0:
                save(epoch, 0, None, shuffler.bit_generator.state if shuffler else None)
    return history


def _bar(total: int, desc: str, enabled: bool, initial: int = 0):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="batch", file=sys.stderr,
                leave=True)


def run(model: str = "lenet", dataset: str = "digits", epochs: int = 10,
        batch_size: int = 32, lr: float = 0.05, seed: int = 0, optimizer: str = "sgd",
        out: str | None = None, progress: bool = True, log=print, *,
        checkpoint: str | None = None, checkpoint_every: int | None = None,
        resume: str | None = None, layout: str = "NCHW", device: str = "cpu",
        limit: int | None = None) -> dict:
    """Train ``model`` on ``dataset`` and return the metrics (see module docstring).

    Seeding: the weights come from ``default_rng(seed)``, the shuffling from
    ``default_rng(seed + 1)``, the split from ``seed``; fastconv's default generator is
    seeded with ``seed`` too, so a run is repeatable bit for bit on one machine.

    ``layout`` "NHWC" trains the model channels last (the data transposed once, up
    front); ``device`` "cuda" trains on the GPU (the model and each batch moved there;
    the loss and the logits read back per batch; ValueError up front for a model or
    optimiser without a GPU path, ``fastconv.cuda.CudaUnavailableError`` without a
    usable GPU). ``limit``: the first ``limit`` training and test images (None: all).

    Checkpoints (see :func:`fit`): ``checkpoint`` is the file (default
    ``<out>/checkpoint.npz``, or ``checkpoint.npz`` without ``out``), written every
    ``checkpoint_every`` epochs (default: never) and on Ctrl-C, which raises
    :class:`Interrupted`; ``resume`` continues a run from such a file (the other
    arguments must be those of the run that wrote it).

    Before the clock starts, one untimed warm-up step (:func:`warm_up`) compiles the
    kernels or loads them from the cache, so ``images_per_s`` and ``train_seconds``
    never include compile time (``warmup_seconds`` in the metrics says what it took).
    """
    if not (isinstance(epochs, int) and epochs > 0):
        raise ValueError(f"train: epochs={epochs!r} must be a positive int")
    if not lr > 0:
        raise ValueError(f"train: lr={lr!r} must be positive")
    if not (isinstance(batch_size, int) and batch_size > 0):
        raise ValueError(f"train: batch_size={batch_size!r} must be a positive int")
    check_device(model, optimizer, device)
    devices.require("train", device)
    config = {"model": model, "dataset": dataset, "epochs": epochs,
              "batch_size": batch_size, "lr": lr, "seed": seed, "optimizer": optimizer,
              "layout": layout, "limit": limit}
    manual_seed(seed)
    *arrays, n_classes = load_dataset(dataset, seed)
    in_channels, size = arrays[0].shape[1], arrays[0].shape[-1]
    x_tr, y_tr, x_te, y_te = prepare_data(arrays, layout, limit)
    net = build_model(model, in_channels, n_classes, size, np.random.default_rng(seed),
                      layout)
    opt = build_optimizer(optimizer, net.parameters(), lr)
    sched = optim.CosineAnnealingLR(opt, T_max=epochs)
    loader = data.DataLoader((x_tr, y_tr), batch_size, shuffle=True, seed=seed + 1)
    if checkpoint is None:
        checkpoint = os.path.join(out or ".", "checkpoint.npz")
    log(f"{model} on {dataset}: {len(y_tr)} training / {len(y_te)} test images of shape "
        f"{x_tr.shape[1:]}, {sum(p.numel() for p in net.parameters())} parameters")
    if resume:
        log(f"resuming from {resume}")
    if out:
        os.makedirs(out, exist_ok=True)

    bars = {}

    def new_bar(epoch, skip):
        bars["bar"] = _bar(len(loader), f"epoch {epoch}/{epochs}", progress, initial=skip)

    def show(losses, seen, correct, secs):
        bar = bars.get("bar")
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}",
                            acc=f"{correct / seen:.3f}",
                            img_s=f"{seen / secs:.0f}" if secs > 0 else "-")

    def record(epoch, stats):
        close_bar()
        test_loss, test_acc = evaluate(net, x_te, y_te)
        if not progress:
            log(f"epoch {epoch}: loss {stats['loss']:.4f}, train acc "
                f"{stats['accuracy']:.4f}, test acc {test_acc:.4f}, "
                f"{stats['images_per_s']:.0f} images/s")
        return {"epoch": epoch, "lr": opt.param_groups[0]["lr"],
                "train_loss": stats["loss"], "train_accuracy": stats["accuracy"],
                "test_loss": test_loss, "test_accuracy": test_acc,
                "seconds": stats["seconds"], "images_per_s": stats["images_per_s"],
                "batch_losses": stats["batch_losses"]}

    def close_bar():
        bar = bars.pop("bar", None)
        if bar is not None:
            bar.close()

    if resume is not None:   # a bad file fails now, not after the warm-up's compiles
        ckpt.read_npz(resume)
    # Untimed: the kernels compile (first use) or load from the cache before the clock
    # and the progress bar's ETA start, so images/s never includes compile time.
    secs = warm_up(net, opt, x_tr[:batch_size], y_tr[:batch_size], x_te[:256],
                   device=device)
    net.to(device)                  # in place: the optimiser's parameters move with it
    log(f"warm-up step: {secs:.1f} s (kernels compiled or loaded from the cache; not timed)")
    start = time.perf_counter()
    try:
        history = fit(net, loader, opt, sched, epochs, checkpoint=checkpoint,
                      checkpoint_every=checkpoint_every, resume=resume,
                      progress=show if progress else None, on_epoch=record,
                      on_epoch_start=new_bar, meta=config,
                      meta_defaults={"layout": "NCHW", "limit": None})
    finally:
        close_bar()
    metrics = {
        "config": config,
        "test_accuracy": history[-1]["test_accuracy"],
        "test_loss": history[-1]["test_loss"],
        "train_seconds": time.perf_counter() - start,
        "warmup_seconds": secs,
        "device": device,
        "epochs": history,
    }
    n_right = round(metrics["test_accuracy"] * len(y_te))
    log(f"test accuracy: {100 * metrics['test_accuracy']:.2f}% ({n_right}/{len(y_te)}) after "
        f"{epochs} epochs, {metrics['train_seconds']:.1f} s")
    if out:
        nn.save(net.state_dict(), os.path.join(out, "weights.npz"))
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        log(f"wrote {os.path.join(out, 'weights.npz')} and metrics.json")
    metrics["model"] = net
    return metrics
