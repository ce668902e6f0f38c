"""im2col's direct lanes kernel for small layers in either layout
(``algos.im2col.direct_lanes``) against the reference, torch and finite differences,
and where it applies."""

import numpy as np
import pytest

import fastconv
from fastconv import Tensor, _lanes, _pool, gradcheck
from fastconv._args import conv_args_from_shapes
from fastconv.algos.im2col import direct_lanes, drivers, lanes_bands, lanes_plan
from fastconv.algos.im2col.lanes_plan import lanes_applies, lanes_chosen
from fastconv.nn import functional as F

from . import reference as ref
from .conftest import assert_read_only_input_shares_kernel, count_calls, from_nhwc, to_nhwc

LAYOUTS = ["NCHW", "NHWC"]

# (n, c, h, w, d, kernel, stride, padding, dilation), NCHW / OIHW sizes: a partial
# group of pixels, output channels short of a block, padding on every side (pixels run
# one at a time), strides, rectangular kernels, asymmetric padding, column dilation
# (runs of C taps), two blocks of output channels, output pixels wholly in the padding;
# blocks run in pairs (``_group8x2`` or ``_group4x2``: both tiles, ``PAIR_PIXELS``), a
# last odd block alone; narrow maps with pixels
# in the padding (padded first, ``_prepadded``: the 7x7 and 14x14 cases below); fewer
# channels than kernel columns (``_tap_order``: the channels outer); unpadded layers
# whose rows are not a multiple of 8 pixels (groups across rows, ``band_rows``: three
# cases, with pairs of blocks, a stride, a short last band); one block of output
# channels in two groups of 8 pixels at once (``_group16``: the last three), and in
# NCHW each of a pair of blocks so (whole lines of a channel's row; the last case)
CASES = [
    (4, 6, 8, 8, 16, 5, 1, 0, 1),                         # LeNet's second layer, smaller
    (5, 6, 9, 11, 13, 3, 1, 1, 1),
    (4, 6, 10, 13, 16, (3, 2), 2, ((2, 0), (1, 1)), 1),
    (4, 8, 9, 12, 32, 3, 1, 2, 2),
    (4, 9, 7, 20, 14, 3, (1, 2), 1, (2, 1)),
    (4, 8, 5, 6, 16, 3, 2, 3, 1),     # padding beyond the kernel: pixels of bias alone
    (4, 6, 5, 6, 16, 3, 1, 4, 1),     # whole rows of bias alone above and below, 4 pixels
    (4, 6, 7, 12, 40, 3, 1, 1, 1),    # a pair of blocks and a block short of its lanes
    (4, 7, 6, 11, 28, 3, 2, 1, 1),    # a pair of blocks, the second short of its lanes
    (4, 16, 7, 7, 32, 3, 1, 1, 1),    # 7x7 with padding 1: every pixel in one group
    (4, 6, 14, 14, 16, 5, 1, 2, 1),   # LeNet's second layer with padding 2
    (4, 3, 15, 15, 40, 7, 2, 3, 1),   # a stem: in NCHW the channels outer, columns inner
    (4, 2, 9, 20, 16, (3, 7), 1, 1, (1, 2)),  # the same order with column dilation
    (4, 6, 14, 14, 16, 5, 1, 0, 1),   # LeNet's second layer: 10 pixels a row, bands of 4
    (4, 8, 11, 13, 40, 3, 1, 0, 1),   # 11 a row, bands of 8 rows and of 1
    (4, 6, 13, 12, 32, 3, 2, 0, (1, 2)),  # strided: 6 rows of 4, bands of 2
    (4, 6, 12, 12, 16, 5, 1, 0, 1),   # LeNet's second layer: rows of 8, bands of 16 pixels
    (4, 6, 9, 22, 12, 3, 1, 1, 1),    # one block, 20 pixels inside a row: 16, then 4
    (4, 6, 8, 36, 28, 3, 1, 1, 1),    # 34 inside a row: 16, 16, 2; the pair's second short
]


def _problem(case, dtype, rng):
    n, c, h, wd, d, k, stride, padding, dilation = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal((n, c, h, wd)).astype(dtype)
    w = rng.standard_normal((d, c, kh, kw)).astype(dtype)
    b = rng.standard_normal(d).astype(dtype)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation)
    return x, w, b, kwargs


def _in_layout(layout, x, w):
    """NCHW / OIHW x, w in ``layout``, and the function taking its outputs back."""
    if layout == "NHWC":
        return (*to_nhwc(x, w), from_nhwc)
    return x, w, lambda y: y


@pytest.mark.parametrize("pair_pixels", [4, 8])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_lanes_kernel_matches_the_reference(layout, case, dtype, pair_pixels, rng,
                                            monkeypatch):
    # either register tile for pairs of blocks, whatever the host's registers
    monkeypatch.setattr(direct_lanes, "PAIR_PIXELS", pair_pixels)
    x, w, b, kwargs = _problem(case, dtype, rng)
    xl, wl, back = _in_layout(layout, x, w)
    a = conv_args_from_shapes("t", xl.shape, wl.shape, layout=layout, dtype=dtype,
                              **kwargs)
    assert lanes_applies(a)
    # the kernel where it applies (the driver also weighs the image-last kernel)
    monkeypatch.setattr(drivers, "lanes_chosen", lanes_applies)
    canon = conv_args_from_shapes("t", x.shape, w.shape, dtype=dtype, **kwargs)
    calls = count_calls(monkeypatch, drivers, "forward_lanes")
    for bias in (b, None):
        want = ref.conv2d(x, w, bias, canon.stride, canon.padding, canon.dilation)
        got = fastconv.conv2d(xl, wl, bias, layout=layout, algo="im2col", **kwargs)
        assert got.dtype == dtype and got.flags.c_contiguous
        assert ref.rel_error(back(got), want) <= ref.tolerance(dtype, "im2col")
    assert len(calls) == 2


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("case", [CASES[2], CASES[9], CASES[13]], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_lanes_kernel_runs_batches_of_one_and_two_images(layout, case, n, rng,
                                                         monkeypatch):
    """Fewer images than the image-last kernels take: the lanes kernel applies, and
    matches the reference (strided, padded, LeNet's second layer)."""
    x, w, b, kwargs = _problem((n, *case[1:]), np.float32, rng)
    xl, wl, back = _in_layout(layout, x, w)
    assert lanes_applies(conv_args_from_shapes("t", xl.shape, wl.shape, layout=layout,
                                               **kwargs))
    monkeypatch.setattr(drivers, "lanes_chosen", lanes_applies)
    calls = count_calls(monkeypatch, drivers, "forward_lanes")
    canon = conv_args_from_shapes("t", x.shape, w.shape, **kwargs)
    want = ref.conv2d(x, w, b, canon.stride, canon.padding, canon.dilation)
    got = fastconv.conv2d(xl, wl, b, layout=layout, algo="im2col", **kwargs)
    assert ref.rel_error(back(got), want) <= ref.tolerance(np.float32, "im2col")
    assert len(calls) == 1


@pytest.mark.parametrize("chunks", [1, 3])
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_runs_of_tasks_cover_every_row_once(layout, case, chunks, rng, monkeypatch):
    """Few runs a thread (``CHUNKS_PER_THREAD``): several tasks a call of
    ``_conv_tasks``, the last run short; every row or band computed once."""
    monkeypatch.setattr(direct_lanes, "CHUNKS_PER_THREAD", chunks)
    monkeypatch.setattr(drivers, "lanes_chosen", lanes_applies)
    runs = []
    real = direct_lanes._conv_rows
    monkeypatch.setattr(direct_lanes, "_conv_rows",
                        lambda *a: runs.append(a[-1]) or real(*a))
    x, w, b, kwargs = _problem(case, np.float64, rng)
    xl, wl, back = _in_layout(layout, x, w)
    canon = conv_args_from_shapes("t", x.shape, w.shape, dtype=np.float64, **kwargs)
    want = ref.conv2d(x, w, b, canon.stride, canon.padding, canon.dilation)
    got = fastconv.conv2d(xl, wl, b, layout=layout, algo="im2col", **kwargs)
    assert len(runs) == 1 and runs[0] >= (2 if chunks == 1 else 1)   # tasks a run
    assert ref.rel_error(back(got), want) <= ref.tolerance(np.float64, "im2col")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_streamed_stores_leave_the_result_alone(case, dtype, rng, monkeypatch):
    """Every output streamed past the caches where it may be (``_lanes.store_stream``:
    big channels-last outputs of whole blocks, on a vector boundary; here any size, and
    every output from the aligning pool): the reference still, partial groups and edge
    pixels included; outputs short of a block are not streamed."""
    monkeypatch.setattr(_lanes, "STREAM_BYTES", 0)
    monkeypatch.setattr(_pool, "MIN_BYTES", 0)
    monkeypatch.setattr(drivers, "lanes_chosen", lanes_applies)
    streamed = []
    for module, name in ((direct_lanes, "_conv_rows"), (lanes_bands, "conv_bands")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name,           # both kernels end with stream, per
                            lambda *a, real=real: streamed.append(a[-2]) or real(*a))
    x, w, b, kwargs = _problem(case, dtype, rng)
    xl, wl, back = _in_layout("NHWC", x, w)
    canon = conv_args_from_shapes("t", x.shape, w.shape, dtype=dtype, **kwargs)
    want = ref.conv2d(x, w, b, canon.stride, canon.padding, canon.dilation)
    got = fastconv.conv2d(xl, wl, b, layout="NHWC", algo="im2col", **kwargs)
    assert streamed == [int(w.shape[0] % (_lanes.per_register(np.dtype(dtype).itemsize)) == 0)]
    assert ref.rel_error(back(got), want) <= ref.tolerance(dtype, "im2col")


def test_only_big_aligned_channels_last_outputs_of_whole_blocks_are_streamed(monkeypatch):
    seen = []
    monkeypatch.setattr(direct_lanes, "_conv_rows", lambda *a: seen.append(a[-2]))   # stream, per

    def stream(layout, c, h, d, out=None):
        x = np.zeros((8, h, h, c) if layout == "NHWC" else (8, c, h, h), np.float32)
        w = np.zeros((7, 7, c, d) if layout == "NHWC" else (d, c, 7, 7), np.float32)
        a = conv_args_from_shapes("t", x.shape, w.shape, layout=layout, dtype=np.float32,
                                  stride=2, padding=3)
        shape = a.dims.shape(8, d, a.h_out, a.w_out)
        direct_lanes.forward_lanes(x, w, a, _pool.empty(shape, np.float32) if out is None
                                   else out(shape), None)
        return seen.pop()

    assert stream("NHWC", 3, 224, 64) == 1       # the stem: 25.7 MB
    assert stream("NCHW", 3, 224, 64) == 0       # channels not contiguous
    assert stream("NHWC", 3, 224, 56) == 0       # not whole blocks of lanes
    assert stream("NHWC", 3, 112, 64) == 0       # 6.4 MB: under STREAM_BYTES

    def misaligned(shape):                       # 4 bytes past a 16-byte boundary
        return np.empty(np.prod(shape) + 1, np.float32)[1:].reshape(shape)
    assert stream("NHWC", 3, 224, 64, misaligned) == 0


@pytest.mark.parametrize("case,band", [(CASES[-6], 4), (CASES[-5], 8), (CASES[-4], 2),
                                       (CASES[-3], 2 if _lanes.WIDE else 1), (CASES[0], 2),
                                       (CASES[1], 0)], ids=str)
def test_lanes_kernel_runs_unpadded_rows_in_bands(case, band, rng):
    """Layers whose every pixel's kernel lies inside the image run their rows' pixels as
    one sequence (``band_rows`` rows a task: a multiple of 8 pixels, of 16 for
    ``_group16``); padded ones by rows."""
    x, w, _, kwargs = _problem(case, np.float32, rng)
    a = conv_args_from_shapes("t", x.shape, w.shape, dtype=np.float32, **kwargs)
    assert direct_lanes._call_parts(a, False)[5] == band
    if band:
        assert band * a.w_out % 8 == 0 or band == a.h_out


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[-5]], ids=str)
def test_lanes_kernel_on_a_padded_copy_or_not(case, layout, padded, rng, monkeypatch):
    """Both ways of handling the pixels in the padding (``_prepadded``) give the
    reference."""
    x, w, b, kwargs = _problem(case, np.float64, rng)
    xl, wl, back = _in_layout(layout, x, w)
    monkeypatch.setattr(drivers, "lanes_chosen", lanes_applies)
    monkeypatch.setattr(direct_lanes, "_prepadded", lambda a: padded)
    canon = conv_args_from_shapes("t", x.shape, w.shape, dtype=np.float64, **kwargs)
    want = ref.conv2d(x, w, b, canon.stride, canon.padding, canon.dilation)
    got = fastconv.conv2d(xl, wl, b, layout=layout, algo="im2col", **kwargs)
    assert ref.rel_error(back(got), want) <= ref.tolerance(np.float64, "im2col")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_lanes_kernel_reads_strided_input_and_writes_strided_out(layout, rng):
    x, w, b, kwargs = _problem(CASES[1], np.float32, rng)
    xl, wl, back = _in_layout(layout, x, w)
    xs = np.asfortranarray(xl)            # not C-contiguous, read-only
    xs.flags.writeable = False
    a = conv_args_from_shapes("t", xl.shape, wl.shape, layout=layout, dtype=np.float32,
                              **kwargs)
    assert lanes_applies(a)
    out = np.full(a.dims.shape(5, 13, 9, 11)[::-1], np.nan, np.float32).T  # strided
    drivers.forward(xs, wl, a, out, b)
    want = ref.conv2d(x, w, b, (1, 1), ((1, 1), (1, 1)))
    assert ref.rel_error(back(out), want) <= ref.tolerance(np.float32, "im2col")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_lanes_kernel_keeps_the_formulas_nan_pattern(layout, rng, monkeypatch):
    x = rng.standard_normal((4, 6, 7, 7))
    w = rng.standard_normal((8, 6, 3, 3))
    x[1, 0, 3, 4] = np.nan
    xl, wl, back = _in_layout(layout, x, w)
    assert lanes_applies(conv_args_from_shapes("t", xl.shape, wl.shape, padding=1,
                                               layout=layout, dtype=x.dtype))
    monkeypatch.setattr(drivers, "lanes_chosen", lanes_applies)
    calls = count_calls(monkeypatch, drivers, "forward_lanes")
    got = back(fastconv.conv2d(xl, wl, padding=1, layout=layout, algo="im2col"))
    assert np.isnan(got).sum() == 8 * 9                       # 8 channels x 3x3 pixels
    assert np.isnan(got[1, :, 2:5, 3:6]).all() and calls == [1]


@pytest.mark.parametrize("x_shape,w_shape,kwargs", [
    ((8, 4, 8, 8), (16, 4, 3, 3), {}),                        # NCHW: channel loops of 4
    ((8, 8, 8, 4), (3, 3, 2, 16), dict(groups=2)),
    ((8, 8, 8, 16), (1, 1, 16, 16), {}),                      # pointwise
    ((8, 8, 8, 6), (5, 5, 6, 80), {}),                        # too many output channels
    ((8, 8, 8, 6), (5, 5, 6, 17), {}),                        # lanes left idle
    ((8, 28, 28, 2), (1, 2, 2, 16), {}),                      # runs of 4 taps
    ((8, 8, 8, 4), (3, 3, 4, 16), dict(dilation=(1, 2))),     # runs of C = 4 taps
    ((8, 8, 8, 128), (3, 3, 128, 16), {}),                    # too many taps
])
def test_lanes_kernel_does_not_apply(x_shape, w_shape, kwargs):
    layout = "NCHW" if w_shape == (16, 4, 3, 3) else "NHWC"
    assert not lanes_applies(conv_args_from_shapes("t", x_shape, w_shape,
                                                   layout=layout, **kwargs))


@pytest.mark.parametrize("kwargs", [dict(padding=1), dict(stride=2, padding=2),
                                    dict(padding=(2, 1), dilation=(1, 2))], ids=str)
@pytest.mark.parametrize("kernel", [(3, 3), (5, 5)], ids=str)
def test_one_channel_nhwc_layers_run_the_lanes_kernel(kernel, kwargs, rng, monkeypatch):
    """A gray image's first layer in NHWC (runs of a kernel row, under ``MIN_RUN``) runs
    the direct lanes kernel, and matches the reference; in NCHW it does not apply."""
    x = rng.standard_normal((4, 1, 11, 13))
    w = rng.standard_normal((16, 1, *kernel))
    b = rng.standard_normal(16)
    xl, wl = to_nhwc(x, w)
    a = conv_args_from_shapes("t", xl.shape, wl.shape, layout="NHWC", dtype=np.float64,
                              **kwargs)
    assert lanes_chosen(a)
    assert not lanes_applies(conv_args_from_shapes("t", x.shape, w.shape, **kwargs))
    calls = count_calls(monkeypatch, drivers, "forward_lanes")
    got = fastconv.conv2d(xl, wl, b, layout="NHWC", **kwargs)
    canon = conv_args_from_shapes("t", x.shape, w.shape, dtype=np.float64, **kwargs)
    want = ref.conv2d(x, w, b, canon.stride, canon.padding, canon.dilation)
    assert len(calls) == 1
    assert ref.rel_error(from_nhwc(got), want) <= ref.tolerance(np.float64, "im2col")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_wide_3x3_layers_on_large_maps_are_left_to_winograd(layout):
    nhwc = layout == "NHWC"
    x_shape = (64, 32, 32, 32)                                     # the suite's cifar layer
    w_shape = (3, 3, 32, 32) if nhwc else (32, 32, 3, 3)
    a = conv_args_from_shapes("t", x_shape, w_shape, padding=1, layout=layout)
    assert lanes_applies(a) and not lanes_chosen(a)
    assert fastconv.plan(x_shape, w_shape, padding=1, layout=layout).algorithm == "winograd"
    x_small = (32, 14, 14, 32) if nhwc else (32, 32, 14, 14)
    small = conv_args_from_shapes("t", x_small, w_shape, padding=1, layout=layout)
    assert lanes_chosen(small)                                     # 14x14: the lanes kernel


def test_auto_plans_the_lanes_kernel_for_lenets_second_layer():
    for x_shape, w_shape, layout in (((64, 12, 12, 6), (5, 5, 6, 16), "NHWC"),
                                     ((64, 6, 12, 12), (16, 6, 5, 5), "NCHW")):
        why = fastconv.plan(x_shape, w_shape, layout=layout).why
        assert why.startswith("im2col:") and "direct lanes kernel" in why, why
    # LeNet's first layer (6 of 16 lanes, runs of 5 taps) keeps the image-last kernel
    why = fastconv.plan((64, 28, 28, 1), (5, 5, 1, 6), layout="NHWC").why
    assert "direct image-last kernel" in why, why


@pytest.mark.parametrize("x_shape,w_shape,padding,layout,chosen", [
    ((64, 12, 12, 6), (5, 5, 6, 16), 0, "NHWC", True),      # LeNet's second layer
    ((64, 6, 12, 12), (16, 6, 5, 5), 0, "NCHW", True),
    ((64, 14, 14, 6), (5, 5, 6, 16), 2, "NHWC", True),      # 4 of 14 pixels in the padding:
    ((64, 6, 14, 14), (16, 6, 5, 5), 2, "NCHW", True),      # a padded copy (NCHW: 0.37-0.45
    # ms, the image-last kernel 0.42-0.51)
    ((32, 14, 14, 32), (3, 3, 32, 32), 1, "NHWC", True),    # 32 -> 32 channels 3x3
    ((64, 16, 16, 16), (3, 3, 16, 32), 1, "NHWC", True),    # the image-last kernel does not apply
])
def test_the_driver_weighs_the_two_direct_kernels(x_shape, w_shape, padding, layout, chosen,
                                                  monkeypatch):
    a = conv_args_from_shapes("t", x_shape, w_shape, padding=padding, layout=layout)
    assert lanes_applies(a)
    if _lanes.WIDE:                       # the measured choices (AVX-512)
        assert lanes_chosen(a) == chosen
    # the choice follows the model times; the plan names the kernel that runs
    try:
        for gmacs, want in ((1e-3, not lanes_plan.direct_forward_applies(a)), (1e6, True)):
            monkeypatch.setattr(lanes_plan, "LANES_GMACS", gmacs)
            monkeypatch.setattr(lanes_plan, "LANES_GMACS_LARGE", gmacs)
            lanes_chosen.cache_clear()
            assert lanes_chosen(a) == want
        fastconv.autotune.clear_cache()
        why = fastconv.plan(x_shape, w_shape, padding=padding, layout=layout).why
    finally:               # no choice nor plan of the patched rate kept
        lanes_chosen.cache_clear()
        fastconv.autotune.clear_cache()
    assert "direct lanes kernel" in why, why


@pytest.mark.parametrize("layout", LAYOUTS)
def test_lanes_kernel_matches_torch(layout, rng, monkeypatch):
    torch = pytest.importorskip("torch")
    x, w, b, kwargs = _problem(CASES[4], np.float32, rng)     # strides (1, 2), dilation (2, 1)
    want = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                      torch.from_numpy(b), **kwargs).numpy()
    xl, wl, back = _in_layout(layout, x, w)
    calls = count_calls(monkeypatch, drivers, "forward_lanes")
    got = fastconv.conv2d(xl, wl, b, layout=layout, algo="im2col", **kwargs)
    np.testing.assert_allclose(back(got), want, rtol=1e-4, atol=1e-4)
    assert calls == [1]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradients_through_the_lanes_kernel_match_finite_differences(layout, rng):
    x, w, _, _ = _problem((4, 6, 5, 6, 12, 3, 1, 1, 1), np.float64, rng)
    xl, wl, _ = _in_layout(layout, x, w)
    assert lanes_applies(conv_args_from_shapes("t", xl.shape, wl.shape, padding=1,
                                               layout=layout, dtype=np.float64))
    x, w = Tensor(xl, requires_grad=True), Tensor(wl, requires_grad=True)
    b = Tensor(rng.standard_normal(12), requires_grad=True)
    assert gradcheck(lambda x, w, b: (F.conv2d(x, w, b, padding=1, layout=layout,
                                               algo="im2col") ** 2).sum(), [x, w, b])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_store_columns_writes_vectors_transposed(dtype):
    from numba import njit

    @njit
    def columns(src, out, at, step):   # vector p = src[p*count : (p+1)*count], 8 and 4 of them
        n = _lanes.count(src)
        v0, v1, v2, v3 = (_lanes.load(src, 0), _lanes.load(src, n), _lanes.load(src, 2 * n),
                          _lanes.load(src, 3 * n))
        v4, v5, v6, v7 = (_lanes.load(src, 4 * n), _lanes.load(src, 5 * n),
                          _lanes.load(src, 6 * n), _lanes.load(src, 7 * n))
        _lanes.store_columns(out, at, step, (v0, v1, v2, v3, v4, v5, v6, v7))
        _lanes.store_columns(out, at + 8, step, (v0, v1, v2, v3))

    n = _lanes.per_register(np.dtype(dtype).itemsize)
    src = np.arange(8 * n, dtype=dtype)
    out = np.full(3 + 16 * n, -1, dtype)
    columns(src, out, 3, 16)
    want = np.full_like(out, -1)
    for k in range(n):
        want[3 + 16 * k: 3 + 16 * k + 8] = src.reshape(8, n)[:, k]
        want[11 + 16 * k: 11 + 16 * k + 4] = src.reshape(8, n)[:4, k]
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_store_stream_writes_a_vector_at_an_aligned_offset(dtype):
    from numba import njit

    @njit
    def stream(src, out, at):
        _lanes.store_stream(out, at, _lanes.load(src, 0))
        _lanes.stream_fence()

    n = _lanes.per_register(np.dtype(dtype).itemsize)
    out = _pool.aligned_empty((4 * n,), np.dtype(dtype))
    out[:] = -1
    stream(np.arange(n, dtype=dtype), out, 2 * n)
    want = np.full(4 * n, -1, dtype)
    want[2 * n:3 * n] = np.arange(n)
    np.testing.assert_array_equal(out, want)


def test_read_only_and_writable_inputs_share_one_compiled_kernel(rng):
    """A read-only input (a memory-mapped dataset, say) runs the kernel compiled for a
    writable one: the input is always passed read-only (each variant costs a compile of
    tens of seconds)."""
    x, w, b, kwargs = _problem(CASES[1], np.float32, rng)
    assert_read_only_input_shares_kernel(
        direct_lanes._conv_rows, lambda: fastconv.conv2d(x, w, b, algo="im2col", **kwargs), x)
