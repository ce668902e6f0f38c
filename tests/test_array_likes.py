"""Every public op accepts array-likes (ndarray subclasses, __array__, the buffer
protocol, __dlpack__, nested lists) and returns plain ndarrays equal to its ndarray
results; conversions share memory where numpy can."""

import array

import numpy as np
import pytest

import fastconv
from fastconv._args import check_array

RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 3, 6, 6))
W = RNG.standard_normal((4, 3, 3, 3))
C = RNG.random(3) + 0.5


class Sub(np.ndarray):
    """A trivial ndarray subclass."""


class HasArray:
    """Only __array__ (the object numpy asks for an array)."""

    def __init__(self, a):
        self.a = a

    def __array__(self, dtype=None, copy=None):
        return self.a


class HasDLPack:
    """Only the DLPack protocol (no __array__)."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, **kwargs):
        return self.a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


def _memoryview(a):
    return memoryview(a.tobytes()).cast("d", a.shape)


WRAPS = {
    "subclass": lambda a: a.view(Sub),
    "__array__": HasArray,
    "__dlpack__": HasDLPack,
    "memoryview": _memoryview,
    "list": lambda a: a.tolist(),
    "big-endian": lambda a: a.astype(">f8"),
}


def _calls():
    gy = np.ones((2, 4, 4, 4))
    y, idx = fastconv.max_pool2d(X, 2, return_indices=True)
    _, mean, invstd = fastconv.batch_norm(X, None, None, training=True, return_stats=True)
    return {
        "conv2d": (fastconv.conv2d, (X, W, C[:1].repeat(4))),
        "conv2d_backward": (lambda g, x, w: fastconv.conv2d_backward(g, x, w), (gy, X, W)),
        "max_pool2d": (lambda x: fastconv.max_pool2d(x, 2), (X,)),
        "max_pool2d_backward": (lambda g, i: fastconv.max_pool2d_backward(g, i, X.shape),
                                (np.ones_like(y), idx)),
        "avg_pool2d": (lambda x: fastconv.avg_pool2d(x, 3, 1, 1), (X,)),
        "avg_pool2d_backward": (lambda g: fastconv.avg_pool2d_backward(g, X.shape, 2),
                                (np.ones_like(y),)),
        "global_avg_pool2d": (fastconv.global_avg_pool2d, (X,)),
        "global_avg_pool2d_backward": (
            lambda g: fastconv.global_avg_pool2d_backward(g, X.shape), (np.ones((2, 3, 1, 1)),)),
        "batch_norm": (lambda x, m, v, w, b: fastconv.batch_norm(x, m, v, w, b),
                       (X, C - 0.5, C, C, C)),
        "batch_norm_backward": (lambda g, x, m, s, w: fastconv.batch_norm_backward(
            g, x, m, s, w), (np.ones_like(X), X, mean, invstd, C)),
    }


CALLS = _calls()


def _flat(r):
    return r if isinstance(r, tuple) else (r,)


@pytest.mark.parametrize("wrap", list(WRAPS))
@pytest.mark.parametrize("op", list(CALLS))
def test_ops_accept_array_likes_and_return_plain_arrays(op, wrap):
    fn, args = CALLS[op]
    want = _flat(fn(*args))
    wrapped = [a if a.dtype != np.float64 else WRAPS[wrap](a) for a in args]
    got = _flat(fn(*wrapped))
    for g, w in zip(got, want, strict=True):
        if w is None:
            assert g is None
            continue
        assert type(g) is np.ndarray
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("wrap", ["subclass", "__array__", "__dlpack__"])
def test_conversion_shares_memory(wrap):
    a = np.arange(24.0).reshape(2, 3, 4)
    got = check_array("op", "x", WRAPS[wrap](a))
    assert type(got) is np.ndarray and np.shares_memory(got, a)


def test_buffer_protocol_shares_memory():
    buf = array.array("f", [1.0, 2.0, 3.0])
    got = check_array("op", "x", memoryview(buf))
    got[0] = 7.0
    assert buf[0] == 7.0 and got.dtype == np.float32
    assert check_array("op", "x", buf).dtype == np.float32


def test_plain_ndarray_passes_as_is():
    assert check_array("op", "x", X) is X


def test_batch_norm_updates_subclass_running_statistics_in_place():
    rm, rv = np.zeros(3).view(Sub), np.ones(3).view(Sub)
    fastconv.batch_norm(X, rm, rv, training=True)
    np.testing.assert_allclose(np.asarray(rm), 0.1 * X.mean(axis=(0, 2, 3)))
    assert not np.allclose(np.asarray(rv), 1.0)


@pytest.mark.parametrize("bad,exc,match", [
    ({}, TypeError, r"conv2d: input must be an array-like convertible to a numpy array, got "
     r"dict"),
    (None, TypeError, r"conv2d: input must be an array-like convertible to a numpy array, "
     r"got NoneType"),
    ([[["a"]]], TypeError, r"conv2d: input must be an array-like convertible to a numpy "
     r"array, got list"),
    ([[1.0], [1.0, 2.0]], TypeError, r"conv2d: input must be an array-like .*got list "
     r"\(ValueError: "),
    (np.ma.masked_array(X, X > 1), TypeError, r"conv2d: input is a masked array with masked "
     r"elements"),
    (X.astype(np.int64).tolist(), TypeError, r"conv2d: input has dtype int64; accepted"),
    (X.astype(np.float32), TypeError, r"conv2d: inputs must share one dtype"),
])
def test_inconvertible_input_is_named(bad, exc, match):
    with pytest.raises(exc, match=match):
        fastconv.conv2d(bad, W)


def test_lazy_dask_weight_is_refused():
    da = pytest.importorskip("dask.array")
    with pytest.raises(TypeError, match=r"conv2d: weight must be a numpy.ndarray or an "
                       r"in-memory array-like, got a lazy Array \(dask\)"):
        fastconv.conv2d(X, da.from_array(W))


def test_torch_cpu_tensors():
    torch = pytest.importorskip("torch")
    x, w = torch.from_numpy(X.copy()), torch.from_numpy(W.copy())
    got = fastconv.conv2d(x, w)
    assert type(got) is np.ndarray
    np.testing.assert_allclose(got, torch.nn.functional.conv2d(x, w).numpy(), atol=1e-12)
    assert np.shares_memory(check_array("conv2d", "input", x), x.numpy())
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    fastconv.batch_norm(x, rm.numpy(), rv.numpy(), training=True)  # np views update rm
    assert rm.abs().sum() > 0
    with pytest.raises(TypeError, match=r"batch_norm: running_mean must be a numpy.ndarray "
                       r"when training \(it is updated in place\), got Tensor"):
        fastconv.batch_norm(x, rm, rv, training=True)
    y = fastconv.batch_norm(x, rm, rv)      # evaluation only reads them
    assert type(y) is np.ndarray
    with pytest.raises(TypeError, match=r"conv2d: input must be an array-like convertible "
                       r"to a numpy array, got Tensor \(RuntimeError: "):
        fastconv.conv2d(x.requires_grad_(), w)


# --------------------------------------------------------------------------- float16
@pytest.mark.parametrize("op", list(CALLS))
def test_float16_is_computed_in_float32_and_rounded_once(op):
    fn, args = CALLS[op]
    want = _flat(fn(*[a.astype(np.float32) if a.dtype == np.float64 else a for a in args]))
    half = [a.astype(np.float16) if a.dtype == np.float64 else a for a in args]
    if op == "batch_norm_backward":
        half[2:4] = args[2:4]      # mean and invstd: float64, as batch_norm returns them
    got = _flat(fn(*half))
    for g, w in zip(got, want, strict=True):
        if w is None:
            continue
        assert type(g) is np.ndarray
        assert g.dtype == (np.float16 if w.dtype == np.float32 else w.dtype)
        # the float32 result of float16-rounded inputs, rounded: within 2 float16 ulps
        np.testing.assert_allclose(g.astype(np.float32), w, rtol=4e-3, atol=4e-3)


def test_float16_running_statistics_update_in_place():
    rm, rv = np.zeros(3, np.float16), np.ones(3, np.float16)
    y = fastconv.batch_norm(X.astype(np.float16), rm, rv, training=True)
    assert y.dtype == np.float16
    np.testing.assert_allclose(rm, 0.1 * X.mean(axis=(0, 2, 3)), atol=1e-3)


@pytest.mark.parametrize("call,match", [
    (lambda: fastconv.conv2d(X.astype(np.float16), W.astype(np.float32)),
     r"conv2d: inputs must share one dtype .*input=float16, weight=float32"),
    (lambda: fastconv.batch_norm(X.astype(np.float16), C.astype(np.float32), C, training=True),
     r"batch_norm: running_mean has dtype float32 but input has dtype float16"),
    (lambda: fastconv.conv2d_backward(np.ones((2, 4, 4, 4), np.float32),
                                      X.astype(np.float16), W.astype(np.float16)),
     r"conv2d_backward: inputs must share one dtype"),
])
def test_mixed_float16_keeps_the_dtype_error(call, match):
    with pytest.raises(TypeError, match=match):
        call()
