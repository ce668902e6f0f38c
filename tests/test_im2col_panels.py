"""The split NCHW forward in L2-sized panels (``im2col.panels``): which layers take
them, their tiles, and the result against the reference over strides, paddings,
dilations, groups, bias and dtypes, in bands of rows and in whole-image panels."""

import numpy as np
import pytest

import fastconv
from fastconv._args import conv_args_from_shapes
from fastconv.algos.im2col import drivers, panels, split

from .test_im2col_split import CASES, forward_matches_reference, forward_problem


@pytest.mark.parametrize("x_shape,w_shape,kw,want", [
    ((8, 3, 224, 224), (64, 3, 7, 7), dict(stride=2, padding=3), (1, 28)),     # stem
    ((16, 64, 56, 56), (128, 64, 3, 3), dict(stride=2, padding=1), (1, 28)),   # stride2
    ((16, 128, 28, 28), (128, 128, 3, 3), dict(padding=1), None),   # 448-pixel bands
    ((8, 32, 28, 28), (32, 32, 3, 3), dict(padding=1), None),       # tiles fit already
    ((64, 6, 12, 12), (16, 6, 5, 5), {}, None),                     # not split
])
def test_which_layers_take_panels(x_shape, w_shape, kw, want):
    a = conv_args_from_shapes("t", x_shape, w_shape, **kw)
    t = panels.panel_tiling(a, threads=2)
    assert (None if t is None else (t.images, t.band)) == want
    assert panels.panel_tiling(a, threads=1) is None
    if t is not None:
        assert t.col_bytes <= panels.PANEL_BYTES
        assert t.col_bytes == a.c_in * a.kh * a.kw * t.band * a.w_out * 4 * t.images


def test_bands_are_even():
    a = conv_args_from_shapes("t", (8, 3, 224, 224), (64, 3, 7, 7), stride=2, padding=3)
    t = panels.panel_tiling(a, threads=2)
    _, runs = split._parts(a, t=t)
    bands = [band for run in runs for _, _, _, band in run]
    assert bands == [28] * 32 and [len(r) for r in runs] == [16, 16]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [None, 3], ids=["images", "bands"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_panel_forward_matches_reference(case, rows, dtype, monkeypatch):
    x, wt, b, a, image = forward_problem(case, dtype)
    # panels of one image, or of `rows` output rows
    monkeypatch.setattr(panels, "PANEL_BYTES", image if rows is None else rows * image // a.h_out)
    monkeypatch.setattr(panels, "PANEL_MIN_PIXELS", 1)
    monkeypatch.setattr(panels, "split_tiles", lambda args, threads=None: True)
    monkeypatch.setattr(drivers, "split_tiles", lambda args: True)
    monkeypatch.setattr(drivers, "direct_forward_applies", lambda args: False)
    monkeypatch.setattr(fastconv.config, "IM2COL_CHUNK_BYTES", 2 * image)
    seen = []
    real = split._parts
    monkeypatch.setattr(split, "_parts", lambda *p, **k: seen.append(k["t"]) or real(*p, **k))
    assert forward_matches_reference(x, wt, b, a)
    assert len(seen) == 1 and seen[0] is not None
    assert (seen[0].band == a.h_out) == (rows is None)

