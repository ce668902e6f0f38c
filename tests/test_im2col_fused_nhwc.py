"""The NHWC forward with the unfold and the GEMM fused (``im2col.fused_nhwc``):
which layers take it, its panels, the plan's account of it, and the result against the
reference over strides, paddings, dilations, groups, bias, dtypes and band heights
(bands within an image and across images)."""

import numpy as np
import pytest

import fastconv
from fastconv import _lanes, _small_gemm, autotune
from fastconv._args import conv_args_from_shapes
from fastconv.algos.im2col import cost as im2col_cost
from fastconv.algos.im2col import drivers, fused_nhwc
from fastconv.layout import LAYOUTS

from . import reference as ref
from .conftest import count_calls
from .test_im2col_fused import CASES
from .test_im2col_split import forward_problem

pytestmark = pytest.mark.skipif(not fused_nhwc.available(np.float32),
                                reason="numpy's BLAS not found")

NHWC = LAYOUTS["NHWC"]


@pytest.mark.parametrize("x_shape,w_shape,kw,band", [
    ((8, 224, 224, 3), (7, 7, 3, 64), dict(stride=2, padding=3), 14),     # stem
    ((16, 56, 56, 64), (3, 3, 64, 128), dict(stride=2, padding=1), 32),   # stride2
    ((4, 56, 56, 64), (3, 3, 64, 128), dict(stride=2, padding=1), 28),    # 4 panels
    ((16, 56, 56, 64), (3, 3, 64, 64), dict(padding=1), 16),              # stride 1
    ((16, 56, 56, 64), (1, 1, 64, 64), {}, None),                         # pointwise
    ((16, 56, 56, 64), (3, 3, 1, 64), dict(stride=2, groups=64), None),   # depthwise
    ((64, 12, 12, 6), (5, 5, 6, 16), dict(stride=2), None),               # narrow panels
    ((1, 56, 56, 64), (3, 3, 64, 128), dict(stride=2, padding=1), None),  # too few
])
def test_which_layers_take_it(x_shape, w_shape, kw, band):
    a = conv_args_from_shapes("t", x_shape, w_shape, layout="NHWC", **kw)
    t = fused_nhwc.fused_nhwc_tiling(a, threads=2)
    assert (None if t is None else t.band) == band
    assert fused_nhwc.fused_nhwc_tiling(a, threads=1) is None
    if t is not None:
        assert t.col_bytes <= fused_nhwc.PANEL_BYTES
        assert t.band * a.w_out <= fused_nhwc.FUSED_MAX_PIXELS
        assert fused_nhwc.panel_count(a, t) % 2 == 0
    nchw = conv_args_from_shapes("t", tuple(x_shape[i] for i in NHWC.to_canonical),
                                 tuple(w_shape[i] for i in NHWC.weight_to_canonical), **kw)
    assert fused_nhwc.fused_nhwc_tiling(nchw, threads=2) is None


def test_plan_names_the_fused_panels(monkeypatch):
    monkeypatch.setattr(fused_nhwc.numba, "get_num_threads", lambda: 2)
    monkeypatch.setattr(im2col_cost, "indirect_applies", lambda a: False)  # no AVX-512
    autotune.clear_cache()
    try:
        why = fastconv.plan((16, 56, 56, 64), (3, 3, 64, 128), stride=2, padding=1,
                            layout="NHWC").why
    finally:
        autotune.clear_cache()      # the plan of a host without the indirect forward
    assert why.startswith("im2col") and "14 tiles of 2.1 MB" in why and "(fused)" in why


def _nhwc_problem(case, dtype):
    """(x NHWC, w HWIO, bias, NCHW x, OIHW w, ConvArgs of the NCHW layer)."""
    x, wt, b, a, _ = forward_problem(case, dtype)
    return (np.ascontiguousarray(x.transpose(NHWC.from_canonical)),
            np.ascontiguousarray(wt.transpose(NHWC.weight_from_canonical)), b, x, wt, a)


def _force(monkeypatch, rows: int) -> list:
    """Send the next NHWC im2col forwards through the fused kernel in bands of ``rows``
    output rows of the batch; its calls are returned."""
    monkeypatch.setattr(drivers, "direct_forward_applies", lambda args: False)
    monkeypatch.setattr(drivers, "lanes_chosen", lambda args: False)
    monkeypatch.setattr(drivers, "indirect_applies", lambda args: False)
    monkeypatch.setattr(drivers, "fused_nhwc_tiling",
                        lambda args: fused_nhwc.Tiling(1, rows, 0))
    return count_calls(monkeypatch, drivers, "forward_fused_nhwc")


MORE = [
    (2, 4, 7, 6, 4, 3, 2, 1, ((1, 0), (2, 1)), (2, 1), 2),   # stride 1
    (2, 2, 5, 3, 3, 3, 5, 1, 2, 1, 1),                        # kernel wider than the row
    (3, 5, 9, 12, 4, 3, 4, (2, 3), ((2, 0), (1, 2)), 1, 1),   # taps inside, many channels
    (2, 3, 11, 9, 4, 3, 3, 2, 2, (2, 1), 1),                  # row dilation, runs of taps
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [1, 2, 100])
@pytest.mark.parametrize("case", [*CASES, *MORE], ids=str)
def test_fused_forward_matches_reference(case, rows, dtype, monkeypatch):
    x, w, b, x_nchw, w_oihw, a = _nhwc_problem(case, dtype)
    calls = _force(monkeypatch, rows)
    for bias in (b, None):
        got = fastconv.conv2d(x, w, bias, stride=a.stride, padding=a.padding,
                              dilation=a.dilation, groups=a.groups, layout="NHWC",
                              algo="im2col")
        want = ref.conv2d(x_nchw, w_oihw, bias, a.stride, a.padding, a.dilation, a.groups)
        assert got.dtype == x.dtype
        assert ref.rel_error(got.transpose(NHWC.to_canonical), want) <= \
            ref.tolerance(x.dtype, "im2col")
    assert calls == [1, 1]


@pytest.mark.parametrize("read_only", ["x", "w"])
def test_a_read_only_input_runs_the_tile_loop_and_a_read_only_weight_a_copy(read_only,
                                                                           monkeypatch):
    x, w, b, x_nchw, w_oihw, a = _nhwc_problem(CASES[3], np.float32)
    calls = _force(monkeypatch, 2)
    (x if read_only == "x" else w).flags.writeable = False
    got = fastconv.conv2d(x, w, b, stride=a.stride, padding=a.padding, groups=a.groups,
                          layout="NHWC", algo="im2col")
    want = ref.conv2d(x_nchw, w_oihw, b, a.stride, a.padding, a.dilation, a.groups)
    assert ref.rel_error(got.transpose(NHWC.to_canonical), want) <= \
        ref.tolerance(x.dtype, "im2col")
    assert calls == ([] if read_only == "x" else [1])   # the weight matrix is a copy


def test_a_stem_on_two_images_runs_fused_by_default(monkeypatch):
    """A stem-like layer (7x7, stride 2, RGB) on too few images for the direct NHWC
    kernel takes the fused kernel with its own panels (no forcing) and matches the
    reference."""
    monkeypatch.setattr(fused_nhwc.numba, "get_num_threads", lambda: 2)
    calls = count_calls(monkeypatch, drivers, "forward_fused_nhwc")
    x, w, b, x_nchw, w_oihw, a = _nhwc_problem((2, 3, 112, 112, 8, 7, 7, 2, 3, 1, 1),
                                               np.float32)
    nhwc = conv_args_from_shapes("t", x.shape, w.shape, 2, 3, layout="NHWC")
    assert not drivers.lanes_chosen(nhwc)
    assert fused_nhwc.fused_nhwc_tiling(nhwc).band == 28
    got = fastconv.conv2d(x, w, b, stride=2, padding=3, layout="NHWC", algo="im2col")
    want = ref.conv2d(x_nchw, w_oihw, b, a.stride, a.padding)
    assert ref.rel_error(got.transpose(NHWC.to_canonical), want) <= \
        ref.tolerance(x.dtype, "im2col")
    assert calls == [1]


@pytest.mark.parametrize("x_shape,w_shape,kw,tiles", [
    ((16, 56, 56, 64), (3, 3, 64, 128), dict(stride=2, padding=1), True),   # stride2
    ((8, 224, 224, 3), (7, 7, 3, 64), dict(stride=2, padding=3), False),    # stem: 4 registers
    ((16, 56, 56, 64), (3, 3, 32, 128), dict(stride=2, groups=2), False),   # two groups
])
def test_which_panels_multiply_in_registers(x_shape, w_shape, kw, tiles):
    a = conv_args_from_shapes("t", x_shape, w_shape, layout="NHWC", **kw)
    assert fused_nhwc.register_tiles(a) == (tiles and _small_gemm.FOUR_REGISTER_TILES)


@pytest.mark.skipif(not _small_gemm.FOUR_REGISTER_TILES,
                    reason="the 6 x 4-register tile needs AVX-512's registers")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [2, 3, 100])
@pytest.mark.parametrize("d", [8, 9], ids=["8 registers", "8.5 registers"])
def test_register_tile_panels_match_reference(d, rows, dtype, monkeypatch):
    """Output channels of 8 registers and of 8.5 (the last block of columns overlaps the
    one before), panels of 10, 15 and 50 pixels (not multiples of the tile's 6 rows) and
    a last panel of 5 (under 6 rows: through BLAS in the same call), with and without a
    bias, against the formula."""
    lanes = _lanes.per_register(np.dtype(dtype).itemsize)
    case = (2, 5, 9, 9, d * lanes, 3, 3, 2, 1, 1, 1)
    x, w, b, x_nchw, w_oihw, a = _nhwc_problem(case, dtype)
    assert fused_nhwc.register_tiles(conv_args_from_shapes("t", x.shape, w.shape, 2, 1,
                                                           layout="NHWC", dtype=dtype))
    calls = _force(monkeypatch, rows)
    for bias in (b, None):
        got = fastconv.conv2d(x, w, bias, stride=2, padding=1, layout="NHWC", algo="im2col")
        want = ref.conv2d(x_nchw, w_oihw, bias, a.stride, a.padding)
        assert ref.rel_error(got.transpose(NHWC.to_canonical), want) <= \
            ref.tolerance(x.dtype, "im2col")
    assert calls == [1, 1]
