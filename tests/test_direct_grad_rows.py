"""The weight gradient with the lanes along the output rows
(``algos.im2col.direct_grad_rows``): which layers take it, and its results against the
float64 reference over geometries, layouts and dtypes, strided arrays, non-finite
inputs and thread counts."""

import numba
import numpy as np
import pytest

import fastconv
from fastconv import _lanes
from fastconv._args import conv_args_from_shapes
from fastconv.algos.im2col import direct_grad, direct_grad_rows
from fastconv.algos.im2col.direct_grad_rows import rows_apply
from fastconv.algos.im2col.direct_grad_tiles import tiles_apply
from fastconv.costs import DEFAULT_PROFILE

from . import reference as ref
from .conftest import count_calls

pytestmark = pytest.mark.skipif(not _lanes.WIDE, reason="needs 32 vector registers")


def _args(x_shape, w_shape, layout="NCHW", dtype=np.float32, **kw):
    return conv_args_from_shapes("t", x_shape, w_shape, layout=layout, dtype=dtype, **kw)


def test_which_layers_take_it():
    """LeNet's first layer (28 of 32 lanes along a row, 6 of 16 across the channels)
    in either layout; not: 16 output channels (a full register across them), a stride
    along the rows, groups, a staged image over ``STAGE_BYTES``, rows of 3 pixels."""
    assert rows_apply(_args((64, 1, 28, 28), (6, 1, 5, 5), padding=2))
    assert rows_apply(_args((64, 28, 28, 1), (5, 5, 1, 6), "NHWC", padding=2))
    assert rows_apply(_args((8, 1, 28, 28), (6, 1, 5, 5), stride=(2, 1)))
    assert not rows_apply(_args((64, 6, 14, 14), (16, 6, 5, 5)))
    assert not rows_apply(_args((64, 1, 28, 28), (6, 1, 5, 5), stride=2))
    assert not rows_apply(_args((4, 4, 28, 28), (6, 2, 3, 3), groups=2))
    assert not rows_apply(_args((4, 8, 100, 100), (6, 8, 5, 5)))
    assert not rows_apply(_args((4, 1, 5, 5), (6, 1, 3, 3)))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_the_register_tiles_keep_the_layers_they_take(layout, rng, monkeypatch):
    """16 -> 8 3x3 at 14x14: both kernels apply, the tiles (lanes over taps) run it."""
    x, w, gy, kwargs = _problem((4, 16, 14, 14, 8, 3, 1, 1, 1), np.float32, layout, rng)
    a = _args(x.shape, w.shape, layout, **kwargs)
    assert rows_apply(a) and tiles_apply(a) and not direct_grad.by_rows(a)
    calls = count_calls(monkeypatch, direct_grad_rows, "_grad_w_rows")
    gw = _weight_grad(x, w, gy, layout, kwargs)
    assert not calls
    assert ref.rel_error(gw, _reference(x, w, gy, layout, kwargs)) \
        <= ref.tolerance(np.float32, "im2col")


# (n, c, h, w, d, kernel, stride, padding, dilation): LeNet's first layer; 3 channels
# and 7 output channels (a last group of 1) with stride 2 down the rows; rows of 16
# (whole registers) with dilation both ways; asymmetric padding wider than the kernel
# (rows and columns wholly in the padding); a rectangular kernel, 4 output channels,
# an uneven last run of images
CASES = [
    (10, 1, 28, 28, 6, 5, 1, 2, 1),
    (4, 3, 13, 22, 7, (3, 3), (2, 1), 1, 1),
    (5, 2, 20, 20, 5, 3, 1, 0, (2, 2)),
    (4, 2, 6, 9, 6, 3, 1, ((3, 1), (4, 2)), 1),
    (9, 1, 11, 30, 4, (2, 4), 1, (1, 0), (1, 2)),
]


def _problem(case, dtype, layout, rng):
    n, c, h, wd, d, k, stride, padding, dilation = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal((n, c, h, wd)).astype(dtype)
    w = rng.standard_normal((d, c, kh, kw)).astype(dtype)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation)
    a = _args(x.shape, w.shape, dtype=dtype, **kwargs)
    gy = rng.standard_normal(a.y_shape).astype(dtype)
    if layout == "NHWC":
        x, gy = x.transpose(0, 2, 3, 1).copy(), gy.transpose(0, 2, 3, 1).copy()
        w = w.transpose(2, 3, 1, 0).copy()
    return x, w, gy, kwargs


def _weight_grad(x, w, gy, layout, kwargs):
    _, gw, _ = fastconv.conv2d_backward(gy, x, w, layout=layout, algo="im2col",
                                        needs_input_grad=(False, True, False), **kwargs)
    return gw.transpose(3, 2, 0, 1) if layout == "NHWC" else gw


def _reference(x, w, gy, layout, kwargs):
    if layout == "NHWC":
        x, gy, w = x.transpose(0, 3, 1, 2), gy.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1)
    a = _args(x.shape, w.shape, **kwargs)
    return ref.conv2d_backward(gy, x, w, a.stride, a.padding, a.dilation)[1]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_the_reference(case, dtype, layout, rng, monkeypatch):
    x, w, gy, kwargs = _problem(case, dtype, layout, rng)
    a = _args(x.shape, w.shape, layout, dtype, **kwargs)
    assert direct_grad.direct_backward_applies(a) and direct_grad.by_rows(a)
    calls = count_calls(monkeypatch, direct_grad_rows, "_grad_w_rows")
    gw = _weight_grad(x, w, gy, layout, kwargs)
    assert len(calls) == 1
    assert ref.rel_error(gw, _reference(x, w, gy, layout, kwargs)) \
        <= ref.tolerance(dtype, "im2col")


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_strided_arrays_and_the_input_gradient_beside_it(layout, rng):
    """Views with steps (copied once) give the contiguous arrays' result; with grad_x
    wanted too, both gradients match the reference (NCHW: the image-last pass may take
    both)."""
    x, w, gy, kwargs = _problem(CASES[0], np.float32, layout, rng)
    wide_x = np.zeros((2 * x.shape[0],) + x.shape[1:], x.dtype)
    wide_x[::2] = x
    wide_gy = np.zeros((gy.shape[0],) + gy.shape[1:-1] + (2 * gy.shape[-1],), gy.dtype)
    wide_gy[..., ::2] = gy
    gw = _weight_grad(wide_x[::2], w, wide_gy[..., ::2], layout, kwargs)
    np.testing.assert_array_equal(gw, _weight_grad(x, w, gy, layout, kwargs))
    gx, gw2, _ = fastconv.conv2d_backward(gy, x, w, layout=layout, algo="im2col", **kwargs)
    want_x = fastconv.conv2d_backward(gy, x, w, layout=layout, algo="naive", **kwargs)[0]
    np.testing.assert_allclose(gx, want_x, rtol=1e-4, atol=1e-4)
    gw2 = gw2.transpose(3, 2, 0, 1) if layout == "NHWC" else gw2
    assert ref.rel_error(gw2, _reference(x, w, gy, layout, kwargs)) \
        <= ref.tolerance(np.float32, "im2col")


def test_an_infinite_input_reaches_only_the_taps_that_read_it(rng):
    """The lanes past a row's end multiply zeros by zeros: an infinite input pixel next
    to the row's end turns only the taps whose windows hold it non-finite."""
    x, w, gy, kwargs = _problem(CASES[0], np.float64, "NCHW", rng)
    x[3, 0, 5, 27] = np.inf
    gw = _weight_grad(x, w, gy, "NCHW", kwargs)
    want = _reference(x, w, gy, "NCHW", kwargs)
    assert 0 < np.count_nonzero(~np.isfinite(want)) < want.size
    np.testing.assert_array_equal(np.isfinite(gw), np.isfinite(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(gw[finite], want[finite], rtol=1e-12)
    np.testing.assert_array_equal(gw[~finite], want[~finite])


def test_the_result_does_not_depend_on_the_thread_count(rng):
    x, w, gy, kwargs = _problem(CASES[0], np.float32, "NCHW", rng)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _weight_grad(x, w, gy, "NCHW", kwargs)
        numba.set_num_threads(before)
        np.testing.assert_array_equal(_weight_grad(x, w, gy, "NCHW", kwargs), one)
    finally:
        numba.set_num_threads(before)


def test_the_planner_prices_it():
    a = _args((64, 1, 28, 28), (6, 1, 5, 5), padding=2)
    est = direct_grad.grad_w_cost(a, DEFAULT_PROFILE)
    assert f"{direct_grad_rows.rows_macs(a) / 1e6:.3g}M" in est.detail
