"""conv3d's Winograd path (F(4x4, 3x3) over the (h, w) planes): the formula's reference
for the forward and the three gradients over depths, paddings and groups, layouts and
dtypes, gradients by finite differences, NaN and Inf as the formula, the threads' runs
of (image, depth) pairs, and the cost model's choice."""

import numpy as np
import pytest

import fastconv
from fastconv import Tensor, gradcheck
from fastconv.algos.conv3d import wino_backward, winograd
from fastconv.nn import functional as F

from . import nd_checks as nd
from . import reference as ref

# (n, c_in, (d, h, w), c_out, kernel, stride, padding, dilation, groups)
CASES = [
    (2, 3, (4, 5, 7), 4, (3, 3, 3), 1, 1, 1, 1),
    (1, 4, (3, 9, 5), 2, (2, 3, 3), 1, ((0, 1), (2, 0), (1, 2)), 1, 2),
    (1, 2, (2, 4, 4), 3, (1, 3, 3), 1, "valid", 1, 1),
    # output depths 0 and 4 read only padding; grad_x's problem would need a crop
    (1, 1, (1, 4, 4), 2, (3, 3, 3), 1, ((3, 3), (1, 1), (1, 1)), 1, 1),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_and_gradients_match_reference(case):
    nd.check_forward(fastconv.conv3d, case, "winograd", ref.tolerance(np.float64, "winograd"))
    nd.check_backward(fastconv.conv3d_backward, case, "winograd",
                      ref.tolerance(np.float64, "winograd"))


def test_ndhwc_layout_is_the_transposed_problem():
    x, wt, b, kwargs = nd.nd_arrays(CASES[1], np.float32)
    want = fastconv.conv3d(x, wt, b, **kwargs, algo="naive")
    xn, wn = x.transpose(0, 2, 3, 4, 1), wt.transpose(2, 3, 4, 1, 0)   # NDHWC, DHWIO
    got = fastconv.conv3d(xn, wn, b, **kwargs, layout="NDHWC", algo="winograd")
    np.testing.assert_allclose(got, want.transpose(0, 2, 3, 4, 1), rtol=1e-4, atol=1e-4)
    gy = np.random.default_rng(2).standard_normal(want.shape).astype(np.float32)
    gx, gw, _ = fastconv.conv3d_backward(gy.transpose(0, 2, 3, 4, 1), xn, wn, **kwargs,
                                         layout="NDHWC", algo="winograd")
    rx, rw, _ = fastconv.conv3d_backward(gy, x, wt, **kwargs, algo="naive")
    np.testing.assert_allclose(gx, rx.transpose(0, 2, 3, 4, 1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw, rw.transpose(2, 3, 4, 1, 0), rtol=1e-4, atol=1e-3)


def test_gradcheck_float64():
    rng = np.random.default_rng(3)
    x = Tensor(rng.standard_normal((1, 2, 3, 4, 5)), requires_grad=True)
    w = Tensor(rng.standard_normal((2, 1, 2, 3, 3)), requires_grad=True)
    b = Tensor(rng.standard_normal(2), requires_grad=True)
    assert gradcheck(lambda x, w, b: F.conv3d(x, w, b, padding=(1, 1, 0), groups=2,
                                              algo="winograd"), [x, w, b])


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_nan_and_inf_follow_the_formula():
    x, wt, _, kwargs = nd.nd_arrays(CASES[0])
    x[0, 1, 2, 2, 3] = np.nan
    x[1, 0, 0, 0, 0] = np.inf
    want = fastconv.conv3d(x, wt, **kwargs, algo="naive")
    got = fastconv.conv3d(x, wt, **kwargs, algo="winograd")
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-9)
    gy = np.ones(want.shape)
    gy[0, 0, 1, 1, 1] = np.inf
    gx, gw, _ = fastconv.conv3d_backward(gy, x, wt, **kwargs, algo="winograd")
    rx, _, _ = fastconv.conv3d_backward(gy, x, wt, **kwargs, algo="naive")
    # grad_w as im2col's (whose zero padding columns turn an infinite grad_y into NaN)
    _, rw, _ = fastconv.conv3d_backward(gy, x, wt, **kwargs, algo="im2col")
    for got, want in ((gx, rx), (gw, rw)):
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)],
                                   rtol=1e-9)
    assert np.isinf(rx).any() and np.isnan(rw).any() and np.isfinite(rw).any()


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_split_images_and_depths(threads, monkeypatch):
    """Runs of (image, output depth) pairs that start and end inside an image."""
    case = (2, 2, (5, 4, 6), 3, (3, 3, 3), 1, (2, 1, 0), 1, 1)
    x, wt, b, kwargs = nd.nd_arrays(case)
    want = fastconv.conv3d(x, wt, b, **kwargs, algo="naive")
    gy = np.random.default_rng(1).standard_normal(want.shape)
    grads = fastconv.conv3d_backward(gy, x, wt, **kwargs, algo="naive")
    monkeypatch.setattr(winograd, "split_threads", lambda a, t=None: threads)
    monkeypatch.setattr(wino_backward, "split_threads", lambda a, t=None: threads)
    got = fastconv.conv3d(x, wt, b, **kwargs, algo="winograd")
    assert ref.rel_error(got, want) < 1e-10
    for g, r in zip(fastconv.conv3d_backward(gy, x, wt, **kwargs, algo="winograd"), grads,
                    strict=True):
        assert ref.rel_error(g, r) < 1e-10


def test_auto_picks_it_where_the_model_prices_it_lower():
    plan = fastconv.conv3d_plan((4, 16, 32, 32, 32), (32, 16, 3, 3, 3), padding=1)
    assert plan.algorithm == "winograd"
    assert plan.estimates["winograd"] < plan.estimates["im2col"] / 2
    with pytest.raises(ValueError, match=r"conv3d_backward: algo='winograd' needs a "
                                         r"\(kd, 3, 3\) kernel .* got kernel \(3, 2, 3\)"):
        fastconv.conv3d_backward(np.ones((1, 1, 1, 2, 1)), np.ones((1, 1, 3, 3, 3)),
                                 np.ones((1, 1, 3, 2, 3)), algo="winograd")


@pytest.mark.parametrize(("half", "slots", "block"), [(9216, 4, 1), (21888, 9, 3)])
def test_workspaces_stay_bounded_on_deep_volumes(half, slots, block, monkeypatch):
    """With room for few depths (``half``: half the workspace budget, bytes), the
    forward's window of transformed depths slides and the weight gradient runs in blocks
    of output depths: the same results."""
    from dataclasses import replace

    from fastconv import config

    case = (2, 2, (9, 5, 6), 3, (3, 3, 3), 1, (2, 1, 1), 1, 1)
    x, wt, b, kwargs = nd.nd_arrays(case)
    a = replace(nd.record(x, wt, kwargs), dtype=x.dtype)
    want = fastconv.conv3d(x, wt, b, **kwargs, algo="naive")
    gy = np.random.default_rng(1).standard_normal(want.shape)
    grads = fastconv.conv3d_backward(gy, x, wt, **kwargs, algo="naive")
    assert winograd.depth_slots(a) == 9 and wino_backward.block_depths(a) == a.out[0] == 11
    monkeypatch.setattr(config, "WORKSPACE_CACHE_BYTES", 2 * half)
    assert (winograd.depth_slots(a), wino_backward.block_depths(a)) == (slots, block)
    assert ref.rel_error(fastconv.conv3d(x, wt, b, **kwargs, algo="winograd"), want) < 1e-10
    for g, r in zip(fastconv.conv3d_backward(gy, x, wt, **kwargs, algo="winograd"), grads,
                    strict=True):
        assert ref.rel_error(g, r) < 1e-10
