"""The direct lanes kernel's bands of 16 pixels (``algos.im2col.lanes_bands``) against
the reference, and where they apply."""

import numpy as np
import pytest

import fastconv
from fastconv import _lanes
from fastconv._args import conv_args_from_shapes
from fastconv.algos.im2col import direct_lanes, drivers, lanes_bands
from fastconv.algos.im2col.lanes_plan import lanes_applies

from . import reference as ref
from .conftest import count_calls, from_nhwc, to_nhwc

# (n, c, h, w, d, kernel, dilation), NCHW / OIHW sizes, stride 1, no padding; d for
# float32, half as many for float64 (one block of 16 or 8 lanes, at least 3/4 in use):
# LeNet's second layer, 9 rows in bands of 2 (a last band of 8 pixels: ``_group8``),
# rows of 16 pixels, dilated kernel columns, a kernel row of 8 columns
CASES = [
    (3, 6, 12, 12, 16, 5, 1),
    (2, 6, 12, 12, 16, (4, 5), 1),
    (2, 6, 18, 18, 12, 3, 1),
    (2, 6, 12, 12, 16, 3, 2),
    (2, 3, 9, 15, 14, (2, 8), 1),
]


def _arrays(case, dtype, rng):
    n, c, h, w, d, k, dilation = case
    d = d if dtype == np.float32 else d // 2
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((d, c, kh, kw)).astype(dtype)
    return x, wt, rng.standard_normal(d).astype(dtype), dict(dilation=dilation)


@pytest.mark.skipif(not _lanes.WIDE, reason="bands of 16 pixels need 32 vector registers")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_bands_of_16_pixels_match_the_reference(case, dtype, rng, monkeypatch):
    x, w, b, kwargs = _arrays(case, dtype, rng)
    a = conv_args_from_shapes("t", x.shape, w.shape, dtype=dtype, **kwargs)
    assert lanes_applies(a)
    monkeypatch.setattr(drivers, "lanes_chosen", lanes_applies)
    calls = count_calls(monkeypatch, lanes_bands, "conv_bands")
    for bias in (b, None):
        want = ref.conv2d(x, w, bias, a.stride, a.padding, a.dilation)
        got = fastconv.conv2d(x, w, bias, algo="im2col", **kwargs)
        assert ref.rel_error(got, want) <= ref.tolerance(dtype, "im2col")
    assert len(calls) == 2


@pytest.mark.parametrize("band,blocks,pair_pixels,w_out,step,runs", [
    (2, 1, 8, 8, 1, True),
    (2, 2, 8, 8, 1, False),      # two blocks: pairs of blocks (``_group8x2``)
    (2, 1, 4, 8, 1, False),      # AVX2's tiles: ``_group8``
    (3, 1, 8, 12, 1, False),     # rows of 12 pixels: groups across rows
    (0, 1, 8, 8, 1, False),      # pixels in the padding: row by row
    (2, 1, 8, 8, 2, False),      # a column stride of 2
    (2, 1, 8, 8, 6, False),      # channels last: every 6th value
])
def test_bands_apply_to_one_block_on_rows_of_whole_groups(band, blocks, pair_pixels, w_out,
                                                          step, runs):
    assert lanes_bands.applies(band, blocks, pair_pixels, w_out, step) is runs


def test_lenets_second_layer_runs_the_bands(rng, monkeypatch):
    """LeNet-5's 6 -> 16 5x5 layer at 12x12 (float32: one block of 16 lanes) in NCHW
    runs the bands where the host has 32 vector registers, the general loop elsewhere
    and in NHWC."""
    x = rng.standard_normal((4, 6, 12, 12)).astype(np.float32)
    w = rng.standard_normal((16, 6, 5, 5)).astype(np.float32)
    monkeypatch.setattr(drivers, "lanes_chosen", lanes_applies)
    bands = count_calls(monkeypatch, lanes_bands, "conv_bands")
    rows = count_calls(monkeypatch, direct_lanes, "_conv_rows")
    y = fastconv.conv2d(x, w, algo="im2col")
    assert ref.rel_error(y, ref.conv2d(x, w)) <= ref.tolerance(np.float32, "im2col")
    assert (len(bands), len(rows)) == ((1, 0) if _lanes.WIDE else (0, 1))
    y = fastconv.conv2d(*to_nhwc(x, w), layout="NHWC", algo="im2col")
    assert ref.rel_error(from_nhwc(y), ref.conv2d(x, w)) <= ref.tolerance(np.float32,
                                                                          "im2col")
    assert (len(bands), len(rows)) == ((1, 1) if _lanes.WIDE else (0, 2))


@pytest.mark.skipif(not _lanes.WIDE, reason="bands of 16 pixels need 32 vector registers")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hw", [12, 20])
def test_one_channel_nhwc_layers_run_the_bands_into_channels_last_outputs(hw, dtype, rng,
                                                                          monkeypatch):
    """One NHWC input channel: a row's pixels are adjacent values as in NCHW, and the
    output (channels last) is written a pixel's vector at a time."""
    d = 16 if dtype == np.float32 else 8
    x = rng.standard_normal((2, 1, hw, hw)).astype(dtype)
    w = rng.standard_normal((d, 1, 5, 5)).astype(dtype)
    monkeypatch.setattr(drivers, "lanes_chosen", lanes_applies)
    calls = count_calls(monkeypatch, lanes_bands, "conv_bands")
    got = fastconv.conv2d(*to_nhwc(x, w), layout="NHWC", algo="im2col")
    assert ref.rel_error(from_nhwc(got), ref.conv2d(x, w)) <= ref.tolerance(dtype, "im2col")
    assert len(calls) == 1
