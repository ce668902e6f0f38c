"""im2col's direct NHWC kernel for small NHWC layers (``algos.im2col.nhwc_direct``)
against the reference, torch and finite differences, and where it applies."""

import numpy as np
import pytest

import fastconv
from fastconv import Tensor, _lanes, gradcheck
from fastconv._args import conv_args_from_shapes
from fastconv.algos.im2col import drivers, nhwc_direct
from fastconv.algos.im2col.nhwc_direct import nhwc_direct_applies, nhwc_direct_chosen
from fastconv.nn import functional as F

from . import reference as ref
from .conftest import count_calls, from_nhwc, to_nhwc

# (n, c, h, w, d, kernel, stride, padding, dilation), NCHW / OIHW sizes: a partial
# group of pixels, output channels short of a block, padding on every side (pixels run
# one at a time), strides, rectangular kernels, asymmetric padding, column dilation
# (runs of C taps), two blocks of output channels, output pixels wholly in the padding
CASES = [
    (4, 6, 8, 8, 16, 5, 1, 0, 1),                         # LeNet's second layer, smaller
    (5, 3, 9, 11, 13, 3, 1, 1, 1),
    (4, 4, 10, 13, 16, (3, 2), 2, ((2, 0), (1, 1)), 1),
    (4, 8, 9, 12, 32, 3, 1, 2, 2),
    (4, 9, 7, 20, 14, 3, (1, 2), 1, (2, 1)),
    (4, 8, 5, 6, 16, 3, 2, 3, 1),     # padding beyond the kernel: pixels of bias alone
]


def _problem(case, dtype, rng):
    n, c, h, wd, d, k, stride, padding, dilation = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal((n, c, h, wd)).astype(dtype)
    w = rng.standard_normal((d, c, kh, kw)).astype(dtype)
    b = rng.standard_normal(d).astype(dtype)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation)
    return x, w, b, kwargs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_nhwc_direct_kernel_matches_the_reference(case, dtype, rng, monkeypatch):
    x, w, b, kwargs = _problem(case, dtype, rng)
    xl, wl = to_nhwc(x, w)
    a = conv_args_from_shapes("t", xl.shape, wl.shape, layout="NHWC", dtype=dtype, **kwargs)
    assert nhwc_direct_applies(a)
    # the kernel where it applies (the driver also weighs the image-last kernel)
    monkeypatch.setattr(drivers, "nhwc_direct_chosen", nhwc_direct_applies)
    canon = conv_args_from_shapes("t", x.shape, w.shape, dtype=dtype, **kwargs)
    calls = count_calls(monkeypatch, drivers, "forward_nhwc_direct")
    for bias in (b, None):
        want = ref.conv2d(x, w, bias, canon.stride, canon.padding, canon.dilation)
        got = fastconv.conv2d(xl, wl, bias, layout="NHWC", algo="im2col", **kwargs)
        assert got.dtype == dtype and got.flags.c_contiguous
        assert ref.rel_error(from_nhwc(got), want) <= ref.tolerance(dtype, "im2col")
    assert len(calls) == 2


def test_nhwc_direct_kernel_reads_strided_input_and_writes_strided_out(rng):
    x, w, b, kwargs = _problem(CASES[1], np.float32, rng)
    xl, wl = to_nhwc(x, w)
    xs = np.asfortranarray(xl)            # not C-contiguous, read-only
    xs.flags.writeable = False
    a = conv_args_from_shapes("t", xl.shape, wl.shape, layout="NHWC", dtype=np.float32,
                              **kwargs)
    out = np.full((5, 13, 9, 11), np.nan, np.float32).transpose(0, 2, 3, 1)  # strided
    drivers.forward(xs, wl, a, out, b)
    want = ref.conv2d(x, w, b, (1, 1), ((1, 1), (1, 1)))
    assert ref.rel_error(from_nhwc(out), want) <= ref.tolerance(np.float32, "im2col")


def test_nhwc_direct_kernel_keeps_the_formulas_nan_pattern(rng, monkeypatch):
    x = rng.standard_normal((4, 7, 7, 3))
    w = rng.standard_normal((3, 3, 3, 8))
    x[1, 3, 4, 0] = np.nan
    assert nhwc_direct_applies(conv_args_from_shapes("t", x.shape, w.shape, padding=1,
                                                     layout="NHWC", dtype=x.dtype))
    monkeypatch.setattr(drivers, "nhwc_direct_chosen", nhwc_direct_applies)
    calls = count_calls(monkeypatch, drivers, "forward_nhwc_direct")
    got = fastconv.conv2d(x, w, padding=1, layout="NHWC", algo="im2col")
    assert np.isnan(got).sum() == 8 * 9                       # 8 channels x 3x3 pixels
    assert np.isnan(got[1, 2:5, 3:6]).all() and calls == [1]


@pytest.mark.parametrize("x_shape,w_shape,kwargs", [
    ((8, 6, 8, 8), (16, 6, 5, 5), {}),                        # NCHW
    ((8, 8, 8, 4), (3, 3, 2, 16), dict(groups=2)),
    ((8, 8, 8, 16), (1, 1, 16, 16), {}),                      # pointwise
    ((3, 8, 8, 6), (5, 5, 6, 16), {}),                        # too few images
    ((8, 8, 8, 6), (5, 5, 6, 80), {}),                        # too many output channels
    ((8, 8, 8, 6), (5, 5, 6, 17), {}),                        # lanes left idle
    ((8, 28, 28, 1), (5, 5, 1, 16), {}),                      # runs of 5 taps
    ((8, 8, 8, 4), (3, 3, 4, 16), dict(dilation=(1, 2))),     # runs of C = 4 taps
    ((8, 8, 8, 128), (3, 3, 128, 16), {}),                    # too many taps
])
def test_nhwc_direct_kernel_does_not_apply(x_shape, w_shape, kwargs):
    layout = "NCHW" if len(kwargs) == 0 and w_shape == (16, 6, 5, 5) else "NHWC"
    assert not nhwc_direct_applies(conv_args_from_shapes("t", x_shape, w_shape,
                                                         layout=layout, **kwargs))


def test_auto_plans_the_nhwc_direct_kernel_for_lenets_second_layer():
    why = fastconv.plan((64, 12, 12, 6), (5, 5, 6, 16), layout="NHWC").why
    assert why.startswith("im2col:") and "direct NHWC kernel" in why, why
    # LeNet's first layer (6 of 16 lanes, runs of 5 taps) keeps the image-last kernel
    why = fastconv.plan((64, 28, 28, 1), (5, 5, 1, 6), layout="NHWC").why
    assert "direct image-last kernel" in why, why


@pytest.mark.parametrize("x_shape,w_shape,padding,chosen", [
    ((64, 12, 12, 6), (5, 5, 6, 16), 0, True),        # LeNet's second layer
    ((64, 14, 14, 6), (5, 5, 6, 16), 2, False),       # 4 of 14 pixels in the padding
    ((64, 16, 16, 16), (3, 3, 16, 32), 1, True),      # the image-last kernel does not apply
])
def test_the_driver_weighs_the_two_direct_kernels(x_shape, w_shape, padding, chosen,
                                                  monkeypatch):
    a = conv_args_from_shapes("t", x_shape, w_shape, padding=padding, layout="NHWC")
    assert nhwc_direct_applies(a)
    if _lanes.LANE_BYTES == 64:           # the measured choices (AVX-512)
        assert nhwc_direct_chosen(a) == chosen
    # the choice follows the model times; the plan names the kernel that runs
    try:
        for gmacs, want in ((1e-3, not nhwc_direct.direct_forward_applies(a)), (1e6, True)):
            monkeypatch.setattr(nhwc_direct, "NHWC_DIRECT_GMACS", gmacs)
            monkeypatch.setattr(nhwc_direct, "NHWC_DIRECT_GMACS_LARGE", gmacs)
            nhwc_direct_chosen.cache_clear()
            assert nhwc_direct_chosen(a) == want
        fastconv.autotune.clear_cache()
        why = fastconv.plan(x_shape, w_shape, padding=padding, layout="NHWC").why
    finally:               # no choice nor plan of the patched rate kept
        nhwc_direct_chosen.cache_clear()
        fastconv.autotune.clear_cache()
    assert "direct NHWC kernel" in why, why


def test_nhwc_direct_kernel_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x, w, b, kwargs = _problem(CASES[4], np.float32, rng)     # strides (1, 2), dilation (2, 1)
    want = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                      torch.from_numpy(b), **kwargs).numpy()
    xl, wl = to_nhwc(x, w)
    got = fastconv.conv2d(xl, wl, b, layout="NHWC", algo="im2col", **kwargs)
    np.testing.assert_allclose(from_nhwc(got), want, rtol=1e-4, atol=1e-4)


def test_gradients_through_the_nhwc_direct_kernel_match_finite_differences(rng):
    x = Tensor(rng.standard_normal((4, 5, 6, 3)), requires_grad=True)
    w = Tensor(rng.standard_normal((3, 3, 3, 12)), requires_grad=True)
    b = Tensor(rng.standard_normal(12), requires_grad=True)
    assert nhwc_direct_applies(conv_args_from_shapes("t", x.data.shape, w.data.shape,
                                                     padding=1, layout="NHWC",
                                                     dtype=np.float64))
    assert gradcheck(lambda x, w, b: (F.conv2d(x, w, b, padding=1, layout="NHWC",
                                               algo="im2col") ** 2).sum(), [x, w, b])
