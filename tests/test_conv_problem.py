"""The autograd conv2d's per-layer record (``fastconv.conv.problem``): validated once per
shapes and arguments, the same errors as ``fastconv.conv2d``, and the same results as
the public functions whichever path a call takes."""

import numpy as np
import pytest

import fastconv
from fastconv import conv as conv_mod
from fastconv.nn import functional as F

WINDOW = (1, 1, 1, 1)       # stride, padding, dilation, groups


def _arrays(rng, dtype=np.float32, layout="NCHW"):
    x = rng.standard_normal((2, 3, 6, 5)).astype(dtype)
    w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    if layout == "NHWC":
        x, w = x.transpose(0, 2, 3, 1).copy(), w.transpose(2, 3, 1, 0).copy()
    return x, w, rng.standard_normal(4).astype(dtype)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_record_is_conv2ds_validation_made_once(rng, layout):
    x, w, b = _arrays(rng, layout=layout)
    a = conv_mod.problem(x, w, b, WINDOW, layout)
    assert a == conv_mod.conv_args("conv2d", x, w, b, *WINDOW, layout)[3]
    assert conv_mod.problem(x + 1, w, b, WINDOW, layout) is a     # looked up, not redone
    assert conv_mod.problem(x[:1].copy(), w, b, WINDOW, layout).n == 1


def test_no_record_for_arrays_that_need_conversion(rng):
    x, w, b = _arrays(rng)
    for args in [(x.astype(np.float16), w.astype(np.float16), None),   # computed in float32
                 (x[0], w, b),                                        # unbatched
                 (x.tolist(), w, b),                                  # not an ndarray
                 (x, w.astype(np.float64), None),                     # two dtypes
                 (x.astype(">f4"), w.astype(">f4"), None),            # non-native order
                 (x, w, b.astype(np.float64))]:
        assert conv_mod.problem(*args, WINDOW, "NCHW") is None


def test_record_raises_conv2ds_errors_every_time(rng):
    x, w, _ = _arrays(rng)
    bad_bias = np.zeros(3, np.float32)
    for _ in range(2):      # errors are never remembered
        with pytest.raises(ValueError, match=r"conv2d: bias must have shape \(C_out,\) = "
                                             r"\(4,\), got \(3,\)"):
            conv_mod.problem(x, w, bad_bias, WINDOW, "NCHW")
        with pytest.raises(ValueError, match="conv2d: algo='fancy'"):
            conv_mod.problem(x, w, None, WINDOW, "NCHW", algo="fancy")
        with pytest.raises(ValueError, match="conv2d: bias must have shape"):
            F.conv2d(x, w, bad_bias, padding=1)


@pytest.mark.parametrize("dtype, record", [(np.float64, True), (np.float16, False)])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_autograd_conv_matches_the_public_functions(rng, monkeypatch, dtype, record, layout):
    """Plain arrays run on the record (conv2d_backward is not called); float16 goes
    through the public functions; both give conv2d's and conv2d_backward's results."""
    x, w, b = _arrays(rng, dtype, layout)
    public = []
    real = conv_mod.conv2d_backward

    def spy(*args, **kwargs):
        public.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(conv_mod, "conv2d_backward", spy)
    xt, wt, bt = (fastconv.Tensor(a, requires_grad=True) for a in (x, w, b))
    y = F.conv2d(xt, wt, bt, stride=(2, 1), padding=1, layout=layout)
    gy = rng.standard_normal(y.shape).astype(dtype)
    y.backward(gy)
    assert bool(public) != record
    want_y = fastconv.conv2d(x, w, b, stride=(2, 1), padding=1, layout=layout)
    want = real(gy, x, w, stride=(2, 1), padding=1, layout=layout)
    np.testing.assert_array_equal(y.numpy(), want_y)
    for got, exp in zip((xt.grad, wt.grad, bt.grad), want, strict=True):
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, exp)
