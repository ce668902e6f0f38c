"""The NHWC <-> NCHW copies the direct and Winograd algorithms use."""

import numpy as np
import pytest

from fastconv.algos import _nhwc


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 33, 35, 40), (3, 1, 1, 1), (2, 70, 1, 3),
                                   (0, 4, 4, 2), (2, 4, 4, 0)])
def test_round_trip_equals_numpy_transposes(shape, dtype):
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    nchw = _nhwc.to_nchw(x)
    assert nchw.flags.c_contiguous and nchw.dtype == dtype
    assert np.array_equal(nchw, x.transpose(0, 3, 1, 2))
    back = np.full(shape, np.nan, dtype)
    _nhwc.write_nhwc(nchw, back)
    assert np.array_equal(back, x)
    again = np.full(nchw.shape, np.nan, dtype)
    _nhwc.write_nchw(back, again)
    assert np.array_equal(again, nchw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, staged", [((2, 40, 512), True), ((1, 16, 1024), True),
                                           ((2, 15, 1024), False), ((3, 40, 100), False),
                                           ((2, 33, 7), False)])
def test_batched_transposes_both_ways(shape, staged, dtype, monkeypatch):
    """swap_last2 equals numpy's transpose, staged or not as its rule says (rows a
    multiple of STAGED_ROW_BYTES apart, at least STAGED_MIN_ROWS of them), with a
    partial block of rows; and each way forced on the other's shapes."""
    calls = []
    kernel = _nhwc._swap
    monkeypatch.setattr(_nhwc, "_swap", lambda s, d, st: (calls.append(st), kernel(s, d, st)))
    if dtype == np.float64:
        shape = (shape[0], shape[1], shape[2] // 2) if staged else shape
    src = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    want = src.transpose(0, 2, 1)
    dst = np.full(want.shape, np.nan, dtype)
    _nhwc.swap_last2(src, dst)
    assert calls == [staged]
    assert np.array_equal(dst, want)
    other = np.full(want.shape, np.nan, dtype)
    kernel(src, other, not staged)
    assert np.array_equal(other, want)


def test_to_nchw_accepts_a_strided_view():
    x = np.random.default_rng(1).standard_normal((2, 6, 8, 5))[:, ::2, 1::2]
    assert np.array_equal(_nhwc.to_nchw(x), x.transpose(0, 3, 1, 2))


def test_write_nhwc_into_a_non_contiguous_destination():
    src = np.random.default_rng(2).standard_normal((2, 3, 4, 5))
    big = np.zeros((2, 8, 5, 3))
    dst = big[:, ::2]                                   # (2, 4, 5, 3), strided
    _nhwc.write_nhwc(src, dst)
    assert np.array_equal(dst, src.transpose(0, 2, 3, 1))
    assert not big[:, 1::2].any()                       # nothing written in between


def test_write_nchw_into_a_non_contiguous_destination():
    src = np.random.default_rng(2).standard_normal((2, 4, 5, 3))
    big = np.zeros((2, 3, 8, 5))
    dst = big[:, :, ::2]                                # (2, 3, 4, 5), strided
    _nhwc.write_nchw(src, dst)
    assert np.array_equal(dst, src.transpose(0, 3, 1, 2))
    assert not big[:, :, 1::2].any()


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_layout_helpers_copy_only_what_is_not_nchw(layout):
    """nchw_copy / nchw_target / write_back (activations) and oihw_target /
    write_weight_back (weights) pick the copy by the layout record: none for NCHW
    C-contiguous arrays, the blocked transposes for NHWC."""
    from fastconv.layout import LAYOUTS

    dims = LAYOUTS[layout]
    rng = np.random.default_rng(3)
    x = rng.standard_normal(dims.shape(2, 3, 5, 4))
    xn = _nhwc.nchw_copy(x, dims)
    assert xn.flags.c_contiguous and np.array_equal(xn, dims.to_canonical_view(x))
    assert (xn is x) == (layout == "NCHW")
    out = np.empty_like(x)
    y = _nhwc.nchw_target(out, dims)
    assert y.shape == (2, 3, 5, 4) and (y is out) == (layout == "NCHW")
    y[...] = xn
    _nhwc.write_back(y, out, dims)
    assert np.array_equal(out, x)
    w = rng.standard_normal(dims.weight_shape(6, 3, 3, 2))
    gw_out = np.empty_like(w)
    gw = _nhwc.oihw_target(gw_out, dims)
    assert gw.shape == (6, 3, 3, 2) and (gw is gw_out) == (layout == "NCHW")
    gw[...] = dims.weight_to_canonical_view(w)
    _nhwc.write_weight_back(gw, gw_out, dims)
    assert np.array_equal(gw_out, w)
