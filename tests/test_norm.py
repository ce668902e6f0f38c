"""Batch norm forward / backward against the references and finite differences, running
statistics, numerical stability, bad arguments."""

import numpy as np
import pytest

import fastconv
from fastconv import _norm_nhwc

from . import reference as ref

LAYOUTS = ["NCHW", "NHWC"]
DTYPES = [np.float32, np.float64]
# (N, C, H, W): one block of partial sums; several NHWC blocks (N*H*W > _norm_nhwc.ROWS);
# channels a whole number of float64 vectors (NHWC sums in registers, one vector of
# channels and two)
SHAPES = [(3, 4, 5, 6), (2, 3, 13, 12), (2, 8, 13, 12), (1, 16, 4, 5)]


def _to(a, layout):
    return a if layout == "NCHW" else np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _from(a, layout):
    return a if layout == "NCHW" else a.transpose(0, 3, 1, 2)


def _problem(shape, dtype, seed=3):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = (rng.standard_normal(shape) * 2 + rng.standard_normal(c)[:, None, None] * 3)
    return (x.astype(dtype), rng.standard_normal(c).astype(dtype),
            (rng.random(c) + 0.5).astype(dtype), rng.standard_normal(c).astype(dtype),
            rng.standard_normal(c).astype(dtype), rng.standard_normal(shape).astype(dtype))


def test_several_nhwc_blocks_are_exercised():
    n, _, h, w = SHAPES[1]
    assert n * h * w > _norm_nhwc.ROWS


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_running_stats_match_reference(shape, training, affine, dtype, layout):
    x, rm, rv, w, b, _ = _problem(shape, dtype)
    if not affine:
        w = b = None
    want, mu, var, want_rm, want_rv = ref.batch_norm(x, rm, rv, w, b, training, 0.3, 1e-3)
    rm_, rv_ = rm.copy(), rv.copy()
    y, mean, invstd = fastconv.batch_norm(_to(x, layout), rm_, rv_, w, b, training, 0.3, 1e-3,
                                          layout=layout, return_stats=True)
    tol = ref.tolerance(dtype, "bn")
    assert y.dtype == dtype and y.shape == _to(x, layout).shape
    assert ref.rel_error(_from(y, layout), want) <= tol
    assert ref.rel_error(mean, mu) <= tol
    assert ref.rel_error(invstd, 1 / np.sqrt(var + 1e-3)) <= tol
    assert ref.rel_error(rm_, want_rm) <= tol and ref.rel_error(rv_, want_rv) <= tol
    if not training:   # evaluation leaves the running estimates alone
        np.testing.assert_array_equal(rm_, rm)
        np.testing.assert_array_equal(rv_, rv)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_reference(shape, training, affine, dtype, layout):
    x, rm, rv, w, b, gy = _problem(shape, dtype)
    if not affine:
        w = b = None
    _, mean, invstd = fastconv.batch_norm(_to(x, layout), rm.copy(), rv.copy(), w, b,
                                          training, layout=layout, return_stats=True)
    gx, gw, gb = fastconv.batch_norm_backward(_to(gy, layout), _to(x, layout), mean, invstd,
                                              w, training=training, layout=layout)
    want = ref.batch_norm_backward(gy, x, w, 1e-5, training, rm, rv)
    assert gx.dtype == gw.dtype == gb.dtype == dtype
    assert gx.shape == _to(x, layout).shape and gw.shape == gb.shape == (shape[1],)
    tol = ref.tolerance(dtype, "bn")
    for got, wnt in zip((_from(gx, layout), gw, gb), want, strict=True):
        assert ref.rel_error(got, wnt) <= tol


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("training", [True, False])
def test_gradients_match_finite_differences(training, layout):
    x, rm, rv, w, b, gy = _problem((2, 3, 3, 4), np.float64)
    eps_bn = 1e-3

    def loss():
        y = ref.batch_norm(x, rm, rv, w, b, training, 0.1, eps_bn)[0]
        return float(np.sum(gy * y))

    fd = [ref.numerical_grad(loss, v, 1e-5) for v in (x, w, b)]
    _, mean, invstd = fastconv.batch_norm(_to(x, layout), rm.copy(), rv.copy(), w, b,
                                          training, eps=eps_bn, layout=layout,
                                          return_stats=True)
    gx, gw, gb = fastconv.batch_norm_backward(_to(gy, layout), _to(x, layout), mean, invstd,
                                              w, training=training, layout=layout)
    for got, want in zip((_from(gx, layout), gw, gb), fd, strict=True):
        assert ref.rel_error(got, want) <= 1e-7
    # and the step-by-step reference agrees with the finite differences too
    steps = ref.batch_norm_backward(gy, x, w, eps_bn, training, rm, rv)
    for got, want in zip(steps, fd, strict=True):
        assert ref.rel_error(got, want) <= 1e-7


def test_training_gradient_sums_to_zero_per_channel():
    """Through the batch statistics, shifting a channel of x changes nothing: grad_x sums
    to zero over (N, H, W); with eps = 0 scaling x - mean changes nothing either, so
    grad_x is orthogonal to x - mean."""
    x, _, _, w, _, gy = _problem((4, 3, 5, 5), np.float64)
    _, mean, invstd = fastconv.batch_norm(x, None, None, w, training=True, eps=0.0,
                                          return_stats=True)
    gx, _, _ = fastconv.batch_norm_backward(gy, x, mean, invstd, w)
    np.testing.assert_allclose(gx.sum(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose((gx * (x - mean[:, None, None])).sum(axis=(0, 2, 3)), 0,
                               atol=1e-11)


@pytest.mark.parametrize("channels", [3, 16])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_float32_large_mean_small_spread(layout, channels):
    """mean 1e4, std 1e-2 per channel: float32 still normalises to within 1e-2 of the
    float64 computation on the same numbers (a one-pass float32 sum of squares fails)."""
    rng = np.random.default_rng(0)
    x = (1e4 + 1e-2 * rng.standard_normal((4, channels, 8, 8))).astype(np.float32)
    want = ref.batch_norm(x.astype(np.float64), None, None, training=True)[0]
    got = _from(fastconv.batch_norm(_to(x, layout), None, None, training=True, layout=layout),
                layout)
    assert np.max(np.abs(got - want)) <= 1e-2
    # the naive float32 formula is far off, so the test can fail
    mu32 = x.mean(axis=(0, 2, 3), keepdims=True, dtype=np.float32)
    var32 = (x * x).mean(axis=(0, 2, 3), keepdims=True, dtype=np.float32) - mu32 * mu32
    naive = (x - mu32) / np.sqrt(np.maximum(var32, 0) + np.float32(1e-5))
    assert np.max(np.abs(naive - want)) > 1e-2


def test_running_stats_track_over_steps():
    """Repeated training steps on the same batch converge to its mean / unbiased var."""
    x, _, _, _, _, _ = _problem((4, 2, 3, 3), np.float64)
    rm, rv = np.zeros(2), np.ones(2)
    for _ in range(200):
        fastconv.batch_norm(x, rm, rv, training=True, momentum=0.1)
    np.testing.assert_allclose(rm, x.mean(axis=(0, 2, 3)), rtol=1e-8)
    np.testing.assert_allclose(rv, x.var(axis=(0, 2, 3), ddof=1), rtol=1e-8)


def test_running_stats_views_update_in_place():
    x, _, _, _, _, _ = _problem((2, 3, 4, 4), np.float32)
    store = np.zeros((2, 6), np.float32)
    store[1] = 1
    rm, rv = store[0, ::2], store[1, ::2]     # non-contiguous views
    fastconv.batch_norm(x, rm, rv, training=True, momentum=1.0)
    np.testing.assert_allclose(store[0, ::2], x.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(store[1, ::2], x.var(axis=(0, 2, 3), ddof=1), rtol=1e-4)
    np.testing.assert_array_equal(store[:, 1::2], [[0, 0, 0], [1, 1, 1]])


def test_one_value_per_channel():
    x = np.ones((1, 3, 1, 1))
    with pytest.raises(ValueError, match=r"batch_norm: expected more than 1 value per channel "
                       r"when training, got input shape \(1, 3, 1, 1\)"):
        fastconv.batch_norm(x, np.zeros(3), np.ones(3), training=True)
    y = fastconv.batch_norm(x, np.zeros(3), np.ones(3), training=False, eps=0.0)
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_empty_batch(layout):
    x = np.zeros((0, 3, 4, 4) if layout == "NCHW" else (0, 4, 4, 3))
    rm, rv = np.full(3, 0.5), np.full(3, 2.0)
    y, mean, invstd = fastconv.batch_norm(x, rm, rv, training=True, layout=layout,
                                          return_stats=True)
    assert y.shape == x.shape and np.isnan(mean).all() and np.isnan(invstd).all()
    np.testing.assert_array_equal(rm, 0.5)    # nothing to learn from: no update
    gx, gw, gb = fastconv.batch_norm_backward(x, x, np.zeros(3), np.ones(3), layout=layout)
    assert gx.shape == x.shape and not gw.any() and not gb.any()


def test_eval_uses_running_stats_and_float32_stats_are_accepted():
    x, rm, rv, w, b, gy = _problem((2, 3, 4, 4), np.float32)
    y, mean, invstd = fastconv.batch_norm(x, rm, rv, w, b, return_stats=True)
    np.testing.assert_allclose(mean, rm)
    np.testing.assert_allclose(invstd, 1 / np.sqrt(rv.astype(np.float64) + 1e-5), rtol=1e-12)
    a = fastconv.batch_norm_backward(gy, x, mean, invstd, w, training=False)
    b32 = fastconv.batch_norm_backward(gy, x, mean.astype(np.float32),
                                       invstd.astype(np.float32), w, training=False)
    for u, v in zip(a, b32, strict=True):
        assert ref.rel_error(u, v) <= 1e-5


# ----------------------------------------------------------------------------- errors
X = np.zeros((2, 3, 4, 4), np.float32)
C3 = np.zeros(3, np.float32)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(running_mean=np.zeros(4, np.float32)), ValueError,
     r"batch_norm: running_mean must have shape \(C,\) = \(3,\), got \(4,\)"),
    (dict(running_var=np.zeros((3, 1), np.float32)), ValueError,
     r"batch_norm: running_var must have shape \(C,\) = \(3,\), got \(3, 1\)"),
    (dict(running_mean=C3.astype(np.float64)), TypeError,
     r"batch_norm: running_mean has dtype float64 but input has dtype float32"),
    (dict(running_mean=[0.0, 0.0, 0.0], training=True), TypeError,
     r"batch_norm: running_mean must be a numpy.ndarray when training \(it is updated in "
     r"place\), got list"),
    (dict(running_mean=C3.astype(">f4"), training=True), TypeError,
     r"batch_norm: running_mean has dtype >f4 \(non-native byte order\)"),
    (dict(running_mean=[0.0, 0.0, 0.0]), TypeError,
     r"batch_norm: running_mean has dtype float64 but input has dtype float32"),
    (dict(running_mean=None, running_var=None), ValueError,
     r"batch_norm: running_mean and running_var are required when training=False"),
    (dict(running_var=None, training=True), ValueError,
     r"batch_norm: running_mean and running_var must both be arrays or both be None"),
    (dict(weight=np.ones(2, np.float32)), ValueError,
     r"batch_norm: weight must have shape \(C,\) = \(3,\), got \(2,\)"),
    (dict(bias=np.ones(3, np.int64)), TypeError, r"batch_norm: bias has dtype int64"),
    (dict(x=X.astype(np.int16)), TypeError,
     r"batch_norm: input has dtype int16; accepted dtypes are float32 and float64"),
    (dict(x=X[0]), ValueError,
     r"batch_norm: input must be 4-D \(N, C, H, W\) for layout NCHW, got 3-D shape"),
    (dict(layout="NHWC"), ValueError,
     r"batch_norm: running_mean must have shape \(C,\) = \(4,\), got \(3,\)"),
    (dict(layout="CNHW"), ValueError, r"batch_norm: layout='CNHW' is not supported"),
    (dict(momentum=1.5), ValueError, r"batch_norm: momentum=1.5 must be finite and in "
     r"\[0.0, 1.0\]"),
    (dict(momentum=None), TypeError, r"batch_norm: momentum=None must be a real number"),
    (dict(eps=-1e-5), ValueError, r"batch_norm: eps=-1e-05 must be finite and >= 0.0"),
    (dict(training=1), TypeError, r"batch_norm: training=1 must be a bool"),
])
def test_bad_batch_norm_arguments(kwargs, exc, match):
    call = dict(x=X, running_mean=C3, running_var=C3 + 1)
    call.update(kwargs)
    with pytest.raises(exc, match=match):
        fastconv.batch_norm(call.pop("x"), call.pop("running_mean"), call.pop("running_var"),
                            **call)


def test_read_only_running_stats_are_refused_in_training():
    rm = np.zeros(3, np.float32)
    rm.flags.writeable = False
    with pytest.raises(ValueError, match=r"batch_norm: running_mean is read-only"):
        fastconv.batch_norm(X, rm, C3 + 1, training=True)
    fastconv.batch_norm(X, rm, C3 + 1, training=False)   # evaluation only reads them


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(gy=X[..., :3]), ValueError,
     r"batch_norm_backward: grad_y must have the shape of the input \(2, 3, 4, 4\), got "
     r"\(2, 3, 4, 3\)"),
    (dict(gy=X.astype(np.float64)), TypeError,
     r"batch_norm_backward: inputs must share one dtype \(float32 or float64\), got "
     r"grad_y=float64, input=float32"),
    (dict(mean=np.zeros(4)), ValueError,
     r"batch_norm_backward: mean must have shape \(C,\) = \(3,\), got \(4,\)"),
    (dict(invstd=None), TypeError, r"batch_norm_backward: mean and invstd are required"),
    (dict(weight=np.ones(3)), TypeError,
     r"batch_norm_backward: weight has dtype float64 but input has dtype float32"),
    (dict(training="no"), TypeError, r"batch_norm_backward: training='no' must be a bool"),
])
def test_bad_batch_norm_backward_arguments(kwargs, exc, match):
    call = dict(gy=X, x=X, mean=np.zeros(3), invstd=np.ones(3))
    call.update(kwargs)
    with pytest.raises(exc, match=match):
        fastconv.batch_norm_backward(call.pop("gy"), call.pop("x"), call.pop("mean"),
                                     call.pop("invstd"), **call)


@pytest.mark.parametrize("channels, lanes", [(16, True), (3, False)])
def test_nhwc_sums_run_in_registers_for_whole_vectors_of_channels(channels, lanes,
                                                                   monkeypatch):
    """The register sums for whole float64 vectors of channels, the other kernel else;
    with either forced on the other's layers, the same results (both paths correct)."""
    calls = []
    real = _norm_nhwc.in_registers

    def spy(c, dtype):
        calls.append(real(c, dtype))
        return calls[-1]

    monkeypatch.setattr(_norm_nhwc, "in_registers", spy)
    shape = (2, channels, 13, 12)                 # several blocks of pixels
    x, rm, rv, w, b, gy = _problem(shape, np.float32)

    def run():
        y, mean, invstd = fastconv.batch_norm(_to(x, "NHWC"), rm.copy(), rv.copy(), w, b,
                                              True, layout="NHWC", return_stats=True)
        return (y, mean, invstd) + fastconv.batch_norm_backward(
            _to(gy, "NHWC"), _to(x, "NHWC"), mean, invstd, w, layout="NHWC")

    got = run()
    assert calls == [lanes, lanes]               # the moments, then the gradient's sums
    if lanes:                                    # the scalar kernel on the same layer
        monkeypatch.setattr(_norm_nhwc, "in_registers", lambda c, dtype: False)
        for a, b_ in zip(got, run(), strict=True):
            np.testing.assert_allclose(a, b_, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES + [np.float16])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_through_a_fused_relu_matches_reference(shape, training, dtype, layout):
    """relu_output: the ReLU's gradient (grad_y where the fused output is positive)
    applied in the batch norm's own passes, as the reference's chain rule through
    max(y, 0); scalar and register sums (C = 3, 4, 8, 16), several blocks of pixels."""
    x, rm, rv, w, b, gy = _problem(shape, dtype)
    y, mean, invstd = fastconv.batch_norm(_to(x, layout), rm.copy(), rv.copy(), w, b,
                                          training, layout=layout, return_stats=True,
                                          fuse_relu=True)
    assert (y == 0).any() and (y > 0).any()
    got = fastconv.batch_norm_backward(_to(gy, layout), _to(x, layout), mean, invstd, w,
                                       training=training, layout=layout, relu_output=y)
    masked = np.where(_from(y, layout) > 0, gy, 0).astype(dtype)
    want = ref.batch_norm_backward(masked, x, w, 1e-5, training, rm, rv)
    tol = ref.tolerance(np.float32 if dtype == np.float16 else dtype, "bn")
    tol = 2e-2 if dtype == np.float16 else tol
    for g, wnt in zip((_from(got[0], layout), got[1], got[2]), want, strict=True):
        assert g.dtype == dtype and ref.rel_error(g, wnt) <= tol


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("channels", [3, 16])
def test_fused_relu_gradient_passes_nothing_where_the_output_is_nan(channels, layout):
    x, _, _, w, _, gy = _problem((2, channels, 13, 12), np.float32)
    _, mean, invstd = fastconv.batch_norm(_to(x, layout), None, None, w, training=True,
                                          layout=layout, return_stats=True)
    out = np.abs(_problem((2, channels, 13, 12), np.float32, seed=5)[0])
    out[0, :, 1, ::3] = np.nan
    out[1, :, 4, 1::5] = 0
    got = fastconv.batch_norm_backward(_to(gy, layout), _to(x, layout), mean, invstd, w,
                                       layout=layout, relu_output=_to(out, layout))
    want = fastconv.batch_norm_backward(_to(np.where(out > 0, gy, 0), layout),
                                        _to(x, layout), mean, invstd, w, layout=layout)
    for g, wnt in zip(got, want, strict=True):
        np.testing.assert_allclose(g, wnt, rtol=1e-5, atol=1e-6)
    assert np.isfinite(got[0]).all()


@pytest.mark.parametrize("relu_output,exc,match", [
    (X[..., :3], ValueError,
     r"batch_norm_backward: relu_output must have the shape of the input \(2, 3, 4, 4\), "
     r"got \(2, 3, 4, 3\)"),
    (X.astype(np.float64), TypeError,
     r"batch_norm_backward: inputs must share one dtype \(float32 or float64\), got "
     r"relu_output=float64, input=float32"),
    ("y", TypeError, r"batch_norm_backward: relu_output"),
])
def test_bad_relu_output_is_refused(relu_output, exc, match):
    with pytest.raises(exc, match=match):
        fastconv.batch_norm_backward(X, X, np.zeros(3), np.ones(3), relu_output=relu_output)
