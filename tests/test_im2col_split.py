"""im2col's NCHW forward with its tiles split over the threads (``im2col.split``):
against the reference over strides, paddings, dilations, groups, bias, dtypes, tiles of
whole images and bands of rows; which layers take it."""

import numpy as np
import pytest

import fastconv
from fastconv import config
from fastconv._args import conv_args_from_shapes
from fastconv.algos.im2col import drivers, fused, phased_unfold, split, unfold
from fastconv.algos.im2col.tiling import tiles, unfold_params

from . import reference as ref
from .conftest import count_calls

# (n, c, h, w, d, kh, kw, stride, padding, dilation, groups)
CASES = [
    (5, 3, 9, 8, 4, 3, 3, 1, 1, 1, 1),
    (4, 4, 11, 10, 6, 3, 3, 2, 1, 1, 2),
    (3, 2, 12, 9, 3, 5, 3, (2, 1), ((2, 1), (0, 3)), (1, 2), 1),
    (2, 6, 10, 10, 6, 3, 3, 1, 2, 2, 3),
    (3, 3, 15, 15, 5, 7, 7, 2, 3, 1, 1),              # a stem-like layer
]


def _no_direct_backward(monkeypatch):
    """The split path, not the direct backward (which takes the cases' 4 output channels
    in float64 where a register holds 4 of them, as with AVX2)."""
    monkeypatch.setattr(drivers, "direct_backward_chosen", lambda args, with_grad_x=True: False)


def forward_problem(case, dtype):
    """(x, w, bias, ConvArgs, the column bytes of one image) of a case of ``CASES``."""
    n, c, h, w, d, kh, kw, stride, padding, dilation, groups = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((d, c // groups, kh, kw)).astype(dtype)
    b = rng.standard_normal(d).astype(dtype)
    a = conv_args_from_shapes("t", x.shape, wt.shape, stride, padding, dilation, groups,
                              dtype=dtype)
    return x, wt, b, a, c * kh * kw * a.h_out * a.w_out * x.itemsize


def forward_matches_reference(x, wt, b, a):
    """conv2d(algo="im2col") of the problem is the reference's result."""
    got = fastconv.conv2d(x, wt, b, stride=a.stride, padding=a.padding,
                          dilation=a.dilation, groups=a.groups, algo="im2col")
    want = ref.conv2d(x, wt, b, a.stride, a.padding, a.dilation, a.groups)
    return got.dtype == x.dtype and ref.rel_error(got, want) <= ref.tolerance(x.dtype, "im2col")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("chunk", ["images", "bands"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_split_forward_matches_reference(case, chunk, dtype, monkeypatch):
    x, wt, b, a, image = forward_problem(case, dtype)
    # two images per tile, or three output rows of one image per tile
    size = 2 * image if chunk == "images" else 3 * image // a.h_out
    monkeypatch.setattr(config, "IM2COL_CHUNK_BYTES", size)
    monkeypatch.setattr(drivers, "split_tiles", lambda args: True)
    monkeypatch.setattr(drivers, "direct_forward_applies", lambda args: False)
    calls = count_calls(monkeypatch, drivers, "forward_split")
    assert forward_matches_reference(x, wt, b, a)
    assert calls == [1]


@pytest.mark.parametrize("x_shape,w_shape,kw,split_it", [
    ((16, 64, 56, 56), (128, 64, 3, 3), dict(stride=2, padding=1), True),   # 4 tiles
    ((8, 3, 224, 224), (64, 3, 7, 7), dict(stride=2, padding=3), True),     # 8 tiles
    ((64, 6, 12, 12), (16, 6, 5, 5), {}, False),               # one image-last tile
    ((16, 128, 56, 56), (128, 1, 3, 3), dict(padding=1, groups=128), False),  # small GEMMs
    ((3, 64, 56, 56), (128, 64, 3, 3), dict(stride=2, padding=1), False),   # 1 tile
])
def test_which_layers_split(x_shape, w_shape, kw, split_it):
    a = conv_args_from_shapes("t", x_shape, w_shape, **kw)
    assert split.split_tiles(a, threads=2) is split_it
    assert split.split_tiles(a, threads=1) is False


@pytest.mark.parametrize("needs", [(True, True, True), (True, False, False),
                                   (False, True, False)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_split_backward_matches_reference(case, dtype, needs, monkeypatch):
    from .test_conv_backward import _explicit, _problem

    x, w, gy, kwargs, a = _problem(case, dtype)
    image = a.c_in * a.kh * a.kw * a.h_out * a.w_out * x.itemsize
    monkeypatch.setattr(config, "IM2COL_CHUNK_BYTES", 2 * image)    # two images a tile
    monkeypatch.setattr(drivers, "split_backward", lambda args: True)
    monkeypatch.setattr(drivers, "image_last_tile", lambda args, with_grad_x=True: 0)
    _no_direct_backward(monkeypatch)
    calls = count_calls(monkeypatch, drivers, "backward_split")
    got = fastconv.conv2d_backward(gy, x, w, **kwargs, algo="im2col", needs_input_grad=needs)
    assert calls == [1]
    for g, want, k in zip(got, _explicit(x, w, gy, a), needs, strict=True):
        assert (g is None) == (not k)
        assert g is None or ref.rel_error(g, want) <= ref.tolerance(dtype, "im2col")


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("split_it", [False, True])
def test_backward_writes_every_input_gradient_value(split_it, layout, monkeypatch):
    # the result arrays may come from the pool holding an earlier array's values: each
    # path zeroes grad_x itself (the split one image by image, in its threads)
    from fastconv import conv as conv_module

    from .test_conv_backward import _explicit, _problem

    x, w, gy, kwargs, a = _problem(CASES[1], np.float64)
    if layout == "NHWC":
        x, gy = x.transpose(0, 2, 3, 1).copy(), gy.transpose(0, 2, 3, 1).copy()
        w = w.transpose(2, 3, 1, 0).copy()
    image = a.c_in * a.kh * a.kw * a.h_out * a.w_out * x.itemsize
    monkeypatch.setattr(config, "IM2COL_CHUNK_BYTES", 2 * image)
    monkeypatch.setattr(drivers, "split_backward", lambda args: split_it)
    monkeypatch.setattr(drivers, "image_last_tile", lambda args, with_grad_x=True: 0)
    _no_direct_backward(monkeypatch)
    monkeypatch.setattr(conv_module, "allocate",
                        lambda op, what, shape, dtype: np.full(shape, np.nan, dtype))
    calls = count_calls(monkeypatch, drivers, "backward_split")
    gx, gw, gb = fastconv.conv2d_backward(gy, x, w, **kwargs, layout=layout, algo="im2col")
    assert calls == ([1] if split_it and layout == "NCHW" else [])
    want = _explicit(x if layout == "NCHW" else x.transpose(0, 3, 1, 2),
                     w if layout == "NCHW" else w.transpose(3, 2, 0, 1),
                     gy if layout == "NCHW" else gy.transpose(0, 3, 1, 2), a)[0]
    if layout == "NHWC":
        want = want.transpose(0, 2, 3, 1)
    assert np.isfinite(gx).all() and ref.rel_error(gx, want) <= 1e-12


def test_split_backward_needs_whole_image_tiles(monkeypatch):
    a = conv_args_from_shapes("t", (8, 3, 224, 224), (64, 3, 7, 7), stride=2, padding=3)
    assert split.split_backward(a) is split.split_tiles(a)       # bands of 112 rows: all
    monkeypatch.setattr(config, "IM2COL_CHUNK_BYTES", 4 << 20)   # two bands an image
    assert split.split_tiles(a, threads=2) and not split.split_backward(a)


@pytest.mark.parametrize("x_shape,w_shape,padding,says", [
    ((16, 64, 56, 56), (96, 64, 3, 3), 1,     # (128 outputs: staged, im2col.indirect_nchw)
     "16 tiles of 1.8 MB (L2-sized), each unfolded and multiplied by one numba thread"),
    ((8, 3, 224, 224), (96, 3, 7, 7), 3,      # a stem too wide for the direct kernel
     "64 tiles of 0.92 MB (L2-sized), each unfolded and multiplied"),   # im2col.fused
])
def test_plan_says_the_tiles_are_split(x_shape, w_shape, padding, says, monkeypatch):
    if not fused.available(np.float32):
        pytest.skip("numpy's BLAS not found: no fused panels")
    monkeypatch.setattr(split.numba, "get_num_threads", lambda: 2)
    fastconv.autotune.clear_cache()
    why = fastconv.plan(x_shape, w_shape, stride=2, padding=padding).why
    fastconv.autotune.clear_cache()
    assert why.startswith("im2col") and says in why


@pytest.mark.parametrize("n,per_tile,threads,want", [
    (16, 5, 2, [[(0, 4), (4, 4)], [(8, 4), (12, 4)]]),   # not 10 and 6 images
    (5, 2, 2, [[(0, 2)], [(2, 1), (3, 2)]]),
    (3, 5, 4, [[(0, 1)], [(1, 1)], [(2, 1)]]),           # fewer images than threads
])
def test_whole_image_runs_are_even(n, per_tile, threads, want, monkeypatch):
    a = conv_args_from_shapes("t", (n, 32, 56, 56), (64, 32, 4, 4), 2, 1)
    image = a.c_in * a.kh * a.kw * a.h_out * a.w_out * 4
    monkeypatch.setattr(config, "IM2COL_CHUNK_BYTES", per_tile * image)
    monkeypatch.setattr(split.numba, "get_num_threads", lambda: threads)
    t, runs = split._parts(a)
    assert t.images == min(per_tile, n)
    assert [[(n0, nb) for n0, nb, _, _ in run] for run in runs] == want
    assert all(i0 == 0 and band == a.h_out for run in runs for _, _, i0, band in run)


def test_band_runs_share_the_tiles(monkeypatch):
    a = conv_args_from_shapes("t", (1, 3, 224, 224), (64, 3, 7, 7), stride=2, padding=3)
    monkeypatch.setattr(config, "IM2COL_CHUNK_BYTES", 2 << 20)
    monkeypatch.setattr(split.numba, "get_num_threads", lambda: 2)
    t, runs = split._parts(a)
    assert t.band < a.h_out and len(runs) == 2
    assert [tile for run in runs for tile in run] == list(tiles(a, t))
    assert abs(len(runs[0]) - len(runs[1])) <= 1


def test_grad_x_only_tiles_stay_small(monkeypatch):
    """The decoder layer's grad_x-only backward: tiles of one 1.6 MB image, even runs."""
    a = conv_args_from_shapes("t", (16, 32, 56, 56), (64, 32, 4, 4), 2, 1)
    monkeypatch.setattr(split.numba, "get_num_threads", lambda: 2)
    t, runs = split._parts(a, split.SPLIT_BACKWARD_TILE_BYTES)
    assert t.images == 5
    assert [[(n0, nb) for n0, nb, _, _ in run] for run in runs] == \
        [[(i, 1) for i in range(8)], [(i, 1) for i in range(8, 16)]]


@pytest.mark.parametrize("needs", [(True, False, False), (True, True, False)])
def test_split_grad_x_alone_in_one_image_tiles_matches_reference(needs, monkeypatch):
    from .test_conv_backward import _explicit, _problem

    x, w, gy, kwargs, a = _problem(CASES[0], np.float64)
    image = a.c_in * a.kh * a.kw * a.h_out * a.w_out * x.itemsize
    monkeypatch.setattr(config, "IM2COL_CHUNK_BYTES", 3 * image)    # three images a tile
    monkeypatch.setattr(split, "SPLIT_BACKWARD_TILE_BYTES", 1)      # ... or one
    monkeypatch.setattr(split.numba, "get_num_threads", lambda: 2)  # runs of 2 and 3
    monkeypatch.setattr(drivers, "split_backward", lambda args: True)
    monkeypatch.setattr(drivers, "image_last_tile", lambda args, with_grad_x=True: 0)
    _no_direct_backward(monkeypatch)
    sizes = []
    real = split.backward_tile
    monkeypatch.setattr(split, "backward_tile",
                        lambda *args, **kw: sizes.append(args[6][1]) or real(*args, **kw))
    got = fastconv.conv2d_backward(gy, x, w, **kwargs, algo="im2col", needs_input_grad=needs)
    assert max(sizes) == (1 if needs[1] is False else 3) and sum(sizes) == a.n
    for g, want, k in zip(got, _explicit(x, w, gy, a), needs, strict=True):
        assert (g is None) == (not k)
        assert g is None or ref.rel_error(g, want) <= 1e-12


@pytest.mark.parametrize("phased", [False, True])
@pytest.mark.parametrize("split_it", [False, True])
@pytest.mark.parametrize("w_in,kw,padding", [
    (9, 4, 1), (10, 4, (0, 3)), (11, 2, 0), (8, 5, 2), (7, 3, (2, 0)), (12, 6, (3, 1)),
])
def test_fold_at_column_stride_two_matches_reference(w_in, kw, padding, split_it, phased,
                                                      monkeypatch):
    """Both NCHW folds at column stride 2, even and odd kernel widths, paddings that clip
    either end of a row: the plain one (neighbouring taps added in pairs) and the one
    through column phases, which the backward's tiles run."""
    from .test_conv_backward import _explicit

    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 2, 5, w_in))
    w = rng.standard_normal((3, 2, 2, kw))
    side = padding if isinstance(padding, tuple) else (padding, padding)
    kwargs = dict(stride=(1, 2), padding=((1, 0), side))
    a = conv_args_from_shapes("t", x.shape, w.shape, dtype=np.float64, **kwargs)
    gy = rng.standard_normal(a.y_shape)
    monkeypatch.setattr(drivers, "image_last_tile", lambda args, with_grad_x=True: 0)
    monkeypatch.setattr(drivers, "split_backward", lambda args: split_it)
    monkeypatch.setattr(drivers, "by_phases", lambda args: False)  # the fold kernels
    sfx = "_serial" if split_it else ""
    if not phased:      # the plain kernels, looked up when called (counted below)
        monkeypatch.setattr(split, "_unfold_fold", lambda conv, parallel: (
            getattr(split, "_im2col_nchw" + sfx), getattr(split, "_col2im_nchw" + sfx)))
    folds = count_calls(monkeypatch, split, ("col2im_phased" if phased else "_col2im_nchw")
                        + sfx)
    gx = fastconv.conv2d_backward(gy, x, w, **kwargs, algo="im2col",
                                  needs_input_grad=(True, False, False))[0]
    assert folds and ref.rel_error(gx, _explicit(x, w, gy, a)[0]) <= 1e-12


def random_geometries(rng, count, images, dtype):
    """``count`` random unfold problems (ConvArgs of 2 channels, x (images, 2, H, W),
    i0, band): kernels, strides and dilations 1-3, paddings 0-3, maps 1-13, a random
    band of output rows."""
    while count:
        h, w = (int(v) for v in rng.integers(1, 14, 2))
        kh, kw, sh, sw, rh, rw = (int(v) for v in rng.integers(1, 4, 6))
        pads = tuple(tuple(int(v) for v in rng.integers(0, 4, 2)) for _ in range(2))
        try:
            a = conv_args_from_shapes("t", (images, 2, h, w), (1, 2, kh, kw), (sh, sw),
                                      pads, (rh, rw))
        except ValueError:
            continue                    # the kernel does not fit
        count -= 1
        i0 = int(rng.integers(0, a.h_out))
        yield a, rng.standard_normal((images, 2, h, w)).astype(dtype), i0, \
            int(rng.integers(1, a.h_out - i0 + 1))


def test_phased_kernels_are_the_plain_ones():
    """``phased_unfold.im2col_phased`` and ``col2im_phased`` (and their serial twins)
    against the plain unfold and fold, on random geometries, bands and image offsets:
    every column entry written, the same values, the same folded sums."""
    rng = np.random.default_rng(5)
    for a, x, i0, band in random_geometries(rng, 30, 3, np.float64):
        conv = unfold_params(a)
        want = np.full((2, 2 * a.kh * a.kw, band * a.w_out), np.nan)
        unfold._im2col_nchw_serial(x, want, 1, i0, *conv)
        for unfold_k in (phased_unfold.im2col_phased, phased_unfold.im2col_phased_serial):
            got = np.full_like(want, np.nan)
            unfold_k(x, got, 1, i0, *conv)
            assert np.array_equal(got, want), a
        gx_want = rng.standard_normal(x.shape)
        gx_got = gx_want.copy()
        unfold._col2im_nchw_serial(want, gx_want, 1, i0, *conv)
        for fold_k in (phased_unfold.col2im_phased, phased_unfold.col2im_phased_serial):
            g = gx_got.copy()
            fold_k(want, g, 1, i0, *conv)
            np.testing.assert_allclose(g, gx_want, rtol=1e-13, atol=1e-13, err_msg=str(a))
