"""The strided NCHW forward with the unfold and the GEMM fused (``im2col.fused``): which
layers take it, its panels, the plan's account of it, and the result against the
reference over strides, paddings, dilations, groups, bias, dtypes and band heights; its
unfold by phases against the plain unfold."""

import numba
import numpy as np
import pytest

import fastconv
from fastconv import config
from fastconv._args import conv_args_from_shapes
from fastconv.algos.im2col import drivers, fused, indirect_nchw
from fastconv.algos.im2col.phased_unfold import phase_size, unfold_phased
from fastconv.algos.im2col.tiling import unfold_params
from fastconv.algos.im2col.unfold import _im2col_nchw_serial

from . import reference as ref
from .conftest import count_calls
from .test_im2col_split import forward_problem, random_geometries

pytestmark = pytest.mark.skipif(not fused.available(np.float32),
                                reason="numpy's BLAS not found")

# (n, c, h, w, d, kh, kw, stride, padding, dilation, groups): strided layers
CASES = [
    (3, 4, 11, 10, 6, 3, 3, 2, 1, 1, 2),
    (3, 2, 12, 9, 3, 5, 3, (2, 1), ((2, 1), (0, 3)), (1, 2), 1),
    (2, 6, 13, 12, 6, 3, 3, (1, 3), 2, 2, 3),
    (3, 3, 15, 15, 5, 7, 7, 2, 3, 1, 1),              # a stem-like layer
    (2, 2, 9, 9, 4, 2, 2, 3, 0, 1, 1),                # stride past the kernel
    (2, 2, 9, 11, 3, 2, 2, 3, 0, 1, 1),               # input columns no tap reads
    (2, 3, 10, 12, 4, 3, 2, 2, ((0, 3), (4, 1)), (2, 3), 1),   # wide padding, dilated
]


@pytest.mark.parametrize("x_shape,w_shape,kw,band", [
    ((8, 3, 224, 224), (64, 3, 7, 7), dict(stride=2, padding=3), 14),     # stem
    ((16, 64, 56, 56), (128, 64, 3, 3), dict(stride=2, padding=1), 28),   # stride2
    ((16, 64, 56, 56), (64, 64, 3, 3), dict(padding=1), None),            # stride 1
    ((64, 6, 12, 12), (16, 6, 5, 5), dict(stride=2), None),               # not split
])
def test_which_layers_take_it(x_shape, w_shape, kw, band):
    a = conv_args_from_shapes("t", x_shape, w_shape, **kw)
    t = fused.fused_tiling(a, threads=2)
    assert (None if t is None else t.band) == band
    assert fused.fused_tiling(a, threads=1) is None
    if t is not None:
        assert t.images == 1 and a.h_out % t.band == 0
        assert t.col_bytes <= fused.PANEL_BYTES
        assert t.band * a.w_out <= fused.FUSED_MAX_PIXELS


def test_plan_names_the_fused_panels(monkeypatch):
    monkeypatch.setattr(fused, "split_tiles", lambda args, threads=None: True)
    monkeypatch.setattr(indirect_nchw, "applies", lambda args: False)   # staged otherwise
    why = fastconv.plan((16, 64, 56, 56), (128, 64, 3, 3), stride=2, padding=1).why
    assert why.startswith("im2col") and "16 tiles of 1.8 MB" in why and "(fused)" in why


def _force(monkeypatch, rows: int) -> list:
    """Send the next im2col forward through the fused kernel in bands of ``rows``
    output rows (one image per tile, so never image-last); its calls are returned."""
    monkeypatch.setattr(fused, "split_tiles", lambda args, threads=None: True)
    monkeypatch.setattr(fused, "PANEL_MIN_PIXELS", 1)
    monkeypatch.setattr(drivers, "direct_forward_applies", lambda args: False)
    real = fused.fused_tiling
    monkeypatch.setattr(fused, "FUSED_MAX_PIXELS", 1 << 30)
    monkeypatch.setattr(drivers, "fused_tiling", lambda args: real(args) and fused.Tiling(
        1, rows, 0))
    return count_calls(monkeypatch, drivers, "forward_fused")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [1, 2, 100])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_fused_forward_matches_reference(case, rows, dtype, monkeypatch):
    x, wt, b, a, image = forward_problem(case, dtype)
    monkeypatch.setattr(config, "IM2COL_CHUNK_BYTES", image)
    calls = _force(monkeypatch, min(rows, a.h_out))
    for bias in (b, None):
        got = fastconv.conv2d(x, wt, bias, stride=a.stride, padding=a.padding,
                              dilation=a.dilation, groups=a.groups, algo="im2col")
        want = ref.conv2d(x, wt, bias, a.stride, a.padding, a.dilation, a.groups)
        assert got.dtype == x.dtype
        assert ref.rel_error(got, want) <= ref.tolerance(x.dtype, "im2col")
    assert calls == [1, 1]


def test_read_only_input_runs_split(monkeypatch):
    x, wt, b, a, image = forward_problem(CASES[0], np.float32)
    monkeypatch.setattr(config, "IM2COL_CHUNK_BYTES", image)
    calls = _force(monkeypatch, 2)
    monkeypatch.setattr(drivers, "split_tiles", lambda args: True)
    split_calls = count_calls(monkeypatch, drivers, "forward_split")
    x.flags.writeable = False
    got = fastconv.conv2d(x, wt, b, stride=a.stride, padding=a.padding, groups=a.groups,
                          algo="im2col")
    want = ref.conv2d(x, wt, b, a.stride, a.padding, a.dilation, a.groups)
    assert ref.rel_error(got, want) <= ref.tolerance(x.dtype, "im2col")
    assert calls == [] and split_calls == [1]


@numba.njit(boundscheck=True)
def _phased(x, cols, phases, n, i0, wo, sh, sw, pt, pl, rh, rw, kh, kw):
    """``unfold_phased`` with every index checked (an out-of-range one raises)."""
    unfold_phased(x, cols, phases, n, i0, wo, sh, sw, pt, pl, rh, rw, kh, kw)


def test_phased_unfold_is_the_unfold():
    rng = np.random.default_rng(1)
    for a, x, i0, band in random_geometries(rng, 30, 2, np.float32):
        want = np.full((1, 2 * a.kh * a.kw, band * a.w_out), np.nan, np.float32)
        got = want.copy()
        _im2col_nchw_serial(x, want, 1, i0, *unfold_params(a))
        phases = np.full(phase_size(band, a), np.nan, np.float32)
        _phased(x, got, phases, 1, i0, *unfold_params(a))
        assert np.array_equal(got, want), a
