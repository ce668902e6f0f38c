"""conv1d's Winograd (F(4, 3) over the signal's phase sequences): the formula's
reference over kernel sizes, paddings, lengths, layouts and dtypes, "auto"'s choice, the
formula's NaN pattern, its backward and its errors."""

import numpy as np
import pytest

import fastconv
from fastconv._args.conv_nd import conv_nd_args_from_shapes
from fastconv.algos.winograd import line

from . import nd_checks as nd
from . import reference as ref

# (n, c_in, (w,), c_out, (k,), stride, padding, dilation, groups)
CASES = [
    (2, 3, (11,), 4, (3,), 1, 0, 1, 1),
    (1, 2, (5,), 3, (3,), 1, 1, 1, 1),           # fewer outputs than one tile
    (2, 2, (40,), 3, (4,), 1, (0, 3), 1, 1),     # 4 taps: two zero taps added
    (1, 3, (37,), 2, (5,), 1, "same", 1, 1),
    (3, 4, (50,), 5, (9,), 1, 4, 1, 1),          # the audio layer's kernel
    (1, 2, (29,), 2, (11,), 1, (7, 2), 1, 1),    # r = 4: seven sequences
    (2, 1, (9,), 1, (9,), 1, "valid", 1, 1),     # one output
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_matches_reference(case):
    nd.check_forward(fastconv.conv1d, case, "winograd", 1e-12)


@pytest.mark.parametrize("case", CASES[2:5], ids=str)
def test_float32_and_nwc(case):
    x, wt, b, kwargs = nd.nd_arrays(case, np.float32)
    a = nd.record(x, wt, kwargs)
    want = ref.conv_nd(x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64),
                       a.stride, a.padding, a.dilation, a.groups)
    got = fastconv.conv1d(x, wt, b, **kwargs, algo="winograd")
    assert got.dtype == np.float32 and ref.rel_error(got, want) < 1e-5
    nwc = fastconv.conv1d(np.moveaxis(x, 1, 2), np.moveaxis(wt, (0, 2), (2, 0)), b,
                          **kwargs, layout="NWC", algo="winograd")
    np.testing.assert_allclose(np.moveaxis(nwc, 2, 1), got, rtol=1e-5, atol=1e-5)


def test_unbatched_and_no_bias():
    x, wt, _, kwargs = nd.nd_arrays(CASES[4])
    y = fastconv.conv1d(x[1], wt, **kwargs, algo="winograd")
    np.testing.assert_allclose(y, fastconv.conv1d(x, wt, **kwargs, algo="naive")[1],
                               rtol=1e-12, atol=1e-12)


def test_kernel_transform_is_g_times_the_outer_taps():
    wt = np.random.default_rng(0).standard_normal((3, 2, 7))
    a = conv_nd_args_from_shapes("conv1d", (1, 2, 20), wt.shape, rank=1,
                                 dtype=np.float64)
    u = line.kernel_transform(wt, a)                 # (6, r C_in, C_out), r = 3
    padded = np.concatenate([wt, np.zeros((3, 2, 2))], axis=2)
    for b in range(3):
        taps = padded[:, :, b::3]                    # (C_out, C_in, 3): taps b, b+3, b+6
        np.testing.assert_allclose(u[:, 2 * b:2 * b + 2, :],
                                   np.einsum("xa,oca->xco", line.G4, taps), rtol=1e-15)


def test_auto_runs_it_where_worth_it(monkeypatch):
    ran = []
    real = line.forward
    monkeypatch.setattr(line, "forward", lambda *args: ran.append(1) or real(*args))
    x = np.random.default_rng(0).standard_normal((2, 16, 520)).astype(np.float32)
    wt = np.random.default_rng(1).standard_normal((16, 16, 9)).astype(np.float32)
    a = nd.record(x, wt, dict(padding=4))
    assert line.worth_it(a)
    y = fastconv.conv1d(x, wt, padding=4)
    np.testing.assert_allclose(y, fastconv.conv1d(x, wt, padding=4, algo="im2col"),
                               rtol=1e-4, atol=1e-4)
    assert ran == [1]
    fastconv.conv1d(x[:, :, :60], wt, padding=4)      # too little work: not worth it
    fastconv.conv1d(x, wt, padding=4, stride=2)       # does not apply
    assert ran == [1]


@pytest.mark.parametrize("algo", ["winograd", "auto"])
def test_non_finite_input_gives_the_formulas_pattern(algo):
    x = np.random.default_rng(0).standard_normal((2, 16, 520))
    wt = np.random.default_rng(1).standard_normal((16, 16, 9))
    x[1, 3, 100] = np.nan
    x[0, 5, 7] = np.inf
    y = fastconv.conv1d(x, wt, padding=4, algo=algo)
    want = fastconv.conv1d(x, wt, padding=4, algo="naive")
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(want))
    ok = np.isfinite(want)
    np.testing.assert_allclose(y[ok], want[ok], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", [CASES[4], (2, 3, (20,), 2, (3,), 1, (3, 0), 1, 1)],
                         ids=str)
def test_backward_matches_reference(case):
    """grad_x by the reversed kernel's forward (the second case's padding 3 > k - 1
    needs a crop: im2col's instead), grad_w and grad_bias by im2col's."""
    nd.check_backward(fastconv.conv1d_backward, case, "winograd", 1e-10)


def test_auto_backward_runs_the_input_gradient_by_winograd(monkeypatch):
    ran = []
    real = line.input_gradient
    monkeypatch.setattr(line, "input_gradient", lambda *args: ran.append(1) or real(*args))
    rng = np.random.default_rng(0)
    x, wt = rng.standard_normal((2, 16, 520)), rng.standard_normal((16, 16, 9))
    gy = rng.standard_normal((2, 16, 520))
    got = fastconv.conv1d_backward(gy, x, wt, padding=4)
    want = fastconv.conv1d_backward(gy, x, wt, padding=4, algo="naive")
    assert ran == [1]
    for g, r in zip(got, want, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-9)
    gx, gw, gb = fastconv.conv1d_backward(gy, x, wt, padding=4,
                                          needs_input_grad=(True, False, False))
    assert gw is None and gb is None and ran == [1, 1]
    np.testing.assert_allclose(gx, want[0], rtol=1e-10, atol=1e-9)
    gy[1, 2, 30] = np.nan                                   # the formula's NaN pattern
    gx = fastconv.conv1d_backward(gy, x, wt, padding=4)[0]
    np.testing.assert_array_equal(np.isnan(gx), np.isnan(
        fastconv.conv1d_backward(gy, x, wt, padding=4, algo="naive")[0]))


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(dilation=2), r"conv1d: algo='winograd' needs stride 1 and dilation 1"),
    (dict(groups=3), r"conv1d: algo='winograd' needs groups=1 \(use algo='auto'"),
])
def test_errors_name_op_and_rule(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fastconv.conv1d(np.ones((1, 3, 8)), np.ones((3, 3 // kwargs.get("groups", 1), 3)),
                        **kwargs, algo="winograd")


def test_short_kernels_and_half_precision_are_refused():
    with pytest.raises(ValueError, match=r"needs a kernel of at least 3 taps \(got 2\)"):
        fastconv.conv1d(np.ones((1, 2, 8)), np.ones((2, 2, 2)), algo="winograd")
    with pytest.raises(ValueError, match=r"needs float32 or float64 \(got float16\)"):
        fastconv.conv1d(np.ones((1, 2, 8), np.float16), np.ones((2, 2, 3), np.float16),
                        algo="winograd")


def test_autograd_gradients_match_finite_differences():
    from fastconv import Tensor, gradcheck
    from fastconv.nn import functional as F

    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((2, 3, 14)), requires_grad=True)
    w = Tensor(rng.standard_normal((4, 3, 9)), requires_grad=True)
    b = Tensor(rng.standard_normal(4), requires_grad=True)
    assert gradcheck(lambda x_, w_, b_: F.conv1d(x_, w_, b_, padding=4, algo="winograd"),
                     (x, w, b))


def test_conv1d_plan_says_what_auto_runs_and_why():
    p = fastconv.conv1d_plan((2, 16, 520), (16, 16, 9), padding=4)
    assert p.algorithm == "winograd" and "F(4, 3) over the signal's phase" in p.why
    assert "4.5 multiplications per output" in p.why
    nwc = fastconv.conv1d_plan((2, 520, 16), (9, 16, 16), padding=4, layout="NWC")
    assert nwc.algorithm == "winograd"
    small = fastconv.conv1d_plan((2, 16, 60), (16, 16, 9), padding=4)
    assert small.algorithm != "winograd"
    back = fastconv.conv1d_plan((2, 16, 520), (16, 16, 9), padding=4, backward=True)
    assert back.why.startswith("grad_x by winograd")
    with pytest.raises(TypeError, match=r"conv1d_plan: dtype=int64 is not supported"):
        fastconv.conv1d_plan((2, 16, 520), (16, 16, 9), dtype=np.int64)
