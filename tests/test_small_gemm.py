"""fastconv._small_gemm: batches of narrow products in SIMD registers against np.matmul,
the operands it declines, and its use by ``_blas.split_matmul`` and the NHWC Winograd
stage."""

import numpy as np
import pytest
from numba import njit

import fastconv
from fastconv import _blas, _lanes, _small_gemm
from fastconv.algos.winograd import nhwc

from . import reference as ref
from .conftest import count_calls, from_nhwc, to_nhwc

ROWS = 40


@pytest.fixture(autouse=True)
def any_size(monkeypatch):
    """Batches of any size run in registers (``MIN_BYTES`` keeps those that fit in cache
    with BLAS), so that the tests' small operands take the kernel."""
    monkeypatch.setattr(_small_gemm, "MIN_BYTES", 0)


def _lanes_of(dtype) -> int:
    return _lanes.per_register(np.dtype(dtype).itemsize)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("e, m, k, n", [
    (1, ROWS, 1, None),                    # one product, one inner step, two registers
    (3, ROWS + 5, 5, "two+1"),             # rows and columns off the tile: overlaps
    (2, 3 * ROWS + 1, 64, 64),             # the widest taken, several row runs
    (5, ROWS + 97, 17, 48),
])
def test_product_matches_numpy(e, m, k, n, dtype, rng):
    two = 2 * _lanes_of(dtype)
    n = {None: two, "two+1": two + 1}.get(n, n)
    a = rng.standard_normal((e, m, k)).astype(dtype)
    b = rng.standard_normal((e, k, n)).astype(dtype)
    out = np.full((e, m, n), np.nan, dtype)
    assert _small_gemm.applies(a, b, out)
    _small_gemm.product(a, b, out)
    want = np.matmul(a, b)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert np.abs(out - want).max() <= tol * np.abs(want).max()


def test_product_reads_and_writes_slices_of_a_larger_batch(rng):
    """Each matrix a slice of a longer row (a chunk of the Winograd stage's planes):
    the items between matrices are neither read nor written."""
    m, k, n = ROWS + 3, 16, 32
    big = rng.standard_normal((4, (m + 2) * k)).astype(np.float32)
    a = big[:, :m * k].reshape(4, m, k)
    b = rng.standard_normal((4, k, n)).astype(np.float32)
    big_out = np.full((4, (m + 1) * n), np.nan, np.float32)
    out = big_out[:, :m * n].reshape(4, m, n)
    assert _small_gemm.applies(a, b, out)
    _small_gemm.product(a, b, out)
    assert np.abs(out - a @ b).max() <= 1e-5 * np.abs(a @ b).max()
    assert np.isnan(big_out[:, m * n:]).all()


def test_product_declines_what_it_cannot_run(rng):
    f32 = np.float32
    two = 2 * _lanes_of(f32)

    def ok(a_shape, b_shape, dtype=f32, out_dtype=f32):
        a = np.zeros(a_shape, dtype)
        b = np.zeros(b_shape, dtype)
        out = np.zeros(a_shape[:-1] + b_shape[-1:], out_dtype)
        return _small_gemm.applies(a, b, out)

    assert ok((2, ROWS, 8), (2, 8, two))
    assert not ok((2, 5, 8), (2, 8, two))                           # under 6 rows
    assert not ok((2, ROWS, 65), (2, 65, two))                      # K above 64
    assert not ok((2, ROWS, 8), (2, 8, 65))                         # N above 64
    assert not ok((2, ROWS, 8), (2, 8, two - 1))                    # N under 2 registers
    assert not ok((ROWS, 8), (8, two))                              # not a batch
    assert not ok((2, ROWS, 8), (2, 8, two), out_dtype=np.float64)  # mixed dtypes
    assert not ok((2, ROWS, 8), (2, 8, two), dtype=np.int32, out_dtype=np.int32)
    a = np.zeros((2, ROWS, 8), f32)
    b = np.zeros((2, two, 8), f32).transpose(0, 2, 1)               # columns not rows
    assert not _small_gemm.applies(a, b, np.zeros((2, ROWS, two), f32))


def test_batches_that_fit_in_cache_stay_with_blas(monkeypatch):
    monkeypatch.setattr(_small_gemm, "MIN_BYTES", 4 << 20)
    for item in (4, 8):                 # the least rows of left operands of 4 MiB
        rows = -(-(4 << 20) // (36 * 32 * item))
        assert _small_gemm.takes(36, rows, 32, 32, item)
        assert not _small_gemm.takes(36, rows - 1, 32, 32, item)


def test_split_matmul_runs_narrow_batches_in_registers(rng, monkeypatch):
    calls = count_calls(monkeypatch, _small_gemm, "product")
    a = rng.standard_normal((36, 4 * ROWS, 32)).astype(np.float32)
    b = rng.standard_normal((36, 32, 32)).astype(np.float32)
    out = np.empty((36, 4 * ROWS, 32), np.float32)
    _blas.split_matmul(a, b, out)
    assert len(calls) == 1
    assert np.abs(out - a @ b).max() <= 1e-5 * np.abs(a @ b).max()
    wide = rng.standard_normal((36, 32, 128)).astype(np.float32)   # N above 64: BLAS
    _blas.split_matmul(a, wide, np.empty((36, 4 * ROWS, 128), np.float32))
    assert len(calls) == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nhwc_winograd_stage_in_registers_matches_the_reference(dtype, rng, monkeypatch):
    """16 -> 32 channels on 4 images of 32x32: 256 tiles of F(4x4, 3x3) in one chunk,
    the kernel's transform copied to rows of output channels (the chunked path, which
    the phases of dilated layers and grouped layers take; undilated layers of this
    size run fused, ``nhwc_tiles``)."""
    monkeypatch.setattr(nhwc, "fused_applies", lambda *args: False)
    calls = count_calls(monkeypatch, _small_gemm, "product")
    x = rng.standard_normal((4, 16, 32, 32)).astype(dtype)
    w = rng.standard_normal((32, 16, 3, 3)).astype(dtype)
    b = rng.standard_normal(32).astype(dtype)
    xl, wl = to_nhwc(x, w)
    got = from_nhwc(fastconv.conv2d(xl, wl, b, padding=1, layout="NHWC", algo="winograd"))
    assert calls
    want = ref.conv2d(x, w, b, (1, 1), ((1, 1), (1, 1)), (1, 1), 1)
    assert ref.rel_error(got, want) <= (1e-5 if dtype == np.float32 else 1e-13)


@pytest.mark.parametrize("shapes", [((1, 6, 4), (1, 4, 8), (1, 6, 8)),      # N below 2 registers
                                    ((1, 5, 4), (1, 4, 64), (1, 5, 64)),    # M below the tile
                                    ((2, 6, 4), (1, 4, 64), (2, 6, 64))])   # batches differ
def test_product_refuses_shapes_its_tile_cannot_cover(shapes):
    """Called directly with operands ``applies`` rejects, product raises instead of
    writing outside out (the tile's last block would start before column 0)."""
    a, b, out = (np.ones(s, np.float32) for s in shapes)
    with pytest.raises(ValueError, match="_small_gemm.product: needs"):
        _small_gemm.product(a, b, out)


@njit
def _panel(af, a0, lda, bf, b0, ldb, cf, c0, ldc, m, n, k):
    _small_gemm.panel_product(af, a0, lda, bf, b0, ldb, cf, c0, ldc, m, n, k)


@pytest.mark.skipif(not _small_gemm.FOUR_REGISTER_TILES,
                    reason="the 6 x 4-register tile needs AVX-512's registers")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, k, registers", [(6, 1, 4), (13, 7, 4.5), (40, 64, 9)])
def test_panel_product_matches_numpy_inside_larger_arrays(m, k, registers, dtype, rng):
    """One tile, rows and columns off the tile (overlapping last tiles) and several
    blocks of each, on operands that are blocks of larger flat arrays (leading dimensions
    above the widths, nonzero offsets): the block of c equals a @ b and nothing around it
    is written."""
    n = int(registers * _lanes_of(dtype))
    lda, ldb, ldc = k + 3, n + 5, n + 7
    a = rng.standard_normal(2 + m * lda).astype(dtype)
    b = rng.standard_normal(1 + k * ldb).astype(dtype)
    c = np.full(4 + m * ldc, -7.0, dtype)
    _panel(a, 2, lda, b, 1, ldb, c, 4, ldc, m, n, k)
    am = np.lib.stride_tricks.as_strided(a[2:], (m, k), (lda * a.itemsize, a.itemsize))
    bm = np.lib.stride_tricks.as_strided(b[1:], (k, n), (ldb * b.itemsize, b.itemsize))
    block = np.lib.stride_tricks.as_strided(c[4:], (m, n), (ldc * c.itemsize, c.itemsize))
    assert ref.rel_error(block, am @ bm) <= ref.tolerance(dtype, "im2col")
    outside = np.ones(c.shape, bool)
    for i in range(m):
        outside[4 + i * ldc:4 + i * ldc + n] = False
    assert np.all(c[outside] == -7.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shapes", [((3000, 1), (1, 7)), ((5, 1), (1, 9000)),
                                    ((4, 300, 1), (1, 70)), ((300, 1), (4, 1, 70)),
                                    ((4, 300, 1), (4, 1, 70)), ((1, 0, 1), (3, 1, 5))])
@pytest.mark.parametrize("in_numba", [True, False])
def test_outer_products_match_numpy(shapes, dtype, in_numba, rng, monkeypatch):
    """K = 1 products in numba's tasks (every size, with the small-product limits off)
    or as the limits send them: each batch's own rows and columns or one shared, exactly
    numpy's multiply (one rounding an output)."""
    if in_numba:
        monkeypatch.setattr(_small_gemm, "OUTER_MIN_ROWS", 0)
        monkeypatch.setattr(_small_gemm, "OUTER_MIN_ITEMS", 0)
    a = rng.standard_normal(shapes[0]).astype(dtype)
    b = rng.standard_normal(shapes[1]).astype(dtype)
    want = np.matmul(a, b)
    np.testing.assert_array_equal(_small_gemm.outer(a, b), want)
    # a strided out (the grouped NHWC layout: each group's rows a group's width apart)
    wide = np.full(want.shape[:-1] + (2 * want.shape[-1],), np.nan, dtype)
    out = wide[..., ::2]
    assert _small_gemm.outer(a, b, out) is out
    np.testing.assert_array_equal(out, want)
    assert np.isnan(wide[..., 1::2]).all()


def test_outer_products_numba_declines_go_to_numpy(monkeypatch):
    """Integer and mixed dtypes, outputs of more than 3 dimensions and an out over its
    own operand (whatever their size): numpy's multiply, the same result as np.matmul."""
    monkeypatch.setattr(_small_gemm, "OUTER_MIN_ROWS", 0)
    monkeypatch.setattr(_small_gemm, "OUTER_MIN_ITEMS", 0)
    a = np.arange(6, dtype=np.int64).reshape(6, 1)
    b = np.arange(3, dtype=np.int64).reshape(1, 3)
    np.testing.assert_array_equal(_small_gemm.outer(a, b), a @ b)
    np.testing.assert_array_equal(_small_gemm.outer(a.astype(np.float32), b * 0.5),
                                  a.astype(np.float32) @ (b * 0.5))
    a4 = np.ones((2, 3, 4, 1), np.float32)
    np.testing.assert_array_equal(_small_gemm.outer(a4, b.astype(np.float32)),
                                  a4 @ b.astype(np.float32))
    square = np.arange(4, dtype=np.float32).reshape(4, 1) * np.ones((1, 4), np.float32)
    want = square[:, :1] @ square[:1, :]
    np.testing.assert_array_equal(_small_gemm.outer(square[:, :1], square[:1, :], square),
                                  want)
