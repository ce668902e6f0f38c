"""The NHWC forward in register tiles read straight from the input (``im2col.indirect_nhwc``):
which layers take it, and its result against the reference over kernels, strides,
paddings (rows and columns whose kernel reaches into them, rows whose kernel lies wholly
in them), bias, dtypes, channel counts off the tile, batches whose rows do not fill
the last band evenly, and tiles of pixels taken across rows and images."""

import numpy as np
import pytest

import fastconv
from fastconv import _small_gemm, autotune
from fastconv._args import conv_args_from_shapes
from fastconv.algos.im2col import drivers, indirect_nhwc

from . import reference as ref
from .conftest import count_calls

pytestmark = pytest.mark.skipif(not _small_gemm.FOUR_REGISTER_TILES,
                                reason="the 4-register tiles need AVX-512")


@pytest.mark.parametrize("x_shape,w_shape,kw,takes", [
    ((16, 56, 56, 64), (3, 3, 64, 128), dict(stride=2, padding=1), True),     # stride2
    ((2, 9, 30, 3), (5, 5, 3, 128), dict(stride=2, padding=(2, 0)), True),
    ((16, 28, 28, 128), (3, 3, 128, 256), dict(stride=2, padding=1), False),  # 1.2 MB weight
    ((16, 56, 56, 64), (3, 3, 64, 64), dict(padding=1), False),              # 4 registers
    ((16, 56, 56, 64), (1, 1, 64, 128), {}, False),                          # pointwise
    ((16, 56, 56, 64), (3, 3, 32, 128), dict(groups=2, padding=1), False),   # groups
    ((16, 56, 56, 64), (3, 3, 64, 128), dict(dilation=(1, 2)), False),       # column dilation
    ((16, 56, 56, 64), (3, 3, 64, 128), dict(dilation=(2, 1)), True),        # row dilation
    ((4, 9, 8, 8), (3, 3, 8, 128), dict(padding=1), True),                   # 6 inner columns
    ((4, 9, 7, 8), (3, 3, 8, 128), dict(padding=1), False),                  # 5
    ((1, 7, 9, 8), (3, 3, 8, 128), {}, False),                               # 5 output rows
])
def test_which_layers_take_it(x_shape, w_shape, kw, takes):
    a = conv_args_from_shapes("t", x_shape, w_shape, layout="NHWC", **kw)
    assert indirect_nhwc.indirect_applies(a) == takes
    nchw = conv_args_from_shapes("t", (x_shape[0], x_shape[3], *x_shape[1:3]),
                                 (w_shape[3], w_shape[2], *w_shape[:2]), **kw)
    assert not indirect_nhwc.indirect_applies(nchw)


def test_plan_names_the_indirect_forward():
    autotune.clear_cache()
    why = fastconv.plan((16, 56, 56, 64), (3, 3, 64, 128), stride=2, padding=1,
                        layout="NHWC").why
    assert why.startswith("im2col") and "read in place from the input (indirect" in why
    assert "read in place" not in fastconv.plan((16, 64, 56, 56), (128, 64, 3, 3), stride=2,
                                                padding=1).why


CASES = [   # (N, H, W, C, D, KH, KW, stride, padding, dilation)
    (2, 16, 20, 8, 128, 3, 3, 2, 1, 1),
    (4, 14, 14, 16, 128, 3, 3, 2, 1, 1),                  # 28 rows: the last band 12
    (3, 11, 13, 5, 130, 3, 3, 1, 1, 1),                   # D off the 4-register blocks
    (2, 9, 30, 3, 128, 5, 5, 2, (2, 0), 1),               # edge columns at one side only
    (2, 20, 20, 4, 128, 3, 3, (1, 2), ((1, 2), (0, 1)), 1),
    (3, 3, 30, 2, 128, 3, 3, 1, ((4, 4), (1, 1)), 1),     # rows wholly in the padding
    (2, 12, 16, 4, 128, 3, 3, 1, 2, (2, 1)),              # dilated rows
    (2, 10, 40, 6, 128, 7, 3, (2, 1), (3, 1), 1),
    # tiles across rows: 7 inner columns a row (Wo 8); runs of whole rows that cross
    # from one image into the next (no row padding, Ho 7 in bands of 8)
    (3, 16, 16, 8, 128, 3, 3, 2, 1, 1),
    (3, 9, 10, 8, 128, 3, 3, 1, ((0, 0), (1, 1)), 1),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_the_reference(case, dtype, rng, monkeypatch):
    n, h, wd, c, d, kh, kw, stride, padding, dilation = case
    x = rng.standard_normal((n, h, wd, c)).astype(dtype)
    w = rng.standard_normal((kh, kw, c, d)).astype(dtype)
    b = rng.standard_normal(d).astype(dtype)
    a = conv_args_from_shapes("t", x.shape, w.shape, stride, padding, dilation,
                              layout="NHWC")
    assert indirect_nhwc.indirect_applies(a)
    monkeypatch.setattr(drivers, "lanes_chosen", lambda args: False)
    calls = count_calls(monkeypatch, drivers, "forward_indirect")
    x64, w64 = x.transpose(0, 3, 1, 2).astype(np.float64), w.transpose(3, 2, 0, 1)
    for bias in (b, None):
        got = fastconv.conv2d(x, w, bias, stride=a.stride, padding=a.padding,
                              dilation=a.dilation, layout="NHWC", algo="im2col")
        want = ref.conv2d(x64, w64.astype(np.float64), bias, a.stride, a.padding,
                          a.dilation)
        assert got.dtype == x.dtype
        assert ref.rel_error(got.transpose(0, 3, 1, 2), want) <= \
            ref.tolerance(x.dtype, "im2col")
    assert calls == [1, 1]


def test_rows_whose_kernel_lies_in_the_padding_are_the_bias(rng):
    x = rng.standard_normal((2, 3, 30, 2)).astype(np.float32)
    w = rng.standard_normal((3, 3, 2, 128)).astype(np.float32)
    b = rng.standard_normal(128).astype(np.float32)
    y = fastconv.conv2d(x, w, b, padding=((4, 4), (1, 1)), layout="NHWC", algo="im2col")
    assert y.shape == (2, 9, 30, 128)
    for i in (0, 1, 7, 8):                  # kernel rows -4..-2, -3..-1, 3..5, 4..6
        np.testing.assert_array_equal(y[:, i], np.broadcast_to(b, (2, 30, 128)))
