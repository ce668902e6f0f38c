"""conv2d / conv2d_backward on CUDA against the reference, the CPU path and finite
differences."""

import numpy as np
import pytest
from numba import cuda

import fastconv
from fastconv import config
from fastconv import cuda as fcuda
from fastconv._args import conv_args_from_shapes
from fastconv.layout import NHWC

from .. import reference as ref
from ..conftest import from_nhwc, to_nhwc

ALGOS = ("naive", "im2col")

# (n, c_in, h, w, c_out, kh, kw, stride, padding, dilation, groups): tiny, and together
# they cover stride, uneven padding, dilation, groups, depthwise, 'same', 1x1.
CASES = [
    (2, 3, 5, 6, 4, 3, 2, 1, 0, 1, 1),
    (1, 4, 7, 6, 6, 3, 3, (2, 1), ((1, 0), (2, 1)), (1, 2), 2),
    (2, 3, 5, 5, 3, 3, 3, 1, "same", 1, 3),        # depthwise
    (1, 2, 6, 5, 3, 1, 1, 2, 0, 1, 1),             # pointwise, strided
    (1, 2, 4, 4, 2, 3, 3, 1, 3, 2, 1),             # padding wider than the kernel
]


def _case_id(case):
    return "n{}c{}h{}w{}-d{}k{}x{}-s{}-p{}-r{}-g{}".format(*case).replace(" ", "")


def _arrays(case, dtype, seed=0):
    n, c, h, w, d, kh, kw, stride, padding, dilation, groups = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((d, c // groups, kh, kw)).astype(dtype)
    b = rng.standard_normal(d).astype(dtype)
    return x, wt, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def _ref_forward(x, wt, b, kwargs):
    a = conv_args_from_shapes("ref", x.shape, wt.shape, **kwargs)
    return ref.conv2d(x, wt, b, a.stride, a.padding, a.dilation, a.groups)


def _fd_grads(gy, x, wt, kwargs, h=1e-3):
    """Central finite differences of L = sum(gy * conv(x, w)) in float64 (on the reference)."""
    a = conv_args_from_shapes("ref", x.shape, wt.shape, **kwargs)

    def loss(xx, ww):
        return float(np.sum(gy * ref.conv2d(xx, ww, None, a.stride, a.padding, a.dilation,
                                            a.groups)))

    grads = []
    for arr, is_x in ((x, True), (wt, False)):
        g = np.zeros(arr.shape)
        for idx in np.ndindex(arr.shape):
            e = np.zeros(arr.shape)
            e[idx] = h
            plus = loss(x + e, wt) if is_x else loss(x, wt + e)
            minus = loss(x - e, wt) if is_x else loss(x, wt - e)
            g[idx] = (plus - minus) / (2 * h)
        grads.append(g)
    return grads


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_forward_matches_reference(case, algo, layout, dtype):
    x, wt, b, kwargs = _arrays(case, dtype)
    want = _ref_forward(x, wt, b, kwargs)
    if layout == "NHWC":
        xl, wl = to_nhwc(x, wt)
        got = from_nhwc(fcuda.conv2d(xl, wl, b, layout="NHWC", algo=algo, **kwargs))
    else:
        got = fcuda.conv2d(x, wt, b, algo=algo, **kwargs)
    assert isinstance(got, np.ndarray) and got.dtype == dtype
    assert got.shape == want.shape
    assert ref.rel_error(got, want) <= ref.tolerance(dtype, algo)


@pytest.mark.parametrize("layout,dtype", [("NCHW", np.float64), ("NHWC", np.float32)])
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", CASES[:3], ids=_case_id)
def test_backward_matches_finite_differences(case, algo, layout, dtype):
    x, wt, _, kwargs = _arrays(case, dtype, seed=1)
    gy = np.random.default_rng(2).standard_normal(_ref_forward(x, wt, None, kwargs).shape)
    want_gx, want_gw = _fd_grads(gy, x.astype(np.float64), wt.astype(np.float64), kwargs)
    gy = gy.astype(dtype)
    if layout == "NHWC":
        xl, wl = to_nhwc(x, wt)
        gx, gw, gb = fcuda.conv2d_backward(np.ascontiguousarray(NHWC.from_canonical_view(gy)),
                                           xl, wl, layout="NHWC", algo=algo, **kwargs)
        gx, gw = from_nhwc(gx), NHWC.weight_to_canonical_view(gw)
    else:
        gx, gw, gb = fcuda.conv2d_backward(gy, x, wt, algo=algo, **kwargs)
    assert gx.dtype == gw.dtype == gb.dtype == dtype
    # The loss is linear, so central differences are exact up to rounding.
    tol = 1e-8 if dtype == np.float64 else 1e-4
    assert ref.rel_error(gx, want_gx) <= tol
    assert ref.rel_error(gw, want_gw) <= tol
    assert ref.rel_error(gb, gy.astype(np.float64).sum(axis=(0, 2, 3))) <= tol


def test_lecture_worked_example():
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    w = np.array([[[[0.0, 1.0], [2.0, 3.0]]]])
    for algo in ALGOS:
        y = fcuda.conv2d(x, w, algo=algo)
        np.testing.assert_allclose(y[0, 0], [[19, 25], [37, 43]], rtol=0, atol=1e-12)


def test_default_tile_and_block_sizes(monkeypatch):
    """The shipped GEMM tile and block sizes, beside the tiny ones used elsewhere."""
    from fastconv.cuda import _gemm

    defaults = {"CUDA_BLOCK": 256, "CUDA_MAX_BLOCKS": 8192, "CUDA_GEMM_TILE": 16,
                "CUDA_REDUCE_THREADS": 256}
    for name, value in defaults.items():
        monkeypatch.setattr(config, name, value)
    monkeypatch.setattr(_gemm, "BLOCKED", (16, 4, 8))
    x, wt, b, kwargs = _arrays(CASES[0], np.float32)
    got = fcuda.conv2d(x, wt, b, algo="im2col", **kwargs)
    assert ref.rel_error(got, _ref_forward(x, wt, b, kwargs)) <= 1e-4
    gy = np.random.default_rng(7).standard_normal(got.shape).astype(np.float32)
    _, _, gb = fcuda.conv2d_backward(gy, x, wt, algo="naive", **kwargs)
    assert ref.rel_error(gb, gy.astype(np.float64).sum(axis=(0, 2, 3))) <= 1e-5


def test_im2col_chunks_within_workspace(monkeypatch):
    """A workspace smaller than one image's columns: one image per chunk, same result."""
    x, wt, b, kwargs = _arrays(CASES[0], np.float64)
    monkeypatch.setattr(config, "WORKSPACE_BYTES", 64)
    y = fcuda.conv2d(x, wt, b, algo="im2col", **kwargs)
    assert ref.rel_error(y, _ref_forward(x, wt, b, kwargs)) <= 1e-10
    gy = np.random.default_rng(3).standard_normal(y.shape)
    got = fcuda.conv2d_backward(gy, x, wt, algo="im2col", **kwargs)
    want = fcuda.conv2d_backward(gy, x, wt, algo="naive", **kwargs)
    for g, h in zip(got, want, strict=True):
        assert ref.rel_error(g, h) <= 1e-10


def test_device_arrays_in_device_arrays_out():
    x, wt, b, kwargs = _arrays(CASES[0], np.float32)
    y = fcuda.conv2d(cuda.to_device(x), cuda.to_device(wt), cuda.to_device(b), **kwargs)
    assert not isinstance(y, np.ndarray)
    assert ref.rel_error(y.copy_to_host(), _ref_forward(x, wt, b, kwargs)) <= 1e-4
    # Mixed: one device array is enough to keep the results on the device.
    gx, gw, gb = fcuda.conv2d_backward(y, x, cuda.to_device(wt), **kwargs)
    assert not any(isinstance(g, np.ndarray) for g in (gx, gw, gb))
    assert gx.shape == x.shape and gw.shape == wt.shape and gb.shape == (4,)


def test_strided_views_host_and_device():
    rng = np.random.default_rng(4)
    big = rng.standard_normal((2, 6, 9, 8))
    x = big[:, ::2, 1::2, :7]                      # non-contiguous view
    w = rng.standard_normal((2, 3, 3, 2, 2))[0]    # (3, 3, 2, 2): OIHW view
    want = ref.conv2d(x, w)
    np.testing.assert_allclose(fcuda.conv2d(x, w), want, rtol=1e-12, atol=1e-12)
    dx = cuda.to_device(np.ascontiguousarray(big))[:, ::2, 1::2, :7]
    got = fcuda.conv2d(dx, cuda.to_device(np.ascontiguousarray(w)), algo="im2col")
    np.testing.assert_allclose(got.copy_to_host(), want, rtol=1e-12, atol=1e-12)


def test_unbatched_input():
    x, wt, b, kwargs = _arrays(CASES[0], np.float64)
    y = fcuda.conv2d(x[0], wt, b, **kwargs)
    assert y.shape == _ref_forward(x, wt, b, kwargs).shape[1:]
    np.testing.assert_allclose(y, _ref_forward(x[:1], wt, b, kwargs)[0], rtol=1e-12)
    dy = fcuda.conv2d(cuda.to_device(x[0]), cuda.to_device(wt), **kwargs)
    assert dy.shape == y.shape
    gx, gw, gb = fcuda.conv2d_backward(np.ones(y.shape), x[0], wt, **kwargs)
    assert gx.shape == x[0].shape and gw.shape == wt.shape


def test_empty_batch():
    x = np.zeros((0, 2, 5, 5))
    w = np.ones((3, 2, 3, 3))
    assert fcuda.conv2d(x, w).shape == (0, 3, 3, 3)
    gx, gw, gb = fcuda.conv2d_backward(np.zeros((0, 3, 3, 3)), x, w)
    assert gx.shape == x.shape and not gw.any() and not gb.any()


@pytest.mark.parametrize("call,exc,match", [
    (lambda x, w: fcuda.conv2d(x, w[:, :1], groups=3), ValueError,
     r"conv2d: groups=3 must divide C_in=4"),
    (lambda x, w: fcuda.conv2d(x.astype(np.int32), w), TypeError,
     r"conv2d: input has dtype int32; accepted dtypes are float32 and float64"),
    (lambda x, w: fcuda.conv2d(x, w, algo="fft"), ValueError,
     r"conv2d: algo='fft' is not available on device='cuda'.*'auto', 'naive', 'im2col'"),
    (lambda x, w: fcuda.conv2d(x, w, stride=0), ValueError, r"conv2d: stride=0 must be positive"),
    (lambda x, w: fcuda.conv2d_backward(np.ones((1, 2, 2, 2)), x, w), ValueError,
     r"conv2d_backward: grad_y must have shape \(1, 2, 3, 3\)"),
    (lambda x, w: fcuda.conv2d(x, w, layout="CHWN"), ValueError,
     r"conv2d: layout='CHWN' is not supported"),
    (lambda x, w: fcuda.conv2d(x, "w"), TypeError,
     r"conv2d: weight must be an array-like convertible to a numpy array, got str"),
    (lambda x, w: fcuda.conv2d(cuda.to_device(x), cuda.to_device(w[:1, :2])), ValueError,
     r"conv2d: weight has 2 input channels per group but input has C_in=4"),
    (lambda x, w: fcuda.conv2d(cuda.to_device(x.astype(np.float32)), w), TypeError,
     r"conv2d: inputs must share one dtype"),
])
def test_errors_match_the_cpu(call, exc, match):
    x = np.ones((1, 4, 5, 5))
    w = np.ones((2, 4, 3, 3))
    with pytest.raises(exc, match=match):
        call(x, w)


def test_auto_rule():
    thin = conv_args_from_shapes("t", (1, 3, 8, 8), (3, 1, 3, 3), groups=3)   # depthwise
    wide = conv_args_from_shapes("t", (1, 16, 8, 8), (32, 16, 3, 3))
    from fastconv.cuda._conv import choose_algorithm
    assert choose_algorithm(thin) == "naive"
    assert choose_algorithm(wide) == "im2col"
    x = np.random.default_rng(5).standard_normal((1, 3, 6, 6))
    w = np.random.default_rng(6).standard_normal((3, 1, 3, 3))
    got = fcuda.conv2d(x, w, groups=3)  # auto
    np.testing.assert_allclose(got, ref.conv2d(x, w, groups=3), rtol=1e-12, atol=1e-12)


def test_public_functions_take_device():
    x, wt, b, kwargs = _arrays(CASES[1], np.float32)
    got = fastconv.conv2d(x, wt, b, device="cuda", **kwargs)
    np.testing.assert_allclose(got, fastconv.conv2d(x, wt, b, **kwargs), rtol=1e-4, atol=1e-5)
    gy = np.random.default_rng(8).standard_normal(got.shape).astype(np.float32)
    grads = fastconv.conv2d_backward(gy, x, wt, device="cuda", **kwargs)
    for g, h in zip(grads, fastconv.conv2d_backward(gy, x, wt, **kwargs), strict=True):
        assert ref.rel_error(g, h) <= 1e-4


def test_gpu_out_of_memory_becomes_memory_error(monkeypatch):
    from fastconv.cuda import _conv

    class CudaAPIError(RuntimeError):  # numba's class name; its text names the code
        pass

    def oom(*args, **kwargs):
        raise CudaAPIError("[2] Call to cuMemAlloc results in CUDA_ERROR_OUT_OF_MEMORY")

    monkeypatch.setattr(_conv, "conv2d", oom)
    with pytest.raises(MemoryError, match=r"conv2d: the GPU ran out of memory .*"
                                          r"CUDA_ERROR_OUT_OF_MEMORY"):
        fcuda.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)))


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False),
                                   (False, False, True), (False, True, True),
                                   (False, False, False)], ids=str)
def test_backward_computes_only_the_requested_gradients(needs, algo, launches):
    """needs_input_grad as on the CPU: the others are None, and their kernels never run."""
    x, wt, _, kwargs = _arrays(CASES[1], np.float64, seed=9)
    gy = np.random.default_rng(10).standard_normal(_ref_forward(x, wt, None, kwargs).shape)
    got = fastconv.conv2d_backward(gy, x, wt, algo=algo, device="cuda", needs_input_grad=needs,
                                   **kwargs)
    want = fastconv.conv2d_backward(gy, x, wt, algo=algo, needs_input_grad=needs, **kwargs)
    for g, h, need in zip(got, want, needs, strict=True):
        assert (g is None) == (h is None) == (not need)
        if need:
            assert g.shape == h.shape and g.dtype == h.dtype
            assert ref.rel_error(g, h) <= 1e-10
    grad_x_kernels = {"gather", "gemm_t"}  # _conv_direct_grad_x / col2im, grad_cols GEMM
    grad_w_kernels = {"_conv_direct_grad_w", "_im2col", "gemm_w"}
    assert needs[0] or not grad_x_kernels & set(launches)
    assert needs[1] or not grad_w_kernels & set(launches)
    assert (needs[0] or needs[1]) == bool(launches)


def test_backward_needs_input_grad_checked():
    x = np.ones((1, 1, 3, 3))
    with pytest.raises(TypeError, match=r"conv2d_backward: needs_input_grad=\(True, False\) "
                                        r"must be three bools"):
        fcuda.conv2d_backward(np.ones((1, 1, 2, 2)), x, np.ones((1, 1, 2, 2)),
                              needs_input_grad=(True, False))
