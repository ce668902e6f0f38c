"""Training end to end: accuracy on the digits, repeatability under a seed, saving and
reloading, evaluation with running batch-norm statistics, the `fastconv train` command."""

import importlib.util
import json

import numpy as np
import pytest

from fastconv import config, data, models, nn, optim, training
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
                                 "optimizer": "adam"}
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
    with pytest.raises(SystemExit):
        cli.main(["train", "--model", "vgg"])
