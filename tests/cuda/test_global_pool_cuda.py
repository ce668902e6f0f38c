"""Global average pooling (and its gradient) on CUDA against the CPU path: results,
shapes, dtypes, layouts, device residency and errors."""

import numpy as np
import pytest
from numba import cuda

import fastconv
from fastconv import cuda as fcuda

from .. import reference as ref


@pytest.mark.parametrize("layout,dtype,shape", [
    ("NCHW", np.float64, (2, 3, 5, 4)),
    ("NHWC", np.float32, (2, 5, 4, 3)),
    ("NCHW", np.float32, (3, 7, 7)),        # unbatched: 3-D in, 3-D out
    ("NCHW", np.float64, (1, 2, 1, 1)),
])
def test_global_avg_pool_matches_cpu(layout, dtype, shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    y = fcuda.global_avg_pool2d(x, layout=layout)
    want = fastconv.global_avg_pool2d(x, layout=layout)
    assert y.dtype == dtype and y.shape == want.shape
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(y, want, rtol=tol, atol=tol)
    gy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    gx = fastconv.global_avg_pool2d_backward(gy, shape, layout=layout, device="cuda")
    gx_cpu = fastconv.global_avg_pool2d_backward(gy, shape, layout=layout)
    assert gx.dtype == dtype and gx.shape == shape
    np.testing.assert_allclose(gx, gx_cpu, rtol=tol, atol=tol)


def test_global_avg_pool_against_reference_and_device_arrays():
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 5))
    want = ref.avg_pool2d(x, (4, 5), (4, 5), (0, 0), False, True)
    y = fastconv.global_avg_pool2d(cuda.to_device(x), device="cuda")
    assert not isinstance(y, np.ndarray)  # a device array in: the result stays there
    np.testing.assert_allclose(y.copy_to_host(), want, rtol=1e-13, atol=1e-13)
    gx = fcuda.global_avg_pool2d_backward(cuda.to_device(np.ones((2, 3, 1, 1))), x.shape)
    np.testing.assert_allclose(gx.copy_to_host(), np.full(x.shape, 1 / 20), rtol=1e-15)


def test_empty_batch():
    assert fcuda.global_avg_pool2d(np.zeros((0, 3, 2, 2))).shape == (0, 3, 1, 1)
    assert fcuda.global_avg_pool2d_backward(np.zeros((0, 3, 1, 1)), (0, 3, 2, 2)).shape == \
        (0, 3, 2, 2)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: fcuda.global_avg_pool2d(np.zeros((1, 2, 0, 3))), ValueError,
     r"global_avg_pool2d: input has no pixels \(H=0, W=3\); the mean is undefined"),
    (lambda: fcuda.global_avg_pool2d(np.zeros((1, 2, 3, 3), np.int32)), TypeError,
     r"global_avg_pool2d: input has dtype int32"),
    (lambda: fcuda.global_avg_pool2d(np.zeros((1, 2, 3, 3)), layout="CHWN"), ValueError,
     r"global_avg_pool2d: layout='CHWN' is not supported"),
    (lambda: fcuda.global_avg_pool2d_backward(np.zeros((1, 2, 2, 1)), (1, 2, 3, 3)),
     ValueError, r"global_avg_pool2d_backward: grad_y must have shape \(1, 2, 1, 1\)"),
    (lambda: fastconv.global_avg_pool2d(np.zeros((1, 1, 2, 2)), device="gpu"), ValueError,
     r"global_avg_pool2d: device='gpu' is not supported"),
])
def test_errors_match_the_cpu(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
