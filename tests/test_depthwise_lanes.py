"""The depthwise NHWC forward in SIMD registers (``algos.depthwise_lanes``) against the
reference, and where it applies."""

import numpy as np
import pytest

import fastconv
from fastconv import _lanes, _pool
from fastconv._args import conv_args_from_shapes
from fastconv.algos import depthwise_lanes

from . import reference as ref
from .conftest import count_calls, from_nhwc, to_nhwc

# (n, c, h, w, kernel, stride, padding, dilation), NCHW sizes, one output channel per
# input channel. Channels a whole number of blocks and not (the last block overlaps),
# rows with several groups of 8 pixels and a last group overlapping the one before,
# rows of fewer than 8 interior pixels (every pixel one at a time), padding on every
# side, strides, dilations, a rectangular kernel and asymmetric padding, more rows
# than one task's band, padding beyond the kernel (pixels of bias alone), and a kernel 3
# columns wide at column stride 1 (inputs shared by neighbouring pixels) with dilated rows.
CASES = [
    (2, 32, 6, 19, 3, 1, 1, 1),
    (3, 37, 11, 10, 5, 1, 2, 2),
    (2, 20, 9, 13, 3, 2, 1, 1),
    (2, 17, 5, 6, 3, 1, 1, 1),
    (1, 24, 13, 21, (3, 2), (2, 1), ((2, 0), (1, 1)), (1, 2)),
    (1, 16, 20, 12, 3, 1, 1, 1),
    (2, 16, 5, 6, 3, 2, 3, 1),
    (1, 16, 11, 12, (2, 3), 1, ((1, 0), (0, 2)), (2, 1)),
]


def _problem(case, dtype, rng):
    n, c, h, wd, k, stride, padding, dilation = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal((n, c, h, wd)).astype(dtype)
    w = rng.standard_normal((c, 1, kh, kw)).astype(dtype)
    b = rng.standard_normal(c).astype(dtype)
    return x, w, b, dict(stride=stride, padding=padding, dilation=dilation, groups=c)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_depthwise_lanes_kernel_matches_the_reference(case, dtype, rng, monkeypatch):
    x, w, b, kwargs = _problem(case, dtype, rng)
    xl, wl = to_nhwc(x, w)
    a = conv_args_from_shapes("t", xl.shape, wl.shape, layout="NHWC", dtype=dtype, **kwargs)
    assert depthwise_lanes.nhwc_applies(a)
    canon = conv_args_from_shapes("t", x.shape, w.shape, dtype=dtype, **kwargs)
    calls = count_calls(monkeypatch, depthwise_lanes, "_depthwise_rows")
    for bias in (b, None):
        want = ref.conv2d(x, w, bias, canon.stride, canon.padding, canon.dilation, canon.groups)
        got = fastconv.conv2d(xl, wl, bias, layout="NHWC", algo="naive", **kwargs)
        assert got.dtype == dtype and got.flags.c_contiguous
        assert ref.rel_error(from_nhwc(got), want) <= ref.tolerance(dtype, "naive")
    assert len(calls) == 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_streamed_stores_leave_the_result_alone(case, dtype, rng, monkeypatch):
    """Outputs streamed past the caches (``_lanes.store_stream``: big outputs of whole
    blocks of channels on a vector boundary; here any size, every output from the
    aligning pool) are the reference still; channels short of a block are not
    streamed (the last block overlaps the one before)."""
    monkeypatch.setattr(_lanes, "STREAM_BYTES", 0)
    monkeypatch.setattr(_pool, "MIN_BYTES", 0)
    streamed = []
    real = depthwise_lanes._depthwise_rows
    monkeypatch.setattr(depthwise_lanes, "_depthwise_rows",
                        lambda *a: streamed.append(a[-1]) or real(*a))
    x, w, b, kwargs = _problem(case, dtype, rng)
    xl, wl = to_nhwc(x, w)
    canon = conv_args_from_shapes("t", x.shape, w.shape, dtype=dtype, **kwargs)
    want = ref.conv2d(x, w, b, canon.stride, canon.padding, canon.dilation, canon.groups)
    got = fastconv.conv2d(xl, wl, b, layout="NHWC", algo="naive", **kwargs)
    assert streamed == [int(x.shape[1] % (_lanes.per_register(np.dtype(dtype).itemsize)) == 0)]
    assert ref.rel_error(from_nhwc(got), want) <= ref.tolerance(dtype, "naive")


def test_depthwise_lanes_kernel_reads_strided_input_and_writes_strided_out(rng):
    x, w, b, kwargs = _problem((2, 32, 7, 12, 3, 1, 1, 1), np.float32, rng)
    xl, wl = to_nhwc(x, w)
    wide = np.zeros((2, 7, 12, 40), np.float32)
    wide[..., 4:36] = xl
    want = fastconv.conv2d(xl, wl, b, layout="NHWC", algo="naive", **kwargs)
    got = fastconv.conv2d(wide[..., 4:36], wl, b, layout="NHWC", algo="naive", **kwargs)
    np.testing.assert_array_equal(got, want)
    a = conv_args_from_shapes("t", xl.shape, wl.shape, layout="NHWC", dtype=np.float32,
                              **kwargs)
    out = np.full((2, 7, 12, 64), np.nan, np.float32)
    depthwise_lanes.forward_nhwc(xl, wl, a, out[..., ::2], b)
    np.testing.assert_array_equal(out[..., ::2], want)
    assert np.isnan(out[..., 1::2]).all()


LANES = _lanes.per_register(4)       # float32 channels in one register


@pytest.mark.parametrize("c, groups, applies", [
    (4 * LANES, 4 * LANES, True),
    (LANES - 1, LANES - 1, False),        # fewer channels than one register holds
    (4 * LANES, 2 * LANES, False),        # two channels per group
])
def test_depthwise_lanes_kernel_applies_to_depthwise_layers_of_a_register_or_more(
        c, groups, applies):
    a = conv_args_from_shapes("t", (2, 8, 8, c), (3, 3, c // groups, c), layout="NHWC",
                              dtype=np.float32, padding=1, groups=groups)
    assert depthwise_lanes.nhwc_applies(a) is applies


# NCHW (n, c, multiplier, h, w, kernel, padding, dilation), stride 1: rows of one
# register and of several (the last overlapping), a channel multiplier, dilation,
# a rectangular kernel with asymmetric padding, padding beyond the kernel
NCHW_CASES = [
    (2, 3, 1, 9, 20, 3, 1, 1),
    (2, 2, 2, 7, 37, 5, 2, 2),
    (1, 4, 1, 6, 16, (3, 2), ((2, 0), (1, 1)), (1, 2)),
    (2, 3, 1, 5, 18, 3, 3, 1),
]


def _nchw_problem(case, dtype, rng):
    n, c, mult, h, wd, k, padding, dilation = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal((n, c, h, wd)).astype(dtype)
    w = rng.standard_normal((c * mult, 1, kh, kw)).astype(dtype)
    b = rng.standard_normal(c * mult).astype(dtype)
    return x, w, b, dict(padding=padding, dilation=dilation, groups=c)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", NCHW_CASES, ids=str)
def test_depthwise_nchw_planes_match_the_reference(case, dtype, rng, monkeypatch):
    x, w, b, kwargs = _nchw_problem(case, dtype, rng)
    canon = conv_args_from_shapes("t", x.shape, w.shape, dtype=dtype, **kwargs)
    calls = count_calls(monkeypatch, depthwise_lanes, "_depthwise_planes")
    for bias in (b, None):
        want = ref.conv2d(x, w, bias, canon.stride, canon.padding, canon.dilation, canon.groups)
        got = fastconv.conv2d(x, w, bias, algo="naive", **kwargs)
        assert got.dtype == dtype
        assert ref.rel_error(got, want) <= ref.tolerance(dtype, "naive")
    assert len(calls) == 2


@pytest.mark.parametrize("case", [NCHW_CASES[0], NCHW_CASES[2]], ids=str)
def test_depthwise_nchw_input_gradient_runs_the_planes(case, rng, monkeypatch):
    x, w, b, kwargs = _nchw_problem(case, np.float64, rng)
    canon = conv_args_from_shapes("t", x.shape, w.shape, dtype=np.float64, **kwargs)
    gy = rng.standard_normal(fastconv.conv2d(x, w, **kwargs).shape)
    calls = count_calls(monkeypatch, depthwise_lanes, "_depthwise_planes")
    gx, gw, _ = fastconv.conv2d_backward(gy, x, w, algo="naive", **kwargs)
    want_x, want_w, _ = ref.conv2d_backward(gy, x, w, canon.stride, canon.padding,
                                            canon.dilation, canon.groups)
    assert ref.rel_error(gx, want_x) <= ref.tolerance(np.float64, "naive")
    assert ref.rel_error(gw, want_w) <= ref.tolerance(np.float64, "naive")
    assert len(calls) == 1


@pytest.mark.parametrize("shape, stride", [((2, 4, 9, 7), 1), ((2, 4, 20, 40), 2)])
def test_depthwise_nchw_declines_short_rows_and_strides(shape, stride, rng, monkeypatch):
    """Rows shorter than a register (7 values: a 256-bit register holds 8 float32), and
    strides, run the direct algorithm's loops."""
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    calls = count_calls(monkeypatch, depthwise_lanes, "_depthwise_planes")
    got = fastconv.conv2d(x, w, stride=stride, padding=1, groups=4, algo="naive")
    want = ref.conv2d(x, w, None, (stride, stride), ((1, 1), (1, 1)), (1, 1), 4)
    assert ref.rel_error(got, want) <= ref.tolerance(np.float32, "naive")
    assert not calls
