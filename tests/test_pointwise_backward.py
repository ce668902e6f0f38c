"""The backward of pointwise (1x1, stride 1, unpadded) layers as two GEMMs: against the
explicit reference and finite differences, both layouts, dtypes, groups; the path runs
for im2col and auto, and not for 1x1 layers with a stride or padding."""

import numpy as np
import pytest

import fastconv
from fastconv._args import conv_args_from_shapes
from fastconv.algos.im2col import drivers, is_pointwise

from . import reference as ref
from .conftest import count_calls, to_nhwc
from .test_conv_backward import _backward, _explicit, _problem

# (n, c, h, w, d, kh, kw, stride, padding, dilation, groups)
POINTWISE = [
    (2, 4, 3, 5, 6, 1, 1, 1, 0, 1, 1),
    (3, 6, 4, 4, 9, 1, 1, 1, 0, 1, 3),
    (1, 5, 2, 3, 5, 1, 1, 1, 0, 2, 5),        # depthwise 1x1 (dilation changes nothing)
    (2, 3, 4, 5, 1, 1, 1, 1, 0, 1, 1),        # one output channel: grad_x's outer products
    (0, 4, 3, 3, 2, 1, 1, 1, 0, 1, 1),        # empty batch: grad_w is zero
]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", POINTWISE, ids=str)
def test_pointwise_backward_matches_reference(case, dtype, layout, monkeypatch):
    x, w, gy, kwargs, a = _problem(case, dtype)
    assert is_pointwise(a)
    calls = count_calls(monkeypatch, drivers, "backward_pointwise")
    want = _explicit(x, w, gy, a)
    tol = ref.tolerance(dtype, "im2col")
    got = {algo: _backward(gy, x, w, kwargs, layout, algo) for algo in ("im2col", "auto")}
    errors = {(algo, i): ref.rel_error(g, want[i]) for algo, gs in got.items()
              for i, g in enumerate(gs)}
    assert all(g.dtype == dtype and g.shape == want[i].shape
               for gs in got.values() for i, g in enumerate(gs))
    assert max(errors.values()) <= tol, errors
    assert len(calls) >= (1 if a.n else 0)       # im2col took the two-GEMM path


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("needs", [(True, False, True), (False, True, False)])
def test_pointwise_backward_one_gradient(layout, needs):
    x, w, gy, kwargs, a = _problem(POINTWISE[1], np.float64)
    want = _explicit(x, w, gy, a)
    if layout == "NCHW":
        got = fastconv.conv2d_backward(gy, x, w, **kwargs, algo="im2col",
                                       needs_input_grad=needs)
    else:
        got = _backward(gy, x, w, kwargs, layout, "im2col")
        got = tuple(g if k else None for g, k in zip(got, needs, strict=True))
    for g, wnt, k in zip(got, want, needs, strict=True):
        assert (g is None) == (not k)
        if k:
            assert ref.rel_error(g, wnt) <= 1e-10


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_pointwise_backward_gradcheck(layout):
    """Finite differences in float64 through the autograd layer (fastconv.gradcheck)."""
    from fastconv import Tensor, gradcheck
    from fastconv.nn import functional as F

    x, w, _, kwargs, _ = _problem(POINTWISE[1], np.float64)
    if layout == "NHWC":
        x, w = to_nhwc(x, w)
    b = np.random.default_rng(2).standard_normal(w.shape[0 if layout == "NCHW" else 3])
    inputs = [Tensor(v, requires_grad=True) for v in (x, w, b)]
    assert gradcheck(lambda x, w, b: F.conv2d(x, w, b, **kwargs, layout=layout,
                                              algo="im2col"), inputs)


@pytest.mark.parametrize("needs", [(True, True, False), (True, False, False),
                                   (False, True, False)])
@pytest.mark.parametrize("case", [(5, 4, 3, 3, 3, 1, 1, 1, 0, 1, 1),
                                  (3, 6, 2, 3, 4, 1, 1, 1, 0, 1, 2),
                                  (3, 4, 3, 3, 1, 1, 1, 1, 0, 1, 1)], ids=str)
def test_pointwise_backward_split_over_threads(case, needs, monkeypatch):
    """Products no longer counted as small: the images split over the threads, each
    thread summing its own grad_w (an odd batch, groups)."""
    from fastconv import config

    x, w, gy, kwargs, a = _problem(case, np.float64)
    monkeypatch.setattr(config, "SMALL_GEMM_MACS", 0)
    got = fastconv.conv2d_backward(gy, x, w, **kwargs, algo="im2col",
                                   needs_input_grad=needs)
    for g, wnt, k in zip(got, _explicit(x, w, gy, a), needs, strict=True):
        assert (g is None) == (not k)
        if k:
            assert ref.rel_error(g, wnt) <= 1e-10


@pytest.mark.parametrize("kwargs", [dict(stride=2), dict(padding=1)])
def test_strided_or_padded_1x1_is_not_pointwise(kwargs):
    a = conv_args_from_shapes("test", (2, 4, 5, 5), (3, 4, 1, 1), **kwargs)
    assert not is_pointwise(a)


def test_pointwise_backward_plan_names_the_gemms():
    p = fastconv.plan((16, 256, 14, 14), (64, 256, 1, 1), backward=True)
    assert p.algorithm == "im2col"
    assert "pointwise: GEMMs 256x64x196 and 256x196x64 x16" in p.why


# (n, c, h, w, d, kh, kw, stride, padding, dilation, groups): strided 1x1 layers, sizes
# that the stride does and does not divide, a stride per axis, groups, dilation
STRIDED = [
    (3, 4, 6, 6, 5, 1, 1, 2, 0, 1, 1),
    (2, 6, 7, 5, 9, 1, 1, 2, 0, 1, 3),
    (2, 3, 8, 7, 4, 1, 1, (3, 2), 0, 2, 1),
    (1, 4, 5, 9, 8, 1, 1, (1, 3), 0, 1, 2),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", STRIDED, ids=str)
def test_strided_pointwise_matches_reference(case, dtype, monkeypatch):
    """NCHW 1x1 layers with a stride run as a pointwise problem on the pixels read
    (``strided_pointwise``): forward with and without bias, and each gradient alone or
    with the others."""
    from fastconv.algos.im2col import strided_pointwise

    x, w, gy, kwargs, a = _problem(case, dtype)
    assert strided_pointwise.applies(a) and not is_pointwise(a)
    fwd = count_calls(monkeypatch, strided_pointwise, "forward")
    bwd = count_calls(monkeypatch, strided_pointwise, "backward")
    _forward_matches(x, w, kwargs, a, dtype)
    _gradients_match(x, w, gy, kwargs, a, dtype, [(True, True, True), (True, False, False),
                                                  (False, True, False)])
    assert len(fwd) == 2 and len(bwd) == 3


def _forward_matches(x, w, kwargs, a, dtype) -> None:
    """conv2d's im2col forward of problem ``a``, without and with a bias, against the
    reference."""
    b = np.arange(a.c_out, dtype=dtype)
    for bias in (None, b):
        got = fastconv.conv2d(x, w, bias, **kwargs, algo="im2col")
        want = ref.conv2d(x, w, bias, a.stride, a.padding, a.dilation, a.groups)
        assert got.dtype == dtype and ref.rel_error(got, want) <= ref.tolerance(dtype,
                                                                              "im2col")


def _gradients_match(x, w, gy, kwargs, a, dtype, needs_list) -> None:
    """conv2d_backward's im2col gradients for each ``needs`` of ``needs_list`` against
    the explicit ones (a gradient not asked for is None)."""
    want = _explicit(x, w, gy, a)
    for needs in needs_list:
        got = fastconv.conv2d_backward(gy, x, w, **kwargs, algo="im2col",
                                       needs_input_grad=needs)
        for g, wnt, k in zip(got, want, needs, strict=True):
            assert (g is None) == (not k)
            assert g is None or ref.rel_error(g, wnt) <= ref.tolerance(dtype, "im2col")


def test_strided_pointwise_gradcheck():
    """Finite differences in float64 through the autograd layer."""
    from fastconv import Tensor, gradcheck
    from fastconv.nn import functional as F

    x, w, _, kwargs, _ = _problem(STRIDED[1], np.float64)
    b = np.random.default_rng(2).standard_normal(w.shape[0])
    inputs = [Tensor(v, requires_grad=True) for v in (x, w, b)]
    assert gradcheck(lambda x, w, b: F.conv2d(x, w, b, **kwargs, algo="im2col"), inputs)


@pytest.mark.parametrize("kwargs,applies", [
    (dict(stride=2, padding=1), False), (dict(stride=1), False),
    (dict(stride=2, layout="NHWC"), True), (dict(stride=(1, 2), layout="NHWC"), True)])
def test_strided_pointwise_applies_to_unpadded_strided_layers_only(kwargs, applies):
    from fastconv.algos.im2col import strided_pointwise

    layout = kwargs.get("layout", "NCHW")
    shape = (2, 4, 5, 5) if layout == "NCHW" else (2, 5, 5, 4)
    w_shape = (3, 4, 1, 1) if layout == "NCHW" else (1, 1, 4, 3)
    a = conv_args_from_shapes("test", shape, w_shape, **kwargs)
    assert strided_pointwise.applies(a) == applies


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", STRIDED + [(4, 16, 9, 8, 32, 1, 1, 2, 0, 1, 1),
                                            (5, 8, 7, 10, 16, 1, 1, (2, 3), 0, 1, 1),
                                            (2, 16, 5, 5, 8, 1, 1, 2, 0, 1, 1),
                                            (3, 32, 4, 11, 6, 1, 1, (1, 2), 0, 1, 1)],
                         ids=str)
def test_strided_pointwise_nhwc_matches_reference(case, dtype, monkeypatch):
    """NHWC strided 1x1 layers: the forward reads the pixels in place in the direct
    lanes kernel where it applies (one group, output channels filling their lanes),
    else copies them (``strided_pointwise``); the backward forms grad_x in one lanes
    kernel where the input channels are whole vectors (rows of 3, 6 and 4 pixels: fewer
    than 4, and not a multiple of 4), else puts a GEMM's grad_x back in place, and
    grad_w in the direct kernel where it applies."""
    from fastconv import _lanes
    from fastconv.algos.im2col import direct_grad, lanes_plan, strided_pointwise

    x, w, gy, kwargs, a = _problem(case, dtype)
    want_y = ref.conv2d(x, w, None, a.stride, a.padding, a.dilation, a.groups)
    want = _explicit(x, w, gy, a)
    xl, wl = to_nhwc(x, w)
    gyl = np.ascontiguousarray(gy.transpose(0, 2, 3, 1))
    al = conv_args_from_shapes("t", xl.shape, wl.shape, layout="NHWC", dtype=dtype,
                               **kwargs)
    assert strided_pointwise.applies(al)
    direct_w = direct_grad.direct_backward_applies(al)
    assert direct_w == (case[-1] == 1)                  # one group, any batch
    assert direct_w or not lanes_plan.lanes_applies(al)
    fwd = count_calls(monkeypatch, strided_pointwise, "forward")
    gws = count_calls(monkeypatch, strided_pointwise, "weight_grad_into")
    gxs = count_calls(monkeypatch, strided_pointwise, "_lanes_grad_x")
    lanes_x = case[1] % _lanes.per_register(np.dtype(dtype).itemsize) == 0 and case[-1] == 1
    assert strided_pointwise.lanes_grad_x_applies(al) == lanes_x
    tol = ref.tolerance(dtype, "im2col")
    y = fastconv.conv2d(xl, wl, **kwargs, layout="NHWC", algo="im2col")
    assert ref.rel_error(y.transpose(0, 3, 1, 2), want_y) <= tol
    assert len(fwd) == int(not lanes_plan.lanes_chosen(al))
    gx, gw, _ = fastconv.conv2d_backward(gyl, xl, wl, **kwargs, layout="NHWC",
                                         algo="im2col")
    assert ref.rel_error(gx.transpose(0, 3, 1, 2), want[0]) <= tol
    assert ref.rel_error(gw.transpose(3, 2, 0, 1), want[1]) <= tol
    assert len(gws) == int(direct_w)
    assert len(gxs) == int(lanes_x)
    gx_alone, _, _ = fastconv.conv2d_backward(gyl, xl, wl, **kwargs, layout="NHWC",
                                              algo="im2col",
                                              needs_input_grad=(True, False, False))
    assert ref.rel_error(gx_alone.transpose(0, 3, 1, 2), want[0]) <= tol
    assert len(gxs) == 2 * int(lanes_x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [(4, 16, 9, 8, 32, 1, 1, 2, 0, 1, 1),
                                  (5, 8, 7, 10, 16, 1, 1, (2, 3), 0, 1, 1),
                                  (3, 32, 14, 14, 64, 1, 1, 2, 0, 1, 1),
                                  (2, 16, 5, 11, 12, 1, 1, (3, 2), 0, 1, 1),
                                  (2, 16, 13, 5, 16, 1, 1, (1, 2), 0, 1, 1)], ids=str)
def test_strided_pointwise_nchw_runs_the_direct_kernels(case, dtype, monkeypatch):
    """NCHW strided 1x1 layers whose output channels fill their lanes forward in the
    direct lanes kernel (the pixels read in place, no copy), with and without bias; the
    backward takes grad_w in the direct kernel (grad_y channels last) and, where the
    input channels are whole vectors of lanes, grad_x in one kernel over grad_x's rows
    (``_grad_x_planes``: rows of 3, 4 and 7 pixels, fewer than 4 and not a multiple of
    4; strides that leave rows and columns past the last pixel read), each gradient
    alone or both."""
    from fastconv import _lanes
    from fastconv.algos.im2col import direct_lanes, lanes_plan, strided_pointwise

    x, w, gy, kwargs, a = _problem(case, dtype)
    a = conv_args_from_shapes("t", x.shape, w.shape, dtype=dtype, **kwargs)
    assert lanes_plan.lanes_chosen(a)             # 12 channels: 3/4 of their lanes
    lanes = count_calls(monkeypatch, direct_lanes, "_conv_rows")
    copies = count_calls(monkeypatch, strided_pointwise, "forward")
    planes = count_calls(monkeypatch, strided_pointwise, "_grad_x_planes")
    gws = count_calls(monkeypatch, strided_pointwise, "weight_grad_into")
    gemms = count_calls(monkeypatch, strided_pointwise, "backward_pointwise")
    _forward_matches(x, w, kwargs, a, dtype)
    assert len(lanes) == 2 and not copies
    whole = a.c_in % _lanes.per_register(np.dtype(dtype).itemsize) == 0
    assert strided_pointwise.lanes_grad_x_applies(a) == whole
    _gradients_match(x, w, gy, kwargs, a, dtype, [(True, True, False), (True, False, False),
                                                  (False, True, False)])
    assert len(planes) == 2 * whole and len(gws) == 2
    assert len(gemms) == 2 * (not whole)          # grad_x by a GEMM, put back in place
