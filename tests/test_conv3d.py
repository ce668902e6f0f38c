"""conv3d and conv3d_backward: every algorithm against the formula's reference, layouts,
dtypes, gradients by finite differences, torch, the autograd layer, the plan, errors."""

import math

import numpy as np
import pytest

import fastconv
from fastconv import Tensor, config, gradcheck
from fastconv.nn import functional as F

from . import nd_checks as nd
from . import reference as ref
from .conftest import assert_layer_matches_torch

ALGOS = ("naive", "im2col", "fft", "auto")

# (n, c_in, (d, h, w), c_out, kernel, stride, padding, dilation, groups)
CASES = [
    (2, 2, (5, 4, 6), 3, (3, 3, 3), 1, 0, 1, 1),
    (1, 4, (6, 5, 5), 4, (3, 2, 3), (2, 1, 2), 1, 1, 2),
    (2, 2, (5, 6, 5), 2, (2, 3, 2), 1, "same", (2, 1, 1), 1),
    (1, 3, (4, 5, 6), 3, (3, 3, 3), (1, 2, 3), ((1, 0), (2, 1), (0, 2)), 1, 3),
    (2, 3, (3, 3, 4), 2, (1, 1, 1), 1, "valid", 1, 1),
    (1, 2, (7, 5, 5), 4, (3, 3, 3), 2, 2, (2, 1, 2), 2),
]


def _tol(dtype, algo):
    return ref.tolerance(dtype, algo if algo != "auto" else "fft")


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_matches_reference(case, algo):
    nd.check_forward(fastconv.conv3d, case, algo, _tol(np.float64, algo))


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_backward_matches_reference(case, algo):
    nd.check_backward(fastconv.conv3d_backward, case, algo, _tol(np.float64, algo))


@pytest.mark.parametrize("algo", ("naive", "im2col", "fft"))
def test_ndhwc_layout_is_the_transposed_problem(algo):
    x, wt, b, kwargs = nd.nd_arrays(CASES[1], np.float32)
    want = fastconv.conv3d(x, wt, b, **kwargs, algo=algo)
    xn, wn = x.transpose(0, 2, 3, 4, 1), wt.transpose(2, 3, 4, 1, 0)   # NDHWC, DHWIO
    got = fastconv.conv3d(xn, wn, b, **kwargs, layout="NDHWC", algo=algo)
    np.testing.assert_allclose(got, want.transpose(0, 2, 3, 4, 1), rtol=1e-4, atol=1e-4)
    gy = np.random.default_rng(2).standard_normal(want.shape).astype(np.float32)
    gx, gw, gb = fastconv.conv3d_backward(gy.transpose(0, 2, 3, 4, 1), xn, wn, **kwargs,
                                          layout="NDHWC", algo=algo)
    rx, rw, rb = fastconv.conv3d_backward(gy, x, wt, **kwargs, algo=algo)
    np.testing.assert_allclose(gx, rx.transpose(0, 2, 3, 4, 1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw, rw.transpose(2, 3, 4, 1, 0), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(gb, rb, rtol=1e-5)


@pytest.mark.parametrize("algo", ("naive", "im2col", "fft", "winograd"))
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_dtypes(dtype, algo):
    x, wt, b, kwargs = nd.nd_arrays(CASES[0], dtype)
    a = nd.record(x, wt, kwargs)
    got = fastconv.conv3d(x, wt, b, **kwargs, algo=algo)
    assert got.dtype == dtype
    want = ref.conv_nd(x, wt, b, a.stride, a.padding, a.dilation, a.groups)
    assert ref.rel_error(got, want) < (_tol(np.float32, algo) if dtype == np.float32
                                       else 2e-3)
    grads = fastconv.conv3d_backward(np.ones(got.shape, dtype), x, wt, **kwargs, algo=algo)
    assert all(g.dtype == dtype for g in grads)


def test_im2col_unfolds_in_chunks(monkeypatch):
    x, wt, b, kwargs = nd.nd_arrays(CASES[0])
    want = fastconv.conv3d(x, wt, b, **kwargs, algo="naive")
    gy = np.ones(want.shape)
    grads = fastconv.conv3d_backward(gy, x, wt, **kwargs, algo="naive")
    from fastconv.algos.conv3d import im2col
    assert im2col.chunk_positions(nd.record(x, wt, kwargs)) == 24        # all at once
    monkeypatch.setattr(config, "WORKSPACE_CACHE_BYTES", 2 * 54 * 4 + 1)  # 2 positions
    assert im2col.chunk_positions(nd.record(x, wt, kwargs)) == 2     # (float32 record)
    np.testing.assert_allclose(fastconv.conv3d(x, wt, b, **kwargs, algo="im2col"), want)
    for g, r in zip(fastconv.conv3d_backward(gy, x, wt, **kwargs, algo="im2col"), grads,
                    strict=True):
        np.testing.assert_allclose(g, r, atol=1e-12)


# Stride-1 problems for the windowed unfold: padding beyond the dilated kernel's extent
# (the input gradient then takes the gather path), asymmetric padding, groups, dilation.
WINDOW_CASES = [
    (2, 2, (4, 3, 5), 4, (2, 2, 2), 1, 3, 1, 2),
    (1, 3, (5, 4, 6), 2, (3, 2, 3), 1, ((2, 0), (0, 1), (1, 2)), (1, 2, 2), 1),
]


@pytest.mark.parametrize("case", WINDOW_CASES + CASES[:1], ids=str)
def test_im2col_windowed_unfold_in_small_chunks(case, monkeypatch):
    from fastconv.algos.conv3d import window
    x, wt, _, kwargs = nd.nd_arrays(case)
    a = nd.record(x, wt, kwargs)
    assert window.applies(a)
    monkeypatch.setattr(window, "CHUNK_BYTES", 7 * a.c_in * math.prod(a.kernel) * 4)
    assert window.chunk_positions(a, 10 ** 6) == 7    # (float32 record; float64: 3)
    monkeypatch.setattr(window, "TAP_SPAN", 5)
    nd.check_forward(fastconv.conv3d, case, "im2col", 1e-10)
    for fold in (True, False):      # the input gradient by folding, by the flipped forward
        if fold or window.input_gradient_problem(a) is not None:
            monkeypatch.setattr(window, "input_gradient_by_fold", lambda a, _f=fold: _f)
            nd.check_backward(fastconv.conv3d_backward, case, "im2col", 1e-10)


@pytest.mark.parametrize("case", WINDOW_CASES + CASES[0:5:2], ids=str)
def test_window_runs_stay_inside_the_padded_channel(case):
    """The strided views (as_strided) and the fold (numba) check no bounds: the last
    grid position's farthest tap lies inside the padded channel."""
    from fastconv.algos.conv3d import window
    x, wt, _, kwargs = nd.nd_arrays(case)
    a = nd.record(x, wt, kwargs)
    (_, hp, wp), grid, reach, length = window.geometry(a)
    assert grid == a.out[0] * hp * wp and grid - 1 + reach < length


def test_window_input_gradient_choice():
    from fastconv._args.conv_nd import conv_nd_args_from_shapes
    from fastconv.algos.conv3d import window
    from fastconv.conv1d_window import as_volume
    x, wt, _, kwargs = nd.nd_arrays(WINDOW_CASES[0])
    a = nd.record(x, wt, kwargs)
    assert window.input_gradient_problem(a) is None and window.input_gradient_by_fold(a)
    volume = conv_nd_args_from_shapes("conv3d", (4, 16, 32, 32, 32), (32, 16, 3, 3, 3),
                                      rank=3, padding=1)
    assert window.input_gradient_by_fold(volume)        # 16 input channels: skinny GEMM
    fwd, back = (fastconv.conv3d_plan((4, 16, 32, 32, 32), (32, 16, 3, 3, 3), padding=1,
                                      backward=b).estimates["im2col"] for b in (False, True))
    assert fwd < back < 3 * fwd         # the gradients' GEMMs, not a fixed 3x forward
    audio = conv_nd_args_from_shapes("conv1d", (8, 64, 16000), (64, 64, 9), rank=1,
                                     padding=4)
    assert not window.input_gradient_by_fold(as_volume(audio))


def test_im2col_window_takes_stride_one_only():
    from fastconv.algos.conv3d import window
    x, wt, _, kwargs = nd.nd_arrays(CASES[1])
    assert not window.applies(nd.record(x, wt, kwargs))


def test_unbatched_volume_and_empty_batch():
    nd.check_unbatched(fastconv.conv3d, fastconv.conv3d_backward, CASES[0])
    x, wt, b, kwargs = nd.nd_arrays(CASES[0])
    empty = fastconv.conv3d(x[:0], wt, b, **kwargs)
    assert empty.shape == (0, 3, 3, 2, 4)
    gx, gw, gb = fastconv.conv3d_backward(empty, x[:0], wt, **kwargs)
    assert gx.shape == (0, 2, 5, 4, 6) and not gw.any() and not gb.any()


def test_needs_input_grad_leaves_out_gradients():
    x, wt, _, kwargs = nd.nd_arrays(CASES[0])
    gy = np.ones((2, 3, 3, 2, 4))
    gx, gw, gb = fastconv.conv3d_backward(gy, x, wt, needs_input_grad=(True, False, False))
    assert gw is None and gb is None and gx.shape == x.shape


@pytest.mark.parametrize("algo", ("naive", "im2col", "fft"))
def test_gradcheck_float64(algo):
    rng = np.random.default_rng(3)
    x = Tensor(rng.standard_normal((1, 2, 4, 3, 4)), requires_grad=True)
    w = Tensor(rng.standard_normal((2, 1, 2, 2, 2)), requires_grad=True)
    b = Tensor(rng.standard_normal(2), requires_grad=True)
    assert gradcheck(lambda x, w, b: F.conv3d(x, w, b, stride=(1, 2, 1), padding=1,
                                              dilation=(2, 1, 1), groups=2, algo=algo),
                     [x, w, b])


def test_auto_keeps_the_formulas_nan_pattern_where_it_would_take_the_fft():
    x = np.ones((1, 1, 20, 20, 20))
    w = np.ones((1, 1, 9, 9, 9))
    assert fastconv.conv3d_plan(x.shape, w.shape).algorithm == "fft"
    x[0, 0, 0, 0, 0] = np.nan
    y = fastconv.conv3d(x, w)
    assert np.isnan(y[0, 0, 0, 0, 0]) and np.isfinite(y[0, 0, 1:]).all()
    assert np.isnan(fastconv.conv3d(x, w, algo="fft")).all()     # what the FFT does


def test_plan_explains_and_picks_by_cost():
    small = fastconv.conv3d_plan((4, 16, 32, 32, 32), (32, 16, 3, 3, 3), padding=1)
    assert small.algorithm == "winograd" and small.flops == 2 * 4 * 32 * 32 ** 3 * 16 * 27
    assert set(small.estimates) == {"naive", "im2col", "fft", "winograd"}
    assert small.why.startswith("winograd: modelled ") and "F(4x4, 3x3)" in small.why
    even = fastconv.conv3d_plan((4, 16, 32, 32, 32), (32, 16, 2, 2, 2), padding=1)
    assert even.algorithm == "im2col" and "winograd" not in even.estimates
    big = fastconv.conv3d_plan((1, 1, 48, 48, 48), (1, 1, 15, 15, 15), padding=7)
    assert big.algorithm == "fft"
    back = fastconv.conv3d_plan((4, 16, 32, 32, 32), (32, 16, 3, 3, 3), padding=1,
                                backward=True)
    assert back.estimates["im2col"] > small.estimates["im2col"] and "(backward)" in back.why
    assert back.algorithm == "winograd" and "grad_x Winograd" in back.why


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    (dict(layout="NCHW"), ValueError,
     r"conv3d: layout='NCHW' is not supported; acceptable layouts are 'NCDHW', 'NDHWC'"),
    (dict(stride=(1, 1)), ValueError, r"conv3d: stride=\(1, 1\) must be an int or 3 ints "
                                      r"\(d, h, w\), got 2 values"),
    (dict(dilation=0), ValueError, r"conv3d: dilation=0 must be positive"),
    (dict(padding=1.5), TypeError, r"conv3d: padding=1.5 must be an int or a tuple of 3"),
    (dict(padding="same", stride=2), ValueError, r"conv3d: padding='same' requires stride 1"),
    (dict(padding="full"), ValueError, r"conv3d: padding='full' is not understood"),
    (dict(padding=((1, 1), (1,), (0, 0))), ValueError,
     r"conv3d: padding=.*each axis needs a pair of ints \(low, high\), got \(1,\) for height"),
    (dict(groups=0), ValueError, r"conv3d: groups=0 must be positive"),
    (dict(groups=2), ValueError, r"conv3d: groups=2 must divide C_in=3"),
    (dict(dilation=(1, 3, 1)), ValueError,
     r"conv3d: kernel height 7 \(k=3, dilation=3\) is larger than the padded input height 5"),
    (dict(algo="gemm"), ValueError,
     r"conv3d: algo='gemm' is not known; acceptable algorithms are 'auto', 'naive', "
     r"'im2col', 'fft', 'winograd'"),
    (dict(algo="winograd", stride=(1, 2, 1)), ValueError,
     r"conv3d: algo='winograd' needs a \(kd, 3, 3\) kernel with stride 1 and dilation 1; "
     r"got kernel \(3, 3, 3\), stride \(1, 2, 1\), dilation \(1, 1, 1\)"),
])
def test_errors_name_op_rule_and_values(kwargs, exc, match):
    x, wt = np.ones((1, 3, 6, 5, 6)), np.ones((2, 3, 3, 3, 3))
    with pytest.raises(exc, match=match):
        fastconv.conv3d(x, wt, **kwargs)


def test_shape_and_dtype_errors():
    with pytest.raises(ValueError, match=r"conv3d: input must be 5-D \(batched\) or 4-D "
                                         r"\(unbatched\) in layout NCDHW, got 3-D"):
        fastconv.conv3d(np.ones((1, 6, 6)), np.ones((1, 1, 3, 3, 3)))
    with pytest.raises(ValueError, match=r"conv3d: weight has 2 input channels per group but "
                                         r"input has C_in=3"):
        fastconv.conv3d(np.ones((1, 3, 4, 4, 4)), np.ones((1, 2, 3, 3, 3)))
    with pytest.raises(ValueError, match=r"conv3d: bias must have shape \(C_out,\) = \(1,\)"):
        fastconv.conv3d(np.ones((1, 1, 4, 4, 4)), np.ones((1, 1, 3, 3, 3)), np.ones(2))
    with pytest.raises(TypeError, match=r"conv3d: input has dtype int64"):
        fastconv.conv3d(np.ones((1, 1, 4, 4, 4), int), np.ones((1, 1, 3, 3, 3)))
    with pytest.raises(ValueError, match=r"conv3d_backward: grad_y must have shape "
                                         r"\(1, 1, 2, 2, 2\)"):
        fastconv.conv3d_backward(np.ones((1, 1, 2, 2, 3)), np.ones((1, 1, 4, 4, 4)),
                                 np.ones((1, 1, 3, 3, 3)))
    with pytest.raises(TypeError, match=r"conv3d_backward: needs_input_grad=1 must be three"):
        fastconv.conv3d_backward(np.ones((1, 1, 2, 2, 2)), np.ones((1, 1, 4, 4, 4)),
                                 np.ones((1, 1, 3, 3, 3)), needs_input_grad=1)


# ------------------------------------------------------------------------ nn.Conv3d
def test_module_shapes_init_and_repr():
    fastconv.manual_seed(0)
    m = fastconv.nn.Conv3d(2, 4, (3, 1, 3), padding="same", bias=False)
    assert m.weight.shape == (4, 2, 3, 1, 3) and m.bias is None
    assert np.abs(m.weight.data).max() <= 1 / np.sqrt(2 * 9)
    assert repr(m) == ("Conv3d(2, 4, kernel_size=(3, 1, 3), stride=(1, 1, 1), "
                       "padding=same, bias=False)")
    assert m(np.ones((2, 5, 4, 3), np.float32)).shape == (4, 5, 4, 3)
    with pytest.raises(ValueError, match=r"Conv3d: groups=3 must divide in_channels=2"):
        fastconv.nn.Conv3d(2, 3, 3, groups=3)


def test_torch_forward_backward_and_state_dict():
    torch = pytest.importorskip("torch")
    tm = torch.nn.Conv3d(4, 2, (2, 3, 3), stride=(1, 2, 1), padding=(1, 0, 2),
                         dilation=(1, 1, 2), groups=2).double()
    m = fastconv.nn.Conv3d(4, 2, (2, 3, 3), stride=(1, 2, 1), padding=(1, 0, 2),
                           dilation=(1, 1, 2), groups=2, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 7, 6))
    assert_layer_matches_torch(tm, m, x)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes_match_torch(mode):
    torch = pytest.importorskip("torch")
    tm = torch.nn.Conv3d(2, 2, (3, 2, 3), padding=(1, 1, 2), padding_mode=mode).double()
    m = fastconv.nn.Conv3d(2, 2, (3, 2, 3), padding=(1, 1, 2), padding_mode=mode,
                           dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 3, 5))
    assert_layer_matches_torch(tm, m, x)


def test_warmup_compiles_every_conv3d_algorithm():
    from fastconv.algos import conv3d as algos3d
    from fastconv.tools import warmup

    assert warmup.CONV3D_ALGOS == tuple(algos3d.ALGORITHMS)


def test_channels_last_layer_keeps_torchs_weight():
    x = np.random.default_rng(4).standard_normal((2, 2, 4, 5, 3))
    nd.check_channels_last_layer(fastconv.nn.Conv3d, "NDHWC", x, in_channels=2, out_channels=3,
                              kernel_size=(2, 3, 2), padding=1, padding_mode="circular")
    with pytest.raises(ValueError, match=r"Conv3d: layout='NHWC' is not supported"):
        fastconv.nn.Conv3d(2, 2, 3, layout="NHWC")
