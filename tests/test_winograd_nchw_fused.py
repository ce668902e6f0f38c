"""NCHW through the fused tile kernels (``winograd.nchw_fused``): where it runs, its
results against the formula (tile rows split between blocks, sides that are not
multiples of 4, channel tails, padding, bias, both float types, strided views), and the
dilated and backward paths that reach it (non-finite inputs: test_winograd_nhwc_fused)."""

import numpy as np
import pytest

import fastconv
from fastconv.algos.winograd import nchw_fused
from fastconv.algos.winograd.kernel import transform_kernel_io
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
