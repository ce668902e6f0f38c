"""The weight gradient in register tiles that read the input in place
(``algos.im2col.direct_grad_tiles``): where it runs, against the reference in both
layouts and dtypes, independent of the thread count, and through autograd against
finite differences."""

import numba
import numpy as np
import pytest

import fastconv
from fastconv import Tensor, gradcheck
from fastconv._args import conv_args_from_shapes
from fastconv.algos.im2col import direct_grad, direct_grad_tiles
from fastconv.algos.im2col.direct_grad_tiles import tiles_apply
from fastconv.nn import functional as F

from . import reference as ref
from .conftest import count_calls
from .test_direct_grad import _problem

pytestmark = pytest.mark.skipif(not direct_grad_tiles.ENABLED,
                                reason="the tiles run with 32 vector registers (AVX-512)")

# (n, c, h, w, d, kernel, stride, padding, dilation): one tile a kernel row (16 x 3
# taps, 16 output channels: two tiles of 8), 4 vectors a row (a last group of one,
# its other two repeated) at stride 2, 6 vectors (two groups) with row dilation and
# asymmetric padding, a rectangular kernel of 5 columns, 40 output channels (5 tiles),
# and 8 (one) with 64 input channels (12 vectors a row)
# (and test_direct_grad's last field, unused here)
CASES = [
    (4, 16, 7, 9, 16, 3, 1, 1, 1, None),
    (5, 32, 9, 8, 24, (2, 2), 2, 1, 1, None),
    (4, 32, 9, 9, 16, 3, 1, ((2, 0), (1, 1)), (2, 1), None),
    (4, 16, 6, 11, 40, (2, 5), (1, 2), (0, 2), 1, None),
    (6, 64, 5, 5, 8, 3, 1, 1, 1, None),
]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_tiles_match_the_reference(case, dtype, layout, rng, monkeypatch):
    monkeypatch.setattr(direct_grad, "PREFER_IMAGE_LAST", False)
    x, w, gy, a, kwargs, (_, gw0, _) = _problem(case, dtype, rng, layout)
    assert tiles_apply(a) and direct_grad.direct_backward_chosen(a, False)
    calls = count_calls(monkeypatch, direct_grad_tiles, "_grad_w_tiles")
    _, gw, _ = fastconv.conv2d_backward(gy, x, w, layout=layout, algo="im2col",
                                        needs_input_grad=(False, True, False), **kwargs)
    assert len(calls) == 1 and gw.dtype == dtype
    gw = gw.transpose(3, 2, 0, 1) if layout == "NHWC" else gw
    assert ref.rel_error(gw, gw0) <= ref.tolerance(dtype, "im2col")


@pytest.mark.parametrize("x_shape,w_shape,kwargs", [
    ((8, 8, 8, 6), (3, 3, 6, 16), {}),            # a kernel row of 18 taps: not whole vectors
    ((8, 8, 8, 16), (3, 3, 16, 12), {}),          # 12 output channels: not eights
    ((8, 9, 9, 16), (3, 3, 16, 16), dict(dilation=(1, 2))),    # dilated columns
])
def test_tiles_do_not_apply(x_shape, w_shape, kwargs):
    assert not tiles_apply(conv_args_from_shapes("t", x_shape, w_shape, layout="NHWC",
                                                 **kwargs))


def test_tiles_do_not_depend_on_the_thread_count(rng):
    x, w, gy, a, kwargs, _ = _problem(CASES[0], np.float32, rng, "NHWC")
    per = 1                                          # four partial sums
    threads = numba.get_num_threads()
    one, two = np.empty_like(w), np.empty_like(w)
    try:
        numba.set_num_threads(1)
        direct_grad_tiles.weight_grad_tiles(x, gy, a, one, per, 2)
    finally:
        numba.set_num_threads(threads)
    direct_grad_tiles.weight_grad_tiles(x, gy, a, two, per, 2)
    assert np.array_equal(one, two)


def test_tiles_price_the_weight_gradient_at_their_rate(monkeypatch):
    a = conv_args_from_shapes("t", (32, 28, 28, 16), (3, 3, 16, 16), padding=1,
                              layout="NHWC")
    fast = direct_grad.grad_w_cost(a, fastconv.costs.DEFAULT_PROFILE).seconds
    monkeypatch.setattr(direct_grad, "tiles_apply", lambda a: False)
    slow = direct_grad.grad_w_cost(a, fastconv.costs.DEFAULT_PROFILE).seconds
    assert slow / fast == pytest.approx(
        direct_grad_tiles.TILES_GMACS / direct_grad.GRAD_W_GMACS, rel=0.05)


def test_gradients_through_the_tiles_match_finite_differences(rng, monkeypatch):
    x = Tensor(rng.standard_normal((4, 5, 6, 16)), requires_grad=True)
    w = Tensor(rng.standard_normal((3, 3, 16, 8)), requires_grad=True)
    a = conv_args_from_shapes("t", x.data.shape, w.data.shape, stride=2, padding=1,
                              layout="NHWC", dtype=np.float64)
    assert tiles_apply(a)
    calls = count_calls(monkeypatch, direct_grad_tiles, "_grad_w_tiles")
    assert gradcheck(lambda x, w: (F.conv2d(x, w, stride=2, padding=1, layout="NHWC",
                                            algo="im2col") ** 2).sum(), [x, w])
    assert calls


@pytest.mark.parametrize("x_shape,w_shape,stride", [
    ((16, 56, 56, 64), (3, 3, 64, 64), 1),        # 1.7 MB an image: one image a run
    ((64, 32, 32, 32), (3, 3, 32, 32), 1),
    ((32, 14, 14, 32), (3, 3, 32, 64), 2),
    ((32, 28, 28, 16), (3, 3, 16, 16), 1),
    ((64, 12, 12, 16), (3, 3, 16, 16), 1),        # small images: runs for the tasks
    ((3, 8, 8, 16), (3, 3, 16, 16), 1),           # fewer images than runs wanted
])
def test_runs_fit_half_an_l2_and_give_the_tasks(x_shape, w_shape, stride):
    """``tile_images``: runs of at most ``RUN_BYTES`` (or one image), a power of two of
    them where the batch allows, and at least ``MIN_TASKS`` tasks where it allows."""
    a = conv_args_from_shapes("t", x_shape, w_shape, stride=stride, padding=1,
                              layout="NHWC")
    per = direct_grad_tiles.tile_images(a)
    runs = -(-a.n // per)
    hp, wp = direct_grad.padded_size(a)
    image = (hp * wp * a.c_in + a.h_out * a.w_out * a.c_out) * 4
    assert per == 1 or per * image <= direct_grad_tiles.RUN_BYTES
    assert runs == a.n or runs & (runs - 1) == 0
    assert runs == a.n or runs * a.kh * a.c_out // 8 >= direct_grad_tiles.MIN_TASKS


def test_tiles_with_their_runs_match_the_reference_on_one_image_a_run(rng):
    """A batch run one image a run (each its own partial sum): the sum over the runs
    against the reference, and the same on one thread."""
    x = rng.standard_normal((3, 6, 6, 16)).astype(np.float32)
    w = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    gy = rng.standard_normal((3, 6, 6, 16)).astype(np.float32)
    a = conv_args_from_shapes("t", x.shape, w.shape, padding=1, layout="NHWC")
    assert direct_grad_tiles.tile_images(a) == 1
    gw = np.empty_like(w)
    direct_grad.weight_grad_into(x, gy, a, gw)
    _, gw0, _ = ref.conv2d_backward(gy.transpose(0, 3, 1, 2), x.transpose(0, 3, 1, 2),
                                    w.transpose(3, 2, 0, 1), padding=((1, 1), (1, 1)))
    assert ref.rel_error(gw.transpose(3, 2, 0, 1), gw0) <= ref.tolerance(np.float32,
                                                                        "im2col")
