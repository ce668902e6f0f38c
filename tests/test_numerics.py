"""Non-finite values and ill-conditioned inputs: FFT never spreads a NaN/Inf, and auto
never returns an FFT result worse than the documented tolerance."""

import numpy as np
import pytest

import fastconv
from fastconv import numerics
from fastconv.algos import registry
from fastconv.costs import Estimate

from . import reference as ref


def prefer_fft():
    """Make "auto" plan FFT whatever the cost model prefers (the registry's test hook)."""
    return registry.replaced("fft", cost=lambda a, p: Estimate(0.0, 0, "preferred"))


def counting_im2col(calls):
    """Count the calls of im2col's forward (the fallback)."""
    real = registry.get("im2col").forward
    return registry.replaced("im2col", forward=lambda *a: calls.append(1) or real(*a))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("algo", fastconv.ALGORITHMS + ("auto",))
def test_non_finite_input_stays_under_its_windows(algo, bad, rng):
    k = 3 if algo == "winograd" else 13    # Winograd: 3x3 only
    x = rng.standard_normal((2, 1, 40, 40))
    x[1, 0, 20, 20] = bad
    w = np.abs(rng.standard_normal((1, 1, k, k))) + 0.1  # positive: no inf - inf
    y = fastconv.conv2d(x, w, padding=k // 2, algo=algo)
    finite = np.isfinite(y)
    assert finite[0].all()
    # outputs whose k x k window covers (20, 20) are non-finite, all others finite
    expect = np.ones((40, 40), bool)
    expect[20 - k // 2:21 + k // 2, 20 - k // 2:21 + k // 2] = False
    assert np.array_equal(finite[1, 0], expect)
    if not np.isnan(bad):
        assert np.all(y[1, 0][~expect] == bad)


@pytest.mark.parametrize("algo", ["fft", "auto"])
def test_backward_with_non_finite_values_stays_local(algo, rng):
    x = rng.standard_normal((1, 1, 30, 30))
    w = rng.standard_normal((1, 1, 11, 11))
    gy = rng.standard_normal((1, 1, 20, 20))
    gy[0, 0, 0, 0] = np.nan
    gx, gw, _ = fastconv.conv2d_backward(gy, x, w, algo=algo)
    assert np.isnan(gx[0, 0, :11, :11]).all() and np.isfinite(gx[0, 0, 11:, :]).all()
    assert np.isnan(gw).all()  # every weight meets the NaN output gradient


def test_auto_never_returns_an_fft_result_outside_the_tolerance(rng):
    """A huge value in rows that no output window reads (stride 4 leaves the last rows
    unread): the direct result ignores it, every FFT transform does not."""
    x = rng.standard_normal((1, 1, 126, 126)).astype(np.float32)
    x[0, 0, -1, 5] = 1e30
    w = rng.standard_normal((1, 1, 31, 31)).astype(np.float32)
    kw = dict(stride=4)
    want = ref.conv2d(x, w, None, (4, 4))
    assert np.isfinite(want).all() and np.abs(want).max() < 1e3
    raw = fastconv.conv2d(x, w, algo="fft", **kw)
    assert ref.rel_error(raw, want) > 1e-3            # plain FFT is ruined
    # make auto start from FFT whatever the planner prefers for this shape
    with prefer_fft():
        got = fastconv.conv2d(x, w, np.ones(1, np.float32), algo="auto", **kw)
    assert ref.rel_error(got - 1, want) <= numerics.FFT_TOLERANCE[np.dtype(np.float32)]


@pytest.mark.parametrize("offset", [1e2, 1e3])
def test_auto_keeps_accurate_fft_results_when_the_bound_is_pessimistic(offset, rng):
    """A large offset and a zero-sum kernel: the a-priori bound fails, the sampled check
    finds the FFT result as accurate as im2col's, and auto keeps it."""
    x = (offset + rng.standard_normal((1, 1, 128, 128))).astype(np.float32)
    k = rng.standard_normal((1, 1, 31, 31))
    w = (k - k.mean()).astype(np.float32)
    want = ref.conv2d(x, w)
    err_im2col = ref.rel_error(fastconv.conv2d(x, w, algo="im2col"), want)
    calls = []
    with prefer_fft(), counting_im2col(calls):
        got = fastconv.conv2d(x, w, algo="auto")
    assert ref.rel_error(got, want) <= max(2 * err_im2col, 1e-5)
    assert calls == []       # auto kept the FFT result


def test_auto_keeps_fft_on_well_conditioned_input(rng):
    x = rng.standard_normal((1, 1, 128, 128)).astype(np.float32)
    w = rng.standard_normal((1, 1, 31, 31)).astype(np.float32)
    calls = []
    with counting_im2col(calls):
        got = fastconv.conv2d(x, w, algo="auto")
    assert calls == []                               # no fallback was needed
    assert ref.rel_error(got, ref.conv2d(x, w)) <= 1e-3


def test_error_bound_covers_measured_fft_errors(rng):
    """The bound (c = 1) stays above the error actually made, over varied inputs."""
    for trial in range(12):
        c, k = int(rng.integers(1, 4)), int(rng.integers(3, 16))
        x = rng.standard_normal((2, c, 48, 40))
        if trial % 3 == 1:
            x *= 10.0 ** rng.uniform(-5, 5, size=x.shape)
        if trial % 3 == 2:
            x += 1e3
        x = x.astype(np.float32)
        w = rng.standard_normal((2, c, k, k)).astype(np.float32)
        y = fastconv.conv2d(x, w, algo="fft")
        err = np.abs(y - ref.conv2d(x, w)).max()
        from fastconv._args import conv_args_from_shapes
        from fastconv.algos import fft

        fh, fw = fft.transform_shape(conv_args_from_shapes("t", x.shape, w.shape))
        assert err <= numerics.fft_error_bound(x, w, fh * fw)


@pytest.mark.parametrize("x_shape,w_shape,axes,strided", [
    ((3, 5, 20, 30), (4, 5, 3, 3), (0, 0), False),
    ((3, 20, 30, 5), (3, 3, 5, 4), (0, 3), False),     # NHWC input, HWIO weight
    ((3, 5, 20, 30), (4, 5, 3, 3), (1, 0), False),
    ((2, 64, 64, 3), (4, 3, 5, 5), (0, 0), True),      # an NCHW view of NHWC data
    ((4, 7, 9), (2, 4, 3), (0, 0), False),             # fewer axes
    ((2, 3, 4, 5, 6), (2, 3, 3, 2, 2), (0, 0), False),  # more axes
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_error_bound_is_the_norms_formula(x_shape, w_shape, axes, strided, dtype, rng):
    """The bound's norms (one compiled pass over a 4-D view) are the formula's:
    eps * log2(P) * max over images of ||x_n|| * max over outputs of ||w_d||, summed in
    float64, on C-contiguous arrays and strided views alike."""
    import math

    x = rng.standard_normal(x_shape).astype(dtype) * 1e3
    w = rng.standard_normal(w_shape).astype(dtype)
    if strided:
        x = x.transpose(0, 3, 1, 2)
    ba, oa = axes

    def norms(a, axis):
        a64 = a.astype(np.float64)
        return np.sqrt((a64 * a64).sum(axis=tuple(i for i in range(a.ndim) if i != axis)))

    want = (float(np.finfo(dtype).eps) * math.log2(4096) * norms(x, ba).max()
            * norms(w, oa).max())
    got = numerics.fft_error_bound(x, w, 4096, batch_axis=ba, out_axis=oa)
    assert got == pytest.approx(want, rel=1e-12)


def test_all_finite():
    assert numerics.all_finite(np.ones(3), None)
    assert not numerics.all_finite(np.ones(3), np.array([1.0, np.inf]))


def test_auto_keeps_the_more_accurate_of_fft_and_im2col(rng):
    """Cancellation: 16 channels of 1e4 plus unit noise under a zero-mean 31x31 kernel.
    The FFT result fails its error check, im2col's float32 direct sums lose even more
    digits; auto keeps the FFT result (no worse than the better of the two)."""
    x = (1e4 + rng.standard_normal((1, 16, 48, 48))).astype(np.float32)
    k = rng.standard_normal((1, 16, 31, 31))
    w = (k - k.mean()).astype(np.float32)
    want = ref.conv2d(x.astype(np.float64), w.astype(np.float64))
    err = {a: ref.rel_error(fastconv.conv2d(x, w, algo=a), want) for a in ("im2col", "fft")}
    assert err["fft"] < err["im2col"] / 2       # the case this test is about
    calls = []
    with prefer_fft(), counting_im2col(calls):
        got = fastconv.conv2d(x, w, algo="auto")
    assert calls == [1]                         # the FFT result was not trusted outright
    assert ref.rel_error(got, want) <= min(err.values())


def test_closer_result_never_prefers_a_non_finite_sample(rng):
    x = rng.standard_normal((1, 2, 9, 9))
    w = rng.standard_normal((3, 2, 3, 3))
    bias = rng.standard_normal(3)
    args = fastconv._args.conv_args_from_shapes("conv2d", x.shape, w.shape)
    y = fastconv.conv2d(x, w, bias, algo="naive")
    bad = y.copy()
    bad[...] = np.nan
    assert numerics.closer_result(x, w, bias, args, y, bad)
    assert not numerics.closer_result(x, w, bias, args, bad, y)
    assert not numerics.closer_result(x, w, bias, args, bad, bad)
    assert numerics.closer_result(x, w, bias, args, y, y + 1e-9)
    nhwc = dict(layout="NHWC")
    xl, wl = x.transpose(0, 2, 3, 1), w.transpose(2, 3, 1, 0)
    args_l = fastconv._args.conv_args_from_shapes("conv2d", xl.shape, wl.shape, **nhwc)
    yl = fastconv.conv2d(xl, wl, bias, algo="naive", **nhwc)
    assert numerics.closer_result(xl, wl, bias, args_l, yl, yl - 1e-9)
