"""The zero-padded channels-last copy the direct kernels read
(``algos.im2col.padded.padded_channels_last``), against numpy's padding, from either
layout: one channel (one run), few channels first (a channel's row at a time), more
channels first (a pixel's channels at a time), channels last, and strided inputs."""

import numpy as np
import pytest

from fastconv._args import conv_args_from_shapes
from fastconv.algos.im2col import padded


def _want(x_nchw, a):
    """x zero-padded by a.padding, channels last, cut to the rows and columns read."""
    (pt, pb), (pl, pr) = a.padding
    xp = np.pad(x_nchw.transpose(0, 2, 3, 1), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    hp, wp = padded.padded_size(a)
    return xp[:, :hp, :wp, :]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("c", [1, 3, padded.FEW_CHANNELS, padded.FEW_CHANNELS + 1, 16])
@pytest.mark.parametrize("kwargs", [dict(padding=1), dict(padding=(3, 0), stride=2),
                                    dict(padding=((0, 2), (1, 0)), dilation=(1, 2))],
                         ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_padded_copy_matches_numpy(layout, c, kwargs, dtype, rng):
    x = rng.standard_normal((3, c, 7, 9)).astype(dtype)
    xl = x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    w_shape = (4, c, 3, 3) if layout == "NCHW" else (3, 3, c, 4)
    a = conv_args_from_shapes("t", xl.shape, w_shape, layout=layout, dtype=dtype, **kwargs)
    got = padded.padded_channels_last(xl, a, "test.xp")
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, _want(x, a))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("c", [1, 3, 16])
def test_padded_copy_of_strided_input(layout, c, rng):
    """Every other image and column of a larger array (any strides are read)."""
    big = rng.standard_normal((6, c, 7, 18)).astype(np.float32)
    x = big[::2, :, :, ::2]
    xl = x if layout == "NCHW" else big.transpose(0, 2, 3, 1)[::2, :, ::2, :]
    w_shape = (4, c, 3, 3) if layout == "NCHW" else (3, 3, c, 4)
    a = conv_args_from_shapes("t", xl.shape, w_shape, layout=layout, padding=2,
                              dtype=np.float32)
    got = padded.padded_channels_last(xl, a, "test.xp")
    np.testing.assert_array_equal(got, _want(x, a))
