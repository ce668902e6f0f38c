"""Training end to end: accuracy on the digits, repeatability under a seed, saving and
reloading, evaluation with running batch-norm statistics, the `fastconv train` command."""

import gc
import importlib.util
import json
import os
import signal

import numpy as np
import pytest

from fastconv import checkpoint, config, data, models, nn, optim, training
from fastconv.nn import functional as F
from fastconv.tools import cli


def _quiet(*args):
    pass


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    return data.load_digits()


def test_lenet_digits_accuracy(digits):
    m = training.run("lenet", "digits", epochs=15, batch_size=16, lr=0.05, seed=0,
                     progress=False, log=_quiet)
    assert m["test_accuracy"] >= 0.97, [e["test_accuracy"] for e in m["epochs"]]


def test_resnet_digits_accuracy(digits):
    m = training.run("resnet", "digits", epochs=4, batch_size=32, lr=0.05, seed=0,
                     progress=False, log=_quiet)
    assert m["test_accuracy"] >= 0.97, [e["test_accuracy"] for e in m["epochs"]]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("model,epochs,batch,lr", [("lenet", 30, 16, 0.05),
                                                   ("resnet", 10, 32, 0.05)])
def test_digits_accuracy_full_runs(digits, model, epochs, batch, lr, seed):
    m = training.run(model, "digits", epochs=epochs, batch_size=batch, lr=lr, seed=seed,
                     progress=False, log=_quiet)
    assert m["test_accuracy"] >= 0.97, [e["test_accuracy"] for e in m["epochs"]]


@pytest.mark.parametrize("model,dataset,batches", [("lenet", "synthetic", 25),
                                                   ("resnet", "digits", 23)])
def test_runs_are_repeatable_bit_for_bit(model, dataset, batches):
    if dataset == "digits":
        pytest.importorskip("sklearn")
    kw = dict(epochs=1, batch_size=64, lr=0.05, seed=3, progress=False, log=_quiet)
    a = training.run(model, dataset, **kw)
    b = training.run(model, dataset, **kw)
    losses = a["epochs"][0]["batch_losses"]
    assert len(losses) == batches and losses == b["epochs"][0]["batch_losses"]
    for (k, va), vb in zip(a["model"].state_dict().items(), b["model"].state_dict().values(),
                           strict=True):
        np.testing.assert_array_equal(va, vb, err_msg=k)
    c = training.run(model, dataset, **{**kw, "seed": 4})
    assert c["epochs"][0]["batch_losses"] != losses


def _trained_resnet(rng):
    x, y = data.make_shapes(96, 8, seed=1)
    net = models.resnet_small(1, 4, widths=(4, 8), rng=rng)
    opt = optim.Adam(net.parameters(), lr=0.01)
    training.train_epoch(net, data.DataLoader((x, y), 32, shuffle=True, seed=0), opt)
    return net, x


def test_saved_and_reloaded_model_predicts_identically(tmp_path, rng):
    net, x = _trained_resnet(rng)
    net.eval()
    path = tmp_path / "weights.npz"
    nn.save(net.state_dict(), path)
    fresh = models.resnet_small(1, 4, widths=(4, 8), rng=np.random.default_rng(99)).eval()
    assert not np.array_equal(fresh(x).data, net(x).data)
    fresh.load_state_dict(nn.load(path))
    np.testing.assert_array_equal(fresh(x).data, net(x).data)


def test_eval_mode_uses_running_statistics(rng):
    net, x = _trained_resnet(rng)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(int(b.num_batches_tracked) == 3 for b in bns)
    assert not np.allclose(bns[0].running_mean, 0)
    net.eval()
    stats = [b.running_mean.copy() for b in bns]
    full = net(x[:8]).data
    # with running statistics an image's output does not depend on the rest of the batch
    for i in (0, 5):
        np.testing.assert_allclose(net(x[i:i + 1]).data[0], full[i], rtol=1e-5, atol=1e-6)
    for b, s in zip(bns, stats, strict=True):
        np.testing.assert_array_equal(b.running_mean, s)          # and nothing is updated
    net.train()
    assert not np.allclose(net(x[:8]).data, full, atol=1e-3)   # batch statistics differ


def test_evaluate(rng):
    x, y = data.make_shapes(40, 8, seed=2)
    net = models.lenet5(1, 4, 8, rng=rng)
    loss, acc = training.evaluate(net, x, y, batch_size=16)
    logits = net(x).data
    assert acc == np.mean(logits.argmax(1) == y)
    assert loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert not net.training


def test_cli_train(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(["train", "--model", "lenet", "--dataset", "synthetic", "--epochs", "1",
                   "--batch-size", "64", "--lr", "0.05", "--seed", "1", "--optimizer", "adam",
                   "--out", str(out)])
    assert rc == 0
    captured = capsys.readouterr()
    assert "test accuracy:" in captured.out
    if importlib.util.find_spec("tqdm") is not None:                   # the progress bar
        assert "img_s=" in captured.err and "epoch 1/1" in captured.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"] == {"model": "lenet", "dataset": "synthetic", "epochs": 1,
                                 "batch_size": 64, "lr": 0.05, "seed": 1,
                                 "optimizer": "adam", "layout": "NCHW", "limit": None}
    assert metrics["device"] == "cpu"
    assert len(metrics["epochs"]) == 1 and metrics["epochs"][0]["images_per_s"] > 0
    assert f"{100 * metrics['test_accuracy']:.2f}%" in captured.out
    net = models.lenet5(1, 4, 16)
    net.load_state_dict(nn.load(out / "weights.npz"))
    x, y = data.make_shapes(2000, 16, seed=1)
    _, x_te, _, y_te = data.train_test_split(x, y, test_size=0.2, seed=1)
    assert training.evaluate(net, x_te, y_te)[1] == metrics["test_accuracy"]


def test_cli_train_on_mnist_files_from_a_local_mirror(tmp_path, monkeypatch, capsys, rng):
    """The mnist path end to end on tiny IDX files (the real ones need the network)."""
    import gzip
    import hashlib

    src = tmp_path / "mirror"
    src.mkdir()
    sums = {}
    for prefix, n in (("train", 40), ("t10k", 10)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        for kind, arr, code in (("images-idx3", imgs, 3), ("labels-idx1", labels, 1)):
            head = bytes([0, 0, 8, code]) + b"".join(int(d).to_bytes(4, "big")
                                                     for d in arr.shape)
            blob = gzip.compress(head + arr.tobytes())
            name = f"{prefix}-{kind}-ubyte.gz"
            (src / name).write_bytes(blob)
            sums[name] = hashlib.sha256(blob).hexdigest()
    monkeypatch.setattr(config, "MNIST_MIRROR", str(src))
    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(data.MNIST_DATASETS, "mnist", (data.MNIST_DATASETS["mnist"][0], sums))
    assert cli.main(["train", "--dataset", "mnist", "--epochs", "1", "--batch-size", "16",
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "40 training / 10 test images of shape (1, 28, 28)" in out
    assert "test accuracy:" in out


def test_train_errors():
    with pytest.raises(ValueError, match="dataset='cifar' is not known"):
        training.run(dataset="cifar", progress=False, log=_quiet)
    with pytest.raises(ValueError, match="model='vgg' is not known"):
        training.run(model="vgg", dataset="synthetic", progress=False, log=_quiet)
    with pytest.raises(ValueError, match="epochs=0 must be a positive int"):
        training.run(epochs=0, progress=False, log=_quiet)
    with pytest.raises(ValueError, match="batch_size=0 must be a positive int"):
        training.run(batch_size=0, progress=False, log=_quiet)
    with pytest.raises(SystemExit):
        cli.main(["train", "--model", "vgg"])


# ------------------------------------------------------ stopping, resuming, NaN guards
_FIT_OPTIMS = [(optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
               (optim.Adam, dict(lr=0.01)),
               (optim.AdamW, dict(lr=0.01, weight_decay=0.05))]
_X = np.random.default_rng(3).standard_normal((40, 1, 6, 6)).astype(np.float32)
_Y = np.random.default_rng(4).integers(0, 3, 40)


def _setup(cls, kw):
    """Small conv net with batch norm and dropout; loader of 5 batches an epoch."""
    rng = np.random.default_rng(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, rng=rng), nn.BatchNorm2d(3), nn.ReLU(),
                        nn.Dropout(0.2), nn.Flatten(), nn.Linear(48, 3, rng=rng))
    opt = cls(net.parameters(), **kw)
    sched = optim.CosineAnnealingLR(opt, T_max=3)
    loader = data.DataLoader((_X, _Y), 8, shuffle=True, seed=7)
    training.manual_seed(1)
    return net, opt, sched, loader


def _fit(cls, kw, **fit_kw):
    net, opt, sched, loader = _setup(cls, kw)
    history = training.fit(net, loader, opt, sched, 3, **fit_kw)
    return net, history


def _stop_at(step):
    def progress(losses, *_):
        progress.calls += 1
        if progress.calls == step:
            raise KeyboardInterrupt
    progress.calls = 0
    return progress


@pytest.mark.parametrize("cls,kw", _FIT_OPTIMS)
def test_stopped_and_resumed_run_is_bit_for_bit(tmp_path, cls, kw):
    full, history = _fit(cls, kw)
    path = str(tmp_path / "ck.npz")
    with pytest.raises(training.Interrupted, match="interrupted at epoch 2, batch 2/5; "
                                                   "wrote .*ck.npz") as e:
        _fit(cls, kw, checkpoint=path, progress=_stop_at(7))
    assert e.value.checkpoint == path
    training.manual_seed(123)                       # the checkpoint restores the generator
    resumed, history2 = _fit(cls, kw, checkpoint=path, resume=path)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(),
                         strict=True):
        np.testing.assert_array_equal(a, b, err_msg=k)
    assert [h["batch_losses"] for h in history2] == [h["batch_losses"] for h in history]


def test_resume_from_the_epoch_checkpoint_after_a_stop_inside_a_step(tmp_path,
                                                                      monkeypatch):
    cls, kw = _FIT_OPTIMS[0]
    full, _ = _fit(cls, kw)
    path = str(tmp_path / "ck.npz")
    step = cls.step

    def interrupted_step(self):
        interrupted_step.calls += 1
        if interrupted_step.calls == 13:               # epoch 3, inside the step
            raise KeyboardInterrupt
        step(self)
    interrupted_step.calls = 0
    monkeypatch.setattr(cls, "step", interrupted_step)
    with pytest.raises(training.Interrupted, match="inside a step of epoch 3; nothing "
                                                   "saved") as e:
        _fit(cls, kw, checkpoint=path, checkpoint_every=1)
    assert e.value.checkpoint is None
    monkeypatch.undo()
    resumed, history = _fit(cls, kw, resume=path)
    assert len(history) == 3
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        np.testing.assert_array_equal(a.data, b.data)


def test_ctrl_c_stops_after_the_batch(tmp_path):
    path = str(tmp_path / "ck.npz")
    before = signal.getsignal(signal.SIGINT)

    def progress(losses, *_):
        if len(losses) == 3:
            signal.raise_signal(signal.SIGINT)        # handled: only sets the flag
    with pytest.raises(training.Interrupted, match="interrupted at epoch 1, batch 3/5"):
        _fit(*_FIT_OPTIMS[1], checkpoint=path, progress=progress)
    assert signal.getsignal(signal.SIGINT) is before
    got = checkpoint.load(path, restore_rng=False)
    assert got.epoch == 1 and got.extra["batch"] == 3


def test_fit_errors(tmp_path):
    with pytest.raises(ValueError, match="checkpoint_every=0 must be a positive int"):
        _fit(*_FIT_OPTIMS[0], checkpoint="x.npz", checkpoint_every=0)
    with pytest.raises(ValueError, match="checkpoint_every needs a checkpoint path"):
        _fit(*_FIT_OPTIMS[0], checkpoint_every=1)
    path = str(tmp_path / "ck.npz")
    _fit(*_FIT_OPTIMS[0], checkpoint=path, checkpoint_every=3, meta={"seed": 1})
    with pytest.raises(ValueError, match=r"ck.npz was written by a run with seed=1, this "
                                         r"run has seed=2$"):
        _fit(*_FIT_OPTIMS[0], resume=path, meta={"seed": 2})


def test_checkpoints_without_later_settings_resume_when_this_run_has_their_defaults(
        tmp_path):
    path = str(tmp_path / "ck.npz")      # as written before "layout" existed
    _fit(*_FIT_OPTIMS[0], checkpoint=path, checkpoint_every=3, meta={"seed": 1})
    _fit(*_FIT_OPTIMS[0], resume=path, meta={"seed": 1, "layout": "NCHW"},
         meta_defaults={"layout": "NCHW"})
    with pytest.raises(ValueError, match=r"with layout='NCHW', this run has "
                                         r"layout='NHWC'$"):
        _fit(*_FIT_OPTIMS[0], resume=path, meta={"seed": 1, "layout": "NHWC"},
             meta_defaults={"layout": "NCHW"})


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid:RuntimeWarning")
def test_a_nonfinite_loss_names_the_step_and_the_layer():
    net, opt, sched, loader = _setup(*_FIT_OPTIMS[0])

    def overflow(epoch, stats):                       # after epoch 1: weights that overflow
        net[5].weight.data[:] = 1e38
        return stats
    with pytest.raises(training.NonFiniteLossError,
                       match=r"the loss is nan at step 6 \(batch 1 of the epoch\); the "
                             r"first non-finite value appeared in layer '5' \(Linear\)") as e:
        training.fit(net, loader, opt, sched, 3, on_epoch=overflow)
    assert e.value.step == 6 and e.value.layer.startswith("layer '5'")
    net[5].weight.data[:] = np.nan
    assert training.locate_nonfinite(net, _X[:4]).endswith(
        "in layer '5' (Linear); non-finite parameters: 5.weight"[len("in "):])
    assert training.locate_nonfinite(net, np.full((2, 1, 6, 6), np.inf)) == "the input batch"


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid:RuntimeWarning")
def test_cli_train_interrupt_resume_and_nan(tmp_path, monkeypatch, capsys):
    args = ["train", "--dataset", "synthetic", "--epochs", "2", "--batch-size", "400",
            "--seed", "3", "--optimizer", "adamw", "--no-progress"]
    assert cli.main(args + ["--out", str(tmp_path / "full")]) == 0
    calls = []
    monkeypatch.setattr(training._DeferredSigint, "__call__",
                        lambda self: calls.append(1) or len(calls) == 6)   # Ctrl-C
    out = tmp_path / "cut"
    assert cli.main(args + ["--out", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fastconv train: interrupted at epoch 2, batch 2/4; wrote "
                   f"{out / 'checkpoint.npz'} (continue with --resume "
                   f"{out / 'checkpoint.npz'})"]
    monkeypatch.undo()
    assert cli.main(args + ["--out", str(out), "--resume", str(out / "checkpoint.npz")]) == 0
    full, resumed = nn.load(tmp_path / "full" / "weights.npz"), nn.load(out / "weights.npz")
    for k in full:
        np.testing.assert_array_equal(full[k], resumed[k], err_msg=k)
    capsys.readouterr()
    other = [a if a != "3" else "4" for a in args]                        # another seed
    assert cli.main(other + ["--resume", str(out / "checkpoint.npz")]) == 1
    err = capsys.readouterr().err
    assert "checkpoint.npz was written by a run with seed=3, this run has seed=4\n" in err

    build = training.build_model

    def overflowing(*a, **k):
        net = build(*a, **k)
        net[0].weight.data[:] = 1e38
        return net
    monkeypatch.setattr(training, "build_model", overflowing)
    assert cli.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastconv train: the loss is nan at step 1 ")
    assert "first non-finite value appeared in layer '0' (Conv2d)" in err[0]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
def test_resident_memory_stays_flat_over_2000_steps(tmp_path):
    """RSS after 2000 training steps (fit, Adam, batch norm, dropout, a checkpoint every
    50 epochs) within 5% of RSS after 200."""
    if not os.path.exists("/proc/self/statm"):
        pytest.skip("needs /proc/self/statm")
    net, opt, sched, loader = _setup(optim.Adam, dict(lr=1e-3))
    rss = {}

    def progress(losses, *_):
        progress.steps += 1
        if progress.steps in (200, 2000):
            gc.collect()
            rss[progress.steps] = _rss_bytes()
    progress.steps = 0
    training.fit(net, loader, opt, sched, 400, checkpoint=str(tmp_path / "ck.npz"),
                 checkpoint_every=50, progress=progress)
    print(f"\nRSS after 200 steps {rss[200] / 2**20:.1f} MiB, after 2000 steps "
          f"{rss[2000] / 2**20:.1f} MiB ({100 * (rss[2000] / rss[200] - 1):+.2f}%)")
    assert rss[2000] <= 1.05 * rss[200]


def test_train_epoch_passes_a_keyboard_interrupt_on():
    net, opt, _, loader = _setup(*_FIT_OPTIMS[1])
    with pytest.raises(KeyboardInterrupt):
        training.train_epoch(net, loader, opt, _stop_at(2))
