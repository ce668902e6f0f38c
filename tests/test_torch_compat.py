"""Forward and backward of conv2d, pooling and batch norm against torch (skipped when torch
is not installed)."""

import numpy as np
import pytest

import fastconv
from fastconv._args import conv_args_from_shapes

from . import reference as ref
from .conftest import refused

torch = pytest.importorskip("torch")
F = torch.nn.functional

LAYOUTS = ["NCHW", "NHWC"]
DTYPES = [np.float32, np.float64]


def _to(a, layout):
    return a if layout == "NCHW" else np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _from(a, layout):
    return a if layout == "NCHW" else a.transpose(0, 3, 1, 2)


def _t(a, grad=False):
    return torch.from_numpy(np.ascontiguousarray(a)).requires_grad_(grad)


def _close(got, want, dtype, algo="torch"):
    assert got.dtype == dtype
    assert got.shape == tuple(want.shape)
    assert ref.rel_error(got, want.detach().numpy()) <= ref.tolerance(dtype, algo)


# ------------------------------------------------------------------------------- conv
# (n, c_in, h, w, c_out, kh, kw, stride, padding, dilation, groups) in torch's terms
CONV_CASES = [
    (2, 3, 7, 8, 4, 3, 3, 1, 1, 1, 1),
    (1, 4, 9, 7, 6, 3, 2, (2, 1), (1, 0), (1, 2), 2),
    (2, 6, 6, 6, 6, 3, 3, 1, "same", 2, 6),
    (1, 2, 8, 8, 3, 4, 4, 1, "same", 1, 1),
    (1, 3, 10, 9, 2, 3, 3, 3, 2, 2, 1),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("algo", fastconv.ALGORITHMS + ("auto",))
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: str(c).replace(" ", ""))
def test_conv2d_forward_and_backward(case, algo, dtype, layout):
    n, c, h, w, d, kh, kw, stride, padding, dilation, groups = case
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((d, c // groups, kh, kw)).astype(dtype)
    b = rng.standard_normal(d).astype(dtype)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    if refused(algo, x.shape, wt.shape, **kwargs):
        pytest.skip("winograd does not apply (tests/test_conv.py checks the refusal)")
    xt, wtt, bt = _t(x, True), _t(wt, True), _t(b, True)
    yt = F.conv2d(xt, wtt, bt, **kwargs)
    gy = rng.standard_normal(tuple(yt.shape)).astype(dtype)
    yt.backward(_t(gy))
    tol_algo = "fft" if algo == "fft" else "torch"
    xl = _to(x, layout)
    wl = wt if layout == "NCHW" else np.ascontiguousarray(wt.transpose(2, 3, 1, 0))
    y = fastconv.conv2d(xl, wl, b, **kwargs, layout=layout, algo=algo)
    _close(_from(y, layout), yt, dtype, tol_algo)
    gx, gw, gb = fastconv.conv2d_backward(_to(gy, layout), xl, wl, **kwargs, layout=layout,
                                          algo=algo)
    _close(_from(gx, layout), xt.grad, dtype, tol_algo)
    _close(gw if layout == "NCHW" else gw.transpose(3, 2, 0, 1), wtt.grad, dtype, tol_algo)
    _close(gb, bt.grad, dtype, tol_algo)


def test_conv_cases_are_valid_for_fastconv():
    for n, c, h, w, d, kh, kw, stride, padding, dilation, groups in CONV_CASES:
        conv_args_from_shapes("conv2d", (n, c, h, w), (d, c // groups, kh, kw), stride,
                              padding, dilation, groups)


# ---------------------------------------------------------------------------- pooling
# (h, w, kernel, stride, padding, dilation, ceil_mode)
MAX_CASES = [
    (6, 6, 2, None, 0, 1, False),
    (7, 8, 3, 2, 1, 1, True),
    (5, 5, 2, 1, 0, 1, False),
    (9, 7, (3, 2), (2, 1), (1, 1), (2, 1), True),
    (8, 8, 2, 3, 1, 2, True),
    (6, 5, 4, 1, 2, 1, False),
    (5, 7, 3, 2, 0, 1, True),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MAX_CASES, ids=lambda c: str(c).replace(" ", ""))
def test_max_pool2d(case, dtype, layout):
    h, w, k, s, p, r, ceil = case
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, h, w)).astype(dtype)
    xt = _t(x, True)
    yt, it = F.max_pool2d(xt, k, s, p, r, ceil_mode=ceil, return_indices=True)
    gy = rng.standard_normal(tuple(yt.shape)).astype(dtype)
    yt.backward(_t(gy))
    y, idx = fastconv.max_pool2d(_to(x, layout), k, s, p, r, ceil, layout=layout,
                                 return_indices=True)
    np.testing.assert_array_equal(_from(y, layout), yt.detach().numpy())
    np.testing.assert_array_equal(_from(idx, layout), it.numpy())
    gx = fastconv.max_pool2d_backward(_to(gy, layout), idx, _to(x, layout).shape,
                                      layout=layout)
    _close(_from(gx, layout), xt.grad, dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_pool2d_ties_and_nan_like_torch(layout):
    x = np.array([[[[3.0, 3.0, 0.0, 2.0],
                    [1.0, 3.0, 2.0, 2.0],
                    [1.0, np.nan, 2.0, np.nan],
                    [np.nan, 5.0, np.nan, 9.0]]]], np.float32)
    for k, s in ((2, 2), (3, 1), (2, 1)):
        yt, it = F.max_pool2d(_t(x), k, s, return_indices=True)
        y, idx = fastconv.max_pool2d(_to(x, layout), k, s, layout=layout, return_indices=True)
        np.testing.assert_array_equal(_from(idx, layout), it.numpy())
        np.testing.assert_array_equal(_from(y, layout), yt.numpy())   # NaN == NaN here


# (h, w, kernel, stride, padding, ceil_mode, count_include_pad)
AVG_CASES = [
    (6, 6, 2, None, 0, False, True),
    (5, 5, 3, 2, 1, True, True),
    (5, 5, 3, 2, 1, True, False),
    (7, 8, 3, 2, 1, False, False),
    (9, 7, (3, 2), (2, 1), (1, 1), True, True),
    (6, 5, 4, 1, 2, False, True),
    (5, 7, 2, 2, 0, True, True),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", AVG_CASES, ids=lambda c: str(c).replace(" ", ""))
def test_avg_pool2d(case, dtype, layout):
    h, w, k, s, p, ceil, cip = case
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, h, w)).astype(dtype)
    xt = _t(x, True)
    yt = F.avg_pool2d(xt, k, s, p, ceil_mode=ceil, count_include_pad=cip)
    gy = rng.standard_normal(tuple(yt.shape)).astype(dtype)
    yt.backward(_t(gy))
    y = fastconv.avg_pool2d(_to(x, layout), k, s, p, ceil, cip, layout=layout)
    _close(_from(y, layout), yt, dtype)
    gx = fastconv.avg_pool2d_backward(_to(gy, layout), _to(x, layout).shape, k, s, p, ceil,
                                      cip, layout=layout)
    _close(_from(gx, layout), xt.grad, dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_global_avg_pool2d(dtype, layout):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 5, 4, 3)).astype(dtype)
    xt = _t(x, True)
    yt = F.adaptive_avg_pool2d(xt, 1)
    gy = rng.standard_normal(tuple(yt.shape)).astype(dtype)
    yt.backward(_t(gy))
    y = fastconv.global_avg_pool2d(_to(x, layout), layout=layout)
    _close(_from(y, layout), yt, dtype)
    gx = fastconv.global_avg_pool2d_backward(_to(gy, layout), _to(x, layout).shape,
                                             layout=layout)
    _close(_from(gx, layout), xt.grad, dtype)


# ------------------------------------------------------------------------- batch norm
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm(training, affine, dtype, layout):
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((3, 4, 5, 6)) * 2 + 1).astype(dtype)
    rm = rng.standard_normal(4).astype(dtype)
    rv = (rng.random(4) + 0.5).astype(dtype)
    w = rng.standard_normal(4).astype(dtype) if affine else None
    b = rng.standard_normal(4).astype(dtype) if affine else None
    xt = _t(x, True)
    wt = _t(w, True) if affine else None
    bt = _t(b, True) if affine else None
    rmt, rvt = _t(rm.copy()), _t(rv.copy())
    yt = F.batch_norm(xt, rmt, rvt, wt, bt, training, 0.2, 1e-4)
    gy = rng.standard_normal(x.shape).astype(dtype)
    yt.backward(_t(gy))

    rm_, rv_ = rm.copy(), rv.copy()
    y, mean, invstd = fastconv.batch_norm(_to(x, layout), rm_, rv_, w, b, training, 0.2, 1e-4,
                                          layout=layout, return_stats=True)
    _close(_from(y, layout), yt, dtype)
    _close(rm_, rmt, dtype)
    _close(rv_, rvt, dtype)
    gx, gw, gb = fastconv.batch_norm_backward(_to(gy, layout), _to(x, layout), mean, invstd,
                                              w, training=training, layout=layout)
    _close(_from(gx, layout), xt.grad, dtype)
    if affine:
        _close(gw, wt.grad, dtype)
        _close(gb, bt.grad, dtype)


def test_batch_norm_one_value_per_channel_raises_like_torch():
    x = np.ones((1, 3, 1, 1), np.float32)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm(_t(x), None, None, training=True)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fastconv.batch_norm(x, None, None, training=True)
