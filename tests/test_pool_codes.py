"""The autograd op's path for 2x2, stride-2 max pooling: window codes instead of int64
indices (``fastconv.pool.ops.max_pool2d_codes``) and the gradient from them, against
the public ops and finite differences, in both layouts."""

import numpy as np
import pytest

import fastconv
from fastconv.autograd import Tensor, gradcheck
from fastconv.nn import functional as F
from fastconv.nn import fused
from fastconv.pool import ops

WINDOW = (2, None, 0, 1, False)     # kernel_size, stride, padding, dilation, ceil_mode
# (n, c, h, w): odd sizes (a row and a column outside every window), more channels than
# one 16-channel block, one image
SHAPES = [(2, 3, 7, 9), (1, 20, 4, 6), (3, 1, 2, 2)]


def _inputs(rng, shape, dtype, layout):
    x = rng.standard_normal(shape).astype(dtype)
    x[0, 0, :2, :2] = [[np.nan, 1.0], [2.0, np.nan]]          # NaN is the maximum
    x[-1, -1, :2, :2] = 0.5                                    # a tie: the first wins
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "NHWC" else x


def _decoded(codes, x_width, layout):
    """The flat indices h*W + w of the codes' taps (as max_pool2d's indices)."""
    c = codes.astype(np.int64)
    i, j = np.indices(codes.shape[1:3] if layout == "NHWC" else codes.shape[2:])
    if layout == "NHWC":
        i, j = i[None, :, :, None], j[None, :, :, None]
    return (2 * i + (c >> 1)) * x_width + 2 * j + (c & 1)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_codes_are_the_indices_and_the_gradient_is_the_scatter(rng, layout, dtype, shape,
                                                               relu):
    x = _inputs(rng, shape, dtype, layout)
    want, idx = fastconv.max_pool2d(x, 2, layout=layout, return_indices=True)
    if relu:
        want = np.where(want > 0, want, np.where(np.isnan(want), want, 0)).astype(dtype)
    y, codes = ops.max_pool2d_codes(x, WINDOW, layout, relu)
    np.testing.assert_array_equal(y, want)
    assert y.dtype == dtype and codes.dtype == np.int32 and codes.shape == y.shape
    np.testing.assert_array_equal(_decoded(codes, shape[3], layout), idx)

    g = rng.standard_normal(y.shape).astype(dtype)
    mask = y if relu else None
    got = ops.max_pool2d_codes_backward(g, codes, x.shape, layout, mask)
    np.testing.assert_array_equal(
        got, fastconv.max_pool2d_backward(g, idx, x.shape, layout=layout, mask=mask))
    assert got.dtype == dtype and np.count_nonzero(got) > 0


@pytest.mark.parametrize("window", [(3, 2, 1, 1, False), (2, 1, 0, 1, False),
                                    (2, 2, 0, 2, False), (2, 2, 1, 1, False),
                                    (2, 2, 0, 1, True)])
def test_other_layers_and_arrays_are_left_to_the_public_op(window):
    x = np.zeros((1, 2, 7, 7))        # ceil_mode with an odd size: a partial window
    assert ops.max_pool2d_codes(x, window, "NCHW", False) is None
    even = np.zeros((1, 2, 6, 6))
    assert ops.max_pool2d_codes(even, WINDOW, "NCHW", False) is not None
    for other in (even.astype(np.int64), even.astype(np.float16), even[0], even.tolist()):
        assert ops.max_pool2d_codes(other, WINDOW, "NCHW", False) is None


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_the_autograd_op_keeps_codes_and_its_gradient_is_right(rng, layout):
    """The training path keeps int32 codes (no int64 indices), and its gradient, plain
    and with the fused ReLU, matches finite differences in float64."""
    x = rng.standard_normal((2, 2, 5, 6))     # no NaN or ties: finite differences
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    t = Tensor(x, requires_grad=True)
    y = F.max_pool2d(t, 2, layout=layout)
    assert y._ctx.codes is not None and y._ctx.saved_tensors == ()
    assert gradcheck(lambda a: F.max_pool2d(a, 2, layout=layout), [t])
    assert gradcheck(lambda a: fused.relu_max_pool2d(a, 2, layout=layout), [t])
    overlapping = F.max_pool2d(t, 3, stride=2, layout=layout)
    assert overlapping._ctx.codes is None      # other windows keep int64 indices


def test_codes_of_another_shape_are_refused():
    x = np.zeros((1, 1, 4, 4))
    y, codes = ops.max_pool2d_codes(x, WINDOW, "NCHW", False)
    with pytest.raises(ValueError, match=r"max_pool2d_backward: grad_y \(1, 1, 2, 2\) and "
                                         r"codes \(1, 1, 1, 2\) int32 must both"):
        ops.max_pool2d_codes_backward(y, codes[:, :, :1], x.shape, "NCHW")
    with pytest.raises(ValueError, match="max_pool2d_backward: mask must have grad_y's"):
        ops.max_pool2d_codes_backward(y, codes, x.shape, "NCHW", np.zeros((1, 1, 2, 3)))
