"""The input gradient of small stride-1 NHWC layers image by image
(``algos.im2col.grad_x_images``): which layers take it, its results against the float64
reference (non-finite values included), the path through conv2d_backward and the plan's
sentence."""

import numba
import numpy as np
import pytest

import fastconv
from fastconv import _lanes
from fastconv._args import conv_args_from_shapes
from fastconv.algos.im2col import grad_x_images
from fastconv.algos.im2col.direct_grad_input import input_phases

from . import reference as ref
from .conftest import count_calls

pytestmark = pytest.mark.skipif(not _lanes.WIDE,
                                reason="needs 32 vector registers (AVX-512)")


def _args(x_shape, w_shape, layout="NHWC", dtype=np.float32, **kw):
    return conv_args_from_shapes("t", x_shape, w_shape, layout=layout, dtype=dtype, **kw)


def test_which_layers_take_it():
    """LeNet's second layer in NHWC; not: NCHW, a stride, a dilation, groups, 27 taps
    (fewer than 4 registers), an image's taps times pixels over ``MAX_TAP_BYTES``."""
    assert grad_x_images.applies(_args((64, 14, 14, 6), (5, 5, 6, 16)))
    assert not grad_x_images.applies(_args((64, 6, 14, 14), (16, 6, 5, 5), "NCHW"))
    assert not grad_x_images.applies(_args((64, 14, 14, 6), (5, 5, 6, 16), stride=2))
    assert not grad_x_images.applies(_args((64, 14, 14, 6), (5, 5, 6, 16), dilation=2))
    assert not grad_x_images.applies(_args((64, 14, 14, 6), (5, 5, 3, 16), groups=2))
    assert not grad_x_images.applies(_args((64, 14, 14, 3), (3, 3, 3, 16)))
    assert not grad_x_images.applies(_args((4, 64, 64, 16), (3, 3, 16, 16), padding=1))


# (n, c, h, w, d, kernel, padding): LeNet's second layer; 'same' padding (pixels whose
# runs are clipped at both sides, rows wholly in the padding); asymmetric padding with a
# rectangular kernel and odd channels; 7 output pixels (fewer than a register tile's 8)
# and kernel rows of exactly two registers of taps; padding wider than the kernel's reach
CASES = [
    (6, 6, 14, 14, 16, 5, 0),
    (4, 8, 9, 11, 12, 3, 1),
    (5, 7, 7, 10, 5, (3, 4), ((2, 0), (1, 3))),
    (2, 16, 2, 8, 8, 2, 0),
    (4, 16, 5, 6, 8, 2, 3),
]


def _problem(case, dtype, rng):
    n, c, h, wd, d, k, padding = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal((n, h, wd, c)).astype(dtype)
    w = rng.standard_normal((kh, kw, c, d)).astype(dtype)
    a = _args(x.shape, w.shape, dtype=dtype, padding=padding)
    gy = rng.standard_normal((n, a.h_out, a.w_out, d)).astype(dtype)
    want = ref.conv2d_backward(gy.transpose(0, 3, 1, 2), x.transpose(0, 3, 1, 2),
                               w.transpose(3, 2, 0, 1), a.stride, a.padding, a.dilation)
    return x, w, gy, a, padding, want


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_the_reference(case, dtype, rng):
    x, w, gy, a, padding, (gx0, _, _) = _problem(case, dtype, rng)
    assert grad_x_images.applies(a)
    gx = np.full(x.shape, np.nan, dtype)                  # every element written
    grad_x_images.input_grad_images(gy, w, a, gx)
    assert ref.rel_error(gx.transpose(0, 3, 1, 2), gx0) <= ref.tolerance(dtype, "im2col")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_non_finite_gradient_reaches_only_its_own_elements(case, rng):
    """An infinity in grad_y spreads to the input elements its pixel's taps reach, as
    in the reference, and to none beside them: the padded taps of a register and the
    taps in the padding are left out, not multiplied by it."""
    x, w, gy, a, padding, _ = _problem(case, np.float64, rng)
    gy[0, a.h_out // 2, a.w_out - 1, 1] = np.inf
    gy[-1, 0, 0, 0] = -np.inf
    want, _, _ = ref.conv2d_backward(gy.transpose(0, 3, 1, 2), x.transpose(0, 3, 1, 2),
                                     w.transpose(3, 2, 0, 1), a.stride, a.padding,
                                     a.dilation)
    gx = np.full(x.shape, np.nan)
    grad_x_images.input_grad_images(gy, w, a, gx)
    got = gx.transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    # the last case's padding is wider than the kernel's reach: its grad_y edge pixels
    # reach no input element, and nothing may come out non-finite
    assert np.isfinite(want).all() == (case is CASES[-1])
    np.testing.assert_array_equal(got[np.isinf(want)], want[np.isinf(want)])
    finite = np.isfinite(want)
    assert ref.rel_error(got[finite], want[finite]) <= ref.tolerance(np.float64, "im2col")


@pytest.mark.parametrize("case", CASES[:3], ids=str)
def test_conv2d_backward_takes_it_where_the_direct_forward_does_not(case, rng, monkeypatch):
    """float32 layers of 6-8 input channels (too few of a register's 16 lanes for the
    direct forward of grad_y, ``input_phases``): grad_x image by image, grad_w by the
    direct kernel, both against the reference."""
    x, w, gy, a, padding, (gx0, gw0, _) = _problem(case, np.float32, rng)
    assert input_phases(a) is None
    calls = count_calls(monkeypatch, grad_x_images, "_grad_x_nhwc")
    gx, gw, _ = fastconv.conv2d_backward(gy, x, w, padding=padding, layout="NHWC",
                                         algo="im2col")
    assert len(calls) == 1
    tol = ref.tolerance(np.float32, "im2col")
    assert ref.rel_error(gx.transpose(0, 3, 1, 2), gx0) <= tol
    assert ref.rel_error(gw.transpose(3, 2, 0, 1), gw0) <= tol


def test_strided_operands_and_thread_counts(rng):
    """Views with steps give the contiguous arrays' result, on one thread as on all."""
    x, w, gy, a, padding, _ = _problem(CASES[1], np.float32, rng)
    want = np.empty(x.shape, np.float32)
    grad_x_images.input_grad_images(gy, w, a, want)
    wide_gy = np.zeros(gy.shape[:3] + (2 * gy.shape[3],), np.float32)
    wide_gy[..., ::2] = gy
    w_f = np.asfortranarray(w)
    before = numba.get_num_threads()
    try:
        for threads in (1, before):
            numba.set_num_threads(threads)
            got = np.full(x.shape, np.nan, np.float32)      # every element written
            grad_x_images.input_grad_images(wide_gy[..., ::2], w_f, a, got)
            np.testing.assert_array_equal(got, want)
    finally:
        numba.set_num_threads(before)


def test_the_plan_says_so():
    why = fastconv.plan((64, 14, 14, 6), (5, 5, 6, 16), layout="NHWC", backward=True).why
    assert "grad_x by per-image products added onto the input's rows in cache" in why
