"""Pointwise NCHW layers on numba's threads (``im2col.pointwise_kernels``): forward and
backward against the explicit reference (groups, bias, odd batches, dtypes), the Python
fallbacks where the kernels do not apply, the kernels themselves on a given thread
count, and finite differences."""

import numpy as np
import pytest

import fastconv
from fastconv import config
from fastconv.algos.im2col import pointwise_kernels

from . import reference as ref
from .conftest import count_calls
from .test_conv_backward import _explicit, _problem

# (n, c, h, w, d, kh, kw, stride, padding, dilation, groups)
CASES = [
    (5, 4, 3, 3, 3, 1, 1, 1, 0, 1, 1),
    (3, 6, 2, 3, 4, 1, 1, 1, 0, 1, 2),
    (2, 3, 1, 1, 6, 1, 1, 1, 0, 1, 3),
]


@pytest.fixture
def large(monkeypatch):
    """Every product counts as large: the threaded paths run on tiny layers."""
    monkeypatch.setattr(config, "SMALL_GEMM_MACS", 0)


def _kernels_run() -> bool:
    return pointwise_kernels.threads_for(2, np.zeros(1)) > 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_on_numba_threads(case, with_bias, dtype, large, monkeypatch):
    x, w, _, kwargs, a = _problem(case, dtype)
    bias = np.linspace(-1, 1, w.shape[0]).astype(dtype) if with_bias else None
    calls = count_calls(monkeypatch, pointwise_kernels, "forward")
    got = fastconv.conv2d(x, w, bias, **kwargs, algo="im2col")
    want = ref.conv2d(x, w, bias, groups=a.groups)
    assert got.dtype == dtype
    assert ref.rel_error(got, want) <= ref.tolerance(dtype, "im2col")
    assert len(calls) == (1 if _kernels_run() else 0)


@pytest.mark.parametrize("how", ["no kernels", "read-only"])
@pytest.mark.parametrize("case", CASES[:2], ids=str)
def test_forward_fallbacks(case, how, large, monkeypatch):
    x, w, _, kwargs, a = _problem(case, np.float64)
    if how == "no kernels":
        monkeypatch.setattr(pointwise_kernels, "threads_for", lambda n, *arrays: 0)
    else:
        x.flags.writeable = False
    calls = count_calls(monkeypatch, pointwise_kernels, "forward")
    got = fastconv.conv2d(x, w, np.ones(w.shape[0]), **kwargs, algo="im2col")
    assert ref.rel_error(got, ref.conv2d(x, w, np.ones(w.shape[0]), groups=a.groups)) <= 1e-12
    assert not calls


@pytest.mark.parametrize("needs", [(True, True, True), (True, False, False),
                                   (False, True, False)])
@pytest.mark.parametrize("kernels", [True, False])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_backward_threads_and_fallback(case, kernels, needs, large, monkeypatch):
    x, w, gy, kwargs, a = _problem(case, np.float64)
    if not kernels:
        monkeypatch.setattr(pointwise_kernels, "threads_for", lambda n, *arrays: 0)
    calls = count_calls(monkeypatch, pointwise_kernels, "backward")
    got = fastconv.conv2d_backward(gy, x, w, **kwargs, algo="im2col", needs_input_grad=needs)
    for g, want, k in zip(got, _explicit(x, w, gy, a), needs, strict=True):
        assert (g is None) == (not k)
        if k:
            assert ref.rel_error(g, want) <= 1e-12
    assert len(calls) == (1 if kernels and _kernels_run() else 0)


@pytest.mark.parametrize("threads", [2, 3])
def test_kernels_on_a_given_thread_count(threads, rng):
    """The split itself (any numba thread count): every image's product, the thread
    sums of grad_W added up, against numpy."""
    if not pointwise_kernels.available(np.float64):
        pytest.skip("numpy's BLAS is not reachable from numba here")
    n, g, dg, cg, hw = 5, 2, 3, 4, 6
    w = rng.standard_normal((g, dg, cg))
    x = rng.standard_normal((n, g, cg, hw))
    gy = rng.standard_normal((n, g, dg, hw))
    bias = rng.standard_normal((g, dg))
    y = np.empty((n, g, dg, hw))
    pointwise_kernels.forward(w, x, y, bias, threads)
    np.testing.assert_allclose(y, np.matmul(w, x) + bias[..., None], rtol=1e-12)
    gx = np.empty_like(x)
    gwt = pointwise_kernels.backward(w, gy, x, gx, threads)
    np.testing.assert_allclose(gx, np.matmul(w.transpose(0, 2, 1), gy), rtol=1e-12)
    want = np.einsum("ngcp,ngdp->gcd", x, gy)
    np.testing.assert_allclose(gwt, want, rtol=1e-12)
    assert pointwise_kernels.backward(w, gy, None, gx, threads) is None
    gwt = pointwise_kernels.backward(w, gy, x, None, 8)        # more threads than images
    np.testing.assert_allclose(gwt, want, rtol=1e-12)


def test_threads_for_refuses_one_image_and_read_only_arrays():
    a = np.zeros(3)
    assert pointwise_kernels.threads_for(1, a) == 0
    ro = np.zeros(3)
    ro.flags.writeable = False
    assert pointwise_kernels.threads_for(4, a, ro) == 0


def test_gradcheck_on_numba_threads(large):
    """Finite differences in float64 through the autograd layer, threaded paths on."""
    from fastconv import Tensor, gradcheck
    from fastconv.nn import functional as F

    x, w, _, kwargs, _ = _problem(CASES[1], np.float64)
    b = np.random.default_rng(2).standard_normal(w.shape[0])
    inputs = [Tensor(v, requires_grad=True) for v in (x, w, b)]
    assert gradcheck(lambda x, w, b: F.conv2d(x, w, b, **kwargs, algo="im2col"), inputs)
