"""conv3d / conv3d_backward on CUDA (under the simulator) against the CPU ops: the direct
kernels and the 3-D unfold + GEMM path over stride, uneven padding, 'same', dilation,
groups, both layouts, float32 and float64; needs_input_grad; residency, unbatched and
strided device inputs, an empty batch; errors; nn.Conv1d / nn.Conv3d on "cuda", and
gradcheck of the GPU conv3d in float64."""

import numpy as np
import pytest
from numba import cuda

import fastconv
from fastconv import Tensor, gradcheck, nn
from fastconv import cuda as fcuda
from fastconv._args.conv_nd import conv_nd_args_from_shapes
from fastconv.nn import functional as F

from .. import reference as ref
from .conftest import assert_layer_matches_cpu

ALGOS = ("naive", "im2col")

# (n, c_in, (d, h, w), c_out, (kd, kh, kw), stride, padding, dilation, groups)
CASES = [
    (2, 4, (4, 3, 5), 6, (2, 3, 2), (2, 1, 2), ((1, 0), (1, 1), (0, 2)), (1, 1, 2), 2),
    (1, 2, (3, 4, 3), 3, (3, 2, 2), 1, "same", (2, 1, 1), 1),
    (1, 3, (2, 3, 3), 3, (1, 2, 2), (1, 2, 1), 1, 1, 3),            # depthwise
]


def _cid(case):
    return "n{}c{}_{}_d{}k{}_s{}_p{}_r{}_g{}".format(*case).replace(" ", "")


def _problem(case, dtype, layout="NCDHW", seed=0):
    n, c, size, d, kernel, stride, padding, dilation, groups = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, *size)).astype(dtype)
    w = rng.standard_normal((d, c // groups, *kernel)).astype(dtype)
    if layout == "NDHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 4, 1))
        w = np.ascontiguousarray(w.transpose(2, 3, 4, 1, 0))
    b = rng.standard_normal(d).astype(dtype)
    return x, w, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                         layout=layout)


@pytest.mark.parametrize("layout,dtype", [("NCDHW", np.float64), ("NDHWC", np.float32)])
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", CASES, ids=_cid)
def test_forward_and_backward_match_the_cpu(case, algo, layout, dtype):
    x, w, b, kwargs = _problem(case, dtype, layout)
    want = fastconv.conv3d(x, w, b, **kwargs)
    got = fastconv.conv3d(x, w, b, **kwargs, algo=algo, device="cuda")
    tol = ref.tolerance(dtype, algo)
    assert isinstance(got, np.ndarray) and got.dtype == dtype and got.shape == want.shape
    assert ref.rel_error(got, want) <= tol
    gy = np.random.default_rng(1).standard_normal(want.shape).astype(dtype)
    grads = fastconv.conv3d_backward(gy, x, w, **kwargs, algo=algo, device="cuda")
    for g, h in zip(grads, fastconv.conv3d_backward(gy, x, w, **kwargs), strict=True):
        assert g.dtype == dtype and g.shape == h.shape
        assert ref.rel_error(g, h) <= tol


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False),
                                   (False, False, True)], ids=str)
def test_backward_computes_only_the_requested_gradients(needs, algo, launches):
    x, w, _, kwargs = _problem(CASES[0], np.float64, seed=2)
    gy = np.random.default_rng(3).standard_normal(fastconv.conv3d(x, w, **kwargs).shape)
    got = fcuda.conv3d_backward(gy, x, w, **kwargs, algo=algo, needs_input_grad=needs)
    want = fastconv.conv3d_backward(gy, x, w, **kwargs, needs_input_grad=needs)
    for g, h, need in zip(got, want, needs, strict=True):
        assert (g is None) == (h is None) == (not need)
        if need:
            assert ref.rel_error(g, h) <= 1e-10
    grad_x = {"gather", "gemm_t"}                 # direct grad_x / col2vol, column GEMM
    grad_w = {"_conv3d_direct_grad_w", "_vol2col", "gemm_w"}
    assert needs[0] == bool(grad_x & set(launches))
    assert needs[1] == bool(grad_w & set(launches))


def test_unbatched_strided_device_arrays_and_empty_batch(monkeypatch):
    from fastconv import config

    x, w, b, kwargs = _problem(CASES[1], np.float64, seed=4)
    want = fastconv.conv3d(x[0], w, b, **kwargs)
    got = fcuda.conv3d(x[0], w, b, **kwargs, algo="im2col")
    assert got.shape == want.shape and ref.rel_error(got, want) <= 1e-10
    wide = np.random.default_rng(5).standard_normal((2, 2, 3, 4, 6))
    dy = fcuda.conv3d(cuda.to_device(wide)[:, :, :, :, ::2], cuda.to_device(w), **kwargs)
    assert not isinstance(dy, np.ndarray)
    assert ref.rel_error(dy.copy_to_host(), fastconv.conv3d(wide[..., ::2], w, **kwargs)) \
        <= 1e-10
    monkeypatch.setattr(config, "WORKSPACE_BYTES", 64)   # one image per im2col chunk
    gy = np.random.default_rng(6).standard_normal(dy.shape)
    got = fcuda.conv3d_backward(gy, wide[..., ::2], w, **kwargs, algo="im2col")
    for g, h in zip(got, fastconv.conv3d_backward(gy, wide[..., ::2], w, **kwargs),
                    strict=True):
        assert ref.rel_error(g, h) <= 1e-10
    empty = np.zeros((0, 2, 3, 4, 3))
    assert fcuda.conv3d(empty, w, **kwargs).shape == (0, 3, 3, 4, 3)
    gx, gw, gb = fcuda.conv3d_backward(np.zeros((0, 3, 3, 4, 3)), empty, w, **kwargs)
    assert gx.shape == empty.shape and gw.shape == w.shape and not gw.any() and not gb.any()


def test_auto_rule():
    from fastconv.cuda._conv3d import choose_algorithm

    thin = conv_nd_args_from_shapes("t", (1, 3, 4, 4, 4), (3, 1, 3, 3, 3), rank=3, groups=3)
    wide = conv_nd_args_from_shapes("t", (1, 16, 4, 4, 4), (32, 16, 3, 3, 3), rank=3)
    assert (choose_algorithm(thin), choose_algorithm(wide)) == ("naive", "im2col")


@pytest.mark.parametrize("call,exc,match", [
    (lambda x, w: fcuda.conv3d(x, w, algo="fft"), ValueError,
     r"conv3d: algo='fft' is not available on device='cuda' \(fft runs on the CPU only\); "
     r"acceptable algorithms there are 'auto', 'naive', 'im2col'"),
    (lambda x, w: fcuda.conv3d(x.astype(np.float16), w.astype(np.float16)), TypeError,
     r"conv3d: input has dtype float16; accepted dtypes are float32 and float64 \(and "
     r"float16 on the CPU\)"),
    (lambda x, w: fcuda.conv3d(x, w, np.ones(3)), ValueError,
     r"conv3d: bias must have shape \(C_out,\) = \(2,\), got \(3,\)"),
    (lambda x, w: fcuda.conv3d(x, w, stride=(1, 2)), ValueError,
     r"conv3d: stride=\(1, 2\) must be an int or 3 ints \(d, h, w\), got 2 values"),
    (lambda x, w: fcuda.conv3d(cuda.to_device(x), cuda.to_device(w[:, :2].copy())),
     ValueError, r"conv3d: weight has 2 input channels per group but input has C_in=4 with "
                 r"groups=1 \(expected 4\)"),
    (lambda x, w: fcuda.conv3d(cuda.to_device(x.astype(np.float32)), w), TypeError,
     r"conv3d: inputs must share one dtype"),
    (lambda x, w: fcuda.conv3d_backward(np.ones((1, 2, 2, 2, 2)), x, w), ValueError,
     r"conv3d_backward: grad_y must have shape \(1, 2, 1, 2, 2\) \(the conv3d output\)"),
    (lambda x, w: fcuda.conv3d_backward(np.ones((1, 2, 1, 2, 2)), x, w,
                                        needs_input_grad=(True, True)), TypeError,
     r"conv3d_backward: needs_input_grad=\(True, True\) must be three bools"),
    (lambda x, w: fastconv.conv3d(x, w, device="tpu"), ValueError,
     r"conv3d: device='tpu' is not supported; acceptable devices are 'cpu', 'cuda'"),
])
def test_errors_match_the_cpu(call, exc, match):
    x, w = np.ones((1, 4, 3, 4, 4)), np.ones((2, 4, 3, 3, 3))
    with pytest.raises(exc, match=match):
        call(x, w)


@pytest.mark.parametrize("layer,shape", [
    (lambda: nn.Conv1d(2, 4, 3, stride=2, padding=1, groups=2, dtype=np.float64,
                       rng=np.random.default_rng(8)), (2, 2, 5)),
    (lambda: nn.Conv3d(2, 3, 2, padding=(1, 0, 1), dtype=np.float64,
                       rng=np.random.default_rng(8)), (1, 2, 2, 3, 2)),
], ids=["Conv1d", "Conv3d"])
def test_layers_on_the_gpu_match_the_cpu(layer, shape):
    """nn.Conv1d / nn.Conv3d moved to "cuda": output and gradients as on the CPU."""
    assert_layer_matches_cpu(layer, np.random.default_rng(9).standard_normal(shape))


def test_gpu_gradients_pass_gradcheck():
    rng = np.random.default_rng(10)
    x = Tensor(rng.standard_normal((1, 2, 2, 2, 3)), requires_grad=True).to("cuda")
    w = Tensor(rng.standard_normal((2, 1, 1, 2, 2)), requires_grad=True).to("cuda")
    b = Tensor(rng.standard_normal(2), requires_grad=True).to("cuda")
    assert gradcheck(lambda x, w, b: F.conv3d(x, w, b, padding=(0, 1, 0), groups=2,
                                              algo="im2col"), (x, w, b))


def test_channels_last_nd_layers_refuse_the_gpu():
    """Their weights (torch's order) are permuted per call: 3-D / 5-D permutations have no
    GPU kernel, and the error says so."""
    m = nn.Conv1d(2, 4, 3, layout="NWC").to("cuda")
    with pytest.raises(ValueError, match=r"fastconv.cuda.permute: only 4-D device arrays are "
                                         r"permuted on the GPU, got shape \(4, 2, 3\)"):
        m(Tensor(np.ones((1, 5, 2), np.float32)).to("cuda"))
