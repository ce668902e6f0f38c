"""The autograd batch norm checks a layer's arrays once per signature
(``fastconv._args.batch_norm_record`` / ``batch_norm_backward_record``) and then runs
the kernels (``fastconv.norm.forward`` / ``gradients``): the same results as the public
functions, the same errors, and the public path for arrays it would convert."""

import numpy as np
import pytest

import fastconv
from fastconv import norm
from fastconv._args import batch_norm_backward_record, batch_norm_record
from fastconv.autograd import Tensor
from fastconv.nn import functional as F
from fastconv.nn import fused

from .conftest import count_calls


def _arrays(layout, dtype, rng, c=5):
    shape = (3, c, 4, 6) if layout == "NCHW" else (3, 4, 6, c)
    x = rng.standard_normal(shape).astype(dtype) * 2 + 1
    w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    return x, w, b, np.zeros(c, dtype), np.ones(c, dtype)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_the_op_matches_the_public_functions(layout, dtype, relu, training, rng,
                                             monkeypatch):
    x, w, b, rm, rv = _arrays(layout, dtype, rng)
    rm2, rv2 = rm.copy(), rv.copy()
    want_y, mean, invstd = fastconv.batch_norm(x, rm2, rv2, w, b, training, layout=layout,
                                               return_stats=True, fuse_relu=relu)
    public = count_calls(monkeypatch, norm, "batch_norm")
    public_b = count_calls(monkeypatch, norm, "batch_norm_backward")
    xt, wt, bt = (Tensor(a, requires_grad=True) for a in (x, w, b))
    op = fused.batch_norm_relu if relu else F.batch_norm
    y = op(xt, rm, rv, wt, bt, training, layout=layout)
    np.testing.assert_array_equal(y.data, want_y)
    np.testing.assert_array_equal(rm, rm2)           # the running statistics moved alike
    np.testing.assert_array_equal(rv, rv2)
    g = rng.standard_normal(x.shape).astype(dtype)
    y.backward(g)
    want = fastconv.batch_norm_backward(g, x, mean, invstd, w, training=training,
                                        layout=layout, relu_output=want_y if relu else None)
    # with the ReLU the op finds where it passed the gradient from x, the public function
    # from y: the same values, in arithmetic the compiler may order differently
    tol = 0 if not relu else 1e-6 if dtype == np.float32 else 1e-13
    for got, exp in zip((xt.grad, wt.grad, bt.grad), want, strict=True):
        np.testing.assert_allclose(got, exp, rtol=tol, atol=tol)
    assert not public and not public_b                  # the op never called them


def test_a_record_is_kept_per_signature(rng):
    x, w, b, rm, rv = _arrays("NCHW", np.float32, rng)
    a = batch_norm_record(x, rm, rv, w, b, True, 0.1, 1e-5, "NCHW")
    assert a is batch_norm_record(x + 1, rm, rv, w, b, True, 0.1, 1e-5, "NCHW")
    assert a.c == 5 and a.count == 3 * 4 * 6 and a.training
    assert batch_norm_record(x, rm, rv, w, b, False, 0.1, 1e-5, "NCHW") is not a
    assert batch_norm_record(x, rm, rv, w, b, True, 0.2, 1e-5, "NCHW").momentum == 0.2
    assert batch_norm_record(x[:2], rm, rv, w, b, True, 0.1, 1e-5, "NCHW").count == 48
    mean, invstd = np.zeros(5), np.ones(5)
    rb = batch_norm_backward_record(x, x, mean, invstd, w, True, "NCHW", None)
    assert rb is batch_norm_backward_record(x, x, mean, invstd, w, True, "NCHW", None)
    assert rb.c == 5 and rb.training


@pytest.mark.parametrize("change", ["float16", "list", "weight float64", "mean missing"])
def test_arrays_the_public_functions_convert_get_no_record(change, rng):
    x, w, b, rm, rv = _arrays("NCHW", np.float32, rng)
    mean, invstd = np.zeros(5), np.ones(5)
    if change == "float16":
        x = x.astype(np.float16)
    elif change == "list":
        x = x.tolist()
    elif change == "weight float64":
        w = w.astype(np.float64)
    if change != "mean missing":
        assert batch_norm_record(x, rm, rv, w, b, True, 0.1, 1e-5, "NCHW") is None
        assert batch_norm_backward_record(x, x, mean, invstd, w, True, "NCHW", None) is None
    else:
        assert batch_norm_backward_record(np.asarray(x), x, None, invstd, w, True, "NCHW",
                                          None) is None


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(training=1), TypeError, r"batch_norm: training=1 must be a bool"),
    (dict(momentum=1.5), ValueError, r"batch_norm: momentum=1.5 must be finite"),
    (dict(eps=-1.0), ValueError, r"batch_norm: eps=-1.0 must be finite and >= 0"),
    (dict(layout="NCWH"), ValueError, r"batch_norm: layout='NCWH'"),
    (dict(weight=np.ones(4, np.float32)), ValueError, r"batch_norm: weight must have shape"),
])
def test_the_op_keeps_the_public_errors_every_call(kwargs, exc, match, rng):
    x, w, b, rm, rv = _arrays("NCHW", np.float32, rng)
    call = dict(training=True, momentum=0.1, eps=1e-5, layout="NCHW", weight=w)
    call.update(kwargs)
    for _ in range(2):                                  # an error is never kept
        with pytest.raises(exc, match=match):
            F.BatchNorm.apply(Tensor(x), call["weight"], b, running_mean=rm,
                              running_var=rv, training=call["training"],
                              momentum=call["momentum"], eps=call["eps"],
                              layout=call["layout"])


def test_read_only_running_stats_are_refused_after_a_record_is_kept(rng):
    x, w, b, rm, rv = _arrays("NHWC", np.float32, rng)
    F.batch_norm(Tensor(x), rm, rv, w, b, True, layout="NHWC")         # kept
    rm.flags.writeable = False
    with pytest.raises(ValueError, match=r"batch_norm: running_mean is read-only"):
        F.batch_norm(Tensor(x), rm, rv, w, b, True, layout="NHWC")
    F.batch_norm(Tensor(x), rm, rv, w, b, False, layout="NHWC")        # eval reads them
