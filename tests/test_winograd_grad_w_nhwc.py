"""The fused NHWC F(4x4, 3x3) weight gradient (``winograd.grad_w_nhwc``): which layers it
takes, its results against the formula (map edges, paddings, channel groups and runs of
tiles, both float types, a strided output array), the route through conv2d_backward and
the cost model, non-finite values, and a finite-difference check through autograd."""

import numpy as np
import pytest

import fastconv
from fastconv import _lanes, gradcheck
from fastconv._args import conv_args_from_shapes
from fastconv.algos import registry
from fastconv.algos.winograd import drivers, grad_w_nhwc
from tests import reference as ref
from tests.conftest import count_calls, to_nhwc

LANES = _lanes.per_register(4)


@pytest.mark.parametrize("c_in, c_out, itemsize, want", [
    (16, 16, 4, True),            # one register of outputs (AVX-512) or two (AVX2)
    (32, 64, 4, True),
    (64, 64, 4, True),
    (8, 16, 8, True),             # float64: 8 lanes (AVX-512)
    (12, 32, 4, False),           # inputs not whole eights
    (32, 24, 4, False),           # outputs not whole registers
    (grad_w_nhwc.MAX_CHANNELS + 8, 64, 4, False),     # above the channel bound
    (64, grad_w_nhwc.MAX_CHANNELS + 32, 4, False),
    (grad_w_nhwc.MAX_CHANNELS, grad_w_nhwc.MAX_CHANNELS, 4, True),
])
def test_which_channels_it_takes(c_in, c_out, itemsize, want):
    if itemsize == 8 and _lanes.per_register(8) != 8:
        pytest.skip("float64 vectors of 8 lanes need AVX-512")
    assert grad_w_nhwc.applies(c_in, c_out, itemsize) is want


def test_channel_groups_for_layers_of_few_tiles():
    assert grad_w_nhwc.channel_groups(64, 128, 2, 4) == 2        # 64 -> 64 at 7x7, batch 32
    assert grad_w_nhwc.channel_groups(32, 512, 2, 4) == 1        # 32 -> 32 at 14x14
    assert grad_w_nhwc.channel_groups(64, 128, 1, 4) == 1        # one thread
    assert grad_w_nhwc.channel_groups(40, 20, 2, 4) == 1         # 20 a group: not eights
    assert grad_w_nhwc.channel_groups(16, 4, 2, 4) == (2 if LANES == 8 else 1)


def _problem(rng, n, c, h, wd, d, dtype):
    x = rng.standard_normal((n, c, h, wd)).astype(dtype)
    w = rng.standard_normal((d, c, 3, 3)).astype(dtype)
    return x, w


# (n, c_in, h, w, c_out, padding (top/bottom, left/right)): sides that are not multiples
# of 4, fewer tiles than a block and several blocks, paddings 0-2 and uneven
CASES = [
    (2, 16, 9, 7, 16, (1, 1)),
    (3, 16, 7, 7, 32, (1, 1)),
    (2, 32, 13, 11, 64, (2, 0)),
    (5, 64, 7, 7, 64, (1, 1)),
    (1, 24, 10, 6, 32, (0, 2)),
    (4, 32, 16, 16, 32, (1, 1)),
]


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_fused_weight_gradient_matches_the_formula(case, dtype, groups, rng):
    n, c, h, wd, d, (ph, pw) = case
    item = np.dtype(dtype).itemsize
    if dtype == np.float64:
        d //= 2          # float64 vectors hold half as many
    if not grad_w_nhwc.applies(c, d, item) or (c // groups) % 8:
        pytest.skip("channels the fused gradient does not take here")
    x, w = _problem(rng, n, c, h, wd, d, dtype)
    pads = ((ph, ph), (pw, pw))
    gy = rng.standard_normal(ref.conv2d(x, w, padding=pads).shape).astype(dtype)
    _, want, _ = ref.conv2d_backward(gy, x, w, padding=pads)
    xn, _ = to_nhwc(x, w)
    gyn = np.ascontiguousarray(gy.transpose(0, 2, 3, 1))
    got = np.full((3, 3, c, d), np.nan, dtype)
    assert grad_w_nhwc.fused_grad_w(gyn, xn, got, (ph, pw), groups=groups) is True
    assert ref.rel_error(got.transpose(3, 2, 0, 1), want) <= ref.tolerance(dtype, "winograd")


def test_into_a_strided_array_and_on_one_thread(rng):
    """An output that is a view (every other entry of a larger array) gets the values;
    one numba thread gives the same values as two (one run of tiles)."""
    import numba

    x, w = _problem(rng, 3, 16, 9, 9, 32, np.float32)
    gy = rng.standard_normal((3, 32, 9, 9)).astype(np.float32)
    _, want, _ = ref.conv2d_backward(gy, x, w, padding=((1, 1), (1, 1)))
    xn, _ = to_nhwc(x, w)
    gyn = np.ascontiguousarray(gy.transpose(0, 2, 3, 1))
    big = np.zeros((3, 3, 16, 64), np.float32)
    assert grad_w_nhwc.fused_grad_w(gyn, xn, big[..., ::2], (1, 1))
    assert ref.rel_error(big[..., ::2].transpose(3, 2, 0, 1), want) <= 1e-4
    assert not big[..., 1::2].any()
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = np.empty((3, 3, 16, 32), np.float32)
        assert grad_w_nhwc.fused_grad_w(gyn, xn, one, (1, 1))
    finally:
        numba.set_num_threads(before)
    assert ref.rel_error(one.transpose(3, 2, 0, 1), want) <= 1e-4


def test_conv2d_backward_routes_small_resnet_layers_here(rng, monkeypatch):
    """algo "winograd" and "auto" in NHWC: the weight gradient of a 16 -> 16 or 32 -> 32
    layer runs fused (no NCHW copies, no im2col), the registry and the cost model say
    so; layers it does not take keep their routes."""
    def args(c, d, layout="NHWC", h=14):
        x = (32, c, h, h) if layout == "NCHW" else (32, h, h, c)
        wsh = (d, c, 3, 3) if layout == "NCHW" else (3, 3, c, d)
        return conv_args_from_shapes("t", x, wsh, padding=1, layout=layout,
                                     dtype=np.float32)

    entry = registry.get("winograd")
    assert drivers.grad_w_fused(args(32, 32)) and entry.grads(args(32, 32)) == (True, True)
    detail = entry.backward_cost(args(32, 32), fastconv.costs.DEFAULT_PROFILE).detail
    assert detail == "Winograd grad_x and grad_w"
    assert drivers.grad_w_fused(args(32, 32, "NCHW"))       # staged (grad_w_nchw)
    assert not drivers.grad_w_fused(args(20, 32))
    x, w = _problem(rng, 8, 32, 14, 14, 32, np.float32)
    gy = rng.standard_normal((8, 32, 14, 14)).astype(np.float32)
    _, want, _ = ref.conv2d_backward(gy, x, w, padding=((1, 1), (1, 1)))
    xn, wn = to_nhwc(x, w)
    gyn = np.ascontiguousarray(gy.transpose(0, 2, 3, 1))
    calls = count_calls(monkeypatch, grad_w_nhwc, "fused_grad_w")
    copies = count_calls(monkeypatch, drivers, "_grad_w_nchw")
    for algo in ("winograd", "auto"):
        _, gw, _ = fastconv.conv2d_backward(gyn, xn, wn, padding=1, layout="NHWC",
                                            algo=algo, needs_input_grad=(False, True, False))
        assert ref.rel_error(gw.transpose(3, 2, 0, 1), want) <= 1e-4
    assert len(calls) == 2 and not copies


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_get_the_formulas_pattern(rng, bad):
    """A NaN or Inf in x reaches every entry of its tiles' transforms (Inf - Inf is NaN);
    the flag sends the weight gradient to im2col, whose result has the formula's
    pattern: NaN only where the bad value is read."""
    x, w = _problem(rng, 2, 16, 8, 8, 32, np.float32)
    x[1, 3, 4, 5] = bad
    gy = rng.standard_normal((2, 32, 8, 8)).astype(np.float32)
    xn, wn = to_nhwc(x, w)
    gyn = np.ascontiguousarray(gy.transpose(0, 2, 3, 1))
    fused = np.empty((3, 3, 16, 32), np.float32)
    assert grad_w_nhwc.fused_grad_w(gyn, xn, fused, (1, 1)) is False
    _, got, _ = fastconv.conv2d_backward(gyn, xn, wn, padding=1, layout="NHWC",
                                         algo="winograd",
                                         needs_input_grad=(False, True, False))
    _, want, _ = fastconv.conv2d_backward(gyn, xn, wn, padding=1, layout="NHWC",
                                          algo="im2col",
                                          needs_input_grad=(False, True, False))
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    assert np.isfinite(got[:, :, :3]).all() and not np.isfinite(got[:, :, 3]).all()


def test_autograd_weight_gradient_against_finite_differences(rng, monkeypatch):
    """float64 through the autograd conv2d, a channels-last layer whose weight gradient
    runs fused (8 -> 16 channels where float64 fills 8 lanes, else 16 -> 16)."""
    from fastconv.nn.functional import conv2d

    c = 8 if _lanes.per_register(8) == 8 else 16
    assert drivers.grad_w_fused(conv_args_from_shapes(
        "t", (2, 6, 5, c), (3, 3, c, 16), padding=1, layout="NHWC", dtype=np.float64))
    calls = count_calls(monkeypatch, grad_w_nhwc, "fused_grad_w")
    x = fastconv.Tensor(rng.standard_normal((2, 6, 5, c)))
    w = fastconv.Tensor(rng.standard_normal((3, 3, c, 16)), requires_grad=True)
    coefs = fastconv.Tensor(rng.standard_normal((2, 6, 5, 16)))
    assert gradcheck(lambda wt: (conv2d(x, wt, padding=1, layout="NHWC", algo="winograd")
                                 * coefs).sum(), [w], atol=1e-6, rtol=1e-5)
    assert calls


def test_the_smaller_tile_takes_the_nchw_copies(rng, monkeypatch):
    """F(2x2, 3x3) (``config.WINOGRAD_TILE = 2``) has no fused weight gradient: the same
    layer's runs in the Winograd domain on NCHW copies, as the reference; the tile size
    read at each call, after a call with F(4x4, 3x3) asked the same problem."""
    from fastconv import config

    x, w = _problem(rng, 4, 32, 10, 10, 32, np.float64)
    gy = rng.standard_normal((4, 32, 10, 10))
    _, want, _ = ref.conv2d_backward(gy, x, w, padding=((1, 1), (1, 1)))
    xn, wn = to_nhwc(x, w)
    gyn = np.ascontiguousarray(gy.transpose(0, 2, 3, 1))
    fused = count_calls(monkeypatch, grad_w_nhwc, "fused_grad_w")
    copies = count_calls(monkeypatch, drivers, "_grad_w_nchw")
    for m, n_fused, n_copies in ((4, 1, 0), (2, 1, 1)):
        monkeypatch.setattr(config, "WINOGRAD_TILE", m)
        _, gw, _ = fastconv.conv2d_backward(gyn, xn, wn, padding=1, layout="NHWC",
                                            algo="winograd",
                                            needs_input_grad=(False, True, False))
        assert (len(fused), len(copies)) == (n_fused, n_copies)
        assert ref.rel_error(gw.transpose(3, 2, 0, 1), want) <= 1e-10
