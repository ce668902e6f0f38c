import importlib.util
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_script(relative_path: str):
    """A script of the repository that is not in a package (bench/, notebooks/), e.g.
    ``load_script("bench/auto_survey.py")``, imported as a module under its file name."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _fresh_choices():
    """Every test starts without the plans and per-problem choices of the tests before
    it: a test that changes a bound or a decision function (monkeypatch) before its
    first call then sees its change."""
    from fastconv import autotune

    autotune.clear_cache()


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def planner_bounds(monkeypatch, module, **values):
    """Set ``module``'s bounds to ``values`` for one test, the planner's cached choices
    cleared before and after (a generator for a fixture to ``yield from``)."""
    from fastconv import autotune

    for name, value in values.items():
        monkeypatch.setattr(module, name, value)
    autotune.clear_cache()
    yield
    autotune.clear_cache()


@pytest.fixture
def nchw_winograd_grad_w(monkeypatch):
    """Winograd computes the weight gradient of every NCHW layer it supports (tests of
    that path on small layers, which the default bounds leave to im2col)."""
    from fastconv.algos.winograd import drivers

    yield from planner_bounds(monkeypatch, drivers, NCHW_GRAD_W_MIN_CHANNELS=1,
                              NCHW_GRAD_W_MIN_PIXELS=1)


def to_nhwc(x, w):
    """NCHW input / OIHW weight -> NHWC input / HWIO weight."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)), np.ascontiguousarray(
        w.transpose(2, 3, 1, 0))


def from_nhwc(y):
    return y.transpose(0, 3, 1, 2)


def refused(algo, x_shape, w_shape, layout="NCHW", stride=1, padding=0, dilation=1,
            groups=1) -> bool:
    """Whether ``algo`` cannot run this conv2d problem: "winograd" outside 3x3 kernels
    with stride 1 (it raises ValueError there; the other algorithms run
    every problem). Generic sweeps check that refusal instead of the result."""
    from fastconv._args import conv_args_from_shapes
    from fastconv.algos import registry

    if algo not in registry.ALGORITHMS:
        return False
    a = conv_args_from_shapes("test", x_shape, w_shape, stride, padding, dilation, groups,
                              layout)
    return algo not in registry.applicable(a)


#: What "winograd" says when it refuses a problem.
WINOGRAD_REFUSAL = r"algo='winograd' needs a 3x3 kernel with stride 1"


def assert_layer_matches_torch(torch_layer, layer, x):
    """Load ``torch_layer``'s state dict (float64) into ``layer``, run both on ``x`` with
    the loss sum(y^2), and compare the outputs and every gradient."""
    import torch

    from fastconv import Tensor

    layer.load_state_dict({k: v.detach().numpy() for k, v in
                           torch_layer.state_dict().items()})
    xt = torch.tensor(x, requires_grad=True)
    yt = torch_layer(xt)
    yt.square().sum().backward()
    xf = Tensor(x, requires_grad=True)
    y = layer(xf)
    (y * y).sum().backward()
    np.testing.assert_allclose(y.data, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(xf.grad, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    for name, p in torch_layer.named_parameters():
        np.testing.assert_allclose(getattr(layer, name).grad, p.grad.numpy(), rtol=1e-10)


def count_calls(monkeypatch, module, name: str) -> list:
    """Replace ``module.name`` by a wrapper that records each call in the returned list
    and then calls the original (to check that a code path really runs)."""
    calls = []
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a: calls.append(1) or real(*a))
    return calls


def assert_read_only_input_shares_kernel(kernel, run, x) -> None:
    """``run()`` (a conv2d call on x) gives the same result with x read-only and adds no
    compiled signature to ``kernel`` (a numba dispatcher): the input is always passed
    read-only (a read-only variant would cost another compile)."""
    want = run()
    seen = set(kernel.signatures)
    x.flags.writeable = False
    got = run()
    assert set(kernel.signatures) == seen
    np.testing.assert_array_equal(got, want)


class CountingGuard:
    """Stands in for the workqueue layer's lock: counts the parallel calls it guards and
    fails on a nested one (which would deadlock the real, non-reentrant lock)."""

    def __init__(self):
        self.calls = 0
        self.held = False

    def __enter__(self):
        assert not self.held, "a parallel kernel called inside another's guard"
        self.held = True
        self.calls += 1

    def __exit__(self, *exc):
        self.held = False
