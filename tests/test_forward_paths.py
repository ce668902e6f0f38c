"""The forward fast paths against the reference: depthwise kernel, pointwise GEMM, merged
small-image tiles, row bands, fused bias, reused workspaces."""

import numpy as np
import pytest

import fastconv
from fastconv import config
from fastconv._args import conv_args_from_shapes
from fastconv.algos import im2col, naive

from . import reference as ref
from .conftest import from_nhwc, to_nhwc


def _check(x, w, b, algo, layout="NCHW", **kwargs):
    a = conv_args_from_shapes("ref", x.shape, w.shape, **kwargs)
    want = ref.conv2d(x, w, b, a.stride, a.padding, a.dilation, a.groups)
    if layout == "NHWC":
        xl, wl = to_nhwc(x, w)
        got = from_nhwc(fastconv.conv2d(xl, wl, b, layout="NHWC", algo=algo, **kwargs))
    else:
        got = fastconv.conv2d(x, w, b, algo=algo, **kwargs)
    assert got.dtype == x.dtype and got.shape == want.shape
    assert ref.rel_error(got, want) <= ref.tolerance(x.dtype, algo)


# (c, multiplier, h, w, k, stride, padding, dilation)
DEPTHWISE = [
    (4, 1, 9, 8, 3, 1, 1, 1),
    (4, 2, 9, 8, 3, 1, "same", 1),
    (3, 1, 10, 7, 3, 2, 1, 1),
    (3, 3, 11, 12, (3, 2), (2, 1), ((0, 2), (1, 0)), 1),
    (2, 1, 12, 12, 3, 1, 2, 2),
    (2, 2, 13, 9, 5, (1, 3), 0, (1, 2)),
    (5, 1, 6, 6, 1, 1, 0, 1),
    (2, 1, 4, 4, 3, 1, 3, 1),               # padding larger than the kernel
    (1, 6, 12, 11, 5, 1, 0, 1),             # single input channel, groups=1 (LeNet c1)
    (1, 1, 20, 17, 7, 1, 0, 1),             # single channel in and out
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", DEPTHWISE)
def test_depthwise_kernel(case, dtype, rng):
    c, mult, h, wd, k, stride, padding, dilation = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal((2, c, h, wd)).astype(dtype)
    w = rng.standard_normal((c * mult, 1, kh, kw)).astype(dtype)
    b = rng.standard_normal(c * mult).astype(dtype)
    assert naive.is_depthwise(conv_args_from_shapes("t", x.shape, w.shape, groups=c))
    assert not naive.is_depthwise(conv_args_from_shapes("t", (1, 2, 5, 5), (2, 2, 3, 3)))
    for bias in (None, b):
        _check(x, w, bias, "naive", stride=stride, padding=padding, dilation=dilation,
               groups=c)
    _check(x, w, b, "naive", layout="NHWC", stride=stride, padding=padding,
           dilation=dilation, groups=c)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("groups", [1, 2])
def test_pointwise_gemm(groups, layout, rng):
    x = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    w = rng.standard_normal((6, 4 // groups, 1, 1)).astype(np.float32)
    assert im2col.is_pointwise(conv_args_from_shapes("t", x.shape, w.shape, groups=groups))
    _check(x, w, rng.standard_normal(6).astype(np.float32), "im2col", layout=layout,
           groups=groups)


# One float64 image of the case below unfolds to 24 rows x 32 pixels = 6144 bytes.
# (chunk, (images, band, image_last))
TILES = [(1, (1, 1, False)), (3100, (1, 2, False)), (6144, (1, 4, False)),
         (13000, (2, 4, False)), (1 << 20, (5, 4, True))]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("chunk,tile", TILES)
def test_im2col_tiles_of_every_kind(chunk, tile, layout, rng, monkeypatch):
    """Row bands, one image per tile, several images per tile, the whole batch in one
    image-last tile (merged GEMM, then scatter with the bias)."""
    monkeypatch.setattr(config, "IM2COL_CHUNK_BYTES", chunk)
    x = rng.standard_normal((5, 4, 9, 7))
    w = rng.standard_normal((6, 2, 3, 2))
    b = rng.standard_normal(6)
    kwargs = dict(stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2), groups=2)
    t = im2col.tiling(conv_args_from_shapes("t", x.shape, w.shape, dtype=x.dtype, **kwargs))
    assert (t.images, t.band, t.image_last) == tile  # (NCHW; NHWC tiles alike)
    _check(x, w, b, "im2col", layout=layout, **kwargs)
    _check(x, w, None, "im2col", layout=layout, **kwargs)


def test_workspace_is_reused_and_results_do_not_alias(rng):
    from fastconv.algos._common import workspace

    a = workspace("test.slot", 10, np.float32)
    b = workspace("test.slot", 5, np.float32)
    assert np.shares_memory(a, b) and b.size == 5
    assert workspace("test.slot", 5, np.float64).dtype == np.float64
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    y1 = fastconv.conv2d(x, w, padding=1, algo="im2col")
    y2 = fastconv.conv2d(2 * x, w, padding=1, algo="im2col")
    assert not np.shares_memory(y1, y2)
    np.testing.assert_allclose(y2, 2 * y1, rtol=1e-5, atol=1e-5)


def _random_case(rng):
    kh, kw = rng.integers(1, 6, size=2)
    rh, rw = rng.integers(1, 4, size=2)
    sh, sw = rng.integers(1, 4, size=2)
    pads = tuple(tuple(int(p) for p in rng.integers(0, 2 * k + 2, size=2)) for k in (kh, kw))
    h = int(rng.integers(max(1, rh * (kh - 1) + 1 - sum(pads[0])), 14))
    w = int(rng.integers(max(1, rw * (kw - 1) + 1 - sum(pads[1])), 14))
    g = int(rng.choice([1, 2]))
    x = rng.standard_normal((2, 2 * g, h, w))
    wt = rng.standard_normal((2 * g, 2, kh, kw))
    return x, wt, dict(stride=(int(sh), int(sw)), padding=pads, dilation=(int(rh), int(rw)),
                       groups=g)


@pytest.mark.parametrize("seed", range(40))
def test_fft_shortest_transform_has_no_wraparound(seed):
    """The forward FFT uses the shortest transform that keeps the requested outputs free
    of wrap-around; random strides, dilations and (large, uneven) paddings."""
    from fastconv.algos import fft

    rng = np.random.default_rng(seed)
    x, w, kwargs = _random_case(rng)
    a = conv_args_from_shapes("t", x.shape, w.shape, **kwargs)
    fh, fw = fft.forward_transform_shape(a)
    assert fh <= fft.transform_shape(a)[0] and fw <= fft.transform_shape(a)[1]
    _check(x, w, None, "fft", **kwargs)
