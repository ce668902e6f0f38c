"""fastconv._channel_sums: per-channel float64 sums of channels-last and channels-first
arrays, and the bias gradients that use them."""

import numpy as np
import pytest

import fastconv
from fastconv import _channel_sums
from fastconv._channel_sums import channel_sums_first, channel_sums_last


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 5, 7, 6), (9, 40, 47, 3), (70000, 1), (2, 300, 65),
                                   (7, 33, 35, 5), (64, 24, 24, 6)])
def test_channel_sums_match_float64_sums(shape, dtype, rng):
    """Small arrays by numpy; larger ones in runs of lcm(C, lanes) elements (several
    blocks of rows), the last pixels short of a run (7 x 33 x 35 x 5: 5 of them) by
    numpy."""
    a = rng.standard_normal(shape).astype(dtype) + 3.0
    want = a.astype(np.float64).reshape(-1, shape[-1]).sum(axis=0)
    got = channel_sums_last(a)
    assert got.dtype == np.float64 and got.shape == (shape[-1],)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)


def test_channel_sums_of_strided_and_large_arrays(rng):
    a = rng.standard_normal((8, 40, 40, 12)).astype(np.float32)
    assert a.size >= _channel_sums.MIN_SIZE
    strided = a[:, ::2]                                   # numpy's sum, same result
    np.testing.assert_allclose(channel_sums_last(strided),
                               strided.astype(np.float64).sum(axis=(0, 1, 2)), rtol=1e-12)
    a[3, 7, 9, 4] = np.nan
    assert np.isnan(channel_sums_last(a)[4]) and not np.isnan(channel_sums_last(a)[3])


@pytest.mark.parametrize("transposed", [False, True])
def test_nhwc_bias_gradient_matches_nchw(transposed, rng):
    x = rng.standard_normal((16, 3, 20, 20)).astype(np.float32)
    if transposed:      # conv_transpose2d: (C_in, C_out, KH, KW) weights
        w = rng.standard_normal((3, 8, 3, 3)).astype(np.float32)
        op, back = fastconv.conv_transpose2d, fastconv.conv_transpose2d_backward
        w_nhwc = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
    else:
        w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
        op, back = fastconv.conv2d, fastconv.conv2d_backward
        w_nhwc = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
    y = op(x, w, padding=1)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    gy_nhwc = np.ascontiguousarray(gy.transpose(0, 2, 3, 1))
    assert gy_nhwc.size >= _channel_sums.MIN_SIZE          # the kernel's path
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    *_, gb = back(gy, x, w, padding=1)
    *_, gb_nhwc = back(gy_nhwc, x_nhwc, w_nhwc, padding=1, layout="NHWC")
    np.testing.assert_allclose(gb_nhwc, gb, rtol=1e-6)
    np.testing.assert_allclose(gb, gy.astype(np.float64).sum(axis=(0, 2, 3)), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (64, 6, 28, 28), (9, 16, 10, 10),
                                   (5, 7, 23, 31), (4, 3, 8, 2, 33), (20000, 1, 1)])
def test_channel_sums_first_match_float64_sums(shape, dtype, rng):
    """Planes of a whole number of registers, planes with a few elements past the last
    register (23 x 31, 10 x 10), a 3-D volume per channel, and numpy's small-array
    path; NaN stays in its channel."""
    a = rng.standard_normal(shape).astype(dtype) + 3.0
    want = a.astype(np.float64).sum(axis=tuple(k for k in range(a.ndim) if k != 1))
    got = channel_sums_first(a)
    assert got.dtype == np.float64 and got.shape == (shape[1],)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)
    if shape[1] > 1:
        a.reshape(shape[0], shape[1], -1)[-1, 1, -1] = np.nan
        sums = channel_sums_first(a)
        assert np.isnan(sums[1]) and not np.isnan(sums[0])


def test_channel_sums_first_of_strided_arrays(rng):
    a = rng.standard_normal((8, 6, 40, 40)).astype(np.float32)
    strided = a[:, :, ::2]                                 # numpy's sum, same result
    np.testing.assert_allclose(channel_sums_first(strided),
                               strided.astype(np.float64).sum(axis=(0, 2, 3)), rtol=1e-12)


def test_channel_sums_first_of_an_empty_batch():
    assert channel_sums_first(np.zeros((0, 3, 4, 4), np.float32)).tolist() == [0.0] * 3
