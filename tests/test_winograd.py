"""algo="winograd": F(2x2, 3x3) and F(4x4, 3x3) against the reference, forward and
backward, over paddings, dilations, odd sizes, groups, bias, layouts, dtypes and
chunkings."""

import numpy as np
import pytest

import fastconv
from fastconv import autotune, config
from fastconv._args import conv_args_from_shapes
from fastconv.algos import winograd
from fastconv.layout import LAYOUTS

from . import reference as ref
from .conftest import from_nhwc, to_nhwc

#: Small NCHW layers' weight gradients in the Winograd domain, as these tests check them
pytestmark = pytest.mark.usefixtures("nchw_winograd_grad_w")

# (n, c_in, h, w, c_out, padding, groups, dilation)
CASES = [
    (2, 3, 7, 7, 4, 1, 1, 1),
    (2, 3, 7, 8, 4, 0, 1, 1),             # odd/even output sizes, no padding
    (1, 4, 9, 6, 6, ((0, 2), (1, 1)), 2, 1),
    (3, 6, 6, 6, 6, "same", 6, 1),        # depthwise
    (1, 2, 4, 4, 2, 3, 1, 1),             # padding > 2: all-zero border tiles
    (2, 5, 1, 1, 3, 1, 1, 1),             # 1x1 image, only padding around it
    (1, 3, 3, 3, 2, 0, 1, 1),             # a single output pixel
    (2, 4, 11, 13, 5, ((2, 0), (0, 2)), 1, 1),
    (2, 3, 12, 11, 4, 2, 1, 2),           # dilation: 2x2 phases
    (1, 4, 13, 10, 4, ((3, 0), (1, 4)), 2, (3, 2)),  # uneven phases, padding > dilation
    (1, 2, 5, 9, 3, 0, 1, (2, 4)),        # a phase with no output rows
]


def _ids(case):
    return "n{}c{}h{}w{}-d{}-p{}-g{}-r{}".format(*case).replace(" ", "")


@pytest.fixture(params=[2, 4], ids=["F2x2", "F4x4"])
def tile(request, monkeypatch):
    monkeypatch.setattr(config, "WINOGRAD_TILE", request.param)
    return request.param


def _arrays(case, dtype, seed=0):
    n, c, h, w, d, padding, groups, dilation = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((d, c // groups, 3, 3)).astype(dtype)
    b = rng.standard_normal(d).astype(dtype)
    a = conv_args_from_shapes("ref", x.shape, wt.shape, 1, padding, dilation, groups)
    return x, wt, b, a, dict(padding=padding, groups=groups, dilation=dilation)


# float32: max error / max |y| (F(4x4, 3x3) multiplies by up to 8 and 1/24 in its
# transforms, so it loses a few more bits than F(2x2, 3x3); im2col's is about 1e-7)
F32_TOL = {2: 1e-6, 4: 1e-5}
# the weight gradient runs the forward's tile: F(2x2, 3x3) about 7e-7, F(4x4, 3x3) 7e-6
GRAD_W_TOL = {2: 2e-6, 4: 1.5e-5}


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_forward_matches_reference(case, dtype, layout, tile):
    x, wt, b, a, kw = _arrays(case, dtype)
    want = ref.conv2d(x, wt, b, a.stride, a.padding, a.dilation, a.groups)
    if layout == "NHWC":
        xl, wl = to_nhwc(x, wt)
        got = from_nhwc(fastconv.conv2d(xl, wl, b, layout="NHWC", algo="winograd", **kw))
    else:
        got = fastconv.conv2d(x, wt, b, algo="winograd", **kw)
    assert got.dtype == dtype and got.shape == want.shape
    tol = 1e-13 if dtype == np.float64 else F32_TOL[tile]
    assert ref.rel_error(got, want) <= tol


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_backward_matches_reference(case, dtype, layout, tile):
    x, wt, _, a, kw = _arrays(case, dtype)
    gy = np.random.default_rng(1).standard_normal(a.y_shape).astype(dtype)
    want_x, want_w, want_b = ref.conv2d_backward(gy, x, wt, a.stride, a.padding,
                                                 a.dilation, a.groups)
    if layout == "NHWC":
        xl, wl = to_nhwc(x, wt)
        gx, gw, gb = fastconv.conv2d_backward(np.ascontiguousarray(gy.transpose(0, 2, 3, 1)),
                                              xl, wl, layout="NHWC", algo="winograd", **kw)
        gx, gw = from_nhwc(gx), gw.transpose(3, 2, 0, 1)
    else:
        gx, gw, gb = fastconv.conv2d_backward(gy, x, wt, algo="winograd", **kw)
    tol = 1e-13 if dtype == np.float64 else F32_TOL[tile]
    assert ref.rel_error(gx, want_x) <= tol
    assert ref.rel_error(gw, want_w) <= (1e-13 if dtype == np.float64 else GRAD_W_TOL[tile])
    assert ref.rel_error(gb, want_b) <= tol


def test_gradients_match_finite_differences(tile):
    """float64 central differences of sum(conv2d * probe) against conv2d_backward."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 6, 5))
    w = rng.standard_normal((4, 3, 3, 3))
    probe = rng.standard_normal((2, 4, 6, 5))

    def loss(xv, wv):
        return float(np.sum(fastconv.conv2d(xv, wv, padding=1, algo="winograd") * probe))

    gx, gw, _ = fastconv.conv2d_backward(probe, x, w, padding=1, algo="winograd")
    for arr, grad in ((x, gx), (w, gw)):
        num = ref.numerical_grad(lambda: loss(x, w), arr, eps=1e-6)
        np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("chunk_bytes", [1, 4096, 1 << 30])
def test_chunking_does_not_change_the_result(chunk_bytes, tile, monkeypatch):
    """One tile row per chunk (chunks split images), a few rows, the whole batch."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 5, 13, 10))
    w = rng.standard_normal((6, 5, 3, 3))
    b = rng.standard_normal(6)
    want = fastconv.conv2d(x, w, b, padding=1, algo="im2col")
    monkeypatch.setattr(config, "WINOGRAD_CHUNK_BYTES", chunk_bytes)
    got = fastconv.conv2d(x, w, b, padding=1, algo="winograd")
    assert ref.rel_error(got, want) <= 1e-13
    gy = rng.standard_normal(want.shape)
    gx, gw, _ = fastconv.conv2d_backward(gy, x, w, padding=1, algo="winograd")
    wx, ww, _ = fastconv.conv2d_backward(gy, x, w, padding=1, algo="im2col")
    assert ref.rel_error(gx, wx) <= 1e-13 and ref.rel_error(gw, ww) <= 1e-13


def test_float32_accuracy_on_a_resnet_layer(tile):
    """The error on a 64-channel layer, measured against float64: F(2x2, 3x3) within
    1.5x of im2col's, F(4x4, 3x3) within 15x (both far below float32's ~1e-4 tolerance
    of the other tests); the weight gradient within GRAD_W_TOL."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 64, 16, 16))
    w = rng.standard_normal((64, 64, 3, 3)) / 24.0
    want = fastconv.conv2d(x, w, padding=1, algo="im2col")
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    err_wino = ref.rel_error(fastconv.conv2d(x32, w32, padding=1, algo="winograd"), want)
    err_cols = ref.rel_error(fastconv.conv2d(x32, w32, padding=1, algo="im2col"), want)
    assert err_wino <= (1.5 if tile == 2 else 15) * err_cols
    assert err_wino <= F32_TOL[tile]
    gy = rng.standard_normal(want.shape)
    _, want_w, _ = fastconv.conv2d_backward(gy, x, w, padding=1, algo="im2col")
    _, gw, _ = fastconv.conv2d_backward(gy.astype(np.float32), x32, w32, padding=1,
                                        algo="winograd")
    assert ref.rel_error(gw, want_w) <= GRAD_W_TOL[tile]


@pytest.mark.parametrize("bad", [dict(stride=2, ksize=3), dict(stride=1, ksize=5),
                                 dict(stride=(1, 2), ksize=3)])
def test_unsupported_problems_are_refused(bad, rng):
    x = rng.standard_normal((1, 2, 9, 9))
    w = rng.standard_normal((2, 2, bad["ksize"], bad["ksize"]))
    kw = dict(stride=bad["stride"], algo="winograd")
    sh, sw = (bad["stride"],) * 2 if isinstance(bad["stride"], int) else bad["stride"]
    msg = (r"conv2d: algo='winograd' needs a 3x3 kernel with stride 1; got "
           rf"kernel {bad['ksize']}x{bad['ksize']}, stride \({sh}, {sw}\)")
    with pytest.raises(ValueError, match=msg):
        fastconv.conv2d(x, w, **kw)
    y = fastconv.conv2d(x, w, stride=bad["stride"])
    with pytest.raises(ValueError, match="conv2d_backward: algo='winograd' needs"):
        fastconv.conv2d_backward(np.ones_like(y), x, w, **kw)


def test_bad_tile_setting_is_refused(monkeypatch, rng):
    monkeypatch.setattr(config, "WINOGRAD_TILE", 3)
    x = rng.standard_normal((1, 2, 6, 6))
    w = rng.standard_normal((2, 2, 3, 3))
    with pytest.raises(ValueError, match=r"WINOGRAD_TILE=3 must be 2 or 4"):
        fastconv.conv2d(x, w, algo="winograd")


def test_non_finite_values_stay_local(tile):
    """A NaN reaches only the outputs whose window holds it (as in the direct formula),
    not the whole tile row or plane."""
    x = np.ones((1, 1, 12, 12), np.float32)
    x[0, 0, 5, 6] = np.nan
    w = np.ones((1, 1, 3, 3), np.float32)
    y = fastconv.conv2d(x, w, padding=1, algo="winograd")[0, 0]
    nan = np.isnan(y)
    assert nan[4:7, 5:8].all()
    assert nan.sum() == 9


def test_auto_picks_winograd_for_dense_3x3_layers_only():
    assert fastconv.choose_algorithm((16, 128, 28, 28), (128, 128, 3, 3), padding=1) \
        == "winograd"
    assert fastconv.choose_algorithm((16, 64, 56, 56), (128, 64, 3, 3), stride=2,
                                     padding=1) != "winograd"
    assert fastconv.choose_algorithm((16, 64, 56, 56), (64, 64, 3, 3), padding=2,
                                     dilation=2) == "winograd"
    p = fastconv.plan((16, 64, 56, 56), (64, 64, 5, 5), padding=2)
    assert "winograd" not in p.estimates          # does not apply: not considered
    p = fastconv.plan((16, 64, 56, 56), (64, 64, 3, 3), padding=1)
    assert set(p.estimates) == set(fastconv.ALGORITHMS)
    assert autotune.applicable(conv_args_from_shapes(
        "t", (1, 1, 5, 5), (1, 1, 3, 3), 1, 0, 1, 1)) == fastconv.ALGORITHMS


def test_workspace_stays_within_the_budget(monkeypatch):
    monkeypatch.setattr(config, "WORKSPACE_BYTES", 1 << 20)
    a = conv_args_from_shapes("t", (8, 64, 56, 56), (64, 64, 3, 3), 1, 1, 1, 1)
    rows = winograd.chunk_rows(a)
    m = winograd.tile_size()
    _, tw = winograd.tile_grid(a.h_out, a.w_out, m)
    assert rows * tw * winograd.transformed(m) * 128 * 4 <= 1 << 20


@pytest.mark.parametrize("out,pad,dilation", [(7, 2, 2), (10, 3, 3), (3, 0, 4), (5, 1, 1)])
def test_phases_cover_every_output_once(out, pad, dilation):
    """Each output i = d*i' + rho reads input d*(i' + a - p') + sigma, as the direct
    formula's i + d*a - pad."""
    seen = []
    for rho, sigma, p, count in winograd.phases(out, pad, dilation):
        for i2 in range(count):
            i = dilation * i2 + rho
            seen.append(i)
            for a in range(3):
                assert dilation * (i2 + a - p) + sigma == i + dilation * a - pad
    assert sorted(seen) == list(range(out))


def test_weight_gradient_non_finite_pattern_is_the_direct_one():
    """A NaN near the border reaches only the taps whose windows read it (im2col
    recomputes grad_w when the Winograd domain would smear it over all nine)."""
    x = np.ones((1, 1, 8, 8))
    x[0, 0, 0, 0] = np.nan
    w = np.ones((1, 1, 3, 3))
    gy = np.ones((1, 1, 8, 8))
    _, gw, _ = fastconv.conv2d_backward(gy, x, w, padding=1, algo="winograd")
    _, want, _ = fastconv.conv2d_backward(gy, x, w, padding=1, algo="naive")
    np.testing.assert_array_equal(np.isnan(gw), np.isnan(want))
    assert np.isnan(want).sum() == 4       # taps (1..2, 1..2) read x[0, 0]


def test_threads_share_the_gemm_helpers():
    """Python threads running layers big enough for split GEMMs at once (each split over
    the helper pool) get identical results, those of the main thread to rounding (with
    OpenBLAS's Haswell kernel a thread other than the main one gets other roundings,
    about 1e-6 relative, as accurate against float64; bitwise the same with SkylakeX's)."""
    import threading

    from fastconv import _blas

    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 64, 40, 40)).astype(np.float32)
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    assert not _blas.is_small(64, 64, 8 * 10 * 10, 36)    # one chunk, split GEMMs
    want = fastconv.conv2d(x, w, padding=1, algo="winograd")
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(fastconv.conv2d(x, w, padding=1, algo="winograd"))
        except Exception as exc:  # reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 20
    assert all(np.array_equal(r, results[0]) for r in results)
    assert np.linalg.norm(results[0] - want) <= 1e-5 * np.linalg.norm(want)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_forward_reports_non_finite_outputs_instead_of_falling_back(layout, tile):
    """winograd.forward itself never calls another algorithm: it returns whether every
    output is finite, and conv2d recomputes a False call with im2col."""
    dims = LAYOUTS[layout]
    x = np.ones(dims.shape(1, 2, 8, 8), np.float32)
    w = np.ones(dims.weight_shape(3, 2, 3, 3), np.float32)
    a = conv_args_from_shapes("t", x.shape, w.shape, 1, 1, layout=layout)
    out = np.empty(a.y_layout_shape, np.float32)
    assert winograd.forward(x, w, a, out) is True
    assert np.array_equal(out, fastconv.conv2d(x, w, padding=1, layout=layout,
                                                algo="naive"))
    dims.to_canonical_view(x)[0, 1, 3, 4] = np.inf   # Inf - Inf in the transforms: NaN
    with np.errstate(invalid="ignore"):   # numpy's warning for Inf * 0 in im2col's GEMM
        assert winograd.forward(x, w, a, out) is False
        want = fastconv.conv2d(x, w, padding=1, layout=layout, algo="naive")
        got = fastconv.conv2d(x, w, padding=1, layout=layout, algo="winograd")
    np.testing.assert_array_equal(got, want)


def test_backward_reports_which_gradients_are_good(tile):
    """(ok_x, ok_w): True for a finite result and for a gradient not asked for; False for
    a non-finite one, and for one passed although not supported (left unwritten)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 2, 6, 6))
    w = rng.standard_normal((3, 2, 3, 3))
    gy = rng.standard_normal((2, 3, 6, 6))
    a = conv_args_from_shapes("t", x.shape, w.shape, 1, 1)
    gx, gw = np.empty_like(x), np.empty_like(w)
    assert winograd.backward(gy, x, w, a, gx, gw) == (True, True)
    assert winograd.backward(gy, x, w, a, None, gw) == (True, True)
    assert winograd.backward(gy, x, w, a, gx, None) == (True, True)
    x_bad = x.copy()
    x_bad[0, 0, 0, 0] = np.nan
    assert winograd.backward(gy, x_bad, w, a, None, gw) == (True, False)
    gy_bad = gy.copy()
    gy_bad[1, 2, 3, 3] = np.inf
    assert winograd.backward(gy_bad, x, w, a, gx, None) == (False, True)
    # padding 3: grad_x is not supported (grad_w is)
    a3 = conv_args_from_shapes("t", x.shape, w.shape, 1, 3)
    assert not winograd.grad_x_supported(a3) and winograd.grad_w_supported(a3)
    gx3 = np.full((2, 2, 6, 6), 7.0)
    gw3 = np.empty_like(w)
    gy3 = rng.standard_normal(a3.y_shape)
    assert winograd.backward(gy3, x, w, a3, gx3, gw3) == (False, True)
    assert (gx3 == 7.0).all()
    ad = conv_args_from_shapes("t", x.shape, w.shape, 1, 2, 2)
    assert winograd.backward(rng.standard_normal(ad.y_shape), x, w, ad, None, None) \
        == (True, True)


def test_dilated_backward_runs_per_phase():
    """A dilated layer's gradients are Winograd's (one undilated problem per phase) while
    every phase problem's padding is at most 2; a non-finite phase flags its gradient."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 2, 9, 8))
    w = rng.standard_normal((3, 2, 3, 3))
    ad = conv_args_from_shapes("t", x.shape, w.shape, 1, 2, 2)
    assert winograd.grad_x_supported(ad) and winograd.grad_w_supported(ad)
    assert [sub.padding for *_, sub in winograd.phase_problems(ad)] == [((1, 1), (1, 1))] * 4
    gy = rng.standard_normal(ad.y_shape)
    gx, gw = np.empty_like(x), np.empty_like(w)
    assert winograd.backward(gy, x, w, ad, gx, gw) == (True, True)
    want = ref.conv2d_backward(gy, x, w, ad.stride, ad.padding, ad.dilation)
    assert ref.rel_error(gx, want[0]) <= 1e-13 and ref.rel_error(gw, want[1]) <= 1e-13
    x_bad = x.copy()
    x_bad[1, 1, 4, 3] = np.nan
    assert winograd.backward(gy, x_bad, w, ad, gx, gw) == (True, False)
    # padding 6 at dilation 2: phase problems padded by 3, beyond grad_x's transform
    a6 = conv_args_from_shapes("t", x.shape, w.shape, 1, 6, 2)
    assert not winograd.grad_x_supported(a6) and winograd.grad_w_supported(a6)


def test_exact_algorithms_return_none():
    """naive, im2col and fft are always exact: their forward and backward return None."""
    from fastconv.algos import fft, im2col, naive

    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 2, 6, 6))
    w = rng.standard_normal((3, 2, 3, 3))
    a = conv_args_from_shapes("t", x.shape, w.shape, 1, 1)
    for mod in (naive, im2col, fft):
        assert mod.forward(x, w, a, np.empty(a.y_shape)) is None
        assert mod.backward(np.ones(a.y_shape), x, w, a, np.empty_like(x),
                            np.empty_like(w)) is None
