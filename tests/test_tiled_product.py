"""fastconv._small_gemm.tiled_product: whole 2-D products in the 4-register tiles on
numba's threads, against np.matmul; the operands it declines; its use by
``_blas.matmul`` and the NHWC pointwise forward."""

import numba
import numpy as np
import pytest

import fastconv
from fastconv import _blas, _lanes, _small_gemm

from . import reference as ref
from .conftest import count_calls, from_nhwc, to_nhwc

THREADS = numba.get_num_threads() >= 2


@pytest.fixture
def tiles_on(monkeypatch):
    """Products in tiles whatever the host (the kernel is correct on any host with
    AVX-512 or AVX2; the host rule only says where it is faster)."""
    monkeypatch.setattr(_small_gemm, "TILED_PRODUCTS", True)


def _cols(dtype, registers: float) -> int:
    return int(registers * _lanes.per_register(np.dtype(dtype).itemsize))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, k, registers", [
    (24, 1, 4),          # 2 tasks of 12 rows, one inner step, one block of columns
    (101, 7, 4.5),       # rows and columns off the tile: overlapping last tiles
    (250, 64, 9),        # several blocks of columns, uneven tasks
])
def test_tiled_product_matches_numpy_in_slices_of_larger_arrays(m, k, registers, dtype,
                                                                rng, tiles_on):
    n = _cols(dtype, registers)
    big_a = rng.standard_normal((m, k + 3)).astype(dtype)
    big_b = rng.standard_normal((k + 2, n + 5)).astype(dtype)
    a, b = big_a[:, 1:k + 1], big_b[2:, 3:n + 3]          # rows longer than the operands
    big_out = np.full((m + 2, n + 9), 7.0, dtype)
    out = big_out[1:m + 1, 4:n + 4]
    assert _small_gemm.tiled_product(a, b, out) == THREADS
    if not THREADS:
        return
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=tol, atol=tol * k)
    outside = big_out.copy()
    outside[1:m + 1, 4:n + 4] = 7.0
    assert np.all(outside == 7.0)                          # nothing written outside out


@pytest.mark.parametrize("case", ["narrow", "few rows", "transposed b", "dtypes",
                                  "overlap", "large b", "3-D"])
def test_tiled_product_declines_what_it_cannot_run(case, rng, tiles_on):
    n = _cols(np.float32, 4)
    a = rng.standard_normal((60, 8)).astype(np.float32)
    b = rng.standard_normal((8, n)).astype(np.float32)
    out = np.full((60, n), 3.0, np.float32)
    if case == "narrow":
        b, out = b[:, :n - 1], out[:, :n - 1]
    elif case == "few rows":
        a, out = a[:5], out[:5]
    elif case == "transposed b":
        b = np.ascontiguousarray(b.T).T
    elif case == "dtypes":
        b = b.astype(np.float64)
    elif case == "overlap":
        big = rng.standard_normal((60, n + 8)).astype(np.float32)
        a, out = big[:, :8], big[:, 8:]
    elif case == "large b":
        k = _small_gemm.TILED_MAX_B_BYTES // (4 * n) + 1
        a = rng.standard_normal((60, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
    else:
        a, b, out = a[None], b[None], out[None]
    before = out.copy()
    assert not _small_gemm.tiled_product(a, b, out)
    np.testing.assert_array_equal(out, before)


def test_tiled_product_only_where_the_host_rule_allows(rng, monkeypatch):
    monkeypatch.setattr(_small_gemm, "TILED_PRODUCTS", False)
    n = _cols(np.float32, 4)
    a, b = np.ones((60, 8), np.float32), np.ones((8, n), np.float32)
    assert not _small_gemm.tiled_product(a, b, np.empty((60, n), np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blas_matmul_and_the_nhwc_pointwise_forward_run_in_tiles(dtype, rng, tiles_on,
                                                                 monkeypatch):
    # (N*H*W, C) @ (C, D) above _threaded_gemm.MIN_MACS: the tiles, not BLAS
    d = _cols(dtype, 4)
    x = rng.standard_normal((4, 256, 16, 16)).astype(dtype)
    w = rng.standard_normal((d, 256, 1, 1)).astype(dtype)
    bias = rng.standard_normal(d).astype(dtype)
    xl, wl = to_nhwc(x, w)
    calls = count_calls(monkeypatch, _small_gemm, "_tiled")
    y = from_nhwc(fastconv.conv2d(xl, wl, bias, layout="NHWC", algo="im2col"))
    tol = 1e-3 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(y, ref.conv2d(x, w, bias), rtol=tol, atol=tol)
    assert len(calls) == (1 if THREADS else 0)
    a, b = xl.reshape(-1, 256), wl.reshape(256, d)
    np.testing.assert_allclose(_blas.matmul(a, b), a.astype(np.float64) @ b, rtol=tol,
                               atol=tol)
    assert len(calls) == (2 if THREADS else 0)


def test_nhwc_pointwise_input_gradient_runs_in_tiles(rng, tiles_on, monkeypatch):
    # grad_x = grad_y @ W^T over all pixels, (P, 64) @ (64, C) with C 4 registers wide,
    # above _threaded_gemm.MIN_MACS: W^T copied contiguous so that the tiles can read its
    # rows
    c = _cols(np.float32, 4)
    x = rng.standard_normal((5, c, 32, 32)).astype(np.float32)
    w = rng.standard_normal((64, c, 1, 1)).astype(np.float32)
    gy = rng.standard_normal((5, 64, 32, 32)).astype(np.float32)
    xl, wl = to_nhwc(x, w)
    calls = count_calls(monkeypatch, _small_gemm, "_tiled")
    gx, gw, _ = fastconv.conv2d_backward(np.ascontiguousarray(gy.transpose(0, 2, 3, 1)), xl,
                                         wl, layout="NHWC", algo="im2col")
    want_gx, want_gw, _ = ref.conv2d_backward(gy, x, w)
    np.testing.assert_allclose(from_nhwc(gx), want_gx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw.transpose(3, 2, 0, 1), want_gw, rtol=1e-4, atol=1e-3)
    assert len(calls) == (1 if THREADS else 0)


@pytest.mark.parametrize("groups", [1, 2])
def test_nhwc_strided_input_gradient_runs_in_tiles(rng, tiles_on, monkeypatch, groups):
    # the column gradient grad_y @ W^T of a 3x3 stride-2 layer's tiles, (P, 128) @ (128,
    # 9 * C): W^T copied with its rows contiguous; grouped layers take the batched
    # product (no tiles) and give the same gradients
    x = rng.standard_normal((16, 32, 28, 28)).astype(np.float32)
    w = rng.standard_normal((128, 32 // groups, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((16, 128, 14, 14)).astype(np.float32)
    xl, wl = to_nhwc(x, w)
    calls = count_calls(monkeypatch, _small_gemm, "_tiled")
    gx, gw, _ = fastconv.conv2d_backward(np.ascontiguousarray(gy.transpose(0, 2, 3, 1)), xl,
                                         wl, stride=2, padding=1, groups=groups,
                                         layout="NHWC", algo="im2col")
    want_gx, want_gw, _ = ref.conv2d_backward(gy, x, w, (2, 2), ((1, 1), (1, 1)), groups=groups)
    np.testing.assert_allclose(from_nhwc(gx), want_gx, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(gw.transpose(3, 2, 0, 1), want_gw, rtol=1e-4, atol=1e-2)
    assert len(calls) > 0 if THREADS and groups == 1 else not calls
