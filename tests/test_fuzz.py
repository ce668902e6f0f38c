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
    groups = draw(st.integers(1, 3))
    cg, dg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dil = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
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
                algo=draw(st.sampled_from(fastconv.ALGORITHMS + ("auto",))),
                bias=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


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
