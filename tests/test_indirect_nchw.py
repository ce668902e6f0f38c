"""The NCHW forward through the NHWC register tiles on staged rows
(``im2col.indirect_nchw``): which layers take it, the plan's account of it, and its
result against the reference over kernels, strides, paddings (rows whose kernel lies
wholly in them), dilated rows, bias, dtypes, channel counts off the staging's groups of
8 and the tiles' blocks, bands that do not fill an image evenly, strided views and
read-only inputs."""

import numpy as np
import pytest

import fastconv
from fastconv import _small_gemm, autotune
from fastconv._args import conv_args_from_shapes
from fastconv.algos.im2col import drivers, indirect_nchw

from . import reference as ref
from .conftest import assert_read_only_input_shares_kernel, count_calls

pytestmark = pytest.mark.skipif(not _small_gemm.FOUR_REGISTER_TILES,
                                reason="the 4-register tiles need AVX-512")


@pytest.mark.parametrize("x_shape,w_shape,kw,takes", [
    ((16, 64, 56, 56), (128, 64, 3, 3), dict(stride=2, padding=1), True),     # stride2
    ((16, 32, 28, 28), (128, 32, 3, 3), dict(padding=1), True),
    ((8, 3, 224, 224), (128, 3, 7, 7), dict(stride=2, padding=3), False),     # 3 channels
    ((16, 128, 28, 28), (256, 128, 3, 3), dict(stride=2, padding=1), False),  # 1.2 MB weight
    ((16, 64, 56, 56), (64, 64, 3, 3), dict(padding=1), False),               # 4 registers
    ((16, 64, 56, 56), (128, 64, 1, 1), {}, False),                           # pointwise
    ((16, 64, 56, 56), (128, 32, 3, 3), dict(groups=2, padding=1), False),    # groups
    ((16, 64, 56, 56), (128, 64, 3, 3), dict(dilation=(1, 2)), False),        # column dilation
    ((16, 64, 56, 56), (128, 64, 3, 3), dict(dilation=(2, 1)), True),         # row dilation
    ((2, 8, 30, 6), (128, 8, 3, 3), dict(padding=1), True),                   # 6 columns
    ((2, 8, 30, 5), (128, 8, 3, 3), dict(padding=1), False),                  # 5
    ((4, 8, 9, 6), (128, 8, 3, 3), dict(padding=1), False),                   # image-last
])
def test_which_layers_take_it(x_shape, w_shape, kw, takes):
    a = conv_args_from_shapes("t", x_shape, w_shape, **kw)
    assert indirect_nchw.applies(a) == takes
    nhwc = conv_args_from_shapes("t", (x_shape[0], *x_shape[2:], x_shape[1]),
                                 (*w_shape[2:], w_shape[1], w_shape[0]), layout="NHWC", **kw)
    assert not indirect_nchw.applies(nhwc)


def test_plan_names_the_staged_forward():
    autotune.clear_cache()
    why = fastconv.plan((16, 64, 56, 56), (128, 64, 3, 3), stride=2, padding=1).why
    assert why.startswith("im2col") and "staged channels last" in why
    assert "staged" not in fastconv.plan((8, 3, 224, 224), (128, 3, 7, 7), stride=2,
                                         padding=3).why


CASES = [   # (N, C, H, W, D, KH, KW, stride, padding, dilation)
    (2, 8, 16, 20, 128, 3, 3, 2, 1, 1),
    (3, 16, 23, 14, 128, 3, 3, 2, 1, 1),                  # 12 rows: bands of 8 and 4
    (3, 11, 11, 13, 130, 3, 3, 1, 1, 1),                  # C and D off the blocks
    (2, 8, 9, 30, 128, 5, 5, 2, (2, 0), 1),
    (2, 9, 20, 20, 128, 3, 3, (1, 2), ((1, 2), (0, 1)), 1),
    (3, 8, 3, 30, 128, 3, 3, 1, ((4, 4), (1, 1)), 1),     # rows wholly in the padding
    (2, 12, 12, 16, 128, 3, 3, 1, 2, (2, 1)),             # dilated rows
    (2, 10, 10, 40, 128, 7, 3, (2, 1), (3, 1), 1),
]


def _problem(case, dtype, rng):
    n, c, h, wd, d, kh, kw, stride, padding, dilation = case
    x = rng.standard_normal((n, c, h, wd)).astype(dtype)
    w = rng.standard_normal((d, c, kh, kw)).astype(dtype)
    b = rng.standard_normal(d).astype(dtype)
    a = conv_args_from_shapes("t", x.shape, w.shape, stride, padding, dilation)
    return x, w, b, dict(stride=a.stride, padding=a.padding, dilation=a.dilation)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_the_reference(case, dtype, rng, monkeypatch):
    x, w, b, kwargs = _problem(case, dtype, rng)
    assert indirect_nchw.applies(conv_args_from_shapes("t", x.shape, w.shape, **kwargs))
    monkeypatch.setattr(drivers, "lanes_chosen", lambda args: False)
    calls = count_calls(monkeypatch, indirect_nchw, "forward")
    for bias in (b, None):
        got = fastconv.conv2d(x, w, bias, algo="im2col", **kwargs)
        want = ref.conv2d(x, w, bias, **kwargs)
        assert got.dtype == x.dtype
        assert ref.rel_error(got, want) <= ref.tolerance(x.dtype, "im2col")
    assert calls == [1, 1]


def test_strided_views_are_staged_value_by_value(rng):
    """An input and an output that are not C-contiguous (crops of larger arrays) take the
    staging's one-value-at-a-time copies, and only the output's view is written."""
    x, w, b, kwargs = _problem(CASES[1], np.float32, rng)
    wide = np.zeros((3, 16, 23, 20), np.float32)
    wide[:, :, :, 3:17] = x
    y_wide = np.full((3, 128, 12, 9), 7.0, np.float32)
    a = conv_args_from_shapes("t", x.shape, w.shape, **kwargs)
    indirect_nchw.forward(wide[:, :, :, 3:17], w, a, y_wide[:, :, :, 1:8], b)
    want = ref.conv2d(x, w, b, **kwargs)
    assert ref.rel_error(y_wide[:, :, :, 1:8], want) <= ref.tolerance(np.float32, "im2col")
    assert (y_wide[:, :, :, 0] == 7).all() and (y_wide[:, :, :, 8] == 7).all()


def test_rows_whose_kernel_lies_in_the_padding_are_the_bias(rng):
    x = rng.standard_normal((2, 8, 3, 30)).astype(np.float32)
    w = rng.standard_normal((128, 8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(128).astype(np.float32)
    y = fastconv.conv2d(x, w, b, padding=((4, 4), (1, 1)), algo="im2col")
    assert y.shape == (2, 128, 9, 30)
    for i in (0, 1, 7, 8):                  # kernel rows -4..-2, -3..-1, 3..5, 4..6
        np.testing.assert_array_equal(y[:, :, i],
                                      np.broadcast_to(b[:, None], (2, 128, 30)))


def test_read_only_and_writable_inputs_share_one_compiled_kernel(rng):
    """A read-only input runs the kernel compiled for a writable one: the input is always
    passed read-only."""
    x, w, b, kwargs = _problem(CASES[0], np.float32, rng)
    assert_read_only_input_shares_kernel(
        indirect_nchw._forward_staged,
        lambda: fastconv.conv2d(x, w, b, algo="im2col", **kwargs), x)
