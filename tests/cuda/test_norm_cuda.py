"""Batch norm (forward, running statistics, backward) on CUDA against the CPU path and the
reference."""

import numpy as np
import pytest
from numba import cuda

import fastconv
from fastconv import cuda as fcuda

from .. import reference as ref

LAYOUTS = [("NCHW", np.float64), ("NHWC", np.float32)]


def _nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _data(dtype, shape=(3, 4, 5, 3), seed=0, affine=True):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    rm = rng.standard_normal(c).astype(dtype)
    rv = (rng.random(c) + 0.5).astype(dtype)
    w = rng.standard_normal(c).astype(dtype) if affine else None
    b = rng.standard_normal(c).astype(dtype) if affine else None
    return x, rm, rv, w, b


def _tol(dtype):
    return 1e-5 if dtype == np.float32 else 1e-12


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layout,dtype", LAYOUTS)
def test_forward_and_backward_match_cpu(layout, dtype, training, affine):
    x, rm, rv, w, b = _data(dtype, affine=affine)
    xl = _nhwc(x) if layout == "NHWC" else x
    rm_gpu, rv_gpu, rm_cpu, rv_cpu = rm.copy(), rv.copy(), rm.copy(), rv.copy()
    kw = dict(training=training, momentum=0.2, eps=1e-3, layout=layout, return_stats=True)
    y, mean, invstd = fcuda.batch_norm(xl, rm_gpu, rv_gpu, w, b, **kw)
    y_c, mean_c, invstd_c = fastconv.batch_norm(xl, rm_cpu, rv_cpu, w, b, **kw)
    tol = _tol(dtype)
    assert y.dtype == dtype and mean.dtype == invstd.dtype == np.float64
    np.testing.assert_allclose(y, y_c, rtol=tol, atol=tol)
    np.testing.assert_allclose(mean, mean_c, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(invstd, invstd_c, rtol=1e-12)
    # running statistics moved in place exactly as on the CPU (or not at all in eval)
    np.testing.assert_allclose(rm_gpu, rm_cpu, rtol=tol, atol=tol)
    np.testing.assert_allclose(rv_gpu, rv_cpu, rtol=tol, atol=tol)
    assert training == (not np.array_equal(rm_gpu, rm))

    gy = np.random.default_rng(1).standard_normal(xl.shape).astype(dtype)
    got = fcuda.batch_norm_backward(gy, xl, mean, invstd, w, training=training, layout=layout)
    want = fastconv.batch_norm_backward(gy, xl, mean_c, invstd_c, w, training=training,
                                        layout=layout)
    for g, h in zip(got, want, strict=True):
        assert g.dtype == dtype and g.shape == h.shape
        assert ref.rel_error(g, h) <= 10 * tol


def test_against_reference_float64():
    x, rm, rv, w, b = _data(np.float64, seed=3)
    y_ref, mu, var, rm_ref, rv_ref = ref.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5)
    y, mean, invstd = fcuda.batch_norm(x, rm, rv, w, b, training=True, return_stats=True)
    assert ref.rel_error(y, y_ref) <= 1e-10
    assert ref.rel_error(mean, mu) <= 1e-12
    assert ref.rel_error(invstd, 1 / np.sqrt(var + 1e-5)) <= 1e-12
    assert ref.rel_error(rm, rm_ref) <= 1e-12 and ref.rel_error(rv, rv_ref) <= 1e-12
    gy = np.random.default_rng(4).standard_normal(x.shape)
    gx, gw, gb = fcuda.batch_norm_backward(gy, x, mean, invstd, w)
    want = ref.batch_norm_backward(gy, x, w, 1e-5, True)
    for g, h in zip((gx, gw, gb), want, strict=True):
        assert ref.rel_error(g, h) <= 1e-10


def test_device_arrays_update_running_stats_on_device():
    x, rm, rv, w, b = _data(np.float32, seed=5)
    drm, drv = cuda.to_device(rm), cuda.to_device(rv)
    y, mean, invstd = fcuda.batch_norm(cuda.to_device(x), drm, drv, cuda.to_device(w),
                                       cuda.to_device(b), training=True, return_stats=True)
    assert not any(isinstance(a, np.ndarray) for a in (y, mean, invstd))
    rm_c, rv_c = rm.copy(), rv.copy()
    y_c = fastconv.batch_norm(x, rm_c, rv_c, w, b, training=True)
    np.testing.assert_allclose(y.copy_to_host(), y_c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(drm.copy_to_host(), rm_c, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(drv.copy_to_host(), rv_c, rtol=1e-6, atol=1e-7)
    gx, gw, gb = fcuda.batch_norm_backward(y, cuda.to_device(x), mean, invstd)
    want = fastconv.batch_norm_backward(y_c, x, mean.copy_to_host(), invstd.copy_to_host())
    for g, h in zip((gx, gw, gb), want, strict=True):
        assert ref.rel_error(g.copy_to_host(), h) <= 1e-4


def test_training_without_running_stats_and_empty_batch():
    x, _, _, w, b = _data(np.float64, seed=6)
    y = fcuda.batch_norm(x, None, None, w, b, training=True)
    np.testing.assert_allclose(y, fastconv.batch_norm(x, None, None, w, b, training=True),
                               rtol=1e-12, atol=1e-12)
    empty = np.zeros((0, 4, 2, 2))
    y, mean, invstd = fcuda.batch_norm(empty, None, None, training=True, return_stats=True)
    assert y.shape == empty.shape and np.isnan(mean).all() and np.isnan(invstd).all()


@pytest.mark.parametrize("call,exc,match", [
    (lambda x, rm, rv: fcuda.batch_norm(x[:1, :, :1, :1], rm, rv, training=True), ValueError,
     r"batch_norm: expected more than 1 value per channel when training"),
    (lambda x, rm, rv: fcuda.batch_norm(x, None, None), ValueError,
     r"batch_norm: running_mean and running_var are required when training=False"),
    (lambda x, rm, rv: fcuda.batch_norm(x, rm[:2], rv), ValueError,
     r"batch_norm: running_mean must have shape \(C,\) = \(4,\), got \(2,\)"),
    (lambda x, rm, rv: fcuda.batch_norm(cuda.to_device(x), rm, rv, momentum=2.0), ValueError,
     r"batch_norm: momentum=2.0 must be finite and in \[0.0, 1.0\]"),
    (lambda x, rm, rv: fcuda.batch_norm_backward(x[:, :2], x, rm, rv), ValueError,
     r"batch_norm_backward: grad_y must have the shape of the input"),
])
def test_errors_match_the_cpu(call, exc, match):
    x, rm, rv, _, _ = _data(np.float64)
    with pytest.raises(exc, match=match):
        call(x, rm, rv)


def test_public_functions_take_device():
    x, rm, rv, w, b = _data(np.float32, seed=9)
    rm_c, rv_c = rm.copy(), rv.copy()
    y, mean, invstd = fastconv.batch_norm(x, rm, rv, w, b, training=True, return_stats=True,
                                          device="cuda")
    y_c, mean_c, invstd_c = fastconv.batch_norm(x, rm_c, rv_c, w, b, training=True,
                                                return_stats=True)
    np.testing.assert_allclose(y, y_c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rm, rm_c, rtol=1e-6)
    got = fastconv.batch_norm_backward(y, x, mean, invstd, w, device="cuda")
    want = fastconv.batch_norm_backward(y, x, mean_c, invstd_c, w)
    for g, h in zip(got, want, strict=True):
        assert ref.rel_error(g, h) <= 1e-4
    with pytest.raises(ValueError, match=r"batch_norm: device='gpu' is not supported"):
        fastconv.batch_norm(x, rm, rv, device="gpu")
