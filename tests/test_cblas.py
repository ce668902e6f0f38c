"""fastconv._cblas: numpy's cblas ?gemm called from numba by address (transposes, beta,
both dtypes) against numpy."""

import numpy as np
import pytest
from numba import njit

from fastconv import _cblas


@njit(cache=True)
def _gemm(fn, ta, tb, a, b, c, beta):
    m, n = c.shape
    k = a.shape[0] if ta == _cblas.TRANS else a.shape[1]
    _cblas.gemm(fn, ta, tb, m, n, k, a, a.shape[1], b, b.shape[1], beta, c, c.shape[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_gemm_matches_numpy(dtype, ta, tb, beta, rng):
    fn = _cblas.address(dtype)
    if fn is None:
        pytest.skip("numpy's BLAS is not reachable from numba here")
    m, k, n = 5, 7, 3
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    c = rng.standard_normal((m, n)).astype(dtype)
    want = (a.T if ta else a) @ (b.T if tb else b) + beta * c
    flag = {False: _cblas.NO_TRANS, True: _cblas.TRANS}
    _gemm(fn, flag[ta], flag[tb], a, b, c, beta)
    np.testing.assert_allclose(c, want, rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_address_of_other_dtypes_is_none():
    assert _cblas.address(np.int32) is None
    assert _cblas.address(np.complex64) is None


def test_call_matches_numpy(rng):
    fn = _cblas.address(np.float64)
    if fn is None:
        pytest.skip("numpy's BLAS is not reachable from numba here")
    a, b = rng.standard_normal((4, 6)), rng.standard_normal((6, 2))
    np.testing.assert_allclose(_cblas.call(fn, a, b), a @ b, rtol=1e-12)
