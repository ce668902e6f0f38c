"""NCHW through the fused tile kernels (``winograd.nchw_fused``): where it runs, its
results against the formula (tile rows split between blocks, sides that are not
multiples of 4, channel tails, padding, bias, both float types, strided views), and the
dilated and backward paths that reach it (non-finite inputs: test_winograd_nhwc_fused)."""

import numpy as np
import pytest

import fastconv
from fastconv import _args
from fastconv.algos.winograd import nchw_fused
from fastconv.algos.winograd.kernel import layer_kernel, transform_kernel_io
from tests import reference as ref
from tests.conftest import count_calls
from tests.test_winograd_nhwc_fused import CASES, case_problem


@pytest.mark.parametrize("x_shape, y_shape, groups, want", [
    ((8, 32, 32, 32), (8, 32, 32, 32), 1, True),
    ((2, 3, 9, 9), (2, 64, 9, 9), 1, False),        # 3 inputs: under one vector
    ((8, 32, 32, 32), (8, 24, 32, 32), 1, False),   # 24 outputs: not whole registers
    ((8, 128, 16, 16), (8, 128, 16, 16), 1, False),  # above the channel bound
    ((8, 64, 16, 16), (8, 64, 16, 16), 2, False),   # groups
    ((32, 32, 14, 14), (32, 32, 14, 14), 1, True),   # small maps too
    ((1, 32, 4, 4), (1, 32, 4, 4), 1, False),        # one tile: under a row of tiles
])
def test_where_it_runs(x_shape, y_shape, groups, want):
    assert nchw_fused.applies(x_shape, y_shape, 4, groups, 4) is want
    assert not nchw_fused.applies(x_shape, y_shape, 4, groups, 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_the_formula(case, dtype, rng, monkeypatch):
    x, w, b, padding, want = case_problem(case, dtype, rng)
    calls = count_calls(monkeypatch, nchw_fused, "forward")
    y = fastconv.conv2d(x, w, b, padding=padding, algo="winograd")
    assert len(calls) == 1 and y.dtype == dtype
    assert ref.rel_error(y, want) <= ref.tolerance(dtype, "winograd")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_strided_views_are_read_and_written_in_place(rng, dtype):
    """x and y as views with steps between rows and columns: the values go one at a
    time, and the memory around the view is not touched."""
    x_big = rng.standard_normal((3, 24, 22, 30)).astype(dtype)
    x = x_big[:, 2:22, ::2, 1::2]                     # (3, 20, 11, 15)
    w = rng.standard_normal((16, 20, 3, 3)).astype(dtype)
    y_big = np.full((3, 16, 13, 34), 7.0, dtype)
    y = y_big[:, :, 1:12, ::2][..., :15]              # (3, 16, 11, 15)
    assert nchw_fused.applies(x.shape, y.shape, x.itemsize, 1, 4)
    ut = transform_kernel_io(w.transpose(2, 3, 1, 0), 1, 4)     # the tile kernels' order
    assert nchw_fused.forward(x, ut, y, None, (1, 1)) is True
    want = ref.conv2d(x, w, None, padding=((1, 1), (1, 1)))
    assert ref.rel_error(y, want) <= ref.tolerance(dtype, "winograd")
    untouched = np.ones(y_big.shape, bool)
    untouched[:, :, 1:12, 0:30:2] = False
    assert (y_big[untouched] == 7.0).all()


def test_dilated_layers_and_input_gradients_run_through_it(rng, monkeypatch):
    x = rng.standard_normal((3, 16, 20, 20))
    w = rng.standard_normal((16, 16, 3, 3))
    gy = rng.standard_normal((3, 16, 20, 20))
    calls = count_calls(monkeypatch, nchw_fused, "forward")
    y = fastconv.conv2d(x, w, padding=2, dilation=2, algo="winograd")
    assert len(calls) >= 1
    assert ref.rel_error(y, ref.conv2d(x, w, None, padding=((2, 2), (2, 2)), dilation=(2, 2))) \
        <= ref.tolerance(np.float64, "winograd")
    calls.clear()
    gx, _, _ = fastconv.conv2d_backward(gy, x, w, padding=1, algo="winograd",
                                        needs_input_grad=(True, False, False))
    assert len(calls) == 1
    want, _, _ = ref.conv2d_backward(gy, x, w, padding=((1, 1), (1, 1)))
    assert ref.rel_error(gx, want) <= ref.tolerance(np.float64, "winograd")


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("grad_x", [False, True])
def test_nchw_kernel_in_the_tile_kernels_order(rng, groups, grad_x):
    """``layer_kernel(..., io=True)`` of an OIHW weight: the NCHW transformed kernel's
    values, each (Dg, Cg) plane transposed (the fused kernels' order), made without
    the NCHW order first."""
    w = rng.standard_normal((32, 16 // groups, 3, 3))
    a = _args.conv_args_from_shapes("t", (2, 16, 8, 8), w.shape, 1, 1, 1, groups, "NCHW",
                                    np.dtype(np.float64))
    got = layer_kernel(w, a, 4, grad_x=grad_x, io=True)
    want = layer_kernel(w, a, 4, grad_x=grad_x)
    assert got.flags.c_contiguous
    np.testing.assert_allclose(got, want.transpose(0, 1, 3, 2), rtol=1e-12, atol=1e-12)


def test_small_maps_run_through_it(rng, monkeypatch):
    """A 7x7 map of 64 channels (the small ResNet's last stage): forward and grad_x in
    the fused kernels, against the formula in float32."""
    x = rng.standard_normal((4, 64, 7, 7)).astype(np.float32)
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((4, 64, 7, 7)).astype(np.float32)
    calls = count_calls(monkeypatch, nchw_fused, "forward")
    y = fastconv.conv2d(x, w, padding=1, algo="winograd")
    gx, _, _ = fastconv.conv2d_backward(gy, x, w, padding=1, algo="winograd",
                                        needs_input_grad=(True, False, False))
    assert len(calls) == 2
    x64, w64, gy64 = (v.astype(np.float64) for v in (x, w, gy))
    assert ref.rel_error(y, ref.conv2d(x64, w64, None, padding=((1, 1), (1, 1)))) \
        <= ref.tolerance(np.float32, "winograd")
    want, _, _ = ref.conv2d_backward(gy64, x64, w64, padding=((1, 1), (1, 1)))
    assert ref.rel_error(gx, want) <= ref.tolerance(np.float32, "winograd")
