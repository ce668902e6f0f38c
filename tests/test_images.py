"""Images as people hold them: 2-D gray images, (H, W, C) photos with layout="NHWC",
the channels-last hints in errors and the pooling warning."""

import warnings

import numpy as np
import pytest

import fastconv
from fastconv._args import layout_hint, looks_channels_last

RNG = np.random.default_rng(0)


def _gray(h=9, w=11):
    return RNG.standard_normal((h, w))


def test_conv2d_of_a_gray_image_with_a_2d_kernel_is_2d():
    x, k = _gray(), RNG.standard_normal((3, 2))
    y = fastconv.conv2d(x, k, padding=1)
    want = fastconv.conv2d(x[None, None], k[None, None], padding=1)[0, 0]
    assert y.shape == want.shape == (9, 12)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    # NHWC: the same result (the 2-D weight is one HWIO filter)
    np.testing.assert_allclose(fastconv.conv2d(x, k, padding=1, layout="NHWC"), want,
                               rtol=1e-12, atol=1e-12)
    with_bias = fastconv.conv2d(x, k, np.array([2.0]), padding=1)
    np.testing.assert_allclose(with_bias, want + 2.0, rtol=1e-12, atol=1e-12)


def test_conv2d_of_a_gray_image_with_a_4d_weight_keeps_the_channels():
    x = _gray()
    w = RNG.standard_normal((4, 1, 3, 3))
    y = fastconv.conv2d(x, w)
    assert y.shape == (4, 7, 9)
    np.testing.assert_allclose(y, fastconv.conv2d(x[None], w), rtol=1e-12)
    hwio = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
    np.testing.assert_allclose(fastconv.conv2d(x, hwio, layout="NHWC"),
                               y.transpose(1, 2, 0), rtol=1e-12, atol=1e-12)


def test_conv2d_gray_matches_torch():
    torch = pytest.importorskip("torch")
    x, k = _gray(), RNG.standard_normal((3, 3))
    want = torch.nn.functional.conv2d(torch.from_numpy(x)[None, None],
                                      torch.from_numpy(k)[None, None], stride=2)
    np.testing.assert_allclose(fastconv.conv2d(x, k, stride=2), want[0, 0].numpy(),
                               rtol=1e-12, atol=1e-12)


def test_conv2d_2d_weight_needs_a_2d_input():
    with pytest.raises(ValueError, match=r"conv2d: weight must be 4-D \(OIHW for layout "
                                         r"NCHW\), got 2-D shape \(3, 3\) \(a 2-D \(kh, kw\) "
                                         r"weight needs a 2-D \(H, W\) input\)"):
        fastconv.conv2d(np.zeros((1, 8, 8)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"weight has 3 input channels per group but input "
                                         r"has C_in=1"):
        fastconv.conv2d(np.zeros((8, 8)), np.zeros((2, 3, 3, 3)))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_pooling_a_gray_image_is_2d(layout):
    x = _gray(8, 10)
    y, idx = fastconv.max_pool2d(x, 2, return_indices=True, layout=layout)
    want, want_idx = fastconv.max_pool2d(x[None, None], 2, return_indices=True)
    assert y.shape == idx.shape == (4, 5)
    np.testing.assert_array_equal(y, want[0, 0])
    np.testing.assert_array_equal(idx, want_idx[0, 0])
    avg = fastconv.avg_pool2d(x, 3, stride=2, padding=1, layout=layout)
    np.testing.assert_allclose(avg, fastconv.avg_pool2d(x[None], 3, 2, 1)[0], rtol=1e-12)


def test_pooling_an_unbatched_photo_in_nhwc():
    photo = RNG.random((12, 16, 3)).astype(np.float32)
    chw = np.ascontiguousarray(photo.transpose(2, 0, 1))
    y = fastconv.max_pool2d(photo, 2, layout="NHWC")
    assert y.shape == (6, 8, 3)
    np.testing.assert_array_equal(y, fastconv.max_pool2d(chw, 2).transpose(1, 2, 0))
    a = fastconv.avg_pool2d(photo, 2, layout="NHWC")
    np.testing.assert_allclose(a, fastconv.avg_pool2d(chw, 2).transpose(1, 2, 0), rtol=1e-6)
    np.testing.assert_allclose(a[0, 0], photo[:2, :2].mean(axis=(0, 1)), rtol=1e-6)


def test_filtering_an_rgb_photo_per_channel():
    photo = RNG.random((10, 12, 3))
    k = RNG.standard_normal((3, 3, 3))      # one 3x3 filter per channel
    hwio = k.transpose(1, 2, 0)[:, :, None, :]  # (kh, kw, 1, 3)
    y = fastconv.conv2d(photo, hwio, padding=1, groups=3, layout="NHWC")
    assert y.shape == (10, 12, 3)
    for c in range(3):   # each channel filtered by its own kernel, as a gray image
        np.testing.assert_allclose(y[..., c], fastconv.conv2d(photo[..., c], k[c], padding=1),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape,looks", [
    ((480, 640, 3), True), ((28, 28, 1), True), ((32, 32, 4), True), ((8, 32, 32, 3), True),
    ((3, 480, 640), False), ((16, 8, 4), False), ((480, 640, 5), False), ((4, 4, 4), False)])
def test_looks_channels_last(shape, looks):
    assert looks_channels_last(shape, "NCHW") is looks
    assert looks_channels_last(shape, "NHWC") is False
    assert (layout_hint(shape, "NCHW") != "") is looks


def test_conv2d_error_suggests_nhwc_for_a_photo():
    photo = np.zeros((480, 640, 3), np.float32)
    msg = (r"conv2d: weight has 3 input channels per group but input has C_in=480 with "
           r"groups=1 \(expected 480\); a \(480, 640, 3\) array looks channels-last: pass "
           r"layout='NHWC'")
    with pytest.raises(ValueError, match=msg):
        fastconv.conv2d(photo, np.zeros((8, 3, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"groups=3 must divide C_in=64; a \(64, 64, 3\) "
                                         r"array looks channels-last"):
        fastconv.conv2d(np.zeros((64, 64, 3)), np.zeros((3, 1, 1, 1)), groups=3)
    with pytest.raises(ValueError, match=r"larger than the padded input width 3 .*; a "
                                         r"\(48, 64, 3\) array looks channels-last"):
        fastconv.conv2d(np.zeros((48, 64, 3)), np.zeros((1, 48, 5, 5)))


def test_pooling_warns_when_an_nchw_input_looks_channels_last():
    photo = np.zeros((480, 640, 3), np.float32)
    for pool in (fastconv.max_pool2d, fastconv.avg_pool2d):
        with pytest.warns(UserWarning, match=r"input of shape \(480, 640, 3\) is read as "
                                             r"layout 'NCHW' \(480 channels of 640x3 images\)"
                                             r", but it looks channels-last: pass "
                                             r"layout='NHWC'"):
            y = pool(photo, 2)
        assert y.shape == (480, 320, 1)      # still computed as given
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fastconv.max_pool2d(photo, 2, layout="NHWC").shape == (240, 320, 3)
        fastconv.max_pool2d(np.zeros((3, 480, 640), np.float32), 2)
    with pytest.raises(ValueError, match=r"output size .* too small.*; a \(480, 640, 3\) "
                                         r"array looks channels-last"):
        fastconv.max_pool2d(photo, 4)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_gradients_of_a_gray_image(layout):
    from fastconv import Tensor, gradcheck
    from fastconv.nn import functional as F
    x = Tensor(_gray(7, 8), requires_grad=True)
    k = Tensor(RNG.standard_normal((3, 2)), requires_grad=True)
    b = Tensor(RNG.standard_normal(1), requires_grad=True)
    assert gradcheck(lambda x, k, b: F.conv2d(x, k, b, padding=1, layout=layout), [x, k, b])
    w4 = RNG.standard_normal((2, 1, 3, 3))
    w4 = Tensor(w4 if layout == "NCHW" else np.ascontiguousarray(w4.transpose(2, 3, 1, 0)),
                requires_grad=True)
    assert gradcheck(lambda x, w: F.conv2d(x, w, stride=2, layout=layout), [x, w4])
    assert gradcheck(lambda x: F.max_pool2d(x, 2, stride=1, layout=layout), [x])
    assert gradcheck(lambda x: F.avg_pool2d(x, 3, 2, 1, layout=layout), [x])


def test_conv2d_backward_of_a_gray_image_matches_the_batched_one():
    x, k = _gray(), RNG.standard_normal((3, 3))
    gy = RNG.standard_normal((9, 11))
    gx, gk, gb = fastconv.conv2d_backward(gy, x, k, padding=1)
    want = fastconv.conv2d_backward(gy[None, None], x[None, None], k[None, None], padding=1)
    assert gx.shape == x.shape and gk.shape == k.shape and gb.shape == (1,)
    for got, ref in zip((gx, gk, gb), want, strict=True):
        np.testing.assert_allclose(got, ref.reshape(got.shape), rtol=1e-12, atol=1e-12)
    idx = fastconv.max_pool2d(x, 2, return_indices=True)[1]
    gx = fastconv.max_pool2d_backward(np.ones((4, 5)), idx, x.shape)
    assert gx.shape == x.shape and gx.sum() == 20
    ga = fastconv.avg_pool2d_backward(np.ones((4, 5)), x.shape, 2)
    assert ga.shape == x.shape and np.isclose(ga.sum(), 20)
