"""The NCHW Winograd's two ways through the tile rows (``tiling.per_thread``): narrow
layers split them over the threads, each with its own chunks, wider ones share every
chunk; both against the reference, forward and both gradients, over both tile sizes,
and the F(4x4, 3x3) weight gradient's output-gradient transform against its formula."""

import numba
import numpy as np
import pytest

import fastconv
import fastconv.nn.functional as F
from fastconv import config
from fastconv._args import conv_args_from_shapes
from fastconv._args.memo import forget_per_problem
from fastconv.algos import winograd
from fastconv.algos.winograd import cost as winograd_cost
from fastconv.algos.winograd import drivers, grad_w4, tiling
from fastconv.algos.winograd.kernel import layer_kernel
from fastconv.costs import DEFAULT_PROFILE

from . import reference as ref
from .conftest import CountingGuard, count_calls

#: Small NCHW layers' weight gradients in the Winograd domain, as these tests check them
pytestmark = pytest.mark.usefixtures("nchw_winograd_grad_w")

# (n, c_in, h, w, c_out, padding, groups, dilation)
CASES = [
    (3, 3, 9, 7, 4, 1, 1, 1),         # partial tiles at the bottom and right
    (2, 5, 6, 5, 3, ((0, 1), (2, 0)), 1, 1),    # uneven padding
    (2, 4, 6, 11, 6, ((2, 0), (1, 1)), 2, 1),
    (2, 3, 12, 10, 2, 2, 1, 2),       # dilated: phases, strided views, a batched backward
]


@pytest.fixture(params=[2, 4], ids=["F2x2", "F4x4"])
def tile(request, monkeypatch):
    monkeypatch.setattr(config, "WINOGRAD_TILE", request.param)
    return request.param


@pytest.fixture(params=["per-thread", "shared", "copies"])
def split(request, monkeypatch):
    """Every layer splits its tile rows over the threads, or none does: all share the
    chunks, or the undilated one-group layers run on channels-last copies
    (``drivers.on_nhwc_copies``)."""
    limit = 1 << 20 if request.param == "per-thread" else 0
    monkeypatch.setattr(tiling, "PER_THREAD_MAX_CHANNELS", limit)
    pixels = 1 << 30 if request.param == "copies" else 0
    monkeypatch.setattr(drivers, "COPIES_MAX_PIXELS", pixels)
    forget_per_problem()
    yield request.param
    forget_per_problem()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_both_ways_match_the_reference(case, tile, split):
    n, c, h, wd, d, padding, groups, dilation = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, wd))
    w = rng.standard_normal((d, c // groups, 3, 3))
    b = rng.standard_normal(d)
    a = conv_args_from_shapes("t", x.shape, w.shape, 1, padding, dilation, groups)
    kw = dict(padding=padding, groups=groups, dilation=dilation, algo="winograd")
    want = ref.conv2d(x, w, b, a.stride, a.padding, a.dilation, a.groups)
    assert ref.rel_error(fastconv.conv2d(x, w, b, **kw), want) <= 1e-13
    gy = rng.standard_normal(want.shape)
    wants = ref.conv2d_backward(gy, x, w, a.stride, a.padding, a.dilation, a.groups)
    for got, exact in zip(fastconv.conv2d_backward(gy, x, w, **kw), wants, strict=True):
        assert ref.rel_error(got, exact) <= 1e-13


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wide_layers_on_small_maps_run_on_channels_last_copies(dtype, rng, monkeypatch):
    """72 -> 80 channels (too wide to split over the threads) on a 6x5 map: the forward
    and grad_x run on channels-last copies by default, with the bias, and match the
    formula; a wider map, or two groups, keeps the NCHW chunks."""
    x = rng.standard_normal((2, 72, 6, 5)).astype(dtype)
    w = rng.standard_normal((80, 72, 3, 3)).astype(dtype)
    b = rng.standard_normal(80).astype(dtype)
    a = conv_args_from_shapes("t", x.shape, w.shape, 1, 1, 1, 1)
    assert drivers.on_nhwc_copies(a) and drivers.on_nhwc_copies(a.grad_x_problem)
    assert not drivers.on_nhwc_copies(conv_args_from_shapes(
        "t", (2, 72, 17, 16), w.shape, 1, 1, 1, 1))
    assert not drivers.on_nhwc_copies(conv_args_from_shapes(
        "t", x.shape, (80, 36, 3, 3), 1, 1, 1, 2))
    assert "on channels-last copies" in winograd_cost.cost(a, DEFAULT_PROFILE).detail
    calls = count_calls(monkeypatch, drivers, "_run_on_copies")
    want = ref.conv2d(x, w, b, a.stride, a.padding)
    got = fastconv.conv2d(x, w, b, padding=1, algo="winograd")
    assert got.dtype == dtype and ref.rel_error(got, want) <= ref.tolerance(dtype, "winograd")
    gy = rng.standard_normal(want.shape).astype(dtype)
    gx, _, _ = fastconv.conv2d_backward(gy, x, w, padding=1, algo="winograd",
                                        needs_input_grad=(True, False, False))
    want_gx = ref.conv2d_backward(gy, x, w, a.stride, a.padding)[0]
    assert ref.rel_error(gx, want_gx) <= ref.tolerance(dtype, "winograd")
    assert len(calls) == 2


def test_copies_write_a_strided_output_in_place(rng):
    """An output that is not C-contiguous gets the result, and the memory around it
    keeps its values."""
    x = rng.standard_normal((2, 72, 6, 5))
    w = rng.standard_normal((72, 72, 3, 3))
    a = conv_args_from_shapes("t", x.shape, w.shape, 1, 1, 1, 1)
    u = layer_kernel(w, a, 4, io=True)
    big = np.full((2, 72, 6, 10), 7.0)
    assert drivers._run_on_copies(x, u, big[..., ::2], None, (1, 1), 4)
    assert ref.rel_error(big[..., ::2], ref.conv2d(x, w, None, a.stride, a.padding)) <= 1e-13
    assert (big[..., 1::2] == 7.0).all()


def test_threads_and_chunks_do_not_change_the_result(tile, monkeypatch):
    """One thread or two, one tile row per chunk or the default: the same gradients
    (float64, to rounding)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 10, 9))
    w = rng.standard_normal((5, 4, 3, 3))
    gy = rng.standard_normal((3, 5, 10, 9))
    want = fastconv.conv2d_backward(gy, x, w, padding=1, algo="naive")
    threads = numba.get_num_threads()
    try:
        for count, chunk in ((1, None), (threads, 1)):
            numba.set_num_threads(count)
            if chunk is not None:
                monkeypatch.setattr(config, "WINOGRAD_CHUNK_BYTES", chunk)
            got = fastconv.conv2d_backward(gy, x, w, padding=1, algo="winograd")
            for g, e in zip(got, want, strict=True):
                assert ref.rel_error(g, e) <= 1e-13
    finally:
        numba.set_num_threads(threads)


@pytest.mark.parametrize("total,tw,channels,chunk_bytes", [
    (1024, 8, 32, 16 << 20),       # the cifar layer: chunks of about 4 MiB
    (112, 7, 128, 16 << 20),       # wide: one run, 16 MiB chunks
    (3, 4, 4, 16 << 20),           # fewer rows than chunks want
    (57, 5, 8, 1),                 # one row per chunk
])
def test_split_rows_covers_every_row_once_within_the_limits(total, tw, channels,
                                                            chunk_bytes, monkeypatch):
    monkeypatch.setattr(config, "WINOGRAD_CHUNK_BYTES", chunk_bytes)
    threads, rows = tiling.split_rows(total, tw, channels, channels, 4, 4)
    per_row = 36 * 2 * channels * tw * 4
    if tiling.per_thread(channels, channels):
        assert threads == min(numba.get_num_threads(), total)
        assert rows * per_row <= max(per_row, chunk_bytes)
    else:
        assert threads == 1 and rows * per_row <= chunk_bytes
    seen = []
    for lo, hi in tiling.thread_runs(total, threads):
        for r0, r1, cols, _, _ in tiling.chunk_planes(hi, rows, tw, 1, 1, 4, np.float32, lo):
            assert 0 < r1 - r0 <= rows and cols == (r1 - r0) * tw
            seen.extend(range(r0, r1))
    assert seen == list(range(total))


def test_the_cifar_layer_splits_in_cache_sized_chunks():
    """32 -> 32 channels, 64 images of 32x32: each thread's chunks hold about
    THREAD_CHUNK_BYTES of transformed tiles (where the layer goes in chunks: its weight
    gradient); its forward runs in the fused kernels, as the plan says."""
    a = conv_args_from_shapes("t", (64, 32, 32, 32), (32, 32, 3, 3), 1, 1, 1, 1)
    rows = winograd.chunk_rows(a, 4)
    assert tiling.per_thread(32, 32)
    assert rows * 8 * 36 * 64 * 4 <= tiling.THREAD_CHUNK_BYTES + 36 * 64 * 8 * 4
    threads = min(numba.get_num_threads(), 64 * 8)
    assert winograd.chunks(a, 4) >= threads
    why = fastconv.plan((64, 32, 32, 32), (32, 32, 3, 3), padding=1).why
    assert why.startswith("winograd") and "fused, staged channels last" in why


def test_the_f4_output_gradient_transform_is_a_g_a_transposed():
    """p[6a + b] = (A g A^T)[a, b] for every 4x4 block g of grad_y (zero beyond it)."""
    rng = np.random.default_rng(2)
    gy = rng.standard_normal((2, 3, 7, 6))
    th, tw = 2, 2
    rows = 2 * th
    cols = rows * tw
    p = np.zeros((36, 3 * cols + tiling.PLANE_PAD))
    grad_w4._grad_transform4(gy, p, 3, cols, 0, 0, rows, th, tw)
    at = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                   [0, 1, -1, 8, -8, 1]], float)
    padded = np.zeros((2, 3, 8, 8))
    padded[:, :, :7, :6] = gy
    for d in range(3):
        for r in range(rows):
            n, i = divmod(r, th)
            for j in range(tw):
                g = padded[n, d, 4 * i:4 * i + 4, 4 * j:4 * j + 4]
                want = (at.T @ g @ at).ravel()
                np.testing.assert_allclose(p[:, d * cols + r * tw + j], want, atol=1e-12)


def test_gradcheck_through_the_autograd_layer(tile):
    """float64 finite differences of F.conv2d with algo="winograd" (a narrow layer:
    split over the threads)."""
    rng = np.random.default_rng(3)
    xt = fastconv.Tensor(rng.standard_normal((2, 2, 5, 6)), requires_grad=True)
    wt = fastconv.Tensor(rng.standard_normal((3, 2, 3, 3)), requires_grad=True)
    assert fastconv.gradcheck(lambda a, k: F.conv2d(a, k, padding=1, algo="winograd"),
                              [xt, wt])


@pytest.mark.parametrize("layout, c, dilation", [
    ("NHWC", 32, 1),      # fused
    ("NHWC", 72, 1),      # chunked: above the fused path's 64 channels
    ("NCHW", 72, 1),      # chunks shared by the threads (72 + 72 channels)
    ("NCHW", 72, 2),      # the dilated phases as one batch
])
def test_winograd_guards_its_parallel_kernels(layout, c, dilation, rng, monkeypatch):
    """Under numba's workqueue layer concurrent parallel calls abort the process, so
    every parallel kernel runs under ``parallel_guard``, never nested."""
    from fastconv import _runtime

    guard = CountingGuard()
    monkeypatch.setattr(_runtime, "REQUESTED_THREADING_LAYER", "workqueue")
    monkeypatch.setattr(_runtime, "_workqueue_lock", guard)
    x = rng.standard_normal((2, c, 12, 12)).astype(np.float32)
    w = rng.standard_normal((c, c, 3, 3)).astype(np.float32)
    kw = dict(padding=dilation, dilation=dilation, algo="winograd")
    if layout == "NHWC":
        x, w = np.ascontiguousarray(x.transpose(0, 2, 3, 1)), np.ascontiguousarray(
            w.transpose(2, 3, 1, 0))
    y = fastconv.conv2d(x, w, layout=layout, **kw)
    forward = guard.calls
    fastconv.conv2d_backward(np.ones_like(y), x, w, layout=layout, **kw)
    assert forward >= 2 and guard.calls > forward and not guard.held


@pytest.mark.parametrize("chunk_bytes", [1, 1 << 30])
@pytest.mark.parametrize("groups", [1, 2])
def test_wide_weight_gradient_sums_in_reused_workspaces(chunk_bytes, groups, tile,
                                                        monkeypatch):
    """A layer too wide to split its tile rows (one run, each chunk's products on the
    threads) sums its chunks in a workspace kept between calls: one tile row per chunk
    or one chunk, two calls in a row on different arrays, each as the formula."""
    from fastconv.algos.winograd.grad_w import _grad_w_nchw

    c = d = 72 * groups                       # (C + D) / G = 144 > PER_THREAD_MAX_CHANNELS
    assert not tiling.per_thread(c // groups, d // groups)
    monkeypatch.setattr(config, "WINOGRAD_CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(7)
    for n, h, wd in ((2, 9, 7), (3, 6, 10)):
        x = rng.standard_normal((n, c, h, wd))
        w = rng.standard_normal((d, c // groups, 3, 3))
        gy = rng.standard_normal((n, d, h, wd))
        _, want, _ = ref.conv2d_backward(gy, x, w, padding=((1, 1), (1, 1)), groups=groups)
        got = np.full(w.shape, np.nan)
        _grad_w_nchw(gy, x, got, (1, 1), groups, tile)
        assert ref.rel_error(got, want) <= 1e-12
