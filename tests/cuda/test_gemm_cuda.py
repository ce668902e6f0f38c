"""The im2col path's batched GEMMs (register-blocked and tiled) against numpy, on tiny
and ragged shapes (no dimension a multiple of the tile), both transposes, a shared A
(a_batches < Z) and accumulation."""

import numpy as np
import pytest
from numba import cuda

from fastconv.cuda import _gemm

# (Za, Z, M, K, N): ragged against the simulator's 4 x 4 tiles and K step 3
SHAPES = [(1, 1, 5, 7, 6), (2, 4, 3, 4, 9), (1, 2, 1, 1, 1), (3, 3, 9, 2, 5)]


def _operands(za, z, m, k, n, trans_a, trans_b, dtype, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((za, m, k)).astype(dtype)
    b = rng.standard_normal((z, k, n)).astype(dtype)
    a_in = np.ascontiguousarray(a.transpose(0, 2, 1)) if trans_a else a
    b_in = np.ascontiguousarray(b.transpose(0, 2, 1)) if trans_b else b
    want = np.stack([a[i % za].astype(np.float64) @ b[i].astype(np.float64)
                     for i in range(z)])
    return a_in, b_in, want


@pytest.mark.parametrize("kernel", _gemm.KERNELS)
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True),
                                             (True, True)])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_gemm_matches_numpy(shape, trans_a, trans_b, kernel):
    dtype = np.float64 if trans_a == trans_b else np.float32
    a, b, want = _operands(*shape, trans_a, trans_b, dtype)
    c = cuda.to_device(np.full(want.shape, np.nan, dtype))  # every element is written
    _gemm.gemm(cuda.to_device(a), cuda.to_device(b), c, trans_a=trans_a, trans_b=trans_b,
               kernel=kernel)
    got = c.copy_to_host()
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("kernel", _gemm.KERNELS)
def test_gemm_accumulates(kernel):
    a, b, want = _operands(1, 2, 6, 5, 7, False, True, np.float64, seed=1)
    start = np.random.default_rng(2).standard_normal(want.shape)
    c = cuda.to_device(start)
    _gemm.gemm(cuda.to_device(a), cuda.to_device(b), c, trans_b=True, accumulate=True,
               kernel=kernel)
    np.testing.assert_allclose(c.copy_to_host(), start + want, rtol=1e-12, atol=1e-12)


def test_blocked_gemm_other_register_tiles(monkeypatch):
    """Register tiles of 1 x 1 and 3 x 3 (threads 3 x 3 and 2 x 2), K steps of 1 and 4."""
    a, b, want = _operands(1, 1, 10, 9, 11, True, False, np.float64, seed=3)
    for blocked in ((3, 1, 1), (2, 3, 4)):
        monkeypatch.setattr(_gemm, "BLOCKED", blocked)
        c = cuda.device_array(want.shape, np.float64)
        _gemm.gemm(cuda.to_device(a), cuda.to_device(b), c, trans_a=True)
        np.testing.assert_allclose(c.copy_to_host(), want, rtol=1e-12, atol=1e-12)


def test_gemm_kernel_name_checked():
    c = cuda.device_array((1, 1, 1))
    with pytest.raises(ValueError, match=r"gemm: kernel='fast' is not one of \('blocked', "
                                         r"'tiled'\)"):
        _gemm.gemm(c, c, c, kernel="fast")
