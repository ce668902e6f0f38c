"""Max and average pooling (and gradients) on CUDA against the CPU path and the reference."""

import numpy as np
import pytest
from numba import cuda

import fastconv
from fastconv import cuda as fcuda

from .. import reference as ref

LAYOUTS = [("NCHW", np.float64), ("NHWC", np.float32)]

# (kernel_size, stride, padding, dilation, ceil_mode)
MAX_CASES = [
    (3, 2, 1, 1, False),
    ((2, 3), (1, 2), (1, 1), 1, True),
    (3, 1, 1, 2, True),        # dilated, overlapping windows
    (2, 1, 0, 1, False),       # overlapping: several windows pick the same maximum
    (3, None, 1, (2, 1), True),
]
# (kernel_size, stride, padding, ceil_mode, count_include_pad)
AVG_CASES = [
    (3, 2, 1, False, True),
    (3, 2, 1, True, False),
    ((2, 3), (1, 2), (1, 1), True, True),
    (2, None, 0, False, True),
]


def _nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _x(dtype, shape=(2, 3, 7, 6), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("layout,dtype", LAYOUTS)
@pytest.mark.parametrize("case", MAX_CASES, ids=str)
def test_max_pool_matches_cpu(case, layout, dtype):
    k, s, p, d, ceil = case
    x = _x(dtype)
    xl = _nhwc(x) if layout == "NHWC" else x
    kw = dict(stride=s, padding=p, dilation=d, ceil_mode=ceil, layout=layout,
              return_indices=True)
    y, idx = fcuda.max_pool2d(xl, k, **kw)
    y_cpu, idx_cpu = fastconv.max_pool2d(xl, k, **kw)
    assert y.dtype == dtype and idx.dtype == np.int64
    np.testing.assert_array_equal(y, y_cpu)
    np.testing.assert_array_equal(idx, idx_cpu)
    gy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    gx = fcuda.max_pool2d_backward(gy, idx, xl.shape, layout=layout)
    gx_cpu = fastconv.max_pool2d_backward(gy, idx_cpu, xl.shape, layout=layout)
    assert gx.dtype == dtype
    np.testing.assert_allclose(gx, gx_cpu, rtol=1e-6 if dtype == np.float32 else 1e-13,
                               atol=1e-6 if dtype == np.float32 else 1e-13)


def test_max_pool_against_reference_nan_and_ties():
    x = np.zeros((1, 2, 5, 5))
    x[0, 0, 1, 1] = np.nan
    x[0, 0, 3, 2] = np.nan
    x[0, 1] = 1.0                              # all ties: the first element read wins
    want_y, want_idx = ref.max_pool2d(x, (3, 3), (1, 1), (1, 1))
    y, idx = fcuda.max_pool2d(x, 3, 1, 1, return_indices=True)
    assert np.isnan(want_y).any()
    np.testing.assert_array_equal(y, want_y)   # NaN == NaN for assert_array_equal
    np.testing.assert_array_equal(idx, want_idx)
    gy = np.arange(y.size, dtype=np.float64).reshape(y.shape)
    np.testing.assert_array_equal(fcuda.max_pool2d_backward(gy, idx, x.shape),
                                  ref.max_pool2d_backward(gy, idx, x.shape))


def test_max_pool_windows_without_input():
    """Dilation can put a whole window in the padding: -inf, index -1, no gradient."""
    x = _x(np.float64, (1, 1, 2, 5))
    want_y, want_idx = ref.max_pool2d(x, (2, 3), (1, 1), (1, 1), (3, 1))
    y, idx = fcuda.max_pool2d(x, (2, 3), 1, 1, (3, 1), return_indices=True)
    assert (want_idx == -1).all()
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(idx, want_idx)
    gx = fcuda.max_pool2d_backward(np.ones(y.shape), idx, x.shape)
    np.testing.assert_array_equal(gx, np.zeros(x.shape))


@pytest.mark.parametrize("layout,dtype", LAYOUTS)
@pytest.mark.parametrize("case", AVG_CASES, ids=str)
def test_avg_pool_matches_cpu_and_reference(case, layout, dtype):
    k, s, p, ceil, include = case
    x = _x(dtype, seed=2)
    xl = _nhwc(x) if layout == "NHWC" else x
    kw = dict(stride=s, padding=p, ceil_mode=ceil, count_include_pad=include, layout=layout)
    y = fcuda.avg_pool2d(xl, k, **kw)
    y_cpu = fastconv.avg_pool2d(xl, k, **kw)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    assert y.dtype == dtype and y.shape == y_cpu.shape
    np.testing.assert_allclose(y, y_cpu, rtol=tol, atol=tol)
    gy = np.random.default_rng(3).standard_normal(y.shape).astype(dtype)
    gx = fcuda.avg_pool2d_backward(gy, xl.shape, k, **kw)
    np.testing.assert_allclose(gx, fastconv.avg_pool2d_backward(gy, xl.shape, k, **kw),
                               rtol=tol, atol=tol)
    if layout == "NCHW":
        kp = (k, k) if isinstance(k, int) else k
        sp = kp if s is None else ((s, s) if isinstance(s, int) else s)
        pp = (p, p) if isinstance(p, int) else p
        want = ref.avg_pool2d(x, kp, sp, pp, ceil, include)
        assert ref.rel_error(y, want) <= ref.tolerance(dtype, "")
        assert ref.rel_error(gx, ref.avg_pool2d_backward(gy, x.shape, kp, sp, pp, ceil,
                                                         include)) <= ref.tolerance(dtype, "")


def test_lecture_worked_example():
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    np.testing.assert_array_equal(fcuda.max_pool2d(x, 2, stride=1)[0, 0], [[4, 5], [7, 8]])


def test_device_arrays_and_unbatched():
    x = _x(np.float32, (3, 6, 5))
    dx = cuda.to_device(x)
    y, idx = fcuda.max_pool2d(dx, 2, return_indices=True)
    assert not isinstance(y, np.ndarray) and not isinstance(idx, np.ndarray)
    y_cpu, idx_cpu = fastconv.max_pool2d(x, 2, return_indices=True)
    np.testing.assert_array_equal(y.copy_to_host(), y_cpu)
    gx = fcuda.max_pool2d_backward(y, idx, x.shape)
    np.testing.assert_array_equal(gx.copy_to_host(),
                                  fastconv.max_pool2d_backward(y_cpu, idx_cpu, x.shape))
    a = fcuda.avg_pool2d(dx, 3, 2, 1)
    np.testing.assert_allclose(a.copy_to_host(), fastconv.avg_pool2d(x, 3, 2, 1), rtol=1e-5,
                               atol=1e-6)
    ga = fcuda.avg_pool2d_backward(a, x.shape, 3, 2, 1)
    np.testing.assert_allclose(ga.copy_to_host(),
                               fastconv.avg_pool2d_backward(a.copy_to_host(), x.shape, 3, 2, 1),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("call,exc,match", [
    (lambda x: fcuda.max_pool2d(x, 4, padding=3), ValueError,
     r"max_pool2d: padding=3 must be at most half the kernel size 4"),
    (lambda x: fcuda.avg_pool2d(cuda.to_device(x), 2, layout="HWC"), ValueError,
     r"avg_pool2d: layout='HWC' is not supported"),
    (lambda x: fcuda.max_pool2d(x.astype(np.float16), 2), TypeError,
     r"max_pool2d: input has dtype float16"),
    (lambda x: fcuda.max_pool2d_backward(np.ones((1, 2, 2, 2)), np.full((1, 2, 2, 2), 99),
                                         x.shape), ValueError,
     r"max_pool2d_backward: indices must lie in \[0, H\*W\) = \[0, 25\)"),
    (lambda x: fcuda.avg_pool2d_backward(np.ones((1, 2, 3, 3)), x.shape, 2), ValueError,
     r"avg_pool2d_backward: grad_y must have shape \(1, 2, 2, 2\)"),
])
def test_errors_match_the_cpu(call, exc, match):
    x = np.ones((1, 2, 5, 5))
    with pytest.raises(exc, match=match):
        call(x)


def test_public_functions_take_device():
    x = _x(np.float32, seed=8)
    y, idx = fastconv.max_pool2d(x, 3, 2, 1, return_indices=True, device="cuda")
    y_c, idx_c = fastconv.max_pool2d(x, 3, 2, 1, return_indices=True)
    np.testing.assert_array_equal(idx, idx_c)
    gy = np.ones(y.shape, np.float32)
    np.testing.assert_array_equal(fastconv.max_pool2d_backward(gy, idx, x.shape, device="cuda"),
                                  fastconv.max_pool2d_backward(gy, idx_c, x.shape))
    a = fastconv.avg_pool2d(x, 2, device="cuda")
    np.testing.assert_allclose(a, fastconv.avg_pool2d(x, 2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fastconv.avg_pool2d_backward(a, x.shape, 2, device="cuda"),
                               fastconv.avg_pool2d_backward(a, x.shape, 2), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"avg_pool2d: device='tpu' is not supported"):
        fastconv.avg_pool2d(x, 2, device="tpu")
    with pytest.raises(ValueError, match=r"max_pool2d_backward: mask is not supported on "
                                         r"device='cuda'"):
        fastconv.max_pool2d_backward(gy, idx, x.shape, device="cuda", mask=gy)
