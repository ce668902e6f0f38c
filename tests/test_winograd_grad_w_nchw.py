"""The fused F(4x4, 3x3) weight gradient on NCHW (``winograd.grad_w_nchw``: rows staged
channels last): its results against the formula (the NHWC kernel's cases, both float
types, strided views), the route through conv2d_backward, non-finite values, and a
finite-difference check through autograd."""

import numpy as np
import pytest

import fastconv
from fastconv import _lanes, gradcheck
from fastconv.algos.winograd import drivers, grad_w_nchw, grad_w_nhwc
from tests import reference as ref
from tests.conftest import count_calls
from tests.test_winograd_grad_w_nhwc import CASES, _problem


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_staged_weight_gradient_matches_the_formula(case, dtype, rng):
    n, c, h, wd, d, (ph, pw) = case
    if dtype == np.float64:
        d //= 2
    if not grad_w_nhwc.applies(c, d, np.dtype(dtype).itemsize):
        pytest.skip("channels the fused gradient does not take here")
    x, w = _problem(rng, n, c, h, wd, d, dtype)
    pads = ((ph, ph), (pw, pw))
    gy = rng.standard_normal(ref.conv2d(x, w, padding=pads).shape).astype(dtype)
    _, want, _ = ref.conv2d_backward(gy, x, w, padding=pads)
    got = np.full(w.shape, np.nan, dtype)
    assert grad_w_nchw.fused_grad_w(gy, x, got, (ph, pw)) is True
    assert ref.rel_error(got, want) <= ref.tolerance(dtype, "winograd")


def test_strided_views_in_and_out(rng):
    """x and grad_y as views with gaps (staged a value at a time), grad_w a view: the
    same values as from contiguous arrays."""
    x, w = _problem(rng, 3, 16, 9, 10, 32, np.float32)
    gy = rng.standard_normal((3, 32, 9, 10)).astype(np.float32)
    _, want, _ = ref.conv2d_backward(gy, x, w, padding=((1, 1), (1, 1)))
    xs = np.zeros((3, 16, 9, 13), np.float32)
    xs[..., :10] = x
    gys = np.zeros((3, 64, 9, 10), np.float32)
    gys[:, ::2] = gy
    big = np.zeros((32, 16, 3, 6), np.float32)
    assert grad_w_nchw.fused_grad_w(gys[:, ::2], xs[..., :10], big[..., ::2], (1, 1))
    assert ref.rel_error(big[..., ::2], want) <= 1e-4
    assert not big[..., 1::2].any()


def test_conv2d_backward_runs_it_for_nchw_layers(rng, monkeypatch):
    x, w = _problem(rng, 8, 32, 14, 14, 32, np.float32)
    gy = rng.standard_normal((8, 32, 14, 14)).astype(np.float32)
    _, want, _ = ref.conv2d_backward(gy, x, w, padding=((1, 1), (1, 1)))
    calls = count_calls(monkeypatch, grad_w_nchw, "fused_grad_w")
    chunked = count_calls(monkeypatch, drivers, "_grad_w_nchw")
    _, gw, _ = fastconv.conv2d_backward(gy, x, w, padding=1, algo="winograd",
                                        needs_input_grad=(False, True, False))
    assert ref.rel_error(gw, want) <= 1e-4
    assert len(calls) == 1 and not chunked


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_get_the_formulas_pattern(rng, bad):
    x, w = _problem(rng, 2, 16, 8, 8, 32, np.float32)
    x[1, 3, 4, 5] = bad
    gy = rng.standard_normal((2, 32, 8, 8)).astype(np.float32)
    fused = np.empty(w.shape, np.float32)
    assert grad_w_nchw.fused_grad_w(gy, x, fused, (1, 1)) is False
    _, got, _ = fastconv.conv2d_backward(gy, x, w, padding=1, algo="winograd",
                                         needs_input_grad=(False, True, False))
    _, want, _ = fastconv.conv2d_backward(gy, x, w, padding=1, algo="im2col",
                                          needs_input_grad=(False, True, False))
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    assert np.isfinite(got[:, :3]).all() and not np.isfinite(got[:, 3]).all()


def test_autograd_weight_gradient_against_finite_differences(rng, monkeypatch):
    from fastconv.nn.functional import conv2d

    c = 8 if _lanes.per_register(8) == 8 else 16
    calls = count_calls(monkeypatch, grad_w_nchw, "fused_grad_w")
    x = fastconv.Tensor(rng.standard_normal((2, c, 6, 5)))
    w = fastconv.Tensor(rng.standard_normal((16, c, 3, 3)), requires_grad=True)
    coefs = fastconv.Tensor(rng.standard_normal((2, 16, 6, 5)))
    assert gradcheck(lambda wt: (conv2d(x, wt, padding=1, algo="winograd") * coefs).sum(),
                     [w], atol=1e-6, rtol=1e-5)
    assert calls
