"""im2col's direct backward for small layers (``algos.im2col.direct_grad``): the weight
gradient's kernel and the input gradient as a direct forward, against the reference,
torch and finite differences, and where they run."""

import numba
import numpy as np
import pytest

import fastconv
from fastconv import Tensor, _lanes, gradcheck
from fastconv._args import conv_args_from_shapes
from fastconv.algos.im2col import direct_grad, direct_grad_input, drivers, lanes_plan
from fastconv.algos.im2col.direct_grad import (
    direct_backward_applies,
    direct_backward_chosen,
)
from fastconv.nn import functional as F

from . import reference as ref
from .conftest import count_calls, from_nhwc, to_nhwc

# (n, c, h, w, d, kernel, stride, padding, dilation, grad_x direct), NCHW / OIHW sizes:
# 27 taps (a partial group of 8; grad_x by the GEMMs where its 3 channels fill too few
# lanes: all but float64 with 4 lanes, ``_fills_lanes``),
# grad_x by the direct forward, stride 2 (four phases, odd sizes) with two blocks of
# output channels, a rectangular kernel with asymmetric padding and dilation, padding
# beyond the kernel (output pixels wholly in the padding: grad_x by the GEMMs), 576 taps
# (several chunks of taps per image run; an uneven last run of images), stride 3 with a
# 2x2 kernel (phases without taps), strides (2, 1) with column dilation
CASES = [
    (4, 3, 7, 9, 16, 3, 1, 1, 1, None),
    (5, 16, 6, 7, 16, 3, 1, 1, 1, True),
    (4, 16, 9, 8, 32, 3, 2, 1, 1, True),
    (4, 16, 8, 9, 16, (3, 2), 1, ((2, 0), (1, 1)), (2, 1), True),
    (4, 16, 5, 5, 16, 3, 1, 3, 1, False),
    (6, 64, 4, 4, 16, 3, 1, 1, 1, True),
    (4, 16, 8, 7, 16, 2, 3, 0, 1, True),
    (4, 16, 7, 9, 16, 3, (2, 1), (1, 2), (1, 2), True),
    (4, 30, 5, 6, 16, 3, 1, 1, 1, True),    # 270 taps: a last group of 6
    (2, 16, 6, 7, 16, 3, 1, 1, 1, True),    # two images (no image-last pass)
    (3, 16, 9, 8, 32, 3, 2, 1, 1, True),    # three, strided
]


def _fills_lanes(c, dtype) -> bool:
    """Whether c channels use ``MIN_LANE_USE`` of the lanes of their registers on this
    host (the direct forward's rule, which grad_x's direct run follows)."""
    lanes = _lanes.per_register(np.dtype(dtype).itemsize)
    return c / (-(-c // lanes) * lanes) >= lanes_plan.MIN_LANE_USE


def _problem(case, dtype, rng, layout):
    n, c, h, wd, d, k, stride, padding, dilation, _ = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal((n, c, h, wd)).astype(dtype)
    w = rng.standard_normal((d, c, kh, kw)).astype(dtype)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation)
    canon = conv_args_from_shapes("t", x.shape, w.shape, dtype=dtype, **kwargs)
    gy = rng.standard_normal(canon.y_shape).astype(dtype)
    want = ref.conv2d_backward(gy, x, w, canon.stride, canon.padding, canon.dilation)
    if layout == "NHWC":
        x, w = to_nhwc(x, w)
        gy = np.ascontiguousarray(gy.transpose(0, 2, 3, 1))
    a = conv_args_from_shapes("t", x.shape, w.shape, layout=layout, dtype=dtype, **kwargs)
    return x, w, gy, a, kwargs, want


def _canonical(gx, gw, layout):
    return (from_nhwc(gx), gw.transpose(3, 2, 0, 1)) if layout == "NHWC" else (gx, gw)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_direct_backward_matches_the_reference(case, dtype, layout, rng, monkeypatch):
    monkeypatch.setattr(direct_grad, "PREFER_IMAGE_LAST", False)   # the direct kernels
    x, w, gy, a, kwargs, (gx0, gw0, _) = _problem(case, dtype, rng, layout)
    direct_x = _fills_lanes(case[1], dtype) if case[-1] is None else case[-1]
    phases = direct_grad_input.input_phases(a)
    assert direct_backward_applies(a) and (phases is not None) == direct_x
    both = direct_backward_chosen(a)    # else the image-last pass forms both gradients
    assert both or not direct_x
    calls = count_calls(monkeypatch, drivers, "backward_direct")
    inputs = count_calls(monkeypatch, direct_grad, "input_grad_direct")
    gx, gw, gb = fastconv.conv2d_backward(gy, x, w, layout=layout, algo="im2col", **kwargs)
    assert gx.dtype == gw.dtype == dtype and gx.shape == x.shape and gw.shape == w.shape
    gx, gw = _canonical(gx, gw, layout)
    tol = ref.tolerance(dtype, "im2col")
    assert ref.rel_error(gw, gw0) <= tol and ref.rel_error(gx, gx0) <= tol
    assert len(calls) == int(both) and len(inputs) == int(direct_x)
    # the weight gradient alone
    _, gw1, _ = fastconv.conv2d_backward(gy, x, w, layout=layout, algo="im2col",
                                         needs_input_grad=(False, True, False), **kwargs)
    gw1 = gw1.transpose(3, 2, 0, 1) if layout == "NHWC" else gw1
    assert ref.rel_error(gw1, gw0) <= tol and len(calls) == int(both) + 1


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("case", [CASES[2], CASES[6], CASES[7]], ids=str)
def test_the_input_phases_run_in_one_call(case, layout, rng, monkeypatch):
    """grad_x of a strided layer: its phases with taps in one call of ``_phase_rows``
    (none through the single-phase ``forward_lanes``), phases without taps zeroed, and
    its chunks cover every phase's row tasks once."""
    monkeypatch.setattr(direct_grad, "PREFER_IMAGE_LAST", False)
    x, w, gy, a, kwargs, (gx0, _, _) = _problem(case, np.float32, rng, layout)
    fused, real = [], direct_grad_input._phase_rows
    monkeypatch.setattr(direct_grad_input, "_phase_rows",
                        lambda *args: fused.append(args) or real(*args))
    single = count_calls(monkeypatch, direct_grad_input, "forward_lanes")
    gx = np.full(x.shape, np.nan, np.float32)    # every value written, or the check fails
    gy_nhwc = gy if layout == "NHWC" else np.ascontiguousarray(gy.transpose(0, 2, 3, 1))
    direct_grad_input.input_grad_direct(gy_nhwc, w, a, gx)
    assert len(fused) == 1 and not single
    gx = from_nhwc(gx) if layout == "NHWC" else gx
    assert ref.rel_error(gx, gx0) <= ref.tolerance(np.float32, "im2col")
    chunks = fused[0][6]
    phases = [g for _, _, g, rows, cols in direct_grad_input.input_phases(a) if rows and cols]
    assert len(phases) > 1 and set(chunks[:, 0]) == set(range(len(phases)))
    for p, g in enumerate(phases):
        spans = sorted((lo, hi) for q, lo, hi in chunks if q == p)
        assert spans[0][0] == 0 and spans[-1][1] == g.n * g.h_out
        assert all(hi0 == lo1 for (_, hi0), (lo1, _) in zip(spans[:-1], spans[1:], strict=True))


def test_weight_gradient_does_not_depend_on_the_thread_count(rng):
    x, w, gy, a, kwargs, _ = _problem(CASES[5], np.float32, rng, "NHWC")
    threads = numba.get_num_threads()
    one, two = np.empty_like(w), np.empty_like(w)
    try:
        numba.set_num_threads(1)
        direct_grad.weight_grad_into(x, gy, a, one)
    finally:
        numba.set_num_threads(threads)
    direct_grad.weight_grad_into(x, gy, a, two)
    assert np.array_equal(one, two)
    assert -(-a.n // direct_grad.part_images(a)) > 1          # several partial sums


def test_direct_backward_reads_read_only_and_strided_arrays(rng):
    x, w, gy, a, kwargs, (gx0, gw0, _) = _problem(CASES[1], np.float32, rng, "NHWC")
    xs, gys = np.asfortranarray(x), np.asfortranarray(gy)
    xs.flags.writeable = gys.flags.writeable = False
    gx, gw, _ = fastconv.conv2d_backward(gys, xs, w[::-1][::-1], layout="NHWC",
                                         algo="im2col", **kwargs)
    gx, gw = _canonical(gx, gw, "NHWC")
    assert ref.rel_error(gw, gw0) <= 1e-4 and ref.rel_error(gx, gx0) <= 1e-4


@pytest.mark.parametrize("x_shape,w_shape,kwargs", [
    ((8, 8, 8, 4), (3, 3, 2, 16), dict(groups=2)),
    ((8, 8, 8, 16), (1, 1, 16, 16), {}),                      # pointwise
    ((8, 8, 8, 80), (3, 3, 80, 16), {}),                      # too many input channels
    ((8, 8, 8, 16), (3, 3, 16, 80), {}),                      # too many output channels
])
def test_direct_backward_does_not_apply(x_shape, w_shape, kwargs):
    assert not direct_backward_applies(conv_args_from_shapes("t", x_shape, w_shape,
                                                             layout="NHWC", **kwargs))


def test_few_images_keep_the_tile_loop_where_its_unfold_serves_both_gradients(
        monkeypatch):
    """On fewer images than the image-last pass takes: grad_w alone runs direct, as do
    both gradients where grad_x runs direct too or an NHWC layer has at least
    ``FEW_IMAGES_MIN_C_IN`` input channels; one NCHW image keeps the tile loop."""
    monkeypatch.setattr(direct_grad, "PREFER_IMAGE_LAST", False)

    def chosen(x_shape, w_shape, layout, with_grad_x):
        a = conv_args_from_shapes("t", x_shape, w_shape, padding=1, layout=layout)
        return direct_backward_chosen(a, with_grad_x)

    wide = ((2, 16, 28, 28), (16, 16, 3, 3))
    assert chosen(*wide, "NCHW", True) and chosen(*wide, "NCHW", False)
    assert not chosen((1, 16, 28, 28), wide[1], "NCHW", True)
    assert not chosen((1, 16, 28, 28), wide[1], "NCHW", False)
    assert chosen((1, 28, 28, 16), (3, 3, 16, 16), "NHWC", True)
    few = direct_grad.FEW_IMAGES_MIN_C_IN
    for c, layout, x_shape, w_shape in [
            (few, "NHWC", (2, 14, 14, few), (3, 3, few, 16)),
            (few - 1, "NHWC", (2, 14, 14, few - 1), (3, 3, few - 1, 16)),
            (few, "NCHW", (2, few, 14, 14), (16, few, 3, 3))]:
        a = conv_args_from_shapes("t", x_shape, w_shape, padding=1, layout=layout)
        direct_x = direct_grad_input.input_phases(a) is not None
        assert chosen(x_shape, w_shape, layout, False)
        assert chosen(x_shape, w_shape, layout, True) == (
            direct_x or (layout == "NHWC" and c >= few)), (c, layout)


def test_lenets_second_layer_keeps_the_image_last_pass_in_nchw_unless_grad_x_is_direct(
        monkeypatch):
    a = conv_args_from_shapes("t", (64, 6, 14, 14), (16, 6, 5, 5))
    monkeypatch.setattr(direct_grad, "PREFER_IMAGE_LAST", False)
    fills = _fills_lanes(6, np.float32)      # grad_x's 6 channels: 8 lanes (AVX2), not 16
    phases = direct_grad_input.input_phases(a)
    assert direct_backward_applies(a) and (phases is not None) == fills
    assert direct_backward_chosen(a) == fills and direct_backward_chosen(a, False)
    # hosts of 256-bit registers: the image-last pass wherever it applies
    monkeypatch.setattr(direct_grad, "PREFER_IMAGE_LAST", True)
    assert not direct_backward_chosen(a) and not direct_backward_chosen(a, False)
    nhwc = conv_args_from_shapes("t", (32, 14, 14, 32), (3, 3, 32, 32), padding=1,
                                 layout="NHWC")      # no image-last pass: direct
    assert direct_backward_chosen(nhwc, False)
    # NHWC: the direct grad_w beside the image-last grad_x (no copies of grad_y for it)
    monkeypatch.setattr(direct_grad, "PREFER_IMAGE_LAST", False)
    lenet = conv_args_from_shapes("t", (64, 14, 14, 6), (5, 5, 6, 16), layout="NHWC")
    assert direct_backward_chosen(lenet) and direct_backward_chosen(lenet, False)


def test_the_backward_runs_the_image_last_pass_where_preferred(rng, monkeypatch):
    monkeypatch.setattr(direct_grad, "PREFER_IMAGE_LAST", True)
    x, w, gy, a, kwargs, (gx0, gw0, _) = _problem(CASES[1], np.float64, rng, "NCHW")
    calls = count_calls(monkeypatch, drivers, "backward_direct")
    gx, gw, _ = fastconv.conv2d_backward(gy, x, w, algo="im2col", **kwargs)
    tol = ref.tolerance(np.float64, "im2col")
    assert ref.rel_error(gx, gx0) <= tol and ref.rel_error(gw, gw0) <= tol
    assert not calls


def test_the_backward_plan_prices_the_direct_backward(monkeypatch):
    # 5x5: a 3x3 layer of 16 channels now plans Winograd's fused grad_x beside it
    x_shape, w_shape = (32, 28, 28, 16), (5, 5, 16, 16)
    a = conv_args_from_shapes("t", x_shape, w_shape, padding=2, layout="NHWC")
    assert direct_backward_chosen(a)
    plan = fastconv.plan(x_shape, w_shape, padding=2, layout="NHWC", backward=True)
    assert "direct weight gradient" in plan.why and "1 direct forward" in plan.why, plan.why
    rate = "TILES_GMACS" if direct_grad.tiles_apply(a) else "GRAD_W_GMACS"
    try:      # the estimate follows the kernel's rate
        monkeypatch.setattr(direct_grad, rate, 1e-3)
        fastconv.autotune.clear_cache()
        slow = fastconv.plan(x_shape, w_shape, padding=2, layout="NHWC", backward=True)
    finally:
        fastconv.autotune.clear_cache()
    assert slow.estimates["im2col"] > 10 * plan.estimates["im2col"]
    assert slow.algorithm != "im2col"


def test_direct_backward_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x, w, gy, a, kwargs, _ = _problem(CASES[3], np.float32, rng, "NCHW")
    xt = torch.from_numpy(x).requires_grad_()
    wt = torch.from_numpy(w).requires_grad_()
    pad = a.padding
    xpad = torch.nn.functional.pad(xt, (pad[1][0], pad[1][1], pad[0][0], pad[0][1]))
    y = torch.nn.functional.conv2d(xpad, wt, stride=a.stride, dilation=a.dilation)
    y.backward(torch.from_numpy(gy))
    gx, gw, _ = fastconv.conv2d_backward(gy, x, w, algo="im2col", **kwargs)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw, wt.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride", [1, 2])
def test_gradients_through_the_direct_backward_match_finite_differences(rng, stride,
                                                                        monkeypatch):
    x = Tensor(rng.standard_normal((4, 5, 6, 16)), requires_grad=True)
    w = Tensor(rng.standard_normal((3, 3, 16, 16)), requires_grad=True)
    b = Tensor(rng.standard_normal(16), requires_grad=True)
    a = conv_args_from_shapes("t", x.data.shape, w.data.shape, stride=stride, padding=1,
                              layout="NHWC", dtype=np.float64)
    assert direct_backward_chosen(a)
    calls = count_calls(monkeypatch, drivers, "backward_direct")
    assert gradcheck(lambda x, w, b: (F.conv2d(x, w, b, stride=stride, padding=1,
                                               layout="NHWC", algo="im2col") ** 2).sum(),
                     [x, w, b])
    assert calls


def test_phase_outputs_are_written_in_place():
    from fastconv.algos.im2col.image_last import strided_flat
    from fastconv.layout import LAYOUTS
    gx = np.zeros((2, 5, 6, 16), np.float32)
    gx[0, 1, 0, 0], gx[1, 3, 4, 15] = 7, 8         # the phase's first and last elements
    flat, shape_strides = strided_flat(gx[:, 1::2, ::2, :], LAYOUTS["NHWC"])
    assert np.shares_memory(flat, gx) and flat.size == 1 + 480 + 192 + 2 * 32 + 15
    assert flat[0] == 7 and flat[-1] == 8
    assert shape_strides == (2, 16, 2, 3, 480, 1, 192, 32)     # (N, C, H, W), strides
    assert strided_flat(gx[:, ::-1], LAYOUTS["NHWC"]) is None      # negative strides
    assert strided_flat(gx, LAYOUTS["NHWC"]) is None                # C-contiguous


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_autograd_conv_shares_the_padded_input_with_the_weight_gradient(layout, rng,
                                                                       monkeypatch):
    """The autograd conv keeps the zero-padded copy of x its forward made
    (``padded.shared_copies``) and the weight gradient reads it instead of padding x
    again; the gradients are those of conv2d_backward, and the copies go with the
    graph's op after the backward."""
    from fastconv.algos.im2col import padded

    x = rng.standard_normal((8, 16, 7, 7)).astype(np.float32)   # prepadded forward
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    xl, wl = to_nhwc(x, w) if layout == "NHWC" else (x, w)
    a = conv_args_from_shapes("t", xl.shape, wl.shape, padding=1, layout=layout,
                              dtype=np.float32)
    assert lanes_plan._prepadded(a) and direct_backward_chosen(a, True)
    monkeypatch.setattr(drivers, "lanes_chosen", lanes_plan.lanes_applies)
    pads = count_calls(monkeypatch, padded, "_pad_images")
    xt, wt = Tensor(xl, requires_grad=True), Tensor(wl, requires_grad=True)
    y = F.conv2d(xt, wt, padding=1, layout=layout, algo="im2col")
    assert len(pads) == 1
    g = rng.standard_normal(y.shape).astype(np.float32)
    node = y._ctx
    assert len(node.padded) == 1
    (y * Tensor(g)).sum().backward()
    assert len(pads) == 2 and node.padded is None   # grad_y's pad for grad_x alone
    gx, gw, _ = fastconv.conv2d_backward(g, xl, wl, padding=1, layout=layout,
                                         algo="im2col")
    np.testing.assert_array_equal(wt.grad, gw)
    np.testing.assert_array_equal(xt.grad, gx)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c,k", [(1, 3), (3, 3), (2, 5), (6, 5), (16, 3)])
def test_weight_gradient_of_one_block_matches_the_reference(c, k, dtype, rng):
    """One block of output channels (16 float32, 8 float64 lanes with AVX-512; 8 / 4 with
    AVX2): 9, 27, 50, 150 and 144 taps, run 16 at a time (``_single16_band``, where
    ``SINGLE16``) with a last group of 8 or fewer."""
    d = _lanes.per_register(np.dtype(dtype).itemsize)
    case = (5, c, 9, 8, d, k, 1, 1, 1, None)
    x, w, gy, a, kwargs, (_, gw0, _) = _problem(case, dtype, rng, "NHWC")
    assert direct_backward_applies(a)
    _, gw, _ = fastconv.conv2d_backward(gy, x, w, layout="NHWC", algo="im2col",
                                        needs_input_grad=(False, True, False), **kwargs)
    assert ref.rel_error(gw.transpose(3, 2, 0, 1), gw0) <= ref.tolerance(dtype, "im2col")


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [
    (5, 1, 12, 11, 6, 5, 1, 0, 1, None),     # LeNet's first layer: 6 of a block's lanes
    (4, 3, 9, 8, 21, 3, 2, 1, 1, None),      # a pair, its second block partly filled
    (6, 2, 7, 7, 7, 3, 1, 2, 1, None),       # odd channels, pixels wholly in the padding
    (4, 4, 6, 9, 37, (2, 3), 1, 1, (2, 1), None),   # three blocks, the last partial
], ids=str)
def test_weight_gradient_of_a_partial_block_matches_the_reference(case, dtype, layout, rng,
                                                                  monkeypatch):
    """Output channels that do not fill their last block of lanes: computed whole, the
    lanes past C_out reading on into the next pixel and, for the last image, into a
    copy with a block's slack; their sums are dropped. (Where more lanes are used along
    the output rows, ``direct_grad_rows`` takes these layers: switched off here.)"""
    monkeypatch.setattr(direct_grad, "PREFER_IMAGE_LAST", False)
    monkeypatch.setattr(direct_grad, "by_rows", lambda a: False)
    x, w, gy, a, kwargs, (_, gw0, _) = _problem(case, dtype, rng, layout)
    assert a.c_out % _lanes.per_register(np.dtype(dtype).itemsize) != 0
    assert direct_backward_applies(a) and direct_backward_chosen(a, False)
    calls = count_calls(monkeypatch, direct_grad, "_grad_w_parts")
    _, gw, gb = fastconv.conv2d_backward(gy, x, w, layout=layout, algo="im2col",
                                         needs_input_grad=(False, True, True), **kwargs)
    assert len(calls) == 1
    gw = gw.transpose(3, 2, 0, 1) if layout == "NHWC" else gw
    assert ref.rel_error(gw, gw0) <= ref.tolerance(dtype, "im2col")
    axes = (0, 1, 2) if layout == "NHWC" else (0, 2, 3)
    np.testing.assert_allclose(gb, gy.astype(np.float64).sum(axis=axes), rtol=1e-5)


@pytest.mark.parametrize("layout,c,padding,copied", [
    ("NHWC", 3, 0, False), ("NCHW", 1, 0, False),      # already (N, H, W, C), C-contiguous
    ("NHWC", 3, 1, True), ("NCHW", 3, 0, True)])
def test_an_unpadded_channels_last_input_is_read_in_place(layout, c, padding, copied, rng,
                                                          monkeypatch):
    from fastconv.algos.im2col import padded

    x = rng.standard_normal((4, c, 9, 8)).astype(np.float32)
    w = rng.standard_normal((16, c, 3, 3)).astype(np.float32)
    xl, wl = to_nhwc(x, w) if layout == "NHWC" else (x, w)
    a = conv_args_from_shapes("t", xl.shape, wl.shape, padding=padding, layout=layout,
                              dtype=np.float32)
    pads = count_calls(monkeypatch, padded, "_pad_images")
    xp = padded.channels_last_input(xl, a, "test.xp")
    assert len(pads) == int(copied) and np.shares_memory(xp, xl) != copied
    p = padding
    want = np.pad(x.transpose(0, 2, 3, 1), ((0, 0), (p, p), (p, p), (0, 0)))
    np.testing.assert_array_equal(xp, want[:, :xp.shape[1], :xp.shape[2]])
