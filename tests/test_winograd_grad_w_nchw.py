"""The fused F(4x4, 3x3) weight gradient on NCHW (``winograd.grad_w_nchw``: rows staged
channels last, or the NHWC kernel on channels-last copies): its results against the
formula (the NHWC kernel's cases, both float types, both routes, strided views), the
choice of route, the route through conv2d_backward, non-finite values, and a
finite-difference check through autograd."""

import numba
import numpy as np
import pytest

import fastconv
from fastconv import _lanes, gradcheck
from fastconv.algos.winograd import drivers, grad_w_nchw, grad_w_nhwc
from tests import reference as ref
from tests.conftest import count_calls
from tests.test_winograd_grad_w_nhwc import CASES, _problem


@pytest.mark.parametrize("route", ["staged", "copies"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_weight_gradient_matches_the_formula(case, dtype, route, rng, monkeypatch):
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
    if route == "staged":      # whatever the channel groups say
        monkeypatch.setattr(grad_w_nchw, "COPY_MAX_CHANNELS", 0)
        copies = count_calls(monkeypatch, grad_w_nchw, "_on_copies")
        assert grad_w_nchw.fused_grad_w(gy, x, got, (ph, pw)) is True
        assert not copies
    else:
        assert grad_w_nchw._on_copies(gy, x, got, (ph, pw)) is True
    assert ref.rel_error(got, want) <= ref.tolerance(dtype, "winograd")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_copies_run_where_the_nhwc_kernel_splits_few_channels(case, rng, monkeypatch):
    """``fused_grad_w`` takes the channels-last copies exactly where the NHWC kernel's
    channel groups apply to at most COPY_MAX_CHANNELS input channels."""
    n, c, h, wd, d, (ph, pw) = case
    if not grad_w_nhwc.applies(c, d, 4):
        pytest.skip("channels the fused gradient does not take here")
    x, w = _problem(rng, n, c, h, wd, d, np.float32)
    gy = rng.standard_normal(ref.conv2d(x, w, padding=((ph, ph), (pw, pw))).shape)
    gy = gy.astype(np.float32)
    tiles = n * -(-gy.shape[2] // 4) * -(-gy.shape[3] // 4)
    expect = c <= grad_w_nchw.COPY_MAX_CHANNELS and grad_w_nhwc.channel_groups(
        c, tiles, numba.get_num_threads(), 4) > 1
    copies = count_calls(monkeypatch, grad_w_nchw, "_on_copies")
    grad_w_nchw.fused_grad_w(gy, x, np.empty(w.shape, np.float32), (ph, pw))
    assert bool(copies) == expect


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 numba threads")
def test_the_small_resnets_last_stage_runs_on_copies(rng, monkeypatch):
    """64 -> 64 at 7x7, batch 32, on 2 threads: the NHWC kernel's channel groups apply,
    so the copies run."""
    x, w = _problem(rng, 32, 64, 7, 7, 64, np.float32)
    gy = rng.standard_normal((32, 64, 7, 7)).astype(np.float32)
    copies = count_calls(monkeypatch, grad_w_nchw, "_on_copies")
    threads = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        grad_w_nchw.fused_grad_w(gy, x, np.empty(w.shape, np.float32), (1, 1))
    finally:
        numba.set_num_threads(threads)
    assert len(copies) == 1


def test_copies_take_strided_views(rng):
    """The copies' route on views with gaps (x's rows and grad_y's channels, grad_w's
    columns): the same values as the formula's."""
    x, w = _problem(rng, 2, 32, 7, 7, 32, np.float32)
    gy = rng.standard_normal((2, 32, 7, 7)).astype(np.float32)
    _, want, _ = ref.conv2d_backward(gy, x, w, padding=((1, 1), (1, 1)))
    xs = np.zeros((2, 32, 7, 9), np.float32)
    xs[..., 1:8] = x
    gys = np.zeros((2, 64, 7, 7), np.float32)
    gys[:, ::2] = gy
    big = np.zeros((32, 32, 3, 6), np.float32)
    assert not xs[..., 1:8].flags.c_contiguous and not gys[:, ::2].flags.c_contiguous
    assert grad_w_nchw._on_copies(gys[:, ::2], xs[..., 1:8], big[..., ::2], (1, 1))
    assert ref.rel_error(big[..., ::2], want) <= 1e-4
    assert not big[..., 1::2].any()


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
