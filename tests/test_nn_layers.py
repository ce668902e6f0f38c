"""Activations (LeakyReLU, GELU, Sigmoid, Tanh, Softmax), Identity, Dropout2d, Upsample /
interpolate and the MSE, BCE-with-logits and NLL losses: forward against slow obvious
references, gradients against finite differences (float64), module behaviour and the
errors for bad arguments. torch comparisons are in tests/test_torch_layers.py."""

import math
import warnings

import numpy as np
import pytest

import fastconv
from fastconv import Tensor, gradcheck, nn
from fastconv.nn import functional as F


def _t(rng, *shape, dtype=np.float64):
    return Tensor(rng.standard_normal(shape).astype(dtype), requires_grad=True)


# ------------------------------------------------------------------------- activations
def test_leaky_relu_forward_and_gradient(rng):
    x = np.array([-2.0, -0.0, 0.0, 1.5, np.nan, -np.inf])
    y = F.leaky_relu(x, 0.2).numpy()
    np.testing.assert_array_equal(y, [-0.4, 0.0, 0.0, 1.5, np.nan, -np.inf])
    a = Tensor(np.array([-1.0, 0.0, 2.0]), requires_grad=True)
    F.leaky_relu(a, 0.2).sum().backward()
    np.testing.assert_array_equal(a.grad, [0.2, 0.2, 1.0])      # slope at 0, as torch
    assert gradcheck(lambda a: F.leaky_relu(a, -0.3), [_t(rng, 3, 4)])
    assert F.leaky_relu(np.ones(2, np.float32)).dtype == np.float32
    assert nn.LeakyReLU()(np.array([-1.0])).item() == pytest.approx(-0.01)


def _gelu_reference(x, approximate):
    if approximate == "tanh":
        return np.array([0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi)
                                                  * (v + 0.044715 * v ** 3))) for v in x])
    return np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_forward_and_gradient(rng, approximate):
    x = np.linspace(-6, 6, 25)
    np.testing.assert_allclose(F.gelu(x, approximate).numpy(), _gelu_reference(x, approximate),
                               rtol=1e-12, atol=1e-15)
    assert gradcheck(lambda a: F.gelu(a, approximate), [_t(rng, 3, 5)])
    assert F.gelu(np.ones(2, np.float32), approximate).dtype == np.float32
    m = nn.GELU(approximate)
    np.testing.assert_allclose(m(x).numpy(), _gelu_reference(x, approximate), rtol=1e-12,
                               atol=1e-15)
    assert repr(m) == f"GELU(approximate={approximate!r})"


def test_sigmoid_tanh_softmax_modules(rng):
    x = rng.standard_normal((2, 3, 4))
    np.testing.assert_allclose(nn.Sigmoid()(x).numpy(), 1 / (1 + np.exp(-x)), rtol=1e-12)
    np.testing.assert_allclose(nn.Tanh()(x).numpy(), np.tanh(x), rtol=1e-12)
    e = np.exp(x)
    np.testing.assert_allclose(nn.Softmax(dim=-1)(x).numpy(),
                               e / e.sum(-1, keepdims=True), rtol=1e-12)
    assert gradcheck(lambda a: nn.Softmax(1)(a), [_t(rng, 2, 3, 2)])
    assert gradcheck(lambda a: nn.Tanh()(a) * nn.Sigmoid()(a), [_t(rng, 2, 3)])
    with pytest.warns(UserWarning, match="Softmax: dim=None picks the axis implicitly"):
        y = nn.Softmax()(x)                    # 3-D: torch's implicit axis is 0
    np.testing.assert_allclose(y.numpy(), e / e.sum(0, keepdims=True), rtol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nn.Softmax(dim=1)(x)
    assert repr(nn.Softmax(dim=1)) == "Softmax(dim=1)"


def test_activation_errors():
    with pytest.raises(ValueError, match="gelu: approximate='erf' is not known; acceptable "
                       "values are 'none', 'tanh'"):
        F.gelu(np.ones(2), "erf")
    with pytest.raises(ValueError, match="GELU: approximate='fast' is not known"):
        nn.GELU("fast")
    with pytest.raises(TypeError, match="gelu: input must be floating point, got dtype int64"):
        F.gelu(np.ones(2, np.int64))
    with pytest.raises(TypeError, match="leaky_relu: negative_slope='0.1' must be a number"):
        F.leaky_relu(np.ones(2), "0.1")
    with pytest.raises(TypeError, match="leaky_relu: input must be floating point"):
        F.leaky_relu(np.ones(2, np.int32))
    with pytest.raises(TypeError, match="dim=1.5 must be an int"):
        nn.Softmax(dim=1.5)
    with pytest.raises(ValueError, match="dim=3 is out of range for a 2-D tensor"):
        nn.Softmax(dim=3)(np.ones((2, 2)))


def test_identity():
    x = Tensor(np.ones(3))
    m = nn.Identity(54, unused="argument")
    assert m(x) is x and repr(m) == "Identity()"


# ------------------------------------------------------------------------------ dropout2d
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_dropout2d_zeroes_whole_channels(layout):
    x = np.ones((40, 6, 3, 2), np.float32)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    y = F.dropout2d(x, 0.25, layout=layout, rng=np.random.default_rng(0)).numpy()
    maps = y if layout == "NCHW" else y.transpose(0, 3, 1, 2)
    per_map = maps.reshape(40, 6, -1)
    assert (per_map == per_map[:, :, :1]).all()              # one value per channel map
    assert set(np.unique(per_map)) == {0.0, np.float32(1 / 0.75)}
    assert 0.6 < (per_map[:, :, 0] != 0).mean() < 0.9
    # the same draws in both layouts: one per (sample, channel), in (N, C) order
    ref = F.dropout2d(np.ones((40, 6, 3, 2), np.float32), 0.25,
                      rng=np.random.default_rng(0)).numpy()
    np.testing.assert_array_equal(maps, ref)


def test_dropout2d_gradient_eval_and_extremes(rng):
    x = _t(rng, 2, 3, 2, 2)
    assert gradcheck(lambda a: F.dropout2d(a, 0.5, rng=np.random.default_rng(4)), [x])
    assert F.dropout2d(x, 0.5, training=False) is x
    assert F.dropout2d(x, 0.0) is x
    assert F.dropout2d(x, 1.0).numpy().tolist() == np.zeros(x.shape).tolist()
    m = nn.Dropout2d(0.5, layout="NHWC", rng=np.random.default_rng(0))
    assert repr(m) == "Dropout2d(p=0.5, layout='NHWC')"
    m.eval()
    assert m(x) is x
    fastconv.manual_seed(3)
    a = nn.Dropout2d()(np.ones((4, 5, 1, 1))).numpy()
    fastconv.manual_seed(3)
    np.testing.assert_array_equal(a, nn.Dropout2d()(np.ones((4, 5, 1, 1))).numpy())


def test_dropout2d_errors():
    with pytest.raises(ValueError, match=r"dropout2d: input must be 4-D \(NCHW\), got shape "
                       r"\(2, 3\)"):
        F.dropout2d(np.ones((2, 3)))
    with pytest.raises(ValueError, match="dropout2d: p=2 must be a probability in"):
        F.dropout2d(np.ones((1, 1, 1, 1)), 2)
    with pytest.raises(ValueError, match="Dropout2d: p=-1 must be a probability"):
        nn.Dropout2d(-1)
    with pytest.raises(ValueError, match="Dropout2d: layout='CHW' is not supported"):
        nn.Dropout2d(layout="CHW")
    with pytest.raises(ValueError, match="dropout2d: layout='NWHC' is not supported"):
        F.dropout2d(np.ones((1, 1, 1, 1)), layout="NWHC")


# ------------------------------------------------------------------------------ upsample
def _nearest_reference(x, out_h, out_w, scale=None):
    """torch's legacy nearest, written out with float32 index arithmetic."""
    n, c, h, w = x.shape
    out = np.empty((n, c, out_h, out_w), x.dtype)
    if scale is None:
        si, sj = np.float32(h) / np.float32(out_h), np.float32(w) / np.float32(out_w)
    else:
        si, sj = np.float32(1 / scale[0]), np.float32(1 / scale[1])
    for i in range(out_h):
        for j in range(out_w):
            out[:, :, i, j] = x[:, :, min(int(np.float32(i) * si), h - 1),
                                min(int(np.float32(j) * sj), w - 1)]
    return out


def _bilinear_reference(x, out_h, out_w, align_corners):
    """The textbook bilinear resize, one output pixel at a time (float64)."""
    n, c, h, w = x.shape
    out = np.empty((n, c, out_h, out_w))

    def src(i, n_in, n_out):
        if align_corners:
            s = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
            return i * s
        return max((i + 0.5) * n_in / n_out - 0.5, 0.0)

    for i in range(out_h):
        for j in range(out_w):
            y, z = src(i, h, out_h), src(j, w, out_w)
            y0, z0 = min(int(y), h - 1), min(int(z), w - 1)
            y1, z1 = min(y0 + 1, h - 1), min(z0 + 1, w - 1)
            ly, lz = y - y0, z - z0
            out[:, :, i, j] = ((1 - ly) * ((1 - lz) * x[:, :, y0, z0] + lz * x[:, :, y0, z1])
                               + ly * ((1 - lz) * x[:, :, y1, z0] + lz * x[:, :, y1, z1]))
    return out


@pytest.mark.parametrize("size", [(7, 3), (2, 9), (5, 4), (10, 8), (1, 1)])
def test_interpolate_nearest_matches_the_reference(rng, size):
    x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    np.testing.assert_array_equal(F.interpolate(x, size).numpy(),
                                  _nearest_reference(x, *size))
    nhwc = F.interpolate(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), size,
                         layout="NHWC").numpy()
    np.testing.assert_array_equal(nhwc.transpose(0, 3, 1, 2), _nearest_reference(x, *size))


def test_interpolate_scale_factor_reads_by_the_scale(rng):
    x = rng.standard_normal((1, 2, 10, 10))
    # 10 * 0.35 = 3 rows, read at floor(i / 0.35) = 0, 2, 5 (not at floor(i * 10 / 3))
    y = F.interpolate(x, scale_factor=0.35).numpy()
    np.testing.assert_array_equal(y, x[:, :, [0, 2, 5]][:, :, :, [0, 2, 5]])
    np.testing.assert_array_equal(y, _nearest_reference(x, 3, 3, (0.35, 0.35)))
    assert F.interpolate(x, scale_factor=(2, 0.5)).shape == (1, 2, 20, 5)
    # recompute_scale_factor=True: read by the sizes, floor(i * 10 / 3) = 0, 3, 6
    y = F.interpolate(x, scale_factor=0.35, recompute_scale_factor=True).numpy()
    np.testing.assert_array_equal(y, x[:, :, [0, 3, 6]][:, :, :, [0, 3, 6]])


def test_interpolate_to_the_same_size_copies(rng):
    x = rng.standard_normal((1, 2, 3, 4))
    y = F.interpolate(x, (3, 4)).numpy()
    np.testing.assert_array_equal(y, x)
    assert not np.shares_memory(y, x)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [(7, 3), (2, 9), (5, 4), (1, 6)])
def test_interpolate_bilinear_matches_the_reference(rng, size, align_corners):
    x = rng.standard_normal((2, 3, 5, 4))
    want = _bilinear_reference(x, *size, align_corners)
    got = F.interpolate(x, size, mode="bilinear", align_corners=align_corners).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    nhwc = F.interpolate(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), size,
                         mode="bilinear", align_corners=align_corners, layout="NHWC")
    np.testing.assert_allclose(nhwc.numpy().transpose(0, 3, 1, 2), want, rtol=1e-12,
                               atol=1e-14)


@pytest.mark.parametrize("mode, align_corners", [("nearest", None), ("bilinear", False),
                                                 ("bilinear", True)])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_interpolate_gradients(rng, mode, align_corners, layout):
    for kw in (dict(size=(5, 2)), dict(scale_factor=(0.6, 1.5))):
        assert gradcheck(lambda a, kw=kw: F.interpolate(a, mode=mode, layout=layout,
                                                        align_corners=align_corners, **kw),
                         [_t(rng, 1, 2, 3, 4)])


def test_interpolate_passes_nan_and_inf_to_its_own_pixels():
    x = np.zeros((1, 1, 2, 2))
    x[0, 0, 0, 0] = np.inf
    y = F.interpolate(x, scale_factor=2).numpy()[0, 0]
    assert np.isinf(y[:2, :2]).all() and (y[2:] == 0).all() and (y[:, 2:] == 0).all()
    a = Tensor(np.zeros((1, 1, 2, 2)), requires_grad=True)
    g = np.zeros((1, 1, 4, 4))
    g[0, 0, 3, 3] = np.nan
    F.interpolate(a, scale_factor=2).backward(g)
    assert np.isnan(a.grad[0, 0, 1, 1]) and (a.grad.ravel()[:3] == 0).all()


def test_upsample_module():
    x = np.arange(4.0).reshape(1, 1, 2, 2)
    m = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
    assert repr(m) == "Upsample(scale_factor=2, mode='bilinear')"
    np.testing.assert_allclose(m(x).numpy()[0, 0, 0], [0, 1 / 3, 2 / 3, 1])
    assert nn.Upsample(size=(3, 1))(x).shape == (1, 1, 3, 1)
    assert nn.Upsample(size=3, layout="NHWC")(x).shape == (1, 3, 3, 2)


def test_interpolate_errors():
    x = np.ones((1, 1, 4, 4))
    with pytest.raises(ValueError, match="interpolate: exactly one of size and scale_factor "
                       "must be given, got size=None and scale_factor=None"):
        F.interpolate(x)
    with pytest.raises(ValueError, match="exactly one of size and scale_factor"):
        F.interpolate(x, 2, 2)
    with pytest.raises(ValueError, match="interpolate: mode='bicubic' is not supported; "
                       "acceptable modes are 'nearest', 'bilinear'"):
        F.interpolate(x, 2, mode="bicubic")
    with pytest.raises(ValueError, match="interpolate: align_corners=True can only be set "
                       "with mode='bilinear'"):
        F.interpolate(x, 2, align_corners=True)
    with pytest.raises(ValueError, match=r"interpolate: input must be 4-D \(NCHW\), got "
                       r"shape \(4, 4\)"):
        F.interpolate(np.ones((4, 4)), 2)
    with pytest.raises(ValueError, match=r"interpolate: size=\(2, 2, 2\) must be an int or "
                       "a pair of them"):
        F.interpolate(x, (2, 2, 2))
    with pytest.raises(ValueError, match="interpolate: size=2.5 must be an int"):
        F.interpolate(x, 2.5)
    with pytest.raises(ValueError, match="interpolate: scale_factor=-2 must be positive"):
        F.interpolate(x, scale_factor=-2)
    with pytest.raises(ValueError, match=r"interpolate: input size \(4, 4\) and output size "
                       r"\(0, 0\) must be positive"):
        F.interpolate(x, scale_factor=0.1)
    with pytest.raises(ValueError, match="interpolate: recompute_scale_factor=True is only "
                       "meaningful with scale_factor, not with size=2"):
        F.interpolate(x, 2, recompute_scale_factor=True)
    with pytest.raises(ValueError, match="interpolate: layout='HWC' is not supported"):
        F.interpolate(x, 2, layout="HWC")
    with pytest.raises(TypeError, match="interpolate: mode='bilinear' needs floating-point "
                       "input, got dtype int64"):
        F.interpolate(x.astype(np.int64), 2, mode="bilinear")
    with pytest.raises(ValueError, match="Upsample: layout='NCWH' is not supported"):
        nn.Upsample(2, layout="NCWH")
