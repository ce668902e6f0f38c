"""conv_transpose2d / conv_transpose2d_backward on CUDA (under the simulator) against the
scatter reference and the CPU ops: stride, padding, output_padding (also past the reach
of every input, and with no input reaching the output), dilation, groups, both layouts,
float32 and float64; needs_input_grad; residency; errors; the autograd op and
nn.ConvTranspose2d on "cuda", gradcheck in float64."""

import numpy as np
import pytest
from numba import cuda

import fastconv
from fastconv import Tensor, gradcheck, nn
from fastconv import cuda as fcuda
from fastconv.nn import functional as F

from .. import reference as ref
from ..conftest import from_nhwc, to_nhwc
from ..test_conv_transpose import _cid, _pairs, _problem  # the CPU tests' problems
from .conftest import assert_layer_matches_cpu

ALGOS = ("naive", "im2col")

# (n, c_in, h, w, c_out, kh, kw, stride, padding, output_padding, dilation, groups)
CASES = [
    (2, 3, 3, 4, 2, 3, 3, 2, 1, 1, 1, 1),
    (1, 4, 3, 2, 6, 2, 3, (2, 1), (1, 0), (1, 0), (1, 2), 2),
    (1, 2, 4, 3, 2, 3, 3, 1, 2, 0, 2, 2),            # depthwise, padding > kernel reach
    (1, 2, 2, 2, 2, 2, 2, 1, 0, 2, 3, 1),            # output_padding past every input
    (2, 1, 1, 1, 2, 1, 1, 1, 1, 2, 3, 1),            # no input reaches the output
]


def _nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("layout,dtype", [("NCHW", np.float64), ("NHWC", np.float32)])
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", CASES, ids=_cid)
def test_forward_and_backward_match_the_cpu(case, algo, layout, dtype):
    x, w, b, kwargs = _problem(case, dtype)
    want = ref.conv_transpose2d(x.astype(np.float64), w.astype(np.float64),
                                b.astype(np.float64), **_pairs(kwargs))
    gy = np.random.default_rng(1).standard_normal(want.shape).astype(dtype)
    cpu = fastconv.conv_transpose2d_backward(gy, x, w, **kwargs)
    if layout == "NHWC":
        xl, wl = to_nhwc(x, w)
        y = from_nhwc(fastconv.conv_transpose2d(xl, wl, b, **kwargs, layout="NHWC",
                                                algo=algo, device="cuda"))
        gx, gw, gb = fastconv.conv_transpose2d_backward(_nhwc(gy), xl, wl, **kwargs,
                                                        layout="NHWC", algo=algo,
                                                        device="cuda")
        gx, gw = from_nhwc(gx), gw.transpose(3, 2, 0, 1)
    else:
        y = fastconv.conv_transpose2d(x, w, b, **kwargs, algo=algo, device="cuda")
        gx, gw, gb = fastconv.conv_transpose2d_backward(gy, x, w, **kwargs, algo=algo,
                                                        device="cuda")
    tol = ref.tolerance(dtype, algo)
    assert isinstance(y, np.ndarray) and y.dtype == dtype and y.shape == want.shape
    assert ref.rel_error(y, want) <= tol
    for got, expect in zip((gx, gw, gb), cpu, strict=True):
        assert got.dtype == dtype and got.shape == expect.shape
        assert ref.rel_error(got, expect) <= tol


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False),
                                   (False, False, True), (False, False, False)], ids=str)
def test_backward_computes_only_the_requested_gradients(needs, launches):
    """The others come back None and their kernels never run (im2col: grad_x is the
    forward's column GEMM, grad_w the weight-gradient GEMM over im2col of grad_y)."""
    x, w, _, kwargs = _problem(CASES[0], np.float64, seed=2)
    gy = np.random.default_rng(3).standard_normal(
        fastconv.conv_transpose2d(x, w, **kwargs).shape)
    got = fcuda.conv_transpose2d_backward(gy, x, w, **kwargs, algo="im2col",
                                          needs_input_grad=needs)
    want = fastconv.conv_transpose2d_backward(gy, x, w, **kwargs, needs_input_grad=needs)
    for g, h, need in zip(got, want, needs, strict=True):
        assert (g is None) == (h is None) == (not need)
        if need:
            assert ref.rel_error(g, h) <= 1e-10
    assert needs[0] == bool({"_cnhw_to_y", "gemm"} & set(launches))
    assert needs[1] == bool({"_y_to_cnhw", "gemm_w"} & set(launches))


def test_auto_unbatched_and_device_arrays():
    x, w, b, kwargs = _problem(CASES[1], np.float32, seed=4)
    want = fastconv.conv_transpose2d(x[0], w, b, **kwargs)
    got = fcuda.conv_transpose2d(x[0], w, b, **kwargs)            # auto, unbatched
    assert got.shape == want.shape and ref.rel_error(got, want) <= 1e-4
    dy = fcuda.conv_transpose2d(cuda.to_device(x), cuda.to_device(w), b, **kwargs)
    assert not isinstance(dy, np.ndarray)                          # stays on the device
    grads = fcuda.conv_transpose2d_backward(dy, x, w, **kwargs)
    assert not any(isinstance(g, np.ndarray) for g in grads)
    cpu = fastconv.conv_transpose2d_backward(dy.copy_to_host(), x, w, **kwargs)
    for g, h in zip(grads, cpu, strict=True):
        assert ref.rel_error(g.copy_to_host(), h) <= 1e-4
    gx, gw, gb = fcuda.conv_transpose2d_backward(want, x[0], w, **kwargs)
    assert gx.shape == x[0].shape and gw.shape == w.shape and gb.shape == b.shape


def test_empty_batch():
    x, w = np.zeros((0, 2, 3, 3)), np.ones((2, 3, 2, 2))
    y = fcuda.conv_transpose2d(x, w, np.arange(3.0), stride=2)
    assert y.shape == (0, 3, 6, 6)
    gx, gw, gb = fcuda.conv_transpose2d_backward(np.zeros(y.shape), x, w, stride=2)
    assert gx.shape == x.shape and gw.shape == w.shape and not gw.any() and not gb.any()


@pytest.mark.parametrize("call,exc,match", [
    (lambda x, w: fcuda.conv_transpose2d(x, w, algo="winograd"), ValueError,
     r"conv_transpose2d: algo='winograd' is not available on device='cuda'; acceptable "
     r"algorithms there are 'auto', 'naive', 'im2col'"),
    (lambda x, w: fcuda.conv_transpose2d(x.astype(np.float16), w.astype(np.float16)),
     TypeError, r"conv_transpose2d: input has dtype float16; accepted dtypes are float32 "
                r"and float64 \(and float16 on the CPU\)"),
    (lambda x, w: fcuda.conv_transpose2d(x, w, np.ones(3)), ValueError,
     r"conv_transpose2d: bias must have shape \(C_out,\) = \(2,\), got \(3,\)"),
    (lambda x, w: fcuda.conv_transpose2d(x, w, stride=2, output_padding=2), ValueError,
     r"conv_transpose2d: output_padding=2 must be smaller than stride=2 or dilation=1"),
    (lambda x, w: fcuda.conv_transpose2d(cuda.to_device(x), w[:2]), ValueError,
     r"conv_transpose2d: weight \(2, 2, 3, 3\) holds filters for 2 input channels but the "
     r"input has C_in=4"),
    (lambda x, w: fcuda.conv_transpose2d(cuda.to_device(x.astype(np.float32)), w), TypeError,
     r"conv_transpose2d: inputs must share one dtype"),
    (lambda x, w: fcuda.conv_transpose2d_backward(np.ones((1, 2, 6, 6)), x, w), ValueError,
     r"conv_transpose2d_backward: grad_y must have shape \(1, 2, 7, 7\) \(the "
     r"conv_transpose2d output\), got \(1, 2, 6, 6\)"),
    (lambda x, w: fcuda.conv_transpose2d_backward(np.ones((1, 2, 7, 7)), x, w,
                                                  needs_input_grad=(True,)), TypeError,
     r"conv_transpose2d_backward: needs_input_grad=\(True,\) must be three bools"),
    (lambda x, w: fastconv.conv_transpose2d(x, w, device="tpu"), ValueError,
     r"conv_transpose2d: device='tpu' is not supported; acceptable devices are 'cpu', "
     r"'cuda'"),
])
def test_errors_match_the_cpu(call, exc, match):
    x, w = np.ones((1, 4, 5, 5)), np.ones((4, 2, 3, 3))
    with pytest.raises(exc, match=match):
        call(x, w)


def test_autograd_op_and_layer_on_the_gpu_match_the_cpu():
    """nn.ConvTranspose2d moved to "cuda": output and the gradients of the input, weight
    and bias as on the CPU."""
    assert_layer_matches_cpu(
        lambda: nn.ConvTranspose2d(2, 4, 3, stride=2, padding=1, output_padding=1,
                                   groups=2, rng=np.random.default_rng(6), dtype=np.float64),
        np.random.default_rng(5).standard_normal((2, 2, 3, 3)))


def test_gpu_gradients_pass_gradcheck():
    rng = np.random.default_rng(7)
    x = Tensor(rng.standard_normal((1, 2, 2, 2)), requires_grad=True).to("cuda")
    w = Tensor(rng.standard_normal((2, 1, 2, 2)), requires_grad=True).to("cuda")
    b = Tensor(rng.standard_normal(1), requires_grad=True).to("cuda")
    assert gradcheck(lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1,
                                                        output_padding=1), (x, w, b))
