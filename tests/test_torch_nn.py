"""fastconv.nn / optim against torch (skipped when torch is not installed): a small network's
loss, every gradient and the batch-norm statistics; LeNet and ResNet training steps;
optimiser updates and schedules."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tnn = torch.nn

from fastconv import models, nn, optim  # noqa: E402
from fastconv.nn import functional as F  # noqa: E402
from fastconv.tools.bench.train_models import Spec, torch_model  # noqa: E402

TOL = {np.float64: dict(rtol=1e-9, atol=1e-12), np.float32: dict(rtol=2e-4, atol=2e-6)}


def _copy_weights(ours: nn.Module, theirs: "tnn.Module") -> None:
    """Our state dict into torch's module (same keys by construction)."""
    sd = {k: torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()}
    theirs.load_state_dict(sd, strict=True)


def _assert_close(got, want, dtype, what=""):
    want = want.detach().numpy() if hasattr(want, "detach") else np.asarray(want)
    np.testing.assert_allclose(got, want, err_msg=what, **TOL[dtype])


def _assert_grads(ours, theirs, dtype):
    tparams = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None, name
        _assert_close(p.grad, tparams[name].grad, dtype, name)


def _assert_buffers(ours, theirs, dtype):
    tbuf = dict(theirs.named_buffers())
    for name, b in ours.named_buffers():
        _assert_close(b, tbuf[name], dtype, name)


# ------------------------------------------------------------------------- a small network
def _small_pair(dtype, rng):
    ours = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, rng=rng, dtype=dtype),
        nn.BatchNorm2d(4, dtype=dtype), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        nn.Conv2d(4, 6, 3, stride=(1, 2), padding=((1, 0), (0, 1)), dilation=(2, 1),
                  groups=2, rng=rng, dtype=dtype),
        nn.ReLU(),
        nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False),
        nn.BatchNorm2d(6, momentum=0.3, dtype=dtype),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(6, 5, rng=rng, dtype=dtype))
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    theirs = tnn.Sequential(
        tnn.Conv2d(2, 4, 3, padding=1), tnn.BatchNorm2d(4), tnn.ReLU(),
        tnn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        tnn.Sequential(tnn.ZeroPad2d((0, 1, 1, 0)),       # asymmetric (l, r, t, b) padding
                       tnn.Conv2d(4, 6, 3, stride=(1, 2), dilation=(2, 1), groups=2)),
        tnn.ReLU(),
        tnn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False),
        tnn.BatchNorm2d(6, momentum=0.3),
        tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(6, 5)).to(tdt)
    sd = {k.replace("4.", "4.1.", 1) if k.startswith("4.") else k: torch.from_numpy(v)
          for k, v in ours.state_dict().items()}
    theirs.load_state_dict(sd)
    return ours, theirs


def _named(theirs):
    """torch's names mapped back to ours (undo the ZeroPad2d wrapper)."""
    class View:
        def named_parameters(self):
            for k, v in theirs.named_parameters():
                yield k.replace("4.1.", "4.", 1), v

        def named_buffers(self):
            for k, v in theirs.named_buffers():
                yield k.replace("4.1.", "4.", 1), v
    return View()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_small_network_loss_gradients_and_running_stats(rng, dtype):
    ours, theirs = _small_pair(dtype, rng)
    x = rng.standard_normal((3, 2, 9, 8)).astype(dtype)
    y = np.array([4, 0, 2])
    for step in range(2):                     # two batches: running stats accumulate
        xb = x * (1 + step)
        loss = F.cross_entropy(ours(xb), y)
        ours.zero_grad()
        loss.backward()
        tloss = torch.nn.functional.cross_entropy(theirs(torch.from_numpy(xb)),
                                                  torch.from_numpy(y))
        theirs.zero_grad()
        tloss.backward()
        assert loss.dtype == dtype
        _assert_close(loss.data, tloss, dtype, "loss")
        _assert_grads(ours, _named(theirs), dtype)
        _assert_buffers(ours, _named(theirs), dtype)
    ours.eval()
    theirs.eval()
    xe = rng.standard_normal((2, 2, 9, 8)).astype(dtype)
    _assert_close(ours(xe).data, theirs(torch.from_numpy(xe)), dtype, "eval output")


def test_eval_mode_gradients(rng):
    ours, theirs = _small_pair(np.float64, rng)
    ours(rng.standard_normal((4, 2, 9, 8)))    # move the running statistics off 0 / 1
    theirs(torch.from_numpy(rng.standard_normal((4, 2, 9, 8))))
    sd = {k.replace("4.", "4.1.", 1) if k.startswith("4.") else k: torch.from_numpy(v)
          for k, v in ours.state_dict().items()}
    theirs.load_state_dict(sd)
    ours.eval()
    theirs.eval()
    x = rng.standard_normal((2, 2, 9, 8))
    y = np.array([1, 3])
    F.cross_entropy(ours(x), y).backward()
    torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    _assert_grads(ours, _named(theirs), np.float64)


# ------------------------------------------------------------------ LeNet / ResNet training
def _torch_net(model, size):
    """torch's LeNet-5 (size x size input) or ResNet with widths (4, 6), 1 input channel and
    10 classes, as the training benchmark builds them (fastconv's module names)."""
    widths = None if model == "lenet" else (4, 6)
    return torch_model(torch, Spec(model, (1, size, size), 1, widths))


@pytest.mark.parametrize("model,opt", [("lenet", "sgd"), ("lenet", "adamw"),
                                       ("resnet", "sgd"), ("resnet", "adam")])
def test_training_steps_match_torch(rng, model, opt):
    if model == "lenet":
        ours = models.lenet5(1, 10, 12, rng=rng, dtype=np.float64)
        theirs = _torch_net("lenet", 12).double()
        x = rng.random((6, 5, 1, 12, 12))
    else:
        ours = models.resnet_small(1, 10, widths=(4, 6), rng=rng, dtype=np.float64)
        theirs = _torch_net("resnet", 8).double()
        x = rng.random((6, 5, 1, 8, 8))
    _copy_weights(ours, theirs)
    y = rng.integers(0, 10, (6, 5))
    kw = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3) if opt == "sgd" else \
        dict(lr=1e-2, weight_decay=1e-2)
    cls, tcls = {"sgd": (optim.SGD, torch.optim.SGD), "adam": (optim.Adam, torch.optim.Adam),
                 "adamw": (optim.AdamW, torch.optim.AdamW)}[opt]
    o, to = cls(ours.parameters(), **kw), tcls(theirs.parameters(), **kw)
    for xb, yb in zip(x, y, strict=True):
        o.zero_grad()
        loss = F.cross_entropy(ours(xb), yb)
        loss.backward()
        o.step()
        to.zero_grad()
        tloss = torch.nn.functional.cross_entropy(theirs(torch.from_numpy(xb)),
                                                  torch.from_numpy(yb))
        tloss.backward()
        to.step()
        np.testing.assert_allclose(loss.item(), tloss.item(), rtol=1e-9)
    tsd = theirs.state_dict()
    for k, v in ours.state_dict().items():
        np.testing.assert_allclose(v, tsd[k].numpy(), rtol=1e-8, atol=1e-11, err_msg=k)


# -------------------------------------------------------------------------- optimisers alone
OPTIMISERS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.1, momentum=0.8, weight_decay=0.05, dampening=0.2)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05, maximize=True)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.01)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.3, amsgrad=True)),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name,kw", OPTIMISERS)
def test_optimiser_updates_match_torch(rng, name, kw, dtype):
    shapes = [(3, 4), (5,)]
    start = [rng.standard_normal(s).astype(dtype) for s in shapes]
    ours = [nn.Parameter(a.copy()) for a in start]
    theirs = [torch.tensor(a.copy(), requires_grad=True) for a in start]
    o, to = getattr(optim, name)(ours, **kw), getattr(torch.optim, name)(theirs, **kw)
    for _ in range(6):
        grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
        for p, tp, g in zip(ours, theirs, grads, strict=True):
            p.grad, tp.grad = g.copy(), torch.from_numpy(g.copy())
        o.step()
        to.step()
    for p, tp in zip(ours, theirs, strict=True):
        assert p.dtype == dtype
        np.testing.assert_allclose(p.data, tp.detach().numpy(),
                                   **(dict(rtol=1e-12) if dtype == np.float64
                                      else dict(rtol=1e-5, atol=1e-6)))


@pytest.mark.parametrize("name,kw", [("StepLR", dict(step_size=3, gamma=0.3)),
                                     ("CosineAnnealingLR", dict(T_max=7, eta_min=1e-3)),
                                     ("CosineAnnealingLR", dict(T_max=3))])
def test_schedules_match_torch(name, kw):
    p, tp = nn.Parameter(np.ones(1)), torch.ones(1, requires_grad=True)
    o, to = optim.SGD([p], lr=0.2), torch.optim.SGD([tp], lr=0.2)
    s, ts = getattr(optim, name)(o, **kw), getattr(torch.optim.lr_scheduler, name)(to, **kw)
    for _ in range(12):
        np.testing.assert_allclose(s.get_last_lr(), ts.get_last_lr(), rtol=1e-12, atol=1e-15)
        o.step()
        to.step()
        s.step()
        ts.step()


# --------------------------------------------------------------------------- single ops
def test_functional_ops_match_torch(rng):
    x = rng.standard_normal((4, 6))
    t = np.array([5, 0, 3, 3])
    for fn, tfn in ((lambda a: F.log_softmax(a, 0), lambda a: torch.log_softmax(a, 0)),
                    (lambda a: F.softmax(a, 1), lambda a: torch.softmax(a, 1)),
                    (lambda a: F.cross_entropy(a, t, "none"),
                     lambda a: torch.nn.functional.cross_entropy(a, torch.from_numpy(t),
                                                                 reduction="none"))):
        ours = nn.Parameter(x.copy())
        theirs = torch.tensor(x, requires_grad=True)
        out, tout = fn(ours), tfn(theirs)
        g = rng.standard_normal(out.shape)
        out.backward(g)
        tout.backward(torch.from_numpy(g))
        np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-12)
