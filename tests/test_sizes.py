"""Sizes past 2**31 elements: the planner and index helpers, without allocating."""

import numpy as np
import pytest

import fastconv
from fastconv._args import conv_args_from_shapes
from fastconv._memory import allocate
from fastconv.algos import fft
from fastconv.algos._common import valid_range
from fastconv.algos.im2col import tiling

BIG = 2**31


def test_conv_record_on_a_shape_past_int32():
    a = conv_args_from_shapes("conv2d", (64, 256, 2048, 2048), (256, 256, 3, 3), padding=1)
    assert a.n * a.c_in * a.h * a.w > 16 * BIG
    assert (a.h_out, a.w_out) == (2048, 2048)
    assert a.flops == 2 * 64 * 256 * 2048 * 2048 * 256 * 9  # exact, no overflow
    assert a.flops > 2**48


def test_im2col_tiling_stays_in_budget_on_huge_shapes():
    a = conv_args_from_shapes("conv2d", (64, 512, 4096, 4096), (512, 512, 3, 3), padding=1)
    t = tiling(a, chunk_bytes=8 << 20, budget=256 << 20)
    assert t.images == 1 and 1 <= t.band < a.h_out
    assert t.col_bytes <= 256 << 20  # a tile is at least one output row
    # one output row of one image: C*K*K*W_out elements, past int32 when multiplied out
    assert a.c_in * 9 * a.w_out * a.h_out * a.n > BIG


def test_fft_workspace_estimate_is_exact_integer_arithmetic():
    a = conv_args_from_shapes("conv2d", (1, 4096, 8192, 8192), (4096, 4096, 31, 31))
    fh, fw = fft.transform_shape(a)
    assert fh >= 8192 + 30 and fw >= 8192 + 30
    assert fft.image_bytes(a) == (4096 + 4096) * fh * (fw // 2 + 1) * 8
    assert fft.image_bytes(a) > 2**40


@pytest.mark.parametrize("n_out,offset,stride,size", [
    (BIG + 5, -3, 1, BIG),
    (3 * BIG, -(BIG + 7), 2, 2 * BIG),
    (10, BIG, 1, BIG),  # wholly outside
])
def test_valid_range_past_int32(n_out, offset, stride, size):
    lo, hi = valid_range(n_out, offset, stride, size)
    # brute-force the edges: lo is the first valid t, hi - 1 the last
    def ok(t):
        return 0 <= t * stride + offset < size and 0 <= t < n_out
    if hi > lo:
        assert ok(lo) and not ok(lo - 1) and ok(hi - 1) and not ok(hi)
    else:
        assert not any(ok(t) for t in (0, n_out - 1, lo, hi))


def test_output_that_cannot_be_allocated_fails_before_work():
    x = np.ones((1, 1, 1, 1), np.float32)
    w = np.ones((4096, 1, 1, 1), np.float32)
    # padding 100000 on a 1x1 image: 4096 x 200001 x 200001 outputs, about 600 TiB
    with pytest.raises(MemoryError, match=r"conv2d: the output of shape \(1, 4096, 200001, "
                                          r"200001\) \(float32\) needs .*TiB"):
        fastconv.conv2d(x, w, padding=100000)


def test_allocate_names_op_and_size():
    with pytest.raises(MemoryError, match=r"myop: the buffer of shape .* needs .*PiB"):
        allocate("myop", "buffer", (2**30, 2**30, 4), np.float64)
    assert allocate("myop", "buffer", (2, 3), np.float32).shape == (2, 3)
