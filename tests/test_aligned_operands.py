"""Operands that kernels load a whole vector register at a time start on a cache line:
``_pool.aligned_empty`` / ``_pool.aligned``, the per-thread workspaces, the NHWC
forward's weight matrix, the lanes kernel's packed weight and the right operands of the
register-tiled products (copied onto a line where they are not), with the same values."""

import numpy as np
import pytest

from fastconv import _lanes, _pool, _small_gemm, config
from fastconv._args import conv_args_from_shapes
from fastconv.algos._common import workspace
from fastconv.algos.im2col import direct_lanes, drivers
from fastconv.algos.winograd.kernel import transform_kernel

LINE = _pool.ALIGN


def off_line(a: np.ndarray, offset_bytes: int = 16) -> np.ndarray:
    """A copy of a whose data starts ``offset_bytes`` past a cache line."""
    buf = np.empty(a.nbytes + 2 * LINE, np.uint8)
    start = -buf.ctypes.data % LINE + offset_bytes
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


@pytest.mark.parametrize("shape", [7, (3, 5), (64, 64, 8), (1000, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_aligned_empty_starts_on_a_line_with_the_shape_and_dtype(shape, dtype):
    a = _pool.aligned_empty(shape, dtype)
    assert a.ctypes.data % LINE == 0 and a.flags.c_contiguous and a.flags.writeable
    assert a.shape == tuple(np.atleast_1d(shape))
    assert a.dtype == np.dtype(dtype)


def test_aligned_keeps_an_aligned_array_and_copies_others(rng):
    a = _pool.aligned_empty((40, 33), np.float32)
    a[...] = rng.standard_normal(a.shape)
    assert _pool.aligned(a) is a
    b = off_line(a)
    assert b.ctypes.data % LINE == 16
    c = _pool.aligned(b)
    assert c is not b and c.ctypes.data % LINE == 0 and np.array_equal(c, a)
    t = _pool.aligned(a.T)                   # not C-contiguous: a contiguous copy
    assert t.flags.c_contiguous and t.ctypes.data % LINE == 0 and np.array_equal(t, a.T)
    a.flags.writeable = False                # read-only: a writable copy
    r = _pool.aligned(a)
    assert r is not a and r.flags.writeable and np.array_equal(r, a)


@pytest.mark.parametrize("size", [10, 5000, 300_000])
def test_workspaces_start_on_a_line_kept_or_not(monkeypatch, size):
    assert workspace("test.aligned", size, np.float32).ctypes.data % LINE == 0
    monkeypatch.setattr(config, "WORKSPACE_CACHE_BYTES", 1024)    # a one-off buffer
    buf = workspace("test.aligned.big", size * 2, np.float64)
    assert buf.ctypes.data % LINE == 0 and buf.size == size * 2


@pytest.mark.parametrize("groups", [1, 2])
def test_the_nhwc_weight_matrix_is_on_a_line_with_the_hwio_values(rng, groups):
    w = off_line(rng.standard_normal((3, 3, 8 // groups, 32)).astype(np.float32))
    a = conv_args_from_shapes("conv2d", (2, 9, 9, 8), w.shape, 1, 1, groups=groups,
                              layout="NHWC")
    m = drivers._weights_nhwc(w, a)
    assert m.ctypes.data % LINE == 0 and m.flags.c_contiguous
    dg = 32 // groups
    for g in range(groups):          # (G, KH*KW*Cg, Dg): group g's output channels
        assert np.array_equal(m[g], w.reshape(-1, 32)[:, g * dg:(g + 1) * dg])


@pytest.mark.parametrize("c_out", [32, 20])
def test_the_lanes_packed_weight_is_on_a_line_and_zero_beyond_the_channels(rng, c_out):
    w = rng.standard_normal((c_out, 6, 3, 3)).astype(np.float32)    # OIHW
    a = conv_args_from_shapes("conv2d", (4, 6, 8, 8), w.shape, 1, 1)
    taps = direct_lanes._tap_order(a, direct_lanes._call_parts(a, False)[0])
    packed = direct_lanes._packed_weight(w, np.dtype(np.float32), taps)
    assert packed.ctypes.data % LINE == 0
    nl = _lanes.per_register(4)
    blocks = packed.reshape(-1, 54, nl)              # (D_pad/L, taps, L)
    assert blocks.shape[0] == -(-c_out // nl)
    for d in range(blocks.shape[0] * nl):            # channel d: lane d % L of its block
        column = blocks[d // nl, :, d % nl]
        if d < c_out:                                # its 54 taps, in the tap order
            assert np.array_equal(np.sort(column), np.sort(w[d].ravel()))
        else:
            assert np.all(column == 0)


def test_tiled_products_take_a_right_operand_off_a_line_and_leave_it_unchanged(rng):
    a = rng.standard_normal((60, 24)).astype(np.float32)
    b = off_line(rng.standard_normal((24, 64)).astype(np.float32))
    before = b.copy()
    out = np.empty((60, 64), np.float32)
    old = _small_gemm.TILED_PRODUCTS
    try:
        _small_gemm.TILED_PRODUCTS = _small_gemm.FOUR_REGISTER_TILES
        ran = _small_gemm.tiled_product(a, b, out)
    finally:
        _small_gemm.TILED_PRODUCTS = old
    if _small_gemm.FOUR_REGISTER_TILES:
        assert ran
        np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)
    assert np.array_equal(b, before)


def test_batched_products_take_a_right_operand_off_a_line(rng):
    a = rng.standard_normal((4, 50, 16)).astype(np.float32)
    b = off_line(rng.standard_normal((4, 16, 32)).astype(np.float32))
    out = np.empty((4, 50, 32), np.float32)
    _small_gemm.product(a, b, out)
    np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)


def test_the_winograd_transformed_kernel_is_on_a_line(rng):
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    for m in (2, 4):
        u = transform_kernel(w, 1, m)
        assert u.ctypes.data % LINE == 0 and u.shape == (1, (m + 2) ** 2, 32, 16)
