"""Property-based tests: random valid arguments agree with the reference; random invalid
arguments raise ValueError/TypeError naming the op (never a numba error, an IndexError from
a kernel, or a crash)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv._args import conv_args_from_shapes

from . import reference as ref
from .conftest import from_nhwc, to_nhwc

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


@st.composite
def conv_problems(draw):
    algo = draw(st.sampled_from(fastconv.ALGORITHMS + ("auto",)))
    groups = draw(st.integers(1, 3))
    cg, dg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dil = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if algo == "winograd":  # the problems it runs (tests/test_conv.py checks refusals)
        kh, kw, stride = 3, 3, (1, 1)
    kind = draw(st.sampled_from(["int", "pair", "explicit", "same", "valid"]))
    if kind == "same" and stride != (1, 1):
        kind = "valid"
    pads = [draw(st.integers(0, 3)) for _ in range(4)]
    padding = {"int": pads[0], "pair": (pads[0], pads[1]),
               "explicit": ((pads[0], pads[1]), (pads[2], pads[3])),
               "same": "same", "valid": "valid"}[kind]
    # input big enough for the dilated kernel (padding counted only when it is numeric)
    h = max(1, dil[0] * (kh - 1) + 1 - (0 if isinstance(padding, str) else 0)) \
        + draw(st.integers(0, 5))
    w = max(1, dil[1] * (kw - 1) + 1) + draw(st.integers(0, 5))
    n = draw(st.integers(0, 2))
    return dict(n=n, c_in=groups * cg, c_out=groups * dg, h=h, w=w, kh=kh, kw=kw,
                stride=stride, padding=padding, dilation=dil, groups=groups,
                layout=draw(st.sampled_from(["NCHW", "NHWC"])),
                dtype=draw(st.sampled_from([np.float32, np.float64])),
                algo=algo, bias=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


@FUZZ
@given(conv_problems())
def test_random_valid_conv_matches_reference(p):
    rng = np.random.default_rng(p["seed"])
    x = rng.standard_normal((p["n"], p["c_in"], p["h"], p["w"])).astype(p["dtype"])
    wt = rng.standard_normal((p["c_out"], p["c_in"] // p["groups"], p["kh"], p["kw"])) \
        .astype(p["dtype"])
    b = rng.standard_normal(p["c_out"]).astype(p["dtype"]) if p["bias"] else None
    kw = dict(stride=p["stride"], padding=p["padding"], dilation=p["dilation"],
              groups=p["groups"])
    a = conv_args_from_shapes("ref", x.shape, wt.shape, **kw)
    want = ref.conv2d(x, wt, b, a.stride, a.padding, a.dilation, a.groups)
    if p["layout"] == "NHWC":
        xl, wl = to_nhwc(x, wt)
        got = from_nhwc(fastconv.conv2d(xl, wl, b, layout="NHWC", algo=p["algo"], **kw))
    else:
        got = fastconv.conv2d(x, wt, b, algo=p["algo"], **kw)
    assert got.shape == want.shape and got.dtype == p["dtype"]
    assert ref.rel_error(got, want) <= ref.tolerance(p["dtype"], p["algo"])


def _nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _nchw(a):
    return a.transpose(0, 3, 1, 2)


@FUZZ
@given(conv_problems())
def test_random_valid_conv_backward_matches_reference(p):
    rng = np.random.default_rng(p["seed"])
    x = rng.standard_normal((p["n"], p["c_in"], p["h"], p["w"])).astype(p["dtype"])
    wt = rng.standard_normal((p["c_out"], p["c_in"] // p["groups"], p["kh"], p["kw"])) \
        .astype(p["dtype"])
    kw = dict(stride=p["stride"], padding=p["padding"], dilation=p["dilation"],
              groups=p["groups"])
    a = conv_args_from_shapes("ref", x.shape, wt.shape, **kw)
    gy = rng.standard_normal(a.y_shape).astype(p["dtype"])
    want = ref.conv2d_backward(gy, x, wt, a.stride, a.padding, a.dilation, a.groups)
    if p["layout"] == "NHWC":
        xl, wl = to_nhwc(x, wt)
        gx, gw, gb = fastconv.conv2d_backward(_nhwc(gy), xl, wl, layout="NHWC",
                                              algo=p["algo"], **kw)
        gx, gw = from_nhwc(gx), gw.transpose(3, 2, 0, 1)
    else:
        gx, gw, gb = fastconv.conv2d_backward(gy, x, wt, algo=p["algo"], **kw)
    tol = ref.tolerance(p["dtype"], p["algo"])
    for got, exp in zip((gx, gw, gb), want, strict=True):
        assert got.shape == exp.shape and got.dtype == p["dtype"]
        assert ref.rel_error(got, exp) <= tol


@st.composite
def pool_problems(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    padding = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    h = dilation[0] * (kh - 1) + 1 + draw(st.integers(0, 6))
    w = dilation[1] * (kw - 1) + 1 + draw(st.integers(0, 6))
    return dict(shape=(draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w),
                kernel=(kh, kw), stride=stride, padding=padding, dilation=dilation,
                ceil_mode=draw(st.booleans()), count_include_pad=draw(st.booleans()),
                layout=draw(st.sampled_from(["NCHW", "NHWC"])),
                dtype=draw(st.sampled_from([np.float32, np.float64])),
                seed=draw(st.integers(0, 2**16)))


def _pool_call(fn, x, layout, *args, **kwargs):
    """Call a pooling op on NCHW data in ``layout``; returns NCHW results."""
    if layout == "NCHW":
        return fn(x, *args, **kwargs)
    out = fn(_nhwc(x), *args, layout="NHWC", **kwargs)
    if isinstance(out, tuple):
        return tuple(_nchw(o) for o in out)
    return _nchw(out)


@FUZZ
@given(pool_problems())
def test_random_valid_max_pool_matches_reference(p):
    rng = np.random.default_rng(p["seed"])
    x = rng.standard_normal(p["shape"]).astype(p["dtype"])
    stride = p["stride"] or p["kernel"]
    y_ref, idx_ref = ref.max_pool2d(x, p["kernel"], stride, p["padding"], p["dilation"],
                                    p["ceil_mode"])
    kw = dict(stride=p["stride"], padding=p["padding"], dilation=p["dilation"],
              ceil_mode=p["ceil_mode"])
    y, idx = _pool_call(fastconv.max_pool2d, x, p["layout"], p["kernel"],
                        return_indices=True, **kw)
    np.testing.assert_array_equal(y, y_ref.astype(p["dtype"]))
    np.testing.assert_array_equal(idx, idx_ref)
    gy = rng.standard_normal(y.shape).astype(p["dtype"])
    if p["layout"] == "NCHW":
        gx = fastconv.max_pool2d_backward(gy, idx, x.shape)
    else:
        gx = _nchw(fastconv.max_pool2d_backward(_nhwc(gy), _nhwc(idx), _nhwc(x).shape,
                                                layout="NHWC"))
    want = ref.max_pool2d_backward(gy, idx_ref, x.shape)
    assert ref.rel_error(gx, want) <= ref.tolerance(p["dtype"], "naive")


@FUZZ
@given(pool_problems())
def test_random_valid_avg_pool_matches_reference(p):
    rng = np.random.default_rng(p["seed"])
    x = rng.standard_normal(p["shape"]).astype(p["dtype"])
    stride = p["stride"] or p["kernel"]
    kw = dict(stride=p["stride"], padding=p["padding"], ceil_mode=p["ceil_mode"],
              count_include_pad=p["count_include_pad"])
    y = _pool_call(fastconv.avg_pool2d, x, p["layout"], p["kernel"], **kw)
    want = ref.avg_pool2d(x, p["kernel"], stride, p["padding"], p["ceil_mode"],
                          p["count_include_pad"])
    assert y.shape == want.shape and y.dtype == p["dtype"]
    assert ref.rel_error(y, want) <= ref.tolerance(p["dtype"], "naive")
    gy = rng.standard_normal(y.shape).astype(p["dtype"])
    if p["layout"] == "NCHW":
        gx = fastconv.avg_pool2d_backward(gy, x.shape, p["kernel"], **kw)
    else:
        gx = _nchw(fastconv.avg_pool2d_backward(_nhwc(gy), _nhwc(x).shape, p["kernel"],
                                                layout="NHWC", **kw))
    want_gx = ref.avg_pool2d_backward(gy, x.shape, p["kernel"], stride, p["padding"],
                                      p["ceil_mode"], p["count_include_pad"])
    assert ref.rel_error(gx, want_gx) <= ref.tolerance(p["dtype"], "naive")


@st.composite
def bn_problems(draw):
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    if n * h * w == 1:
        h = 2
    return dict(shape=(n, c, h, w), training=draw(st.booleans()),
                affine=draw(st.booleans()), momentum=draw(st.floats(0.0, 1.0)),
                eps=draw(st.sampled_from([1e-5, 1e-3, 0.1])),
                offset=draw(st.sampled_from([0.0, 3.0, -50.0])),
                layout=draw(st.sampled_from(["NCHW", "NHWC"])),
                dtype=draw(st.sampled_from([np.float32, np.float64])),
                seed=draw(st.integers(0, 2**16)))


@FUZZ
@given(bn_problems())
def test_random_valid_batch_norm_matches_reference(p):
    rng = np.random.default_rng(p["seed"])
    dt, c = p["dtype"], p["shape"][1]
    x = (rng.standard_normal(p["shape"]) + p["offset"]).astype(dt)
    weight = rng.standard_normal(c).astype(dt) if p["affine"] else None
    bias = rng.standard_normal(c).astype(dt) if p["affine"] else None
    rm, rv = rng.standard_normal(c).astype(dt), rng.uniform(0.5, 2, c).astype(dt)
    y_ref, _, _, rm_ref, rv_ref = ref.batch_norm(x, rm, rv, weight, bias, p["training"],
                                                 p["momentum"], p["eps"])
    gy = rng.standard_normal(p["shape"]).astype(dt)
    g_ref = ref.batch_norm_backward(gy, x, weight, p["eps"], p["training"], rm, rv)
    rm_got, rv_got = rm.copy(), rv.copy()
    kw = dict(training=p["training"], momentum=p["momentum"], eps=p["eps"],
              return_stats=True)
    if p["layout"] == "NCHW":
        y, mean, invstd = fastconv.batch_norm(x, rm_got, rv_got, weight, bias, **kw)
        gx, gw, gb = fastconv.batch_norm_backward(gy, x, mean, invstd, weight,
                                                  training=p["training"])
    else:
        y, mean, invstd = fastconv.batch_norm(_nhwc(x), rm_got, rv_got, weight, bias,
                                              layout="NHWC", **kw)
        y = _nchw(y)
        gx, gw, gb = fastconv.batch_norm_backward(_nhwc(gy), _nhwc(x), mean, invstd, weight,
                                                  training=p["training"], layout="NHWC")
        gx = _nchw(gx)
    # float32 normalises an offset of 50 with unit spread: allow for the input's rounding
    tol = 1e-10 if dt == np.float64 else 2e-4
    assert y.dtype == dt and ref.rel_error(y, y_ref) <= tol
    np.testing.assert_allclose(rm_got, rm_ref, rtol=tol, atol=tol * (1 + abs(p["offset"])))
    np.testing.assert_allclose(rv_got, rv_ref, rtol=tol, atol=tol)
    for got, exp in zip((gx, gw, gb), g_ref, strict=True):
        assert ref.rel_error(got, exp) <= (1e-9 if dt == np.float64 else 1e-3)


# ------------------------------------------------------------------ invalid arguments
junk = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 0), st.floats(allow_nan=True),
    st.text(max_size=4), st.tuples(st.integers(-2, 3)),
    st.tuples(st.integers(-2, 3), st.integers(-2, 3), st.integers(-2, 3)),
    st.tuples(st.floats(0, 2), st.floats(0, 2)), st.lists(st.none(), max_size=2),
    st.tuples(st.tuples(st.integers(-2, 2)), st.integers(0, 2)),
)


@st.composite
def bad_calls(draw):
    """A valid call with one argument replaced by junk (or by a malformed array)."""
    call = dict(x=np.ones((1, 2, 5, 5), np.float32), w=np.ones((2, 2, 3, 3), np.float32),
                bias=None, stride=1, padding=0, dilation=1, groups=1, layout="NCHW",
                algo="auto")
    key = draw(st.sampled_from(list(call)))
    if key in ("x", "w", "bias"):
        shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=5))
        dtype = draw(st.sampled_from([np.float32, np.float64, np.int64, np.float16,
                                      np.complex128, np.bool_, object]))
        value = draw(st.one_of(junk, st.just(np.zeros(shape, dtype))))
    else:
        value = draw(junk)
    call[key] = value
    return call


@FUZZ
@given(bad_calls())
def test_random_invalid_arguments_raise_clear_errors(call):
    x, w, b = call.pop("x"), call.pop("w"), call.pop("bias")
    try:
        y = fastconv.conv2d(x, w, b, **call)
    except (ValueError, TypeError) as exc:
        assert str(exc).startswith("conv2d: "), str(exc)
        assert "numba" not in str(exc).lower()
        return
    # Some junk is legitimately valid (e.g. padding=(0, 0), bias of the right shape):
    # then the result must be right.
    kw = {k: call[k] for k in ("stride", "padding", "dilation", "groups")}
    xn = np.asarray(x)
    assert call["layout"] == "NCHW" and xn.ndim == 4
    a = conv_args_from_shapes("ref", xn.shape, np.asarray(w).shape, **kw)
    want = ref.conv2d(xn, w, b, a.stride, a.padding, a.dilation, a.groups)
    assert ref.rel_error(y, want) <= ref.tolerance(y.dtype, "fft")


@pytest.mark.slow
@settings(max_examples=1000, deadline=None)
@given(conv_problems())
def test_random_valid_conv_matches_reference_long(p):
    test_random_valid_conv_matches_reference.hypothesis.inner_test(p)


# ------------------------------------------- invalid arguments of the other ops
# Junk that is never a valid value of the parameter it replaces: every call must raise.
not_positive_pair = st.one_of(
    st.integers(-5, 0), st.floats(0.5, 3.5).filter(lambda v: v != int(v)),
    st.text(min_size=1, max_size=3), st.none(),
    st.tuples(st.integers(1, 3)), st.tuples(st.integers(1, 3), st.integers(1, 3),
                                            st.integers(1, 3)),
    st.tuples(st.integers(1, 3), st.integers(-3, 0)))
bad_layout = st.text(max_size=5).filter(lambda s: s not in ("NCHW", "NHWC"))
bad_input = st.one_of(
    st.sampled_from([np.int32, np.int64, np.complex64, np.bool_, object])
    .map(lambda dt: np.ones((1, 2, 5, 5), dt)),
    st.sampled_from([(5,), (5, 5), (1, 1, 2, 5, 5)]).map(lambda s: np.ones(s, np.float32)),
    st.one_of(st.none(), st.text(max_size=3), st.just([[1.0, 2.0]])))
not_a_flag = st.one_of(st.integers(2, 5), st.text(min_size=1, max_size=3), st.none())


def _pool_call_with(op, key, value):
    call = dict(x=np.ones((1, 2, 5, 5), np.float32), kernel_size=2, stride=None, padding=0,
                layout="NCHW", ceil_mode=False)
    if op == "max_pool2d":
        call["dilation"] = 1
    else:
        call["count_include_pad"] = True
    call[key] = value
    fn = getattr(fastconv, op)
    return lambda: fn(call.pop("x"), call.pop("kernel_size"), **call)


@st.composite
def bad_pool_calls(draw):
    op = draw(st.sampled_from(["max_pool2d", "avg_pool2d"]))
    key = draw(st.sampled_from(["x", "kernel_size", "stride", "padding", "layout",
                                "ceil_mode"] + (["dilation"] if op == "max_pool2d" else
                                                ["count_include_pad"])))
    strategy = {"x": bad_input, "kernel_size": not_positive_pair,
                "stride": not_positive_pair.filter(lambda v: v is not None),
                "dilation": not_positive_pair, "layout": bad_layout,
                "ceil_mode": not_a_flag, "count_include_pad": not_a_flag,
                "padding": st.one_of(st.integers(-3, -1), st.integers(2, 6),  # > k // 2
                                     st.text(min_size=1, max_size=3))}[key]
    return op, key, draw(strategy)


@FUZZ
@given(bad_pool_calls())
def test_random_invalid_pool_arguments_raise_clear_errors(case):
    op, key, value = case
    with pytest.raises((ValueError, TypeError)) as info:
        _pool_call_with(op, key, value)()
    assert str(info.value).startswith(f"{op}: "), str(info.value)


@st.composite
def bad_batch_norm_calls(draw):
    c = 3
    call = dict(x=np.ones((2, c, 3, 3), np.float32), running_mean=np.zeros(c, np.float32),
                running_var=np.ones(c, np.float32), weight=None, bias=None, training=True,
                momentum=0.1, eps=1e-5, layout="NCHW")
    key = draw(st.sampled_from(list(call)))
    wrong_vector = st.one_of(
        st.integers(1, 6).filter(lambda k: k != c).map(lambda k: np.zeros(k, np.float32)),
        st.just(np.zeros((c, 1), np.float32)), st.just(np.zeros(c, np.int64)),
        st.just(np.zeros(c, np.float64)), st.text(max_size=2))
    strategy = {"x": st.one_of(bad_input, st.just(np.ones((1, c, 1, 1), np.float32))),
                "running_mean": wrong_vector, "running_var": wrong_vector,
                "weight": wrong_vector, "bias": wrong_vector,
                "training": not_a_flag,
                "momentum": st.one_of(st.floats(1.01, 10), st.floats(-10, -0.01),
                                      st.text(min_size=1, max_size=2)),
                "eps": st.one_of(st.floats(-1, -1e-9), st.text(min_size=1, max_size=2)),
                "layout": bad_layout}[key]
    call[key] = draw(strategy)
    return call


@FUZZ
@given(bad_batch_norm_calls())
def test_random_invalid_batch_norm_arguments_raise_clear_errors(call):
    x = call.pop("x")
    with pytest.raises((ValueError, TypeError)) as info:
        fastconv.batch_norm(x, call.pop("running_mean"), call.pop("running_var"), **call)
    assert str(info.value).startswith("batch_norm: "), str(info.value)


@FUZZ
@given(st.sampled_from(["grad_y", "x", "w", "stride", "algo"]), st.data())
def test_random_invalid_conv_backward_arguments_raise_clear_errors(key, data):
    call = dict(grad_y=np.ones((1, 2, 3, 3), np.float32), x=np.ones((1, 2, 5, 5), np.float32),
                w=np.ones((2, 2, 3, 3), np.float32), stride=1, algo="auto")
    call[key] = data.draw({
        "grad_y": st.one_of(bad_input, st.sampled_from([(1, 2, 3, 4), (2, 2, 3, 3), (1, 3, 3, 3)])
                            .map(lambda s: np.ones(s, np.float32))),
        "x": bad_input, "w": bad_input, "stride": not_positive_pair,
        "algo": st.text(max_size=6).filter(lambda s: s not in fastconv.ALGORITHMS + ("auto",)),
    }[key])
    with pytest.raises((ValueError, TypeError)) as info:
        fastconv.conv2d_backward(call.pop("grad_y"), call.pop("x"), call.pop("w"), **call)
    assert str(info.value).startswith("conv2d_backward: "), str(info.value)
