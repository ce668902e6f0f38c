"""conv2d_backward: every algorithm against the explicit adjoint reference and central
finite differences, both layouts and dtypes; tiling, batching, views, errors."""

import functools
import itertools

import numpy as np
import pytest

import fastconv
from fastconv import config
from fastconv._args import conv_args_from_shapes

from . import reference as ref
from .conftest import WINOGRAD_REFUSAL, from_nhwc, refused, to_nhwc
from .test_conv import CASES, _case_id

ALGOS = fastconv.ALGORITHMS + ("auto",)


def _problem(case, dtype, seed=1):
    """x, w, grad_y (NCHW / OIHW) and the conv keyword arguments for one case."""
    n, c, h, w, d, kh, kw, stride, padding, dilation, groups = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((d, c // groups, kh, kw))
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    a = conv_args_from_shapes("test", x.shape, wt.shape, **kwargs)
    gy = rng.standard_normal(a.y_shape)
    return x.astype(dtype), wt.astype(dtype), gy.astype(dtype), kwargs, a


def _backward(gy, x, w, kwargs, layout, algo):
    """fastconv.conv2d_backward in ``layout``, results returned as NCHW / OIHW."""
    if layout == "NCHW":
        return fastconv.conv2d_backward(gy, x, w, **kwargs, algo=algo)
    xl, wl = to_nhwc(x, w)
    gx, gw, gb = fastconv.conv2d_backward(np.ascontiguousarray(gy.transpose(0, 2, 3, 1)), xl,
                                          wl, **kwargs, layout="NHWC", algo=algo)
    return from_nhwc(gx), gw.transpose(3, 2, 0, 1), gb


def _explicit(x, w, gy, a):
    return ref.conv2d_backward(gy, x, w, a.stride, a.padding, a.dilation, a.groups)


# Cases small enough for finite differences (every element of x, w and bias perturbed).
FD_CASES = [c for c in CASES if c[0] * c[1] * c[2] * c[3] <= 400]


@functools.cache
def _finite_differences(k):
    """Central differences of L = sum(grad_y * conv2d(x, w, b)) for FD_CASES[k], float64,
    through the reference forward (independent of the code under test)."""
    x, w, gy, kwargs, a = _problem(FD_CASES[k], np.float64)
    b = np.zeros(a.c_out)

    def loss():
        return float(np.sum(gy * ref.conv2d(x, w, b, a.stride, a.padding, a.dilation,
                                            a.groups)))

    # The loss is linear in each argument, so a large step loses nothing but rounding.
    return tuple(ref.numerical_grad(loss, v, eps=0.5) for v in (x, w, b))


@pytest.mark.parametrize("k", range(len(FD_CASES)), ids=[_case_id(c) for c in FD_CASES])
def test_explicit_reference_matches_finite_differences(k):
    x, w, gy, kwargs, a = _problem(FD_CASES[k], np.float64)
    for got, want in zip(_explicit(x, w, gy, a), _finite_differences(k), strict=True):
        assert ref.rel_error(got, want) <= 1e-10


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("algo", fastconv.ALGORITHMS)
@pytest.mark.parametrize("k", range(len(FD_CASES)), ids=[_case_id(c) for c in FD_CASES])
def test_gradients_match_finite_differences(k, algo, layout):
    x, w, gy, kwargs, a = _problem(FD_CASES[k], np.float64)
    if refused(algo, x.shape, w.shape, **kwargs):
        with pytest.raises(ValueError, match=WINOGRAD_REFUSAL):
            _backward(gy, x, w, kwargs, layout, algo)
        return
    got = _backward(gy, x, w, kwargs, layout, algo)
    names = ("grad_x", "grad_w", "grad_bias")
    for name, g, want in zip(names, got, _finite_differences(k), strict=True):
        assert g.dtype == np.float64
        assert ref.rel_error(g, want) <= 1e-10, name


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_explicit_reference(case, algo, dtype, layout):
    x, w, gy, kwargs, a = _problem(case, dtype)
    if refused(algo, x.shape, w.shape, **kwargs):
        with pytest.raises(ValueError, match=WINOGRAD_REFUSAL):
            _backward(gy, x, w, kwargs, layout, algo)
        return
    want = _explicit(x, w, gy, a)
    got = _backward(gy, x, w, kwargs, layout, algo)
    for name, g, wnt in zip(("grad_x", "grad_w", "grad_bias"), got, want, strict=True):
        assert g.dtype == dtype, name
        assert g.shape == wnt.shape, name
        assert ref.rel_error(g, wnt) <= ref.tolerance(dtype, algo), name


def test_lecture_example_gradients():
    """y = x (*) w for the 3x3 / 2x2 worked example; with grad_y = ones, grad_w[a, b] is
    the sum of the 2x2 block of x at (a, b) and grad_x counts the windows covering it."""
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    w = np.array([[[[0.0, 1.0], [2.0, 3.0]]]])
    for algo in fastconv.ALGORITHMS:
        if refused(algo, x.shape, w.shape):  # a 2x2 kernel
            continue
        gx, gw, gb = fastconv.conv2d_backward(np.ones((1, 1, 2, 2)), x, w, algo=algo)
        np.testing.assert_allclose(gw[0, 0], [[8, 12], [20, 24]], atol=1e-12)
        np.testing.assert_allclose(gx[0, 0], [[0, 1, 1], [2, 6, 4], [2, 5, 3]], atol=1e-12)
        np.testing.assert_array_equal(gb, [4.0])


@pytest.mark.parametrize("algo", fastconv.ALGORITHMS)
def test_unbatched(algo, rng):
    x = rng.standard_normal((3, 6, 6))
    w = rng.standard_normal((2, 3, 3, 3))
    stride = 1 if algo == "winograd" else 2
    gy = rng.standard_normal((2, 6, 6) if stride == 1 else (2, 3, 3))
    gx, gw, gb = fastconv.conv2d_backward(gy, x, w, stride=stride, padding=1, algo=algo)
    bx, bw, bb = fastconv.conv2d_backward(gy[None], x[None], w, stride=stride, padding=1,
                                          algo=algo)
    assert gx.shape == (3, 6, 6)
    np.testing.assert_allclose(gx, bx[0], atol=1e-12)
    np.testing.assert_allclose(gw, bw, atol=1e-12)
    np.testing.assert_allclose(gb, bb, atol=1e-12)
    lx, lw, lb = fastconv.conv2d_backward(gy.transpose(1, 2, 0), x.transpose(1, 2, 0),
                                          w.transpose(2, 3, 1, 0), stride=stride,
                                          padding=1, layout="NHWC", algo=algo)
    np.testing.assert_allclose(lx.transpose(2, 0, 1), gx, atol=1e-12)
    np.testing.assert_allclose(lw.transpose(3, 2, 0, 1), gw, atol=1e-12)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("algo", ALGOS)
def test_empty_batch(algo, layout):
    x = np.zeros((0, 3, 8, 8), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    stride = 1 if algo == "winograd" else 2
    gy = np.zeros((0, 4, 6, 6) if stride == 1 else (0, 4, 3, 3), np.float32)
    if layout == "NHWC":
        x, w = to_nhwc(x, w)
        gy = gy.transpose(0, 2, 3, 1)
    gx, gw, gb = fastconv.conv2d_backward(gy, x, w, stride=stride, layout=layout,
                                          algo=algo)
    assert gx.shape == x.shape and gx.dtype == np.float32
    assert gw.shape == w.shape and not gw.any()
    assert gb.shape == (4,) and not gb.any()


@pytest.mark.parametrize("algo", fastconv.ALGORITHMS)
def test_non_contiguous_views(algo, rng):
    x = rng.standard_normal((4, 6, 20, 18))[::2, ::2, 1::2, ::-1]
    w = rng.standard_normal((3, 6, 3, 3))[:, ::2]
    stride = (1, 1) if algo == "winograd" else (1, 2)
    wide = 18 if algo == "winograd" else 9
    gy = rng.standard_normal((2, 3, 20, wide))[:, :, ::2]   # (2, 3, 10, wide), strided
    kw = dict(stride=stride, padding=((1, 1), (0, 2)))
    want = ref.conv2d_backward(gy, x, w, stride, ((1, 1), (0, 2)))
    got = fastconv.conv2d_backward(gy, x, w, **kw, algo=algo)
    for g, wnt in zip(got, want, strict=True):
        assert ref.rel_error(g, wnt) <= 1e-10


def test_fft_scatter_slices_follow_the_position_formula():
    """The FFT backward scatters grad_y into G through slices: output i goes to t = s*i
    - p_lo + keff - 1 when 0 <= t < size + keff - 1. Every small geometry, against the
    formula (outputs lying wholly in the padding dropped, none at all included)."""
    from fastconv.algos.fft import _scatter_slices

    for n_out, s, p, size, keff in itertools.product(range(1, 9), range(1, 4), range(6),
                                                     range(1, 9), range(1, 7)):
        t = np.arange(n_out) * s - p + keff - 1
        keep = (t >= 0) & (t < size + keff - 1)
        at, outs = _scatter_slices(n_out, s, p, size, keff)
        np.testing.assert_array_equal(np.arange(size + keff - 1)[at], t[keep])
        np.testing.assert_array_equal(np.arange(n_out)[outs], np.flatnonzero(keep))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("algo", ["im2col", "fft"])
def test_workspace_budget_chunks_give_the_same_gradients(algo, layout, monkeypatch):
    """Row bands of one image (im2col) and one image per FFT batch, as in the forward."""
    case = (5, 4, 11, 9, 6, 3, 3, (2, 1), 1, (1, 2), 2)
    x, w, gy, kwargs, a = _problem(case, np.float32)
    want = _explicit(x, w, gy, a)
    monkeypatch.setattr(config, "WORKSPACE_BYTES", 4 * 2 * 9 * 9 * 3)
    monkeypatch.setattr(config, "IM2COL_CHUNK_BYTES", 4 * 2 * 9 * 9 * 3)
    from fastconv.algos.im2col import tiling

    t = tiling(a)
    assert t.images == 1 and t.band < a.h_out     # the bands really are exercised
    got = _backward(gy, x, w, kwargs, layout, algo)
    for g, wnt in zip(got, want, strict=True):
        assert ref.rel_error(g, wnt) <= ref.tolerance(np.float32, algo)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("algo", ["naive", "im2col"])
def test_overlapping_windows_are_deterministic(algo, layout, rng):
    """Stride 1 with a 5x5 kernel: every input pixel gathers 25 column entries. The fold
    owns its writes, so repeated runs give identical bits and match the reference."""
    x = rng.standard_normal((3, 8, 12, 12)).astype(np.float32)
    w = rng.standard_normal((8, 8, 5, 5)).astype(np.float32)
    gy = rng.standard_normal((3, 8, 12, 12)).astype(np.float32)
    runs = [_backward(gy, x, w, dict(padding=2), layout, algo) for _ in range(3)]
    for r in runs[1:]:
        for g, g0 in zip(r, runs[0], strict=True):
            np.testing.assert_array_equal(g, g0)
    want = ref.conv2d_backward(gy, x, w, padding=((2, 2), (2, 2)))
    for g, wnt in zip(runs[0], want, strict=True):
        assert ref.rel_error(g, wnt) <= 1e-4


# ------------------------------------------------------------ image-last path (small images)
# (n, c, h, w, d, kh, kw, stride, padding, dilation, groups): batches of small images run
# im2col's image-last backward; output channels per group below, at and above the
# kernels' block of 4, odd channels per group (their channel pairs), strides, dilations,
# asymmetric padding, LeNet's two layers.
IMAGE_LAST_CASES = [
    (3, 1, 9, 8, 6, 5, 5, 1, 2, 1, 1),
    (4, 6, 7, 7, 16, 5, 5, 1, 0, 1, 1),
    (2, 3, 8, 9, 5, 3, 3, (2, 1), 1, 1, 1),
    (5, 4, 9, 7, 4, 3, 2, (1, 3), ((2, 0), (1, 2)), (2, 1), 2),
    (3, 6, 6, 6, 6, 3, 3, 1, "same", 1, 6),          # depthwise
    (2, 6, 6, 7, 18, 3, 3, 2, 1, 2, 3),             # 6 output channels per group
    (3, 5, 5, 6, 7, 1, 2, 1, 0, 1, 1),               # 1x2 kernel, odd channels
    (2, 2, 4, 4, 3, 3, 3, 1, 3, 1, 1),               # padding > kernel
    (64, 1, 28, 28, 6, 5, 5, 1, 2, 1, 1),            # LeNet conv1
    (64, 6, 14, 14, 16, 5, 5, 1, 0, 1, 1),           # LeNet conv2
]


def _force_image_last(monkeypatch, real):
    """Make im2col's backward run the image-last kernels on ``real`` (a ConvArgs): the
    GEMMs take strided layers and batches of fewer than ``IMAGE_LAST_MIN_IMAGES``, the
    kernels' form for them stays tested."""
    from fastconv.algos.im2col import drivers, image_last_tile
    from fastconv.algos.im2col.tiling import IMAGE_LAST_MIN_IMAGES

    if max(real.stride) > 1 or real.n < IMAGE_LAST_MIN_IMAGES:
        assert image_last_tile(real) == 0
        monkeypatch.setattr(drivers, "image_last_tile", lambda args, with_grad_x=True: 2)
    else:
        assert image_last_tile(real) >= 2           # the path under test really runs


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", IMAGE_LAST_CASES, ids=_case_id)
def test_image_last_backward_matches_reference(case, dtype, layout, monkeypatch):

    x, w, gy, kwargs, a = _problem(case, dtype)
    real = conv_args_from_shapes("test", x.shape, w.shape, **kwargs, dtype=dtype)
    _force_image_last(monkeypatch, real)
    want = _explicit(x, w, gy, a)
    for algo in ("im2col", "auto"):
        got = _backward(gy, x, w, kwargs, layout, algo)
        for name, g, wnt in zip(("grad_x", "grad_w", "grad_bias"), got, want, strict=True):
            assert g.dtype == dtype and g.shape == wnt.shape, name
            assert ref.rel_error(g, wnt) <= ref.tolerance(dtype, "im2col"), (algo, name)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_image_last_backward_in_several_tiles(layout, monkeypatch):
    """A chunk of two unfolded images: 7 images in tiles of 4 and 3."""
    from fastconv.algos.im2col import image_last_tile

    case = (7, 3, 8, 8, 5, 3, 3, 1, 1, 1, 1)
    x, w, gy, kwargs, a = _problem(case, np.float64)
    a = conv_args_from_shapes("test", x.shape, w.shape, **kwargs, dtype=np.float64)
    monkeypatch.setattr(config, "IM2COL_CHUNK_BYTES", 2 * (3 * 3 * 3 * 8 * 8) * 8)
    monkeypatch.setattr(config, "WORKSPACE_BYTES", 1 << 20)
    assert image_last_tile(a) == 2 * (3 * 3 * 3) // (2 * 3 + 5) == 4
    got = _backward(gy, x, w, kwargs, layout, "im2col")
    for g, wnt in zip(got, _explicit(x, w, gy, a), strict=True):
        assert ref.rel_error(g, wnt) <= 1e-10


def test_image_last_paths_take_read_only_arrays():
    # One kernel copies into and out of image-last tiles, writing its first argument in
    # one direction: a read-only input (or grad_y) takes numpy's copy instead.
    from fastconv.algos.im2col import image_last_tile, tiling

    x, w, gy, kwargs, a = _problem((8, 6, 14, 14, 16, 5, 5, 1, 0, 1, 1), np.float32)
    assert tiling(a).image_last and image_last_tile(a) >= 2   # the paths under test run
    want_y = fastconv.conv2d(x, w, **kwargs, algo="im2col")
    want = fastconv.conv2d_backward(gy, x, w, **kwargs, algo="im2col")
    for v in (x, w, gy):
        v.setflags(write=False)
    np.testing.assert_array_equal(fastconv.conv2d(x, w, **kwargs, algo="im2col"), want_y)
    got = fastconv.conv2d_backward(gy, x, w, **kwargs, algo="im2col")
    for g, wnt in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, wnt)


FD_IMAGE_LAST = [c for c in IMAGE_LAST_CASES if c[0] * c[1] * c[2] * c[3] <= 300]


@pytest.mark.parametrize("case", FD_IMAGE_LAST, ids=_case_id)
def test_image_last_backward_matches_finite_differences(case, monkeypatch):
    x, w, gy, kwargs, a = _problem(case, np.float64)
    _force_image_last(monkeypatch, conv_args_from_shapes("test", x.shape, w.shape,
                                                         **kwargs, dtype=np.float64))
    b = np.zeros(a.c_out)

    def loss():
        return float(np.sum(gy * ref.conv2d(x, w, b, a.stride, a.padding, a.dilation,
                                            a.groups)))

    want = [ref.numerical_grad(loss, v, eps=0.5) for v in (x, w, b)]
    got = fastconv.conv2d_backward(gy, x, w, **kwargs, algo="im2col")
    for g, wnt in zip(got, want, strict=True):
        assert ref.rel_error(g, wnt) <= 1e-10


def test_auto_takes_the_image_last_backward(rng):
    from fastconv.algos import registry

    x = rng.standard_normal((4, 1, 12, 12))
    w = rng.standard_normal((3, 1, 5, 5))
    gy = rng.standard_normal((4, 3, 8, 8))
    ran = []
    real = registry.get("im2col").backward
    with registry.replaced("im2col", backward=lambda *a: ran.append(1) or real(*a)):
        got = fastconv.conv2d_backward(gy, x, w, algo="auto")
    assert ran == [1]
    for g, want in zip(got, ref.conv2d_backward(gy, x, w), strict=True):
        assert ref.rel_error(g, want) <= 1e-10


def test_image_last_backward_is_taken_for_thin_layers():
    from fastconv.algos.im2col import image_last_tile

    def tile(x_shape, w_shape, **kw):
        return image_last_tile(conv_args_from_shapes("test", x_shape, w_shape, **kw))

    assert tile((64, 1, 28, 28), (6, 1, 5, 5), padding=2) == 64          # LeNet
    assert tile((64, 16, 28, 28), (16, 16, 3, 3), padding=1) > 0
    assert tile((64, 64, 14, 14), (64, 64, 3, 3), padding=1) > 0
    assert tile((64, 128, 7, 7), (128, 128, 3, 3), padding=1) == 0        # wide GEMMs
    assert tile((32, 128, 14, 14), (128, 128, 3, 3), padding=1) == 0
    assert tile((64, 16, 28, 28), (32, 16, 3, 3), padding=1, stride=2) == 0   # strided:
    assert tile((64, 32, 28, 28), (64, 32, 3, 3), padding=1, stride=2) == 0   # GEMMs
    assert tile((64, 16, 8, 8), (16, 16, 1, 1)) == 0                     # 1x1: GEMMs
    assert tile((1, 16, 8, 8), (16, 16, 3, 3)) == 0                      # one image
    assert tile((3, 16, 8, 8), (16, 16, 3, 3)) == 0                      # or three
    assert tile((4, 16, 8, 8), (16, 16, 3, 3)) == 4
    assert tile((4, 16, 200, 200), (16, 16, 3, 3)) == 0                  # large images


# ---------------------------------------------------------------------- needs_input_grad
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", [CASES[3], IMAGE_LAST_CASES[3], (1, 3, 7, 7, 4, 3, 3, 2, 1, 1, 1)],
                         ids=_case_id)
def test_needs_input_grad_leaves_out_gradients(case, algo, layout):
    x, w, gy, kwargs, a = _problem(case, np.float64)
    if refused(algo, x.shape, w.shape, **kwargs):
        case = case[:7] + (1, 1, 1, case[10])   # 3x3 (or 3x2: refused), stride 1
        x, w, gy, kwargs, a = _problem(case, np.float64)
        if refused(algo, x.shape, w.shape, **kwargs):
            pytest.skip("a 3x2 kernel: winograd does not apply")
    if layout == "NHWC":
        x, w = to_nhwc(x, w)
        gy = np.ascontiguousarray(gy.transpose(0, 2, 3, 1))
    full = fastconv.conv2d_backward(gy, x, w, **kwargs, layout=layout, algo=algo)
    for mask in np.ndindex(2, 2, 2):
        needs = tuple(bool(m) for m in mask)
        got = fastconv.conv2d_backward(gy, x, w, **kwargs, layout=layout, algo=algo,
                                       needs_input_grad=needs)
        for need, g, want in zip(needs, got, full, strict=True):
            if need:
                np.testing.assert_array_equal(g, want)
            else:
                assert g is None


def test_needs_input_grad_unbatched_and_empty():
    x = np.ones((3, 6, 6))
    w = np.ones((2, 3, 3, 3))
    gx, gw, gb = fastconv.conv2d_backward(np.ones((2, 4, 4)), x, w,
                                          needs_input_grad=(True, False, False))
    assert gx.shape == x.shape and gw is None and gb is None
    gx, gw, gb = fastconv.conv2d_backward(np.ones((0, 2, 4, 4)), np.ones((0, 3, 6, 6)), w,
                                          needs_input_grad=(False, True, True))
    assert gx is None and not gw.any() and gb.shape == (2,) and not gb.any()


@pytest.mark.parametrize("needs", [(True, True), "xwb", (1, 1, 1), None, (True, True, None)])
def test_needs_input_grad_must_be_three_bools(needs):
    with pytest.raises(TypeError, match=r"conv2d_backward: needs_input_grad=.* must be three "
                                        r"bools \(grad_x, grad_w, grad_bias\)"):
        fastconv.conv2d_backward(GY, X, W, needs_input_grad=needs)


def test_sweep_covers_every_argument_kind():
    kinds = {(c[7] != 1, c[8] not in (0, "valid"), c[9] != 1, c[10] > 1) for c in FD_CASES}
    assert any(k[0] for k in kinds) and any(k[1] for k in kinds)
    assert any(k[2] for k in kinds) and any(k[3] for k in kinds)


# ----------------------------------------------------------------------------- errors
X = np.zeros((2, 8, 7, 7), np.float32)
W = np.zeros((4, 8, 3, 3), np.float32)
GY = np.zeros((2, 4, 5, 5), np.float32)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(gy=np.zeros((2, 4, 5, 6), np.float32)), ValueError,
     r"conv2d_backward: grad_y must have shape \(2, 4, 5, 5\) \(the conv2d output\), got "
     r"\(2, 4, 5, 6\)"),
    (dict(gy=np.zeros((4, 5, 5), np.float32)), ValueError,
     r"conv2d_backward: grad_y must have shape \(2, 4, 5, 5\)"),
    (dict(layout="NHWC", x=np.zeros((2, 7, 7, 8), np.float32),
          w=np.zeros((3, 3, 8, 4), np.float32)), ValueError,
     r"conv2d_backward: grad_y must have shape \(2, 5, 5, 4\) \(the conv2d output\), got "
     r"\(2, 4, 5, 5\)"),
    (dict(gy=GY.astype(np.float64)), TypeError,
     r"conv2d_backward: inputs must share one dtype .* grad_y=float64"),
    (dict(gy=GY.astype(np.int64)), TypeError,
     r"conv2d_backward: grad_y has dtype int64; accepted dtypes are float32 and float64"),
    (dict(gy="grad"), TypeError,
     r"conv2d_backward: grad_y must be an array-like convertible to a numpy array, got str"),
    (dict(w=np.zeros((4, 8, 0, 3), np.float32)), ValueError,
     r"conv2d_backward: kernel size must be positive, got 0x3"),
    (dict(stride=(1, 2, 3)), ValueError,
     r"conv2d_backward: stride=\(1, 2, 3\) must be an int or a pair \(h, w\), got 3 values"),
    (dict(groups=3), ValueError, r"conv2d_backward: groups=3 must divide C_in=8"),
    (dict(algo="gemm"), ValueError, r"conv2d_backward: algo='gemm' is not known"),
    (dict(layout="HWCN"), ValueError, r"conv2d_backward: layout='HWCN' is not supported"),
])
def test_bad_arguments_are_named(kwargs, exc, match):
    call = dict(gy=GY, x=X, w=W)
    call.update(kwargs)
    gy, x, w = call.pop("gy"), call.pop("x"), call.pop("w")
    with pytest.raises(exc, match=match):
        fastconv.conv2d_backward(gy, x, w, **call)


def test_auto_backward_prefers_winograd_on_wide_layers_only():
    """Image-last im2col for batches of small images, unless the backward plan picked
    Winograd for a layer of at least 32 channels (fastconv.autotune)."""
    from fastconv import autotune

    def backward_algo(x_shape, w_shape, **kw):
        return autotune.backward_choice(conv_args_from_shapes("t", x_shape, w_shape, **kw),
                                        "auto", True)

    assert backward_algo((64, 32, 32, 32), (32, 32, 3, 3), padding=1) == "winograd"
    assert backward_algo((64, 16, 8, 8), (16, 16, 3, 3), padding=1) == "im2col"
    assert backward_algo((64, 1, 28, 28), (6, 1, 5, 5), padding=2) == "im2col"   # LeNet
    assert backward_algo((16, 64, 56, 56), (64, 64, 3, 3), padding=1) == "winograd"


@pytest.fixture
def winograd_planned(monkeypatch):
    """``backward_choice``'s algorithm for "auto" where the backward plan picks Winograd
    (the plan replaced): a function of conv2d's shapes and keywords."""
    import types

    from fastconv import autotune

    monkeypatch.setattr(autotune, "plan_for", lambda a, measure=False, backward=False:
                        types.SimpleNamespace(algorithm="winograd"))

    def backward_algo(x_shape, w_shape, **kw):
        return autotune.backward_choice(conv_args_from_shapes("t", x_shape, w_shape, **kw),
                                        "auto", True)
    return backward_algo


def test_auto_backward_keeps_winograd_on_narrow_fused_layers_of_large_maps(winograd_planned):
    """Where the plan picks Winograd, a layer of 16 channels whose weight gradient runs
    fused keeps it over the image-last path from 16x16 output pixels and 4 images;
    smaller maps, fewer channels or fewer images go to im2col."""
    backward_algo = winograd_planned
    assert backward_algo((32, 16, 28, 28), (16, 16, 3, 3), padding=1) == "winograd"
    assert backward_algo((32, 16, 16, 16), (32, 16, 3, 3), padding=1) == "winograd"
    assert backward_algo((32, 16, 14, 14), (16, 16, 3, 3), padding=1) == "im2col"
    assert backward_algo((64, 16, 8, 8), (16, 16, 3, 3), padding=1) == "im2col"
    assert backward_algo((32, 8, 28, 28), (16, 8, 3, 3), padding=1) == "im2col"  # not fused
    assert backward_algo((3, 16, 28, 28), (16, 16, 3, 3), padding=1) == "im2col"


def test_auto_backward_keeps_narrow_layers_of_few_images_on_im2col(winograd_planned):
    """Where the plan picks Winograd, batches of fewer images than the image-last path
    takes run im2col (its direct kernels) unless the layer has 32 channels or more."""
    from fastconv import autotune

    backward_algo = winograd_planned
    assert backward_algo((2, 16, 28, 28), (16, 16, 3, 3), padding=1) == "im2col"
    assert backward_algo((3, 8, 28, 28), (16, 8, 3, 3), padding=1) == "im2col"
    assert backward_algo((2, 32, 14, 14), (32, 32, 3, 3), padding=1) == "winograd"
    assert backward_algo((8, 28, 28, 16), (3, 3, 16, 16), padding=1,
                         layout="NHWC") == "winograd"      # 8 images, no image-last pass
    assert autotune.backward_choice(conv_args_from_shapes(
        "t", (2, 16, 28, 28), (16, 16, 3, 3), padding=1), "winograd") == "winograd"
