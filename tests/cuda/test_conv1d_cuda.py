"""conv1d / conv1d_backward on CUDA (the GPU conv2d over a unit height axis, under the
simulator) against the CPU ops: stride, padding (uneven, 'same'), dilation, groups, both
layouts, float32 and float64, unbatched and strided device inputs; errors."""

import numpy as np
import pytest
from numba import cuda

import fastconv
from fastconv import cuda as fcuda

from .. import reference as ref

ALGOS = ("naive", "im2col")

# (n, c_in, w, c_out, k, stride, padding, dilation, groups)
CASES = [
    (2, 3, 7, 4, 3, 2, (2, 1), 1, 1),
    (1, 4, 6, 6, 2, 1, "same", 2, 2),
    (2, 2, 5, 2, 3, 1, 0, 1, 2),                 # depthwise
]


def _cid(case):
    return "n{}c{}w{}_d{}k{}_s{}_p{}_r{}_g{}".format(*case).replace(" ", "")


def _problem(case, dtype, layout, seed=0):
    n, c, w, d, k, stride, padding, dilation, groups = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, w)).astype(dtype)
    wt = rng.standard_normal((d, c // groups, k)).astype(dtype)
    if layout == "NWC":
        x, wt = np.ascontiguousarray(x.transpose(0, 2, 1)), np.ascontiguousarray(
            wt.transpose(2, 1, 0))
    b = rng.standard_normal(d).astype(dtype)
    return x, wt, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                          layout=layout)


@pytest.mark.parametrize("layout,dtype", [("NCW", np.float64), ("NWC", np.float32)])
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", CASES, ids=_cid)
def test_forward_and_backward_match_the_cpu(case, algo, layout, dtype):
    x, w, b, kwargs = _problem(case, dtype, layout)
    want = fastconv.conv1d(x, w, b, **kwargs)
    got = fastconv.conv1d(x, w, b, **kwargs, algo=algo, device="cuda")
    tol = ref.tolerance(dtype, algo)
    assert isinstance(got, np.ndarray) and got.dtype == dtype and got.shape == want.shape
    assert ref.rel_error(got, want) <= tol
    gy = np.random.default_rng(1).standard_normal(want.shape).astype(dtype)
    grads = fastconv.conv1d_backward(gy, x, w, **kwargs, algo=algo, device="cuda")
    for g, h in zip(grads, fastconv.conv1d_backward(gy, x, w, **kwargs), strict=True):
        assert g.dtype == dtype and g.shape == h.shape
        assert ref.rel_error(g, h) <= tol


def test_unbatched_strided_device_arrays_and_needs_input_grad():
    x, w, b, kwargs = _problem(CASES[0], np.float64, "NCW", seed=2)
    want = fastconv.conv1d(x[0], w, b, **kwargs)
    got = fcuda.conv1d(x[0], w, b, **kwargs)
    assert got.shape == want.shape and ref.rel_error(got, want) <= 1e-10
    wide = np.random.default_rng(3).standard_normal((2, 3, 14))
    dy = fcuda.conv1d(cuda.to_device(wide)[:, :, ::2], cuda.to_device(w), **kwargs)
    assert not isinstance(dy, np.ndarray)
    assert ref.rel_error(dy.copy_to_host(), fastconv.conv1d(wide[:, :, ::2], w, **kwargs)) \
        <= 1e-10
    gy = np.ones(want.shape)
    gx, gw, gb = fcuda.conv1d_backward(gy, x[0], w, **kwargs, needs_input_grad=(True, False,
                                                                                False))
    assert gw is None and gb is None and gx.shape == x[0].shape
    cpu = fastconv.conv1d_backward(gy, x[0], w, **kwargs)[0]
    assert ref.rel_error(gx, cpu) <= 1e-10


@pytest.mark.parametrize("call,exc,match", [
    (lambda x, w: fcuda.conv1d(x, w, algo="fft"), ValueError,
     r"conv1d: algo='fft' is not available on device='cuda' \(fft runs on the CPU only\)"),
    (lambda x, w: fcuda.conv1d(x.astype(np.float16), w.astype(np.float16)), TypeError,
     r"conv1d: input has dtype float16; accepted dtypes are float32 and float64 \(and "
     r"float16 on the CPU\)"),
    (lambda x, w: fcuda.conv1d(x, w, groups=3), ValueError,
     r"conv1d: groups=3 must divide C_in=4"),
    (lambda x, w: fcuda.conv1d(x, w, stride=(1, 2)), ValueError,
     r"conv1d: stride=\(1, 2\) must be an int or 1 ints \(w\), got 2 values"),
    (lambda x, w: fcuda.conv1d(cuda.to_device(x), w, layout="NCHW"), ValueError,
     r"conv1d: layout='NCHW' is not supported; acceptable layouts are 'NCW', 'NWC'"),
    (lambda x, w: fcuda.conv1d_backward(np.ones((1, 2, 5)), x, w), ValueError,
     r"conv1d_backward: grad_y must have shape \(1, 2, 4\) \(the conv1d output\), got "
     r"\(1, 2, 5\)"),
    (lambda x, w: fastconv.conv1d_backward(np.ones((1, 2, 4)), x, w, device="gpu"),
     ValueError, r"conv1d_backward: device='gpu' is not supported"),
])
def test_errors_match_the_cpu(call, exc, match):
    x, w = np.ones((1, 4, 6)), np.ones((2, 4, 3))
    with pytest.raises(exc, match=match):
        call(x, w)
