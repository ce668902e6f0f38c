"""im2col's direct image-last kernel for small stride-1 layers on many small images
(``algos.im2col.image_last_direct``) against the reference, torch and finite
differences, and where it applies."""

import numpy as np
import pytest

import fastconv
from fastconv import Tensor, gradcheck
from fastconv._args import conv_args_from_shapes
from fastconv.algos.im2col import drivers
from fastconv.algos.im2col.image_last_direct import direct_forward_applies
from fastconv.nn import functional as F

from . import reference as ref
from .conftest import count_calls, from_nhwc, to_nhwc

# (n, c, h, w, d, kernel, padding, dilation): output channels not a multiple of 4,
# single input channel, rectangular kernels and images, asymmetric padding, dilation,
# batches that leave a partial tile
CASES = [
    (8, 6, 8, 8, 16, 5, 0, 1),                      # LeNet's second layer, smaller
    (7, 1, 9, 10, 6, 5, 2, 1),                      # LeNet's first layer, padded
    (5, 3, 7, 6, 5, (3, 2), ((2, 0), (1, 1)), 1),
    (6, 4, 9, 9, 7, 3, "same", 2),
    (4, 2, 5, 7, 3, (1, 3), (0, 2), (1, 2)),
    (5, 8, 6, 7, 9, 3, 1, 1),                       # 72 taps, 9 output channels
    # tiles of 17 images: runs of 3 vectors, then single vectors and single values
    (33, 2, 9, 12, 6, 3, 1, 1),
    (34, 1, 8, 8, 4, 3, 1, 1),
]


def _args(x, w, padding, dilation):
    return conv_args_from_shapes("t", x.shape, w.shape, 1, padding, dilation, 1,
                                 dtype=x.dtype)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_direct_kernel_matches_the_reference(case, dtype, layout, rng, monkeypatch):
    n, c, h, wd, d, k, padding, dilation = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal((n, c, h, wd)).astype(dtype)
    w = rng.standard_normal((d, c, kh, kw)).astype(dtype)
    b = rng.standard_normal(d).astype(dtype)
    a = _args(x, w, padding, dilation)
    assert direct_forward_applies(a)
    xl, wl = to_nhwc(x, w) if layout == "NHWC" else (x, w)
    assert direct_forward_applies(conv_args_from_shapes(
        "t", xl.shape, wl.shape, 1, padding, dilation, layout=layout, dtype=dtype))
    # layers the direct lanes kernel serves (case 0) run it (test_direct_lanes.py)
    monkeypatch.setattr(drivers, "lanes_chosen", lambda args: False)
    calls = count_calls(monkeypatch, drivers, "forward_direct")
    for bias in (b, None):
        want = ref.conv2d(x, w, bias, a.stride, a.padding, a.dilation)
        got = fastconv.conv2d(xl, wl, bias, padding=padding, dilation=dilation,
                              layout=layout, algo="im2col")
        got = from_nhwc(got) if layout == "NHWC" else got
        assert got.dtype == dtype and got.shape == want.shape
        assert ref.rel_error(got, want) <= ref.tolerance(dtype, "im2col")
    assert len(calls) == 2


def test_direct_kernel_reads_strided_and_read_only_input(rng):
    x = rng.standard_normal((6, 10, 3, 8)).astype(np.float32).transpose(0, 2, 1, 3)
    x.flags.writeable = False
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    assert direct_forward_applies(_args(x, w, 1, 1))
    got = fastconv.conv2d(x, w, padding=1, algo="im2col")
    want = ref.conv2d(x, w, None, (1, 1), ((1, 1), (1, 1)))
    assert ref.rel_error(got, want) <= ref.tolerance(np.float32, "im2col")


def test_direct_kernel_keeps_the_formulas_nan_pattern(rng):
    x = rng.standard_normal((4, 2, 7, 7))
    w = rng.standard_normal((4, 2, 3, 3))
    x[1, 0, 3, 4] = np.nan
    got = fastconv.conv2d(x, w, padding=1, algo="im2col")
    want = ref.conv2d(x, w, None, (1, 1), ((1, 1), (1, 1)))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got).sum() == 4 * 9                       # 4 channels x 3x3 pixels
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=1e-12)


@pytest.mark.parametrize("x_shape,w_shape,kwargs", [
    ((8, 3, 8, 8), (4, 3, 3, 3), dict(stride=2)),
    ((8, 4, 8, 8), (4, 2, 3, 3), dict(groups=2)),
    ((8, 3, 8, 8), (4, 3, 3, 3), dict(padding=3)),           # beyond the kernel's reach
    ((8, 3, 8, 8), (4, 3, 1, 1), {}),
    ((3, 3, 8, 8), (4, 3, 3, 3), {}),                         # too few images
    ((8, 3, 8, 40), (4, 3, 3, 3), {}),                        # rows too wide
    ((8, 3, 8, 8), (128, 3, 3, 3), {}),                       # too many output channels
    ((8, 64, 8, 8), (8, 64, 3, 3), {}),                       # too many taps
    ((8, 3, 8, 8), (32, 3, 3, 3), {}),                        # few taps, many channels
    ((8, 8, 8, 1), (3, 3, 1, 16), dict(layout="NHWC")),       # NHWC: at most 8 of them
    ((8, 8, 8, 3), (3, 3, 3, 4), dict(layout="NHWC", stride=2)),
])
def test_direct_kernel_does_not_apply(x_shape, w_shape, kwargs, rng):
    assert not direct_forward_applies(conv_args_from_shapes("t", x_shape, w_shape, **kwargs))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thin_nchw_layers_of_16_channels_run_the_direct_kernel(dtype, rng, monkeypatch):
    """A gray image's 3x3 stem of 16 channels (9 taps; a small ResNet's first layer)
    runs the direct kernel in NCHW, and matches the reference, its tiles' runs ending
    in single vectors and values (10 images: tiles of 5, rows of 9 pixels)."""
    x = rng.standard_normal((10, 1, 9, 9)).astype(dtype)
    w = rng.standard_normal((16, 1, 3, 3)).astype(dtype)
    b = rng.standard_normal(16).astype(dtype)
    assert direct_forward_applies(_args(x, w, 1, 1))
    calls = count_calls(monkeypatch, drivers, "forward_direct")
    got = fastconv.conv2d(x, w, b, padding=1)
    want = ref.conv2d(x, w, b, (1, 1), ((1, 1), (1, 1)))
    assert len(calls) == 1
    assert ref.rel_error(got, want) <= ref.tolerance(dtype, "im2col")


def test_auto_plans_the_direct_kernel_for_lenets_first_layer():
    # (the second layer runs the direct lanes kernel: test_direct_lanes.py)
    why = fastconv.plan((64, 1, 28, 28), (6, 1, 5, 5)).why
    assert why.startswith("im2col:") and "direct image-last kernel" in why, why


def test_direct_kernel_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((6, 6, 12, 12)).astype(np.float32)
    w = rng.standard_normal((16, 6, 5, 5)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    want = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                      torch.from_numpy(b), padding=2).numpy()
    got = fastconv.conv2d(x, w, b, padding=2, algo="im2col")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_gradients_through_the_direct_kernel_match_finite_differences(rng):
    x = Tensor(rng.standard_normal((4, 2, 5, 5)), requires_grad=True)
    w = Tensor(rng.standard_normal((5, 2, 3, 3)), requires_grad=True)
    b = Tensor(rng.standard_normal(5), requires_grad=True)
    assert direct_forward_applies(_args(x.data, w.data, 1, 1))
    assert gradcheck(lambda x, w, b: (F.conv2d(x, w, b, padding=1, algo="im2col") ** 2).sum(),
                     [x, w, b])
