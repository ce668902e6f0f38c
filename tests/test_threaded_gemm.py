"""fastconv._threaded_gemm: np.matmul's results in blocks on numba's threads, and the
cases it declines."""

import numba
import numpy as np
import pytest

from fastconv import _blas, _cblas, _threaded_gemm

pytestmark = pytest.mark.skipif(
    numba.get_num_threads() < 2 or _cblas.address(np.float32) is None,
    reason="needs 2 numba threads and numpy's cblas")


def _check(a, b, out, dtype):
    want = np.matmul(a, b)
    out[...] = np.nan
    with _blas.one_blas_thread():
        assert _threaded_gemm.product(a, b, out)
    tol = 1e-5 if dtype == np.float32 else 1e-12            # blocking may differ
    assert np.abs(out - want).max() <= tol * np.abs(want).max()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("a_shape, b_shape", [
    ((40, 30), (30, 100)),            # one product: columns cut for the threads
    ((100, 30), (30, 40)),            # few columns: rows cut instead
    ((3, 20, 30), (3, 30, 70)),       # an odd batch: every entry cut in two
    ((4, 20, 30), (4, 30, 50)),       # a batch the threads share evenly
    ((20, 30), (5, 30, 70)),          # a shared left operand
    ((1, 20, 30), (3, 1, 30, 70)),    # broadcast batch dimensions
    ((2, 3, 17, 5), (2, 3, 5, 33)),   # two batch dimensions, sizes off the alignment
])
def test_product_matches_numpy(a_shape, b_shape, dtype, rng):
    a = rng.standard_normal(a_shape).astype(dtype)
    b = rng.standard_normal(b_shape).astype(dtype)
    _check(a, b, np.empty(np.matmul(a, b).shape, dtype), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_product_reads_transposed_operands_and_writes_into_a_view(dtype, rng):
    a = rng.standard_normal((30, 40)).astype(dtype).T          # (40, 30), column-major
    b = rng.standard_normal((3, 90, 30)).astype(dtype).swapaxes(1, 2)   # (3, 30, 90)
    big = np.zeros((3, 40, 120), dtype)
    out = big[:, :, 10:100]                                    # rows of stride 120
    _check(a, b, out, dtype)
    assert not big[:, :, :10].any() and not big[:, :, 100:].any()


def test_product_declines_what_it_cannot_run(rng):
    a = rng.standard_normal((20, 30)).astype(np.float32)
    b = rng.standard_normal((30, 40)).astype(np.float32)
    out = np.zeros((20, 40), np.float32)
    with _blas.one_blas_thread():
        assert not _threaded_gemm.product(a.astype(np.float64), b, out)     # mixed dtypes
        assert not _threaded_gemm.product(a[:, ::2], b[::2], out)          # strided rows
        assert not _threaded_gemm.product(a, b, np.zeros((40, 20), np.float32).T)
        assert not _threaded_gemm.product(a[:, :0], b[:0], out)            # k == 0
        ai, bi = a.astype(np.int64), b.astype(np.int64)
        assert not _threaded_gemm.product(ai, bi, np.zeros((20, 40), np.int64))
        ro = np.zeros((20, 40), np.float32)
        ro.flags.writeable = False
        assert not _threaded_gemm.product(a, b, ro)
    assert not out.any()


def test_blas_matmul_runs_large_products_in_blocks(rng, monkeypatch):
    a = rng.standard_normal((3, 20, 30)).astype(np.float32)
    b = rng.standard_normal((30, 50)).astype(np.float32)
    calls = []
    real = _threaded_gemm.product

    def spy(*args):
        calls.append(real(*args))
        return calls[-1]

    monkeypatch.setattr(_threaded_gemm, "MIN_MACS", 0)
    monkeypatch.setattr(_threaded_gemm, "product", spy)
    got = _blas.matmul(a, b)
    assert calls == [True]
    np.testing.assert_allclose(got, a @ b, rtol=1e-5, atol=1e-5)
    out = np.empty((3, 20, 50), np.float32)
    assert _blas.split_matmul(a, np.broadcast_to(b, (3, 30, 50)), out) is out
    assert calls == [True, True]
    np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)


def test_bounds_cut_on_the_alignment():
    cuts = _threaded_gemm._bounds(100, 2)
    assert cuts[0] == 0 and cuts[-1] == 100 and cuts[1] % _threaded_gemm.ALIGN == 0
    assert list(_threaded_gemm._bounds(7, 1)) == [0, 7]
    assert _threaded_gemm._parts(3, 2) == 2 and _threaded_gemm._parts(4, 2) == 1
    assert _threaded_gemm._parts(9, 2) == 1                   # many entries: no cuts


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("terms", [2, 3, 5])
def test_product_sum_adds_the_terms_up(terms, dtype, rng):
    a = rng.standard_normal((terms, 2, 20, 30)).astype(dtype)
    b = rng.standard_normal((terms, 2, 40, 30)).astype(dtype).swapaxes(-1, -2)  # transposed
    want = np.matmul(a, b).sum(axis=0)
    out = np.full((2, 20, 40), np.nan, dtype)
    with _blas.one_blas_thread():
        assert _threaded_gemm.product_sum(a, b, out)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert np.abs(out - want).max() <= tol * np.abs(want).max()


def test_product_sum_declines_single_terms_and_mismatched_lengths(rng):
    a = rng.standard_normal((1, 20, 30)).astype(np.float32)
    b = rng.standard_normal((1, 30, 40)).astype(np.float32)
    out = np.zeros((20, 40), np.float32)
    with _blas.one_blas_thread():
        assert not _threaded_gemm.product_sum(a, b, out)
        assert not _threaded_gemm.product_sum(np.repeat(a, 3, 0), np.repeat(b, 2, 0), out)
    assert not out.any()


@pytest.mark.parametrize("min_macs", [0, 1 << 40])    # in runs per thread / one thread
@pytest.mark.parametrize("terms", [1, 4])
def test_blas_matmul_sum_matches_numpy(terms, min_macs, rng, monkeypatch):
    monkeypatch.setattr(_threaded_gemm, "MIN_MACS", min_macs)
    a = rng.standard_normal((terms, 20, 30))
    b = rng.standard_normal((terms, 30, 40))
    out = np.empty((20, 40))
    assert _blas.matmul_sum(a, b, out) is out
    np.testing.assert_allclose(out, np.matmul(a, b).sum(axis=0), rtol=1e-12, atol=1e-12)
