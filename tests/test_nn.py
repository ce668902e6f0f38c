"""Modules: registration, traversal, modes, state dicts, initialisation, layers' shapes,
batch-norm running statistics, whole-network gradients against finite differences."""

from collections import OrderedDict

import numpy as np
import pytest

import fastconv
from fastconv import Tensor, gradcheck, models, nn
from fastconv.nn import functional as F


class Tiny(nn.Module):
    def __init__(self, rng=None):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1, rng=rng)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5, rng=rng))
        self.scale = 2.0                       # a plain attribute: not registered

    def forward(self, x):
        return self.head(F.relu(self.bn(self.conv(x)))) * self.scale


def test_registration_and_traversal():
    m = Tiny(np.random.default_rng(0))
    names = [n for n, _ in m.named_parameters()]
    assert names == ["conv.weight", "conv.bias", "bn.weight", "bn.bias", "head.1.weight",
                     "head.1.bias"]
    assert [n for n, _ in m.named_buffers()] == ["bn.running_mean", "bn.running_var",
                                                  "bn.num_batches_tracked"]
    assert [type(c).__name__ for c in m.children()] == ["Conv2d", "BatchNorm2d", "Sequential"]
    assert [n for n, _ in m.named_modules()] == ["", "conv", "bn", "head", "head.0", "head.1"]
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in m.parameters())
    assert m.scale == 2.0 and "scale" not in m._parameters
    shared = nn.Sequential(m.conv, m.conv)     # a module used twice counts once
    assert len(list(shared.parameters())) == 2
    with pytest.raises(AttributeError, match="'Tiny' object has no attribute 'nope'"):
        m.nope  # noqa: B018


def test_assignment_before_init_is_an_error():
    class Bad(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.ones(2))

    with pytest.raises(AttributeError, match=r"before Module.__init__\(\) call"):
        Bad()


def test_train_eval_zero_grad_and_repr():
    m = Tiny(np.random.default_rng(0))
    assert m.training and m.head[1].training
    m.eval()
    assert not any(mod.training for mod in m.modules())
    m.train()
    assert all(mod.training for mod in m.modules())
    for p in m.parameters():
        p.grad = np.ones(p.shape, p.dtype)
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    r = repr(m)
    assert "(conv): Conv2d(2, 3, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))" in r
    assert "(bn): BatchNorm2d(3, eps=1e-05, momentum=0.1" in r
    assert "(1): Linear(in_features=48, out_features=5, bias=True)" in r


def test_state_dict_round_trip(tmp_path):
    a, b = Tiny(np.random.default_rng(0)), Tiny(np.random.default_rng(1))
    a.bn.running_mean[...] = [1.0, 2.0, 3.0]
    sd = a.state_dict()
    assert list(sd) == ["conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean",
                        "bn.running_var", "bn.num_batches_tracked", "head.1.weight",
                        "head.1.bias"]
    sd["conv.bias"][...] = 99                  # a copy: the model is untouched
    assert not np.any(a.conv.bias.data == 99)
    path = tmp_path / "w.npz"
    nn.save(a.state_dict(), path)
    loaded = nn.load(path)
    assert list(loaded) == list(sd)
    bn_mean = b.bn.running_mean
    b.load_state_dict(loaded)
    assert b.bn.running_mean is bn_mean        # buffers are filled in place
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        np.testing.assert_array_equal(va, vb, err_msg=k)


def test_load_state_dict_errors():
    m = Tiny(np.random.default_rng(0))
    sd = m.state_dict()
    del sd["conv.bias"]
    sd["extra"] = np.ones(1)
    with pytest.raises(ValueError, match=r"missing keys \['conv.bias'\], unexpected keys "
                       r"\['extra'\]"):
        m.load_state_dict(sd)
    res = m.load_state_dict(sd, strict=False)
    assert res.missing_keys == ["conv.bias"] and res.unexpected_keys == ["extra"]
    sd = m.state_dict()
    sd["head.1.weight"] = np.ones((5, 3))
    with pytest.raises(ValueError, match=r"head.1.weight has shape \(5, 3\) in the state dict "
                       r"but \(5, 48\) in the model"):
        m.load_state_dict(sd)


def test_to_double():
    m = Tiny(np.random.default_rng(0)).double()
    assert all(p.dtype == np.float64 for p in m.parameters())
    assert m.bn.running_var.dtype == np.float64
    assert m.bn.num_batches_tracked.dtype == np.int64
    assert m(np.ones((2, 2, 4, 4))).dtype == np.float64
    with pytest.raises(TypeError, match="dtype must be a floating type"):
        m.to(np.int32)


# --------------------------------------------------------------------------- init & layers
def test_default_initialisation_matches_torch_bounds():
    rng = np.random.default_rng(0)
    conv = nn.Conv2d(8, 16, (3, 5), groups=2, rng=rng)
    fan_in = 4 * 3 * 5
    for p in (conv.weight, conv.bias):
        assert np.abs(p.data).max() <= 1 / np.sqrt(fan_in)
    assert np.abs(conv.weight.data).max() > 0.98 / np.sqrt(fan_in)  # fills the interval
    lin = nn.Linear(50, 7, rng=rng)
    assert np.abs(lin.weight.data).max() <= 1 / np.sqrt(50)
    assert lin.weight.data.std() == pytest.approx(1 / np.sqrt(50) / np.sqrt(3), rel=0.1)
    bn = nn.BatchNorm2d(4)
    np.testing.assert_array_equal(bn.weight.data, 1)
    np.testing.assert_array_equal(bn.bias.data, 0)
    assert conv.weight.dtype == np.float32
    assert nn.Linear(2, 2, dtype=np.float64).weight.dtype == np.float64


def test_initialisation_is_seeded():
    a = nn.Linear(5, 3, rng=np.random.default_rng(4)).weight.data
    b = nn.Linear(5, 3, rng=np.random.default_rng(4)).weight.data
    np.testing.assert_array_equal(a, b)
    fastconv.manual_seed(3)
    c = models.lenet5(input_size=8).state_dict()
    fastconv.manual_seed(3)
    d = models.lenet5(input_size=8).state_dict()
    for k in c:
        np.testing.assert_array_equal(c[k], d[k])
    e = models.lenet5(input_size=8).state_dict()
    assert not np.array_equal(c["0.weight"], e["0.weight"])


def test_init_errors():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        nn.init.kaiming_uniform_(Tensor(np.ones(3)))
    with pytest.raises(ValueError, match="nonlinearity='swish' is not known"):
        nn.init.calculate_gain("swish")


def test_layer_errors():
    with pytest.raises(ValueError, match="Conv2d: groups=2 must divide in_channels=3"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="Conv2d: padding='full' is not understood"):
        nn.Conv2d(3, 4, 3, padding="full")
    with pytest.raises(ValueError, match=r"AdaptiveAvgPool2d: output_size=\(2, 2\) is not "
                       "supported; only output size 1"):
        nn.AdaptiveAvgPool2d((2, 2))
    with pytest.raises(ValueError, match="Dropout: p=-0.1 must be a probability"):
        nn.Dropout(-0.1)
    with pytest.raises(ValueError, match="CrossEntropyLoss: reduction='max' is not known"):
        nn.CrossEntropyLoss("max")
    with pytest.raises(TypeError, match="Sequential: element 1 must be a Module, got int"):
        nn.Sequential(nn.ReLU(), 3)


def test_layer_shapes(rng):
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    assert nn.Conv2d(3, 4, 3, stride=2, padding=1)(x).shape == (2, 4, 5, 5)
    assert nn.Conv2d(3, 6, 3, padding="same", groups=3)(x).shape == (2, 6, 9, 9)
    assert nn.MaxPool2d(2)(x).shape == (2, 3, 4, 4)
    assert nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)(x).shape == (2, 3, 5, 5)
    assert nn.AvgPool2d(3, stride=3)(x).shape == (2, 3, 3, 3)
    assert nn.AdaptiveAvgPool2d(1)(x).shape == (2, 3, 1, 1)
    assert nn.GlobalAvgPool2d()(x).shape == (2, 3, 1, 1)
    assert nn.Flatten()(x).shape == (2, 243)
    assert nn.ReLU(inplace=True)(x).data.min() == 0
    seq = nn.Sequential(OrderedDict(flat=nn.Flatten(), fc=nn.Linear(243, 10)))
    assert seq(x).shape == (2, 10) and seq[1] is seq.fc and len(seq) == 2
    assert isinstance(seq[:1], nn.Sequential) and len(seq[:1]) == 1
    loss = nn.CrossEntropyLoss()(seq(x), np.array([1, 2]))
    assert loss.shape == () and loss.dtype == np.float32


def test_dropout_module_train_and_eval(rng):
    d = nn.Dropout(0.5, rng=np.random.default_rng(0))
    x = Tensor(np.ones((10, 10), np.float32))
    assert (d(x).data == 0).any()
    d.eval()
    assert d(x) is x


def test_basic_block(rng):
    same = nn.BasicBlock(4, 4)
    assert same.downsample is None
    down = nn.BasicBlock(4, 8, stride=2)
    assert isinstance(down.downsample, nn.Sequential)
    assert down.downsample[0].kernel_size == (1, 1) and down.downsample[0].stride == (2, 2)
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    assert same(x).shape == (2, 4, 6, 6)
    assert down(x).shape == (2, 8, 3, 3)
    assert nn.BasicBlock(4, 8)(x).shape == (2, 8, 6, 6)    # channels change: projection
    # identity shortcut: with conv weights zero (and fresh running statistics) the block
    # in eval mode is relu(x)
    fresh = nn.BasicBlock(4, 4).eval()
    for p in (fresh.conv1.weight, fresh.conv2.weight):
        p.data[...] = 0
    np.testing.assert_allclose(fresh(x).data, np.maximum(x, 0), atol=1e-6)


# ----------------------------------------------------------------------------- batch norm
def test_batch_norm_running_stats_and_eval_mode(rng):
    bn = nn.BatchNorm2d(3, momentum=0.2, dtype=np.float64)
    xs = [rng.standard_normal((4, 3, 2, 2)) * 2 + 1 for _ in range(3)]
    rm, rv = np.zeros(3), np.ones(3)
    for x in xs:
        y = bn(x).data
        m, v = x.mean((0, 2, 3)), x.var((0, 2, 3))
        np.testing.assert_allclose(y, (x - m[:, None, None]) / np.sqrt(v[:, None, None] + 1e-5),
                                   rtol=1e-10, atol=1e-12)
        rm = 0.8 * rm + 0.2 * m
        rv = 0.8 * rv + 0.2 * x.var((0, 2, 3), ddof=1)
    np.testing.assert_allclose(bn.running_mean, rm, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, rv, rtol=1e-12)
    assert int(bn.num_batches_tracked) == 3
    bn.eval()
    x = rng.standard_normal((2, 3, 2, 2))
    before = bn.running_mean.copy()
    y = bn(x).data
    np.testing.assert_allclose(y, (x - rm[:, None, None]) / np.sqrt(rv[:, None, None] + 1e-5),
                               rtol=1e-10)
    np.testing.assert_array_equal(bn.running_mean, before)      # eval does not update
    assert int(bn.num_batches_tracked) == 3


def test_batch_norm_cumulative_average_and_untracked(rng):
    bn = nn.BatchNorm2d(2, momentum=None, dtype=np.float64)
    xs = [rng.standard_normal((3, 2, 2, 2)) for _ in range(3)]
    for x in xs:
        bn(x)
    np.testing.assert_allclose(bn.running_mean, np.mean([x.mean((0, 2, 3)) for x in xs], 0),
                               rtol=1e-12)
    free = nn.BatchNorm2d(2, track_running_stats=False, dtype=np.float64).eval()
    x = xs[0]
    assert free.running_mean is None and "running_mean" not in free.state_dict()
    np.testing.assert_allclose(free(x).data.mean((0, 2, 3)), 0, atol=1e-12)  # batch stats


# --------------------------------------------------------------- networks: finite differences
def test_lenet_gradients(rng):
    """Each parameter's gradient against central differences of the float64 loss along
    three random directions (the full Jacobian of ~20k weights would be slow)."""
    model = models.lenet5(1, 3, 8, rng=rng, dtype=np.float64)
    x, target = rng.standard_normal((2, 1, 8, 8)), np.array([0, 2])
    loss = F.cross_entropy(model(x), target)
    model.zero_grad()
    loss.backward()
    eps = 1e-6
    for name, p in model.named_parameters():
        for _ in range(3):
            v = rng.standard_normal(p.shape)
            orig = p.data.copy()
            with fastconv.no_grad():
                p.data[...] = orig + eps * v
                plus = F.cross_entropy(model(x), target).item()
                p.data[...] = orig - eps * v
                minus = F.cross_entropy(model(x), target).item()
            p.data[...] = orig
            numeric = (plus - minus) / (2 * eps)
            assert np.sum(p.grad * v) == pytest.approx(numeric, rel=1e-5, abs=1e-8), name


def test_resnet_gradients_train_mode(rng):
    model = models.resnet_small(1, 3, widths=(2, 3), rng=rng, dtype=np.float64)
    running = [b.copy() for b in model.buffers()]
    x = rng.standard_normal((3, 1, 4, 4))

    def loss_fn(*ps):
        for b, r in zip(model.buffers(), running, strict=True):   # undo running updates
            b[...] = r
        return F.cross_entropy(model(x), np.array([0, 2, 1]))

    assert gradcheck(loss_fn, list(model.parameters()), atol=1e-6, rtol=1e-4)


def test_models_shapes_and_errors(rng):
    for size, flat in ((28, 400), (8, 64), (16, 256), (32, 576)):
        net = models.lenet5(1, 10, size, rng=rng)
        assert net[7].in_features == flat
        assert net(np.zeros((2, 1, size, size), np.float32)).shape == (2, 10)
    res = models.resnet_small(3, 7, rng=rng)
    assert res(np.zeros((2, 3, 8, 8), np.float32)).shape == (2, 7)
    assert sum(isinstance(m, nn.BasicBlock) for m in res.modules()) == 3
    assert sum(isinstance(m, nn.BatchNorm2d) for m in res.modules()) == 1 + 3 * 2 + 2
    with pytest.raises(ValueError, match="lenet5: input_size=2 must be an int >= 4"):
        models.lenet5(input_size=2)


def test_save_accepts_a_module(tmp_path):
    from fastconv import models
    a, b = models.lenet5(input_size=8, rng=np.random.default_rng(0)), models.lenet5(
        input_size=8, rng=np.random.default_rng(1))
    path = tmp_path / "m.npz"
    nn.save(a, path)
    b.load_state_dict(nn.load(path))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        np.testing.assert_array_equal(np.asarray(va), np.asarray(vb), err_msg=k)
    with pytest.raises(TypeError, match=r"save: expected a Module or its state dict "
                                        r"\(model.state_dict\(\), a mapping name -> array\), "
                                        r"got list"):
        nn.save([1, 2], path)


@pytest.mark.parametrize("train", [False, True])
def test_models_take_one_unbatched_image(train):
    from fastconv import models
    x = np.random.default_rng(3).random((1, 1, 8, 8)).astype(np.float32)
    for m in (models.lenet5(input_size=8, rng=np.random.default_rng(0)),
              models.resnet_small(widths=(4, 8), rng=np.random.default_rng(0))):
        m.train(train)
        y = m(x[0])
        assert y.shape == (10,)
        np.testing.assert_allclose(y.data, m(x).data[0], rtol=1e-5, atol=1e-6)
    t = fastconv.Tensor(x[0], requires_grad=True)
    m(t).sum().backward()
    assert t.grad.shape == (1, 8, 8)


def test_batch_norm_of_an_unbatched_image():
    bn = nn.BatchNorm2d(2)
    x = np.random.default_rng(4).standard_normal((2, 5, 5))
    y = bn(x.astype(np.float32))
    assert y.shape == (2, 5, 5)
    want = (x - x.mean(axis=(1, 2), keepdims=True)) / np.sqrt(
        x.var(axis=(1, 2), keepdims=True) + 1e-5)
    np.testing.assert_allclose(y.data, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.running_mean, 0.1 * x.mean(axis=(1, 2)), rtol=1e-5)
    bn64 = nn.BatchNorm2d(2, dtype=np.float64)
    assert fastconv.gradcheck(lambda t: bn64(t), [fastconv.Tensor(x, requires_grad=True)])


def test_unbatched_sequential_matches_torch_layers():
    torch = pytest.importorskip("torch")
    conv = nn.Conv2d(2, 3, 3, padding=1, rng=np.random.default_rng(0))
    seq = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2))
    x = np.random.default_rng(5).standard_normal((2, 6, 6)).astype(np.float32)
    tseq = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.MaxPool2d(2))
    with torch.no_grad():
        tseq[0].weight.copy_(torch.from_numpy(conv.weight.data))
        tseq[0].bias.copy_(torch.from_numpy(conv.bias.data))
        want = tseq(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(seq(x).data, want, rtol=1e-5, atol=1e-5)
