"""im2col's row lanes kernel for an image network's NCHW input layer
(``algos.im2col.row_lanes``) against the reference, and where it applies."""

import numpy as np
import pytest

import fastconv
from fastconv import _lanes, _pool
from fastconv._args import conv_args_from_shapes
from fastconv.algos.im2col import row_lanes

from . import reference as ref
from .conftest import assert_read_only_input_shares_kernel, count_calls

# (n, c, h, w, d, kernel, stride, padding, dilation), NCHW / OIHW sizes, rows of at least
# one wide tile (48 float32 pixels): a stem whose last block is short of 8 channels and
# whose rows end in an overlapping vector (55 = 48 + 7); one channel at stride 1; a
# column stride and dilation with asymmetric padding and 64 channels; an even kernel
# with dilation 2 (4 channels); rows of a wide tile and one vector exactly (64); rows
# wholly in the padding (bias alone); stride 3
CASES = [
    (2, 3, 9, 110, 13, 7, 2, 3, 1),
    (2, 1, 7, 60, 8, 7, 1, 0, 1),
    (1, 3, 8, 121, 64, 5, (1, 2), ((2, 0), (1, 3)), (1, 2)),
    (2, 4, 6, 64, 9, 4, 1, 2, 2),
    (1, 3, 5, 64, 16, 7, 1, 3, 1),
    (1, 2, 4, 100, 8, 7, 2, 6, 1),
    (1, 3, 7, 150, 8, 7, 3, 1, 1),
]


def _pairs(v):
    return v if isinstance(v, tuple) else (v, v)


def _problem(case, dtype, rng):
    n, c, h, wd, d, k, stride, padding, dilation = case
    x = rng.standard_normal((n, c, h, wd)).astype(dtype)
    w = rng.standard_normal((d, c, k, k)).astype(dtype)
    b = rng.standard_normal(d).astype(dtype)
    pad = padding if isinstance(padding, tuple) else ((padding, padding),) * 2
    kwargs = dict(stride=_pairs(stride), padding=pad, dilation=_pairs(dilation))
    return x, w, b, kwargs


def _args(x, w, kwargs):
    return conv_args_from_shapes("conv2d", x.shape, w.shape, kwargs["stride"],
                                 kwargs["padding"], kwargs["dilation"], dtype=x.dtype)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_row_lanes_kernel_matches_the_reference(case, dtype, with_bias, rng):
    # forward itself, whatever the host's registers (applies needs AVX-512's)
    x, w, b, kwargs = _problem(case, dtype, rng)
    bias = b if with_bias else None
    a = _args(x, w, kwargs)
    out = np.full(a.y_layout_shape, np.nan, dtype)
    row_lanes.forward(x, w, a, out, bias)
    want = ref.conv2d(x, w, bias, **kwargs)
    assert ref.rel_error(out, want) < ref.tolerance(dtype, "im2col")


@pytest.mark.parametrize("case", [CASES[0], CASES[4]], ids=str)
def test_streamed_and_strided_outputs(case, rng, monkeypatch):
    # rows of 64 float32 pixels start on cache lines: stored past the caches once the
    # output is large enough (here: any size); a strided output view is written in place
    monkeypatch.setattr(_lanes, "STREAM_BYTES", 0)
    x, w, b, kwargs = _problem(case, np.float32, rng)
    a = _args(x, w, kwargs)
    want = ref.conv2d(x, w, b, **kwargs)
    out = _pool.aligned_empty(a.y_layout_shape, np.float32)
    assert _lanes.can_stream(out, a.w_out) == (a.w_out % 16 == 0)
    row_lanes.forward(x, w, a, out, b)
    assert ref.rel_error(out, want) < 1e-4
    wide = np.zeros(a.y_layout_shape[:3] + (a.w_out + 5,), np.float32)
    row_lanes.forward(x, w, a, wide[..., 2:-3], b)
    assert ref.rel_error(wide[..., 2:-3], want) < 1e-4
    assert not wide[..., :2].any() and not wide[..., -3:].any()


@pytest.mark.skipif(not _lanes.WIDE, reason="runs on hosts with AVX-512's registers")
def test_conv2d_runs_the_stem_here(rng, monkeypatch):
    calls = count_calls(monkeypatch, row_lanes, "forward")
    x = rng.standard_normal((1, 3, 64, 112)).astype(np.float32)
    w = rng.standard_normal((16, 3, 7, 7)).astype(np.float32)
    y = fastconv.conv2d(x, w, stride=2, padding=3, algo="im2col")
    assert calls == [1]
    want = ref.conv2d(x, w, stride=(2, 2), padding=((3, 3), (3, 3)))
    assert ref.rel_error(y, want) < 1e-4
    plan = fastconv.plan(x.shape, w.shape, stride=2, padding=3)
    assert plan.algorithm == "im2col" and "row lanes kernel" in plan.why


@pytest.mark.skipif(not _lanes.WIDE, reason="runs on hosts with AVX-512's registers")
def test_read_only_input_shares_the_kernels(rng):
    x = rng.standard_normal((1, 3, 9, 110)).astype(np.float32)
    w = rng.standard_normal((8, 3, 7, 7)).astype(np.float32)
    assert_read_only_input_shares_kernel(
        row_lanes._split_phases,
        lambda: fastconv.conv2d(x, w, stride=2, padding=3, algo="im2col"), x)


@pytest.mark.parametrize("x_shape, w_shape, kwargs, expected", [
    ((8, 3, 224, 224), (64, 3, 7, 7), dict(stride=2, padding=3), True),      # the stem
    ((4, 1, 224, 224), (64, 1, 7, 7), dict(stride=2, padding=3), True),      # 49 taps
    ((8, 3, 128, 128), (32, 3, 5, 5), dict(stride=2, padding=2), True),
    ((8, 3, 224, 224), (64, 3, 3, 3), dict(padding=1), False),               # 27 taps
    ((8, 8, 64, 64), (16, 8, 3, 3), dict(padding=1), False),                 # 8 channels in
    ((8, 3, 224, 224), (96, 3, 7, 7), dict(stride=2, padding=3), False),     # 96 out
    ((8, 3, 80, 80), (64, 3, 7, 7), dict(stride=2, padding=3), False),       # rows of 40
    ((8, 4, 224, 224), (64, 2, 7, 7), dict(stride=2, padding=3, groups=2), False),
])
def test_where_it_applies(x_shape, w_shape, kwargs, expected, monkeypatch):
    kw = dict(stride=1, padding=0, dilation=1, groups=1) | kwargs
    a = conv_args_from_shapes("t", x_shape, w_shape, **kw)
    monkeypatch.setattr(_lanes, "WIDE", True)
    assert row_lanes.applies(a) == expected
    nhwc = conv_args_from_shapes("t", (x_shape[0], *x_shape[2:], x_shape[1]),
                                 (*w_shape[2:], w_shape[1], w_shape[0]), **kw,
                                 layout="NHWC")
    assert not row_lanes.applies(nhwc)                  # channels last: the lanes kernel
    monkeypatch.setattr(_lanes, "WIDE", False)          # 16 registers: 24 sums would spill
    assert not row_lanes.applies(a)


def test_cost_counts_whole_tiles_and_the_phases():
    a = conv_args_from_shapes("t", (8, 3, 224, 224), (64, 3, 7, 7), stride=2, padding=3)
    est = row_lanes.cost(a, fastconv.costs.DEFAULT_PROFILE)
    assert est.workspace == 8 * 3 * 229 * 2 * 115 * 4      # 229 rows, 2 phases of 115
    assert "944M multiply-adds" in est.detail                 # 112 = 48 + 48 + 16 a row
    b = conv_args_from_shapes("t", (8, 3, 220, 224), (60, 3, 7, 7), stride=2, padding=3)
    assert row_lanes.cost(b, fastconv.costs.DEFAULT_PROFILE).seconds < est.seconds


@pytest.mark.parametrize("tasks, rows", [(64, 112), (8, 112), (1, 112), (2, 5), (3, 1)])
def test_bands_give_each_thread_tasks(tasks, rows):
    # images x blocks of channels, split into bands of rows where they are too few
    import numba
    band = row_lanes._band(tasks, rows)
    assert 1 <= band <= rows
    want = min(tasks * rows, row_lanes.TASKS_PER_THREAD * numba.get_num_threads())
    assert tasks * -(-rows // band) >= want
    if tasks >= want:
        assert band == rows                 # whole images where there are tasks enough
