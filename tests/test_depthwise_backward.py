"""The direct algorithm's depthwise backward (stride 1, one output channel per input
channel): against the explicit reference over paddings, dilations and kernel sizes, both
layouts and dtypes; finite differences; the layers it leaves to the general loops."""

import numpy as np
import pytest

import fastconv
from fastconv._args import conv_args_from_shapes
from fastconv.algos import depthwise_grad, naive

from . import reference as ref
from .conftest import count_calls, to_nhwc
from .test_conv_backward import _backward, _explicit, _problem

# (n, c, h, w, d, kh, kw, stride, padding, dilation, groups)
DEPTHWISE = [
    (2, 3, 6, 7, 3, 3, 3, 1, 1, 1, 3),
    (1, 4, 7, 6, 4, 3, 3, 1, 0, 1, 4),
    (2, 2, 8, 9, 2, 3, 3, 1, 2, 2, 2),                   # dilated
    (1, 3, 7, 8, 3, 5, 3, 1, ((4, 0), (1, 2)), 1, 3),    # asymmetric, padding = reach
    (1, 2, 5, 5, 2, 1, 3, 1, ((0, 0), (2, 1)), (1, 2), 2),
    (2, 1, 6, 6, 1, 3, 3, 1, 1, 1, 1),                   # one channel, groups 1
]
# depthwise layers the general loops keep: stride 2, channel multiplier 2, padding beyond
# the kernel's reach
OTHERS = [
    (2, 3, 7, 7, 3, 3, 3, 2, 1, 1, 3),
    (1, 2, 6, 6, 4, 3, 3, 1, 1, 1, 2),
    (1, 2, 4, 4, 2, 3, 3, 1, 3, 1, 2),
]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", DEPTHWISE + OTHERS, ids=str)
def test_depthwise_backward_matches_reference(case, dtype, layout, monkeypatch):
    x, w, gy, kwargs, a = _problem(case, dtype)
    calls = count_calls(monkeypatch, naive, "backward_depthwise")
    want = _explicit(x, w, gy, a)
    got = _backward(gy, x, w, kwargs, layout, "naive")
    errors = [ref.rel_error(g, wnt) for g, wnt in zip(got, want, strict=True)]
    assert all(g.dtype == dtype and g.shape == wnt.shape
               for g, wnt in zip(got, want, strict=True))
    assert max(errors) <= ref.tolerance(dtype, "naive"), errors
    # the path runs exactly where it applies (NHWC has its own loops, except for one
    # channel in and out: the same memory as NCHW, run as it)
    one_channel = case[1] == case[4] == 1
    assert len(calls) == (case in DEPTHWISE and (layout == "NCHW" or one_channel))


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, True)])
def test_depthwise_backward_one_gradient(needs):
    x, w, gy, kwargs, a = _problem(DEPTHWISE[2], np.float64)
    got = fastconv.conv2d_backward(gy, x, w, **kwargs, algo="naive", needs_input_grad=needs)
    for g, wnt, k in zip(got, _explicit(x, w, gy, a), needs, strict=True):
        assert (g is None) == (not k)
        assert g is None or ref.rel_error(g, wnt) <= 1e-10


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_depthwise_backward_gradcheck(layout):
    """Finite differences in float64 through the autograd layer (fastconv.gradcheck)."""
    from fastconv import Tensor, gradcheck
    from fastconv.nn import functional as F

    x, w, _, kwargs, _ = _problem((1, 2, 5, 4, 2, 3, 3, 1, ((2, 1), (0, 2)), 1, 2),
                                  np.float64)
    if layout == "NHWC":
        x, w = to_nhwc(x, w)
    inputs = [Tensor(v, requires_grad=True) for v in (x, w)]
    assert gradcheck(lambda x, w: F.conv2d(x, w, **kwargs, layout=layout, algo="naive"),
                     inputs)


@pytest.mark.parametrize("case", OTHERS, ids=str)
def test_applies_only_where_grad_x_is_a_flipped_depthwise_forward(case):
    n, c, h, w, d, kh, kw, stride, padding, dilation, groups = case
    a = conv_args_from_shapes("t", (n, c, h, w), (d, c // groups, kh, kw), stride, padding,
                              dilation, groups)
    assert not depthwise_grad.applies(a)


def test_depthwise_backward_plan_prices_the_kernels():
    p = fastconv.plan((16, 128, 56, 56), (128, 1, 3, 3), padding=1, groups=128,
                      backward=True)
    assert p.algorithm == "naive" and "depthwise kernels: grad_x as the forward" in p.why
    assert p.estimates["naive"] < p.estimates["winograd"] / 2


@pytest.mark.parametrize("where", ["x", "w", "gy"])
def test_depthwise_backward_non_finite_pattern_is_the_formulas(where, monkeypatch):
    """NaN and Inf reach the gradients the formula's loops reach, no more."""
    from fastconv.algos import naive

    x, w, gy, kwargs, _ = _problem((2, 2, 6, 6, 2, 3, 3, 1, 1, 1, 2), np.float64)
    arrays = dict(x=x, w=w, gy=gy)
    arrays[where][0, 0, 0, 0] = np.nan
    arrays[where][-1, -1, -1, -1] = np.inf
    got = fastconv.conv2d_backward(gy, x, w, **kwargs, algo="naive")
    monkeypatch.setattr(naive, "depthwise_grad_applies", lambda args: False)
    want = fastconv.conv2d_backward(gy, x, w, **kwargs, algo="naive")
    for g, wnt in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(wnt))
        np.testing.assert_array_equal(np.isinf(g), np.isinf(wnt))
    assert not all(np.isfinite(g).all() for g in want)     # the case is not trivial
