"""The fused NHWC F(4x4, 3x3) forward (``winograd.nhwc_tiles``): where it runs, its
results against the formula (block edges, channel tails, padding, bias, both float
types), non-finite inputs (NCHW's fused forward too), the input gradient that runs
through it, and the transformed kernel in its order."""

import numpy as np
import pytest

import fastconv
from fastconv.algos.winograd import kernel, nchw_fused, nhwc, nhwc_tiles
from fastconv.algos.winograd.kernel import (
    _grad_x_kernel,
    grad_x_kernel_io,
    transform_kernel,
    transform_kernel_io,
)
from tests import reference as ref
from tests.conftest import count_calls, to_nhwc


@pytest.mark.parametrize("x_shape, y_shape, groups, m, phase, want", [
    ((8, 32, 32, 32), (8, 32, 32, 32), 1, 4, None, True),
    ((2, 9, 9, 16), (2, 9, 9, 64), 1, 4, None, True),     # 18 tiles
    ((2, 9, 9, 3), (2, 9, 9, 64), 1, 4, None, False),     # 3 inputs: under one vector
    ((8, 32, 32, 32), (8, 32, 32, 16), 1, 4, None, True),   # 16 outputs: one register
    ((8, 32, 32, 32), (8, 32, 32, 24), 1, 4, None, False),  # 24: not whole registers
    ((8, 32, 32, 128), (8, 32, 32, 128), 1, 4, None, False),  # above the channel bound
    ((8, 32, 32, 64), (8, 32, 32, 64), 2, 4, None, False),  # groups
    ((8, 32, 32, 32), (8, 32, 32, 32), 1, 2, None, False),  # F(2x2, 3x3)
    ((8, 32, 32, 32), (8, 16, 16, 32), 1, 4, ((0, 0, 16), (0, 0, 16), (2, 2)), False),
    ((2, 5, 5, 32), (2, 5, 5, 32), 1, 4, None, False),      # 8 tiles: under 12
])
def test_where_the_fused_forward_runs(x_shape, y_shape, groups, m, phase, want):
    assert nhwc_tiles.fused_applies(x_shape, y_shape, 4, groups, m, phase) is want


def test_blocks_are_whole_register_tiles():
    for cg, dg in ((3, 32), (32, 32), (64, 64), (16, 64)):
        block = nhwc_tiles.block_tiles(cg, dg, 4)
        assert block % nhwc_tiles.TILE_ROWS_1 == 0 and 12 <= block <= 60
        assert block * 36 * (cg + dg) * 4 <= max(nhwc_tiles.FUSED_TASK_BYTES,
                                                  12 * 36 * 128 * 4)


# (n, c_in, h, w, c_out, padding, bias): sides that are not multiples of 4, input
# channel counts with a tail beyond whole vectors, batches of fewer tiles than a block and of a
# block and a few
CASES = [
    (2, 32, 8, 12, 32, 1, False),
    (3, 17, 9, 7, 32, 1, True),
    (3, 20, 6, 6, 64, 2, True),
    (3, 16, 14, 14, 16, 1, True),       # one register of output channels (float32)
    (5, 64, 13, 11, 64, 0, False),
    (4, 40, 16, 16, 32, (2, 0), True),
]


def case_problem(case, dtype, rng):
    """A case of ``CASES`` in NCHW: x, w, bias, padding and the formula's result."""
    n, c, h, wd, d, padding, with_bias = case
    if dtype == np.float64:
        d //= 2          # float64 vectors hold half as many: 8, 16 or 32 channels
    x = rng.standard_normal((n, c, h, wd)).astype(dtype)
    w = rng.standard_normal((d, c, 3, 3)).astype(dtype)
    b = rng.standard_normal(d).astype(dtype) if with_bias else None
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    return x, w, b, padding, ref.conv2d(x, w, b, padding=((ph, ph), (pw, pw)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_fused_forward_matches_the_formula(case, dtype, rng, monkeypatch):
    x, w, b, padding, want = case_problem(case, dtype, rng)
    calls = count_calls(monkeypatch, nhwc, "fused_forward")
    xn, wn = to_nhwc(x, w)
    y = fastconv.conv2d(xn, wn, b, padding=padding, layout="NHWC", algo="winograd")
    assert len(calls) == 1 and y.dtype == dtype
    assert ref.rel_error(y.transpose(0, 3, 1, 2), want) <= ref.tolerance(dtype, "winograd")


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_non_finite_inputs_are_flagged_and_stay_local(rng, layout):
    """The fused forward (NCHW's through ``nchw_fused``) reports a NaN or Inf output
    (whole vectors and the channel tail alike), and conv2d then gives the direct
    formula's pattern."""
    x = rng.standard_normal((2, 12, 12, 35)).astype(np.float32)
    x[1, 5, 6, 0] = np.nan
    x[0, 2, 2, 34] = np.inf
    w = rng.standard_normal((3, 3, 35, 32)).astype(np.float32)
    finite = rng.standard_normal((2, 12, 12, 35)).astype(np.float32)
    if layout == "NHWC":
        u, y, run = transform_kernel_io(w, 1, 4), np.empty((2, 12, 12, 32), np.float32), \
            nhwc_tiles.fused_forward
    else:
        x, finite = (np.ascontiguousarray(a.transpose(0, 3, 1, 2)) for a in (x, finite))
        w = np.ascontiguousarray(w.transpose(3, 2, 0, 1))
        u, y, run = transform_kernel(w, 1, 4), np.empty((2, 32, 12, 12), np.float32), \
            nchw_fused.forward
    assert run(x, u, y, None, (1, 1)) is False
    got = fastconv.conv2d(x, w, padding=1, layout=layout, algo="winograd")
    want = fastconv.conv2d(x, w, padding=1, layout=layout, algo="naive")
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    hit = got[1, 4:7, 5:8] if layout == "NHWC" else got[1, :, 4:7, 5:8]
    assert np.isnan(hit).all() and np.isnan(got[1]).sum() == 9 * 32
    assert run(finite, u, y, None, (1, 1)) is True


def test_input_gradient_runs_through_the_fused_forward(rng, monkeypatch):
    x = rng.standard_normal((4, 32, 10, 10))
    w = rng.standard_normal((32, 32, 3, 3))
    gy = rng.standard_normal((4, 32, 10, 10))
    gx0, _, _ = ref.conv2d_backward(gy, x, w, padding=((1, 1), (1, 1)))
    calls = count_calls(monkeypatch, nhwc, "fused_forward")
    xn, wn = to_nhwc(x, w)
    gx, _, _ = fastconv.conv2d_backward(np.ascontiguousarray(gy.transpose(0, 2, 3, 1)), xn,
                                        wn, padding=1, layout="NHWC", algo="winograd",
                                        needs_input_grad=(True, False, False))
    assert len(calls) == 1
    assert ref.rel_error(gx.transpose(0, 3, 1, 2), gx0) <= ref.tolerance(np.float64,
                                                                          "winograd")


#: G of F(4x4, 3x3), float64.
_G4 = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])


def _assert_g_w_gt(got, w_io, groups):
    """got (G, 36, Cg, Dg) is G w G^T of the HWIO kernels w_io (3, 3, Cg, G*Dg) computed
    in float64 and rounded once: within a rounding of the float64 values."""
    cg, c_out = w_io.shape[2:]
    w = w_io.astype(np.float64).reshape(3, 3, cg, groups, c_out // groups)
    exact = np.einsum("ai,bj,ijcgd->gabcd", _G4, _G4, w).reshape(got.shape)
    eps = np.finfo(got.dtype).eps
    np.testing.assert_allclose(got, exact, rtol=eps, atol=eps * np.abs(exact).max())


@pytest.mark.parametrize("groups, m", [(1, 4), (2, 4), (1, 2), (2, 2)])
def test_transform_kernel_io_is_the_transform_in_nhwc_order(rng, groups, m):
    """NHWC's transformed kernel holds ``transform_kernel``'s values with each (Dg, Cg)
    plane transposed (F(2x2, 3x3): the same values; F(4x4, 3x3), its own kernel on
    vectors: within a rounding of G w G^T), read from an HWIO weight of any strides."""
    w_io = rng.standard_normal((3, 3, 6, 8)).astype(np.float32)
    want = transform_kernel(np.ascontiguousarray(w_io.transpose(3, 2, 0, 1)), groups, m)
    for w in (w_io, np.asfortranarray(w_io)):
        got = transform_kernel_io(w, groups, m)
        assert got.flags.c_contiguous and got.shape == (groups, (m + 2) ** 2, 6, 8 // groups)
        if m == 2:
            np.testing.assert_array_equal(got, want.transpose(0, 1, 3, 2))
        else:
            _assert_g_w_gt(got, w_io, groups)
            np.testing.assert_array_equal(got, transform_kernel_io(w_io, groups, m))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("groups", [1, 3])
def test_transform_kernel_io_of_grad_x_kernels(rng, dtype, groups):
    """grad_x's kernel, a transposed view of the weight, transforms as its contiguous
    copy does, within a rounding of G k G^T; 12 rows (more than a task's) of 13 columns
    (not a whole vector)."""
    w_io = rng.standard_normal((3, 3, 13, 12 * groups)).astype(dtype)
    k = grad_x_kernel_io(w_io, groups)                          # (3, 3, 12, 13 * groups)
    got = transform_kernel_io(k, groups, 4)
    assert got.shape == (groups, 36, 12, 13) and got.dtype == dtype
    np.testing.assert_array_equal(got, transform_kernel_io(np.ascontiguousarray(k), groups,
                                                           4))
    _assert_g_w_gt(got, k, groups)


@pytest.mark.parametrize("m", [2, 4])
def test_small_kernels_transform_on_the_calling_thread(rng, m, monkeypatch):
    """Up to ``SERIAL_KERNELS`` kernels the transform runs on the calling thread (its
    serial twin), with the threads' values; more run on the threads."""
    w_io = rng.standard_normal((3, 3, 24, 32)).astype(np.float32)      # 768 kernels
    w_oihw = np.ascontiguousarray(w_io.transpose(3, 2, 0, 1))
    serial = count_calls(monkeypatch, kernel, "_SERIAL_IO") if m == 4 else []
    threads = (transform_kernel(w_oihw, 1, m), transform_kernel_io(w_io, 1, m))
    assert not serial
    monkeypatch.setattr(kernel, "SERIAL_KERNELS", 24 * 32)
    np.testing.assert_array_equal(transform_kernel(w_oihw, 1, m), threads[0])
    np.testing.assert_array_equal(transform_kernel_io(w_io, 1, m), threads[1])
    assert len(serial) == int(m == 4)


@pytest.mark.parametrize("groups", [1, 2])
def test_grad_x_kernel_io_is_the_flipped_kernel_in_hwio(rng, groups):
    w_io = rng.standard_normal((3, 3, 4, 6))
    want = _grad_x_kernel(w_io.transpose(3, 2, 0, 1), groups)        # (C_in, Dg, 3, 3)
    np.testing.assert_array_equal(grad_x_kernel_io(w_io, groups).transpose(3, 2, 0, 1), want)
