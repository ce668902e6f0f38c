"""conv2d forward: every algorithm against the reference, the worked example, scipy."""

import itertools

import numpy as np
import pytest
import scipy.signal

import fastconv
from fastconv import config
from fastconv._args import conv_args_from_shapes

from . import reference as ref
from .conftest import WINOGRAD_REFUSAL, from_nhwc, refused, to_nhwc

ALGOS = fastconv.ALGORITHMS + ("auto",)

# (n, c_in, h, w, c_out, kh, kw, stride, padding, dilation, groups)
CASES = [
    (2, 3, 7, 7, 4, 3, 3, 1, 0, 1, 1),
    (2, 3, 7, 8, 4, 3, 3, 1, 1, 1, 1),
    (1, 2, 9, 6, 3, 2, 3, (2, 1), 0, 1, 1),
    (2, 4, 8, 8, 6, 3, 3, (1, 2), ((1, 2), (0, 3)), 1, 2),
    (1, 4, 10, 9, 4, 3, 2, 2, 2, (2, 1), 1),
    (3, 6, 6, 6, 6, 3, 3, 1, "same", 1, 6),        # depthwise
    (2, 6, 6, 7, 12, 3, 3, 1, "same", 2, 3),
    (1, 4, 8, 8, 8, 4, 4, 1, "same", 1, 1),        # even kernel: more padding after
    (2, 2, 5, 5, 2, 1, 1, 1, 0, 1, 1),             # pointwise
    (1, 2, 5, 5, 3, 5, 5, 1, 0, 1, 1),             # kernel == input
    (1, 3, 12, 11, 2, 3, 3, 3, 1, 3, 1),
    (2, 1, 16, 16, 1, 9, 7, 1, 4, 1, 1),
    (1, 8, 6, 5, 4, 3, 3, 2, ((0, 1), (2, 0)), 1, 4),
    (1, 2, 4, 4, 2, 3, 3, 1, 3, 1, 1),             # padding > kernel: all-zero border rows
    (1, 3, 7, 7, 2, 2, 2, (3, 2), 1, 1, 1),        # the lecture's 2x3-style uneven stride
]


def _case_id(case):
    return "n{}c{}h{}w{}-d{}k{}x{}-s{}-p{}-r{}-g{}".format(*case).replace(" ", "")


def _arrays(case, dtype, seed=0):
    n, c, h, w, d, kh, kw, stride, padding, dilation, groups = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((d, c // groups, kh, kw)).astype(dtype)
    b = rng.standard_normal(d).astype(dtype)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return x, wt, b, kwargs


def _reference(x, wt, b, kwargs):
    a = conv_args_from_shapes("ref", x.shape, wt.shape, **kwargs)
    return ref.conv2d(x, wt, b, a.stride, a.padding, a.dilation, a.groups)


@pytest.mark.parametrize("algo", ALGOS)
def test_lecture_worked_example(algo):
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    w = np.array([[[[0.0, 1.0], [2.0, 3.0]]]])
    if refused(algo, x.shape, w.shape):  # a 2x2 kernel
        with pytest.raises(ValueError, match=WINOGRAD_REFUSAL):
            fastconv.conv2d(x, w, algo=algo)
        return
    y = fastconv.conv2d(x, w, algo=algo)
    np.testing.assert_allclose(y[0, 0], [[19, 25], [37, 43]], rtol=0, atol=1e-12)
    y32 = fastconv.conv2d(x.astype(np.float32), w.astype(np.float32), algo=algo)
    np.testing.assert_allclose(y32[0, 0], [[19, 25], [37, 43]], rtol=1e-5)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_reference(case, algo, dtype, layout):
    x, wt, b, kwargs = _arrays(case, dtype)
    if refused(algo, x.shape, wt.shape, **kwargs):
        with pytest.raises(ValueError, match=WINOGRAD_REFUSAL):
            fastconv.conv2d(x, wt, b, algo=algo, **kwargs)
        return
    want = _reference(x, wt, b, kwargs)
    if layout == "NHWC":
        xl, wl = to_nhwc(x, wt)
        got = from_nhwc(fastconv.conv2d(xl, wl, b, layout="NHWC", algo=algo, **kwargs))
    else:
        got = fastconv.conv2d(x, wt, b, algo=algo, **kwargs)
    assert got.dtype == dtype
    assert got.shape == want.shape
    assert ref.rel_error(got, want) <= ref.tolerance(dtype, algo)


@pytest.mark.parametrize("algo", fastconv.ALGORITHMS)
@pytest.mark.parametrize("mode", ["valid", "full", "same"])
def test_single_channel_matches_scipy_correlate2d(algo, mode, rng):
    x = rng.standard_normal((13, 11))
    k = rng.standard_normal((4, 3))
    want = scipy.signal.correlate2d(x, k, mode=mode)
    pad = {"valid": 0, "full": (3, 2), "same": ((1, 2), (1, 1))}[mode]
    if refused(algo, (1, 1) + x.shape, (1, 1) + k.shape):
        with pytest.raises(ValueError, match=WINOGRAD_REFUSAL):  # a 4x3 kernel
            fastconv.conv2d(x[None, None], k[None, None], padding=pad, algo=algo)
        return
    got = fastconv.conv2d(x[None, None], k[None, None], padding=pad, algo=algo)[0, 0]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("algo", ALGOS)
def test_unbatched_input_gives_unbatched_output(algo, rng):
    x = rng.standard_normal((3, 6, 6))
    w = rng.standard_normal((2, 3, 3, 3))
    y = fastconv.conv2d(x, w, padding=1, algo=algo)
    assert y.shape == (2, 6, 6)
    np.testing.assert_allclose(y, fastconv.conv2d(x[None], w, padding=1, algo=algo)[0])
    yl = fastconv.conv2d(x.transpose(1, 2, 0), w.transpose(2, 3, 1, 0), padding=1,
                         layout="NHWC", algo=algo)
    np.testing.assert_allclose(yl.transpose(2, 0, 1), y, atol=1e-12)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("algo", ALGOS)
def test_empty_batch(algo, layout):
    x = np.zeros((0, 3, 8, 8), np.float32)
    w = np.zeros((4, 3, 3, 3), np.float32)
    if layout == "NHWC":
        x, w = to_nhwc(x, w)
    stride = 1 if algo == "winograd" else 2
    y = fastconv.conv2d(x, w, np.ones(4, np.float32), stride=stride, layout=layout,
                        algo=algo)
    if stride == 1:
        assert y.shape == ((0, 4, 6, 6) if layout == "NCHW" else (0, 6, 6, 4))
        return
    assert y.shape == ((0, 4, 3, 3) if layout == "NCHW" else (0, 3, 3, 4))
    assert y.dtype == np.float32


@pytest.mark.parametrize("algo", ALGOS)
def test_non_contiguous_views(algo, rng):
    base = rng.standard_normal((4, 6, 20, 18))
    x = base[::2, ::2, 1::2, ::-1]           # strided, reversed
    wbase = rng.standard_normal((3, 6, 3, 3))
    w = wbase[:, ::2]                        # (3, 3, 3, 3), non-contiguous
    stride = (1, 1) if algo == "winograd" else (1, 2)
    want = ref.conv2d(x, w, None, stride, ((1, 1), (0, 2)))
    got = fastconv.conv2d(x, w, stride=stride, padding=((1, 1), (0, 2)), algo=algo)
    assert ref.rel_error(got, want) <= 1e-10
    xf = np.asfortranarray(x)
    got_f = fastconv.conv2d(xf, w, stride=stride, padding=((1, 1), (0, 2)), algo=algo)
    assert ref.rel_error(got_f, want) <= 1e-10


@pytest.mark.parametrize("algo", ["naive", "im2col", "winograd"])
def test_nan_in_one_image_stays_in_that_image(algo, rng):
    x = rng.standard_normal((3, 2, 6, 6))
    x[1, 0, 2, 3] = np.nan
    w = rng.standard_normal((2, 2, 3, 3))
    y = fastconv.conv2d(x, w, padding=1, algo=algo)
    assert np.isnan(y[1]).any()
    assert np.isfinite(y[0]).all() and np.isfinite(y[2]).all()
    # only outputs whose window covers the NaN are NaN
    assert np.isnan(y[1, :, 1:4, 2:5]).all()
    assert np.isnan(y[1]).sum() == 2 * 9


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("algo", ["im2col", "fft"])
def test_workspace_budget_chunks_give_the_same_result(algo, layout, rng, monkeypatch):
    x = rng.standard_normal((5, 4, 11, 9)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    want = ref.conv2d(x, w, None, (2, 1), ((1, 1), (1, 1)), (1, 2), 2)
    if layout == "NHWC":
        x, w = to_nhwc(x, w)
    # Small enough to force row bands of one image for im2col, one image per FFT chunk.
    monkeypatch.setattr(config, "WORKSPACE_BYTES", 4 * 2 * 9 * 9 * 3)
    monkeypatch.setattr(config, "IM2COL_CHUNK_BYTES", 4 * 2 * 9 * 9 * 3)
    got = fastconv.conv2d(x, w, stride=(2, 1), padding=1, dilation=(1, 2), groups=2,
                          layout=layout, algo=algo)
    if layout == "NHWC":
        got = from_nhwc(got)
    assert ref.rel_error(got, want) <= ref.tolerance(np.float32, algo)


def test_im2col_tiling_respects_the_budget():
    from fastconv.algos.im2col import tiling

    a = conv_args_from_shapes("conv2d", (256, 64, 56, 56), (64, 64, 3, 3), padding=1)
    t = tiling(a, chunk_bytes=1 << 40, budget=256 << 20)
    assert t.col_bytes <= 256 << 20 and t.images >= 1
    t = tiling(a, chunk_bytes=1 << 20, budget=256 << 20)
    assert t.images == 1 and t.band < a.h_out and t.col_bytes <= 1 << 20


def test_auto_rule_is_explainable():
    from fastconv.autotune import choose_algorithm_for

    def pick(xs, ws, **kw):
        return choose_algorithm_for(conv_args_from_shapes("conv2d", xs, ws, **kw))

    assert pick((1, 1, 512, 512), (1, 1, 31, 31)) == "fft"
    assert pick((16, 64, 56, 56), (64, 64, 3, 3), padding=1) == "winograd"
    assert pick((16, 64, 56, 56), (128, 64, 3, 3), stride=2, padding=1) == "im2col"
    assert pick((16, 128, 56, 56), (128, 1, 3, 3), padding=1, groups=128) == "naive"


# ----------------------------------------------------------------------------- errors
X = np.zeros((2, 8, 10, 10), np.float32)
W = np.zeros((4, 8, 3, 3), np.float32)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(x=np.zeros(10, np.float32)), ValueError, r"conv2d: input must be 4-D .* got 1-D"),
    (dict(w=np.zeros((4, 8, 3), np.float32)), ValueError, r"conv2d: weight must be 4-D"),
    (dict(w=np.zeros((4, 7, 3, 3), np.float32)), ValueError,
     r"conv2d: weight has 7 input channels per group but input has C_in=8"),
    (dict(groups=3, w=np.zeros((3, 2, 3, 3), np.float32)), ValueError,
     r"conv2d: groups=3 must divide C_in=8"),
    (dict(groups=2, w=np.zeros((3, 4, 3, 3), np.float32)), ValueError,
     r"conv2d: groups=2 must divide C_out=3"),
    (dict(groups=0), ValueError, r"conv2d: groups=0 must be positive"),
    (dict(w=np.zeros((4, 8, 13, 3), np.float32)), ValueError,
     r"conv2d: kernel height 13 .* larger than the padded input height 10"),
    (dict(w=np.zeros((4, 8, 3, 3), np.float32), dilation=6), ValueError,
     r"conv2d: kernel height 13 \(k=3, dilation=6\) is larger"),
    (dict(stride=0), ValueError, r"conv2d: stride=0 must be positive"),
    (dict(stride=(1, -2)), ValueError, r"conv2d: stride=\(1, -2\) must be positive"),
    (dict(dilation=0), ValueError, r"conv2d: dilation=0 must be positive"),
    (dict(padding=-1), ValueError, r"conv2d: padding=-1 must be >= 0"),
    (dict(padding=((1, -1), (0, 0))), ValueError, r"conv2d: padding=.* must be non-negative"),
    (dict(padding="same", stride=2), ValueError,
     r"conv2d: padding='same' requires stride 1, got stride=\(2, 2\)"),
    (dict(padding="full"), ValueError,
     r"conv2d: padding='full' is not understood; acceptable words are 'valid' and 'same'"),
    (dict(layout="CHWN"), ValueError, r"conv2d: layout='CHWN' is not supported; acceptable"),
    (dict(algo="gemm"), ValueError,
     r"conv2d: algo='gemm' is not known; acceptable algorithms are 'auto', 'naive', "
     r"'im2col', 'fft', 'winograd'"),
    (dict(stride=(1, 2, 3)), ValueError, r"conv2d: stride=\(1, 2, 3\) must be an int or a "
     r"pair \(h, w\), got 3 values"),
    (dict(stride=1.5), TypeError, r"conv2d: stride=1.5 must be an int or a pair of ints"),
    (dict(x=X.astype(np.int32)), TypeError,
     r"conv2d: input has dtype int32; accepted dtypes are float32 and float64"),
    (dict(x=X.astype(np.float16)), TypeError,
     r"conv2d: inputs must share one dtype .*input=float16, weight=float32"),
    (dict(x=X.astype(np.complex64)), TypeError, r"conv2d: input has dtype complex64"),
    (dict(x=X.astype(object)), TypeError, r"conv2d: input has dtype object"),
    (dict(w=W.astype(np.float64)), TypeError,
     r"conv2d: inputs must share one dtype \(float32 or float64\), got input=float32, "
     r"weight=float64"),
    (dict(bias=np.zeros(5, np.float32)), ValueError,
     r"conv2d: bias must have shape \(C_out,\) = \(4,\), got \(5,\)"),
    (dict(bias=np.zeros(4, np.float64)), TypeError, r"conv2d: inputs must share one dtype"),
    (dict(x="image"), TypeError,
     r"conv2d: input must be an array-like convertible to a numpy array, got str"),
    (dict(x={}), TypeError,
     r"conv2d: input must be an array-like convertible to a numpy array, got dict"),
])
def test_bad_arguments_are_named(kwargs, exc, match):
    call = dict(x=X, w=W, bias=None)
    call.update(kwargs)
    x, w, b = call.pop("x"), call.pop("w"), call.pop("bias")
    with pytest.raises(exc, match=match):
        fastconv.conv2d(x, w, b, **call)


def test_sweep_is_broad():
    """The sweep covers every argument kind the issue lists."""
    strides = {str(c[7]) for c in CASES}
    pads = {str(c[8]) for c in CASES}
    assert len(strides) >= 4 and {"same", "0", "((1, 2), (0, 3))"} <= pads
    assert any(c[9] != 1 for c in CASES) and any(c[10] == c[1] for c in CASES if c[10] > 1)
    assert len(list(itertools.product(CASES, ALGOS))) >= 60
