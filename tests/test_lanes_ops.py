"""The vector operations of ``fastconv._lanes`` that batch norm's kernels build on:
storing float64 vectors into float32 arrays, the value such a store keeps, a ReLU that
keeps NaN."""

import numpy as np
import pytest
from numba import njit

from fastconv import _lanes

N64 = _lanes.per_register(8)


@njit
def _store_and_keep(src, out, kept):
    v = _lanes.load_f64(src, 0)
    _lanes.store_f64(out, 0, v)
    _lanes.store_f64(kept, 0, _lanes.as_stored(out, v))


@njit
def _relu_of(src, out):
    _lanes.store_f64(out, 0, _lanes.relu(_lanes.load_f64(src, 0)))


@njit
def _scalar_kept(like, v):
    return _lanes.as_stored(like, v)


# float64 values around float32's smallest step above 0 (2**-149): below half of it
# rounds to 0, exactly half to 0 (ties to even), above half to 2**-149
TINY = [2.0 ** -151, 2.0 ** -150, 2.0 ** -150 * (1 + 2.0 ** -40), 1e-40, -1e-46, 1.0 / 3]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_store_f64_rounds_once_and_as_stored_is_what_it_keeps(dtype):
    src = np.resize(np.array(TINY), N64)
    out, kept = np.full(N64, 7, dtype), np.empty(N64)
    _store_and_keep(src, out, kept)
    np.testing.assert_array_equal(out, src.astype(dtype))
    np.testing.assert_array_equal(kept, src.astype(dtype).astype(np.float64))
    if dtype == np.float32:
        assert list(kept[:3] > 0) == [False, False, True]
    for v, want in zip(src, kept, strict=True):
        assert _scalar_kept(out, v) == want


def test_relu_keeps_nan_and_zeroes_the_rest_not_positive():
    src = np.resize(np.array([np.nan, -1.0, -0.0, 0.0, 2.5, -np.inf, np.inf, 1e-300]), N64)
    out = np.empty(N64, np.float32)
    _relu_of(src, out)
    want = np.where(src <= 0, 0.0, src).astype(np.float32)
    np.testing.assert_array_equal(out, want)
    assert np.isnan(out[0]) and not np.signbit(out[2])
