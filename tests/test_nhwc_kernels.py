"""The NHWC kernels of their own (direct, depthwise, Winograd) against the NCHW
references of tests/reference.py, both layouts, float32 and float64."""

import numpy as np
import pytest

import fastconv
from fastconv.algos import registry
from fastconv.nn import functional as F

from . import reference as ref
from .conftest import count_calls

#: (C_in, C_out, groups, kernel, stride, padding, dilation): dense, grouped, depthwise,
#: depthwise with a channel multiplier, single channel, strided, dilated, rectangular.
CASES = [
    (3, 4, 1, 3, 1, 1, 1),
    (4, 6, 2, 3, 2, 1, 1),
    (5, 5, 5, 3, 1, 1, 1),
    (4, 4, 4, 3, 2, 2, 2),
    (3, 6, 3, 3, 1, 0, 1),
    (1, 3, 1, 5, 1, 2, 1),
    (6, 4, 2, 2, 1, 0, 2),
    (2, 3, 1, (1, 3), (2, 1), (0, 2), 1),
]


def _nhwc(x, w):
    return (np.ascontiguousarray(x.transpose(0, 2, 3, 1)),
            np.ascontiguousarray(w.transpose(2, 3, 1, 0)))


def _problem(rng, case, dtype, n=2, h=7, wd=8):
    c, d, g, k, s, p, r = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal((n, c, h, wd)).astype(dtype)
    w = rng.standard_normal((d, c // g, kh, kw)).astype(dtype)
    b = rng.standard_normal(d).astype(dtype)
    ph, pw = (p, p) if isinstance(p, int) else p
    pad = ((ph, ph), (pw, pw))
    stride = (s, s) if isinstance(s, int) else s
    kwargs = dict(stride=s, padding=p, dilation=r, groups=g)
    refargs = dict(stride=stride, padding=pad, dilation=(r, r), groups=g)
    return x, w, b, kwargs, refargs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_direct_forward_and_backward_match_the_reference(rng, case, dtype, layout):
    x, w, b, kwargs, refargs = _problem(rng, case, dtype)
    want = ref.conv2d(x, w, b, **refargs)
    gy = rng.standard_normal(want.shape).astype(dtype)
    gx_want, gw_want, _ = ref.conv2d_backward(gy, x, w, **refargs)
    tol = ref.tolerance(dtype, "naive")
    if layout == "NHWC":
        xl, wl = _nhwc(x, w)
        gyl = np.ascontiguousarray(gy.transpose(0, 2, 3, 1))
    else:
        xl, wl, gyl = x, w, gy
    y = fastconv.conv2d(xl, wl, b, **kwargs, layout=layout, algo="naive")
    gx, gw, _ = fastconv.conv2d_backward(gyl, xl, wl, **kwargs, layout=layout, algo="naive")
    dims = fastconv.layout.LAYOUTS[layout]
    assert y.dtype == dtype and gx.dtype == dtype and gw.dtype == dtype
    assert ref.rel_error(dims.to_canonical_view(y), want) < tol
    assert ref.rel_error(dims.to_canonical_view(gx), gx_want) < tol
    assert ref.rel_error(dims.weight_to_canonical_view(gw), gw_want) < tol


def test_nhwc_direct_runs_without_layout_copies(rng, monkeypatch):
    """Dense, grouped and depthwise NHWC layers never call the NCHW copies."""
    from fastconv.algos import _nhwc as copies

    def forbidden(*a, **k):
        raise AssertionError("copied to NCHW")

    monkeypatch.setattr(copies, "to_nchw", forbidden)
    monkeypatch.setattr(copies, "write_nhwc", forbidden)
    for case in (CASES[0], CASES[1], CASES[2]):
        x, w, b, kwargs, refargs = _problem(rng, case, np.float64)
        xl, wl = _nhwc(x, w)
        y = fastconv.conv2d(xl, wl, b, **kwargs, layout="NHWC", algo="naive")
        assert ref.rel_error(y.transpose(0, 3, 1, 2), ref.conv2d(x, w, b, **refargs)) < 1e-10
        gy = np.ones_like(y)
        fastconv.conv2d_backward(gy, xl, wl, **kwargs, layout="NHWC", algo="naive")


@pytest.mark.parametrize("case", [CASES[1], CASES[3], CASES[4]])
def test_nhwc_direct_gradients_match_finite_differences(rng, case):
    x, w, b, kwargs, _ = _problem(rng, case, np.float64, n=1, h=5, wd=5)
    xl, wl = _nhwc(x, w)
    xt = fastconv.Tensor(xl, requires_grad=True)
    wt = fastconv.Tensor(wl, requires_grad=True)
    bt = fastconv.Tensor(b, requires_grad=True)
    assert fastconv.gradcheck(
        lambda a, k, c: F.conv2d(a, k, c, **kwargs, layout="NHWC", algo="naive"),
        [xt, wt, bt])


def test_the_registry_and_cost_models_know_the_nhwc_kernels():
    """The direct and Winograd entries list NHWC; their models charge NHWC no copies
    (Winograd's workspace is the same in both layouts where NHWC goes in chunks, smaller
    where it runs fused, the direct kernel's none), and "auto" runs a depthwise NHWC
    layer's backward with the direct kernels."""
    assert registry.get("naive").layouts == ("NCHW", "NHWC")
    assert registry.get("winograd").layouts == ("NCHW", "NHWC")
    nchw = fastconv.plan((8, 128, 20, 20), (128, 128, 3, 3), padding=1)
    nhwc = fastconv.plan((8, 20, 20, 128), (3, 3, 128, 128), padding=1, layout="NHWC")
    assert nhwc.workspaces["winograd"] == nchw.workspaces["winograd"]
    nchw = fastconv.plan((8, 16, 20, 20), (16, 16, 3, 3), padding=1)
    nhwc = fastconv.plan((8, 20, 20, 16), (3, 3, 16, 16), padding=1, layout="NHWC")
    assert "fused" in nhwc.why or nhwc.algorithm != "winograd"
    assert 0 < nhwc.workspaces["winograd"] < nchw.workspaces["winograd"]
    assert nhwc.workspaces["naive"] == 0
    dw = fastconv.plan((8, 28, 28, 32), (3, 3, 1, 32), padding=1, groups=32,
                       layout="NHWC", backward=True)
    assert dw.algorithm == "naive"


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nhwc_pointwise_is_one_gemm_without_unfold(rng, monkeypatch, groups, dtype):
    from fastconv.algos.im2col import drivers

    def forbidden(*a, **k):
        raise AssertionError("unfolded a pointwise layer")

    monkeypatch.setattr(drivers, "_im2col_nhwc", forbidden)
    x, w, b, kwargs, refargs = _problem(rng, (4, 6, groups, 1, 1, 0, 1), dtype)
    xl, wl = _nhwc(x, w)
    y = fastconv.conv2d(xl, wl, b, **kwargs, layout="NHWC", algo="im2col")
    assert y.dtype == dtype
    assert ref.rel_error(y.transpose(0, 3, 1, 2), ref.conv2d(x, w, b, **refargs)) < \
        ref.tolerance(dtype, "im2col")


#: (C_in, C_out, groups, padding, dilation, (H, W)): 3x3 stride-1 layers Winograd runs.
WINOGRAD_CASES = [
    (3, 4, 1, 1, 1, (7, 9)),
    (4, 6, 2, 0, 1, (9, 6)),
    (4, 8, 4, 2, 2, (8, 8)),
    (5, 5, 5, 1, 1, (6, 7)),
    (2, 3, 1, (2, 0), (1, 2), (5, 10)),
]


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", WINOGRAD_CASES)
def test_nhwc_winograd_matches_the_reference(rng, monkeypatch, m, dtype, case):
    """Forward and backward in NHWC (grad_x by its own transforms where Winograd
    computes it); the NCHW transforms are forbidden in the forward."""
    from fastconv import config
    from fastconv.algos import _nhwc as copies

    monkeypatch.setattr(config, "WINOGRAD_TILE", m)
    c, d, g, p, r, hw = case
    x, w, b, kwargs, refargs = _problem(rng, (c, d, g, 3, 1, p, r), dtype, h=hw[0], wd=hw[1])
    kwargs["dilation"] = r
    refargs["dilation"] = (r, r) if isinstance(r, int) else r
    want = ref.conv2d(x, w, b, **refargs)
    gy = rng.standard_normal(want.shape).astype(dtype)
    gx_want, gw_want, _ = ref.conv2d_backward(gy, x, w, **refargs)
    xl, wl = _nhwc(x, w)
    tol = 1e-9 if dtype == np.float64 else (5e-6 if m == 4 else 1e-5)
    with monkeypatch.context() as patch:
        patch.setattr(copies, "to_nchw", None)
        y = fastconv.conv2d(xl, wl, b, **kwargs, layout="NHWC", algo="winograd")
    gx, gw, _ = fastconv.conv2d_backward(np.ascontiguousarray(gy.transpose(0, 2, 3, 1)),
                                         xl, wl, **kwargs, layout="NHWC", algo="winograd")
    assert y.dtype == dtype and gx.dtype == dtype and gw.dtype == dtype
    assert ref.rel_error(y.transpose(0, 3, 1, 2), want) < tol
    assert ref.rel_error(gx.transpose(0, 3, 1, 2), gx_want) < tol
    assert ref.rel_error(gw.transpose(3, 2, 0, 1), gw_want) < tol


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nhwc_winograd_reports_non_finite_outputs(rng, bad):
    """A NaN or Inf reaches the NHWC output transform's flags: conv2d's fallback gives
    the direct formula's pattern."""
    from fastconv._args import conv_args_from_shapes
    from fastconv.algos.winograd import drivers

    x = rng.standard_normal((1, 6, 6, 2))
    x[0, 2, 3, 1] = bad
    w = rng.standard_normal((3, 3, 2, 3))
    args = conv_args_from_shapes("t", x.shape, w.shape, padding=1, layout="NHWC",
                                 dtype=x.dtype)
    out = np.empty((1, 6, 6, 3))
    assert drivers.forward(x, w, args, out) is False
    y = fastconv.conv2d(x, w, padding=1, layout="NHWC", algo="winograd")
    want = fastconv.conv2d(x, w, padding=1, layout="NHWC", algo="naive")
    assert np.array_equal(np.isnan(y), np.isnan(want))
    assert np.array_equal(np.isinf(y), np.isinf(want))


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[3]])
def test_nhwc_direct_without_bias(rng, case):
    """No bias: the kernels start from zero (the depthwise 3x3 interior pixels included)."""
    x, w, _, kwargs, refargs = _problem(rng, case, np.float32, h=9, wd=10)
    xl, wl = _nhwc(x, w)
    y = fastconv.conv2d(xl, wl, **kwargs, layout="NHWC", algo="naive")
    assert ref.rel_error(y.transpose(0, 3, 1, 2), ref.conv2d(x, w, **refargs)) < 1e-5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_nhwc_im2col_backward_folds_like_the_reference(rng, monkeypatch, case, dtype):
    """im2col's NHWC backward through its GEMMs and ``_col2im_nhwc`` (the image-last path
    switched off): dense, grouped, depthwise, strided, dilated and rectangular layers,
    in one tile and in bands of one output row (the fold's rows outside the band)."""
    from fastconv import config
    from fastconv.algos.im2col import drivers

    monkeypatch.setattr(drivers, "image_last_tile", lambda *a, **k: 0)
    x, w, b, kwargs, refargs = _problem(rng, case, dtype)
    want = ref.conv2d(x, w, b, **refargs)
    gy = rng.standard_normal(want.shape).astype(dtype)
    gx_want, gw_want, _ = ref.conv2d_backward(gy, x, w, **refargs)
    xl, wl = _nhwc(x, w)
    gyl = np.ascontiguousarray(gy.transpose(0, 2, 3, 1))
    tol = ref.tolerance(dtype, "im2col")
    for chunk in (None, 1):   # the default tiles; one output row per tile
        if chunk is not None:
            monkeypatch.setattr(config, "IM2COL_CHUNK_BYTES", chunk)
        gx, gw, _ = fastconv.conv2d_backward(gyl, xl, wl, **kwargs, layout="NHWC",
                                             algo="im2col")
        assert gx.dtype == dtype and gw.dtype == dtype
        assert ref.rel_error(gx.transpose(0, 3, 1, 2), gx_want) < tol, chunk
        assert ref.rel_error(gw.transpose(3, 2, 0, 1), gw_want) < tol, chunk


def test_nchw_winograd_weight_gradient_routes():
    """With AVX-512, NCHW layers narrower than ``NHWC_GRAD_W_MIN_CHANNELS`` that the
    fused weight gradient does not take leave it to im2col unless their maps have
    ``NCHW_GRAD_W_MIN_PIXELS`` output pixels and ``NCHW_GRAD_W_MIN_CHANNELS`` channels;
    without AVX-512 Winograd takes every NCHW layer's."""
    from fastconv import _lanes
    from fastconv._args import conv_args_from_shapes
    from fastconv.algos import winograd

    drivers = winograd.drivers

    def supported(c, h):
        return winograd.grad_w_supported(conv_args_from_shapes(
            "t", (8, c, h, h), (c, c, 3, 3), padding=1, dtype=np.float32))

    side = int(drivers.NCHW_GRAD_W_MIN_PIXELS ** 0.5)
    low = drivers.NCHW_GRAD_W_MIN_CHANNELS
    assert supported(low, side) and supported(drivers.NHWC_GRAD_W_MIN_CHANNELS, 6)
    # (channel counts the fused weight gradient does not take: not whole eights)
    assert supported(low // 2 + 4, side) is supported(low + 4, side - 1) is not _lanes.WIDE


def test_a_dilated_nchw_layer_keeps_its_winograd_weight_gradient(rng, monkeypatch):
    """The bound is the layer's: a dilated layer whose maps pass it runs the weight
    gradient of its phase problems in the Winograd domain, though each phase's map is
    under the bound."""
    from fastconv.algos.winograd import drivers

    side = int(drivers.NCHW_GRAD_W_MIN_PIXELS ** 0.5) + 4
    c = drivers.NCHW_GRAD_W_MIN_CHANNELS + 4     # not whole eights: not the fused kernel's
    x = rng.standard_normal((2, c, side, side))
    w = rng.standard_normal((c, c, 3, 3))
    gy = rng.standard_normal((2, c, side, side))
    calls = count_calls(monkeypatch, drivers, "_grad_w_nchw")
    _, gw, _ = fastconv.conv2d_backward(gy, x, w, padding=2, dilation=2, algo="winograd",
                                        needs_input_grad=(False, True, False))
    _, want, _ = ref.conv2d_backward(gy, x, w, padding=((2, 2), (2, 2)), dilation=(2, 2))
    assert len(calls) == 1
    assert ref.rel_error(gw, want) <= 1e-10


def test_nhwc_backward_routes_of_small_resnet_layers():
    """NHWC layers of 16 or more input channels per group run im2col's backward through
    its GEMMs and fold, not the image-last copies (LeNet-like layers of fewer channels
    keep them, and NCHW is unchanged); Winograd leaves the weight gradient of NHWC layers
    that its fused kernel does not take, of fewer channels than
    ``NHWC_GRAD_W_MIN_CHANNELS`` (128; 32 with AVX2's registers) or small images to
    im2col, and its cost model prices that share."""
    from fastconv._args import conv_args_from_shapes
    from fastconv.algos import winograd
    from fastconv.algos.im2col import image_last, image_last_tile

    def args(c, d, layout, h=14):
        x = (32, c, h, h) if layout == "NCHW" else (32, h, h, c)
        w = (d, c, 3, 3) if layout == "NCHW" else (3, 3, c, d)
        return conv_args_from_shapes("t", x, w, padding=1, layout=layout,
                                     dtype=np.float32)

    below = image_last.NHWC_IMAGE_LAST_BELOW_CHANNELS
    assert below == 16
    assert image_last_tile(args(16, 32, "NCHW")) >= 2
    assert image_last_tile(args(16, 32, "NHWC")) == 0
    assert image_last_tile(args(below - 1, 16, "NHWC")) >= 2
    bound = winograd.drivers.NHWC_GRAD_W_MIN_CHANNELS
    assert winograd.drivers.NHWC_GRAD_W_MIN_PIXELS <= 14 * 14
    narrow = bound // 2
    odd = narrow + 4        # not whole eights: not for the fused weight gradient either
    wide = bound + 8        # not whole pairs of registers: not fused either
    assert winograd.grad_w_supported(args(narrow, narrow, "NCHW", h=32))
    assert not winograd.grad_w_supported(args(odd, odd, "NHWC", h=32))
    assert winograd.grad_w_supported(args(wide, wide, "NHWC"))    # wide: Winograd's
    assert not winograd.grad_w_supported(args(wide, wide, "NHWC", h=6))   # small images
    assert registry.get("winograd").grads(args(narrow, narrow, "NCHW", h=32)) == (True, True)
    assert registry.get("winograd").grads(args(odd, odd, "NHWC")) == (True, False)
    assert "Winograd grad_x, the rest with im2col" in \
        registry.get("winograd").backward_cost(args(odd, odd, "NHWC"),
                                               fastconv.costs.DEFAULT_PROFILE).detail


@pytest.mark.parametrize("n,side,runs", [(32, 8, True), (64, 8, True), (8, 8, False),
                                          (32, 7, False), (64, 4, False), (16, 12, True),
                                          (64, 6, False)])
def test_nhwc_winograd_weight_gradient_on_small_maps_of_whole_tiles(n, side, runs):
    """Wide NHWC layers that the fused kernel does not take (136 channels: not whole
    pairs of registers; a wide ResNet's 128 -> 128 at 8x8 runs fused) on maps under
    ``NHWC_GRAD_W_MIN_PIXELS`` keep the weight gradient in the Winograd domain where the
    maps are whole 4x4 tiles of at least ``NHWC_GRAD_W_TILED_MIN_PIXELS`` pixels and the
    batch holds ``NHWC_GRAD_W_TILED_MIN_BATCH`` of them."""
    from fastconv import _lanes
    from fastconv._args import conv_args_from_shapes
    from fastconv.algos.winograd import drivers

    if not _lanes.WIDE:
        pytest.skip("without AVX-512 the bounds are lower (32 channels, 7x7)")
    bound = drivers.NHWC_GRAD_W_MIN_CHANNELS
    c = bound + 8
    assert side * side < drivers.NHWC_GRAD_W_MIN_PIXELS
    a = conv_args_from_shapes("t", (n, side, side, c), (3, 3, c, c), padding=1,
                              layout="NHWC", dtype=np.float32)
    assert not drivers.grad_w_fused(a)
    assert drivers.grad_w_supported(a) is runs
    narrower = conv_args_from_shapes("t", (n, side, side, c), (3, 3, c, bound - 8),
                                     padding=1, layout="NHWC", dtype=np.float32)
    assert drivers.grad_w_supported(narrower) is False     # under the channels' bound


@pytest.mark.parametrize("winograd_w", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nhwc_winograd_backward_weight_gradient_routes(rng, monkeypatch, dtype, winograd_w):
    """algo="winograd" in NHWC: grad_x from Winograd, grad_w from im2col (a narrow
    layer the fused weight gradient does not take) or from Winograd on NCHW copies (the
    thresholds lowered to 1), all as the reference."""
    from fastconv._args import conv_args_from_shapes
    from fastconv.algos.winograd import drivers

    if winograd_w:
        monkeypatch.setattr(drivers, "NHWC_GRAD_W_MIN_CHANNELS", 1)
        monkeypatch.setattr(drivers, "NHWC_GRAD_W_MIN_PIXELS", 1)
    # 12 input channels: not whole eights, which the fused weight gradient needs
    x, w, b, kwargs, refargs = _problem(rng, (12, 8, 1, 3, 1, 1, 1), dtype, n=3, h=6, wd=5)
    want = ref.conv2d(x, w, b, **refargs)
    gy = rng.standard_normal(want.shape).astype(dtype)
    gx_want, gw_want, gb_want = ref.conv2d_backward(gy, x, w, **refargs)
    xl, wl = _nhwc(x, w)
    args = conv_args_from_shapes("t", xl.shape, wl.shape, **kwargs, layout="NHWC",
                                 dtype=dtype)
    assert registry.get("winograd").grads(args) == (True, winograd_w)
    gx, gw, gb = fastconv.conv2d_backward(np.ascontiguousarray(gy.transpose(0, 2, 3, 1)),
                                          xl, wl, **kwargs, layout="NHWC", algo="winograd")
    tol = ref.tolerance(dtype, "winograd")
    assert gw.dtype == dtype and gw.shape == wl.shape
    assert ref.rel_error(gx.transpose(0, 3, 1, 2), gx_want) < tol
    assert ref.rel_error(gw.transpose(3, 2, 0, 1), gw_want) < tol
    assert ref.rel_error(gb, gb_want) < tol
