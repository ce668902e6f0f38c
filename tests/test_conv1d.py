"""conv1d and conv1d_backward: the formula's reference, layouts, dtypes, every conv2d
algorithm, gradients by finite differences, torch, the autograd layer and errors."""

import numpy as np
import pytest

import fastconv
from fastconv import Tensor, gradcheck
from fastconv.nn import functional as F

from . import nd_checks as nd
from . import reference as ref
from .conftest import assert_layer_matches_torch

ALGOS = ("naive", "im2col", "fft", "auto")

# (n, c_in, (w,), c_out, (k,), stride, padding, dilation, groups)
CASES = [
    (2, 3, (11,), 4, (3,), 1, 0, 1, 1),
    (1, 4, (12,), 6, (3,), 2, 1, 1, 2),
    (2, 2, (13,), 3, (4,), 1, "same", 2, 1),
    (1, 3, (9,), 3, (3,), 3, (2, 1), 1, 3),      # depthwise, uneven (lo, hi) padding
    (2, 2, (8,), 2, (1,), 1, "valid", 1, 1),     # pointwise
    (1, 2, (10,), 4, (5,), 2, 3, (2,), 1),
]


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_matches_reference(case, algo):
    nd.check_forward(fastconv.conv1d, case, algo, 1e-10)


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", CASES[:4], ids=str)
def test_backward_matches_reference(case, algo):
    nd.check_backward(fastconv.conv1d_backward, case, algo, 1e-10)


@pytest.mark.parametrize("case", CASES[0:5:2] + [(2, 2, (6,), 4, (2,), 1, (3, 0), 1, 2)],
                         ids=str)
def test_im2col_at_stride_one_runs_the_windowed_unfold(case, monkeypatch):
    from fastconv import conv1d_window
    ran = []
    for name in ("forward", "backward"):
        real = getattr(conv1d_window, name)
        monkeypatch.setattr(conv1d_window, name,
                            lambda *args, _real=real, _name=name: ran.append(_name)
                            or _real(*args))
    nd.check_forward(fastconv.conv1d, case, "im2col", 1e-10)
    nd.check_backward(fastconv.conv1d_backward, case, "im2col", 1e-10)
    assert ran == ["forward", "backward"]
    x, wt, b, kwargs = nd.nd_arrays(case, np.float16)
    fastconv.conv1d(x, wt, b, **kwargs, algo="im2col")         # float16: conv2d's path
    assert ran.count("forward") == 1


@pytest.mark.parametrize("case", CASES[:3], ids=str)
def test_nwc_layout_is_the_transposed_problem(case):
    x, wt, b, kwargs = nd.nd_arrays(case, np.float32)
    want = fastconv.conv1d(x, wt, b, **kwargs)
    xn, wn = x.transpose(0, 2, 1), wt.transpose(2, 1, 0)      # NWC views, WIO
    got = fastconv.conv1d(xn, wn, b, **kwargs, layout="NWC")
    np.testing.assert_allclose(got, want.transpose(0, 2, 1), rtol=1e-5, atol=1e-5)
    gy = np.ones_like(want)
    gx, gw, gb = fastconv.conv1d_backward(gy.transpose(0, 2, 1), xn, wn, **kwargs,
                                          layout="NWC")
    rx, rw, rb = fastconv.conv1d_backward(gy, x, wt, **kwargs)
    np.testing.assert_allclose(gx, rx.transpose(0, 2, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gw, rw.transpose(2, 1, 0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(gb, rb, rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_dtypes(dtype):
    x, wt, b, kwargs = nd.nd_arrays(CASES[1], dtype)
    a = nd.record(x, wt, kwargs)
    got = fastconv.conv1d(x, wt, b, **kwargs)
    assert got.dtype == dtype
    want = ref.conv_nd(x, wt, b, a.stride, a.padding, a.dilation, a.groups)
    assert ref.rel_error(got, want) < (1e-5 if dtype == np.float32 else 2e-3)
    grads = fastconv.conv1d_backward(np.ones(got.shape, dtype), x, wt, **kwargs)
    assert all(g.dtype == dtype for g in grads)


def test_unbatched_signal_gives_2d_output():
    nd.check_unbatched(fastconv.conv1d, fastconv.conv1d_backward, CASES[0])


def test_needs_input_grad_leaves_out_gradients():
    x, wt, _, kwargs = nd.nd_arrays(CASES[0])
    gy = np.ones((2, 4, 9))
    gx, gw, gb = fastconv.conv1d_backward(gy, x, wt, needs_input_grad=(False, True, False))
    assert gx is None and gb is None and gw.shape == wt.shape


def test_gradcheck_float64():
    rng = np.random.default_rng(3)
    x = Tensor(rng.standard_normal((2, 2, 7)), requires_grad=True)
    w = Tensor(rng.standard_normal((4, 1, 3)), requires_grad=True)
    b = Tensor(rng.standard_normal(4), requires_grad=True)
    assert gradcheck(lambda x, w, b: F.conv1d(x, w, b, stride=2, padding=(1, 2),
                                              dilation=2, groups=2), [x, w, b])


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    (dict(layout="NCHW"), ValueError,
     r"conv1d: layout='NCHW' is not supported; acceptable layouts are 'NCW', 'NWC'"),
    (dict(stride=0), ValueError, r"conv1d: stride=0 must be positive"),
    (dict(stride=(1, 2)), ValueError, r"conv1d: stride=\(1, 2\) must be an int or 1 ints"),
    (dict(padding="same", stride=2), ValueError, r"conv1d: padding='same' requires stride 1"),
    (dict(padding=(1, -1)), ValueError, r"conv1d: padding=.* must be non-negative"),
    (dict(groups=2), ValueError, r"conv1d: groups=2 must divide C_in=3"),
    (dict(dilation=5), ValueError,
     r"conv1d: kernel width 11 \(k=3, dilation=5\) is larger than the padded input width 8"),
    (dict(algo="winograd", stride=2), ValueError,
     r"conv1d: algo='winograd' needs stride 1 and dilation 1 \(use algo='auto'"),
    (dict(algo="best"), ValueError, r"conv1d: algo='best' is not known"),
])
def test_errors_name_op_rule_and_values(kwargs, exc, match):
    x, wt = np.ones((1, 3, 8)), np.ones((2, 3, 3))
    with pytest.raises(exc, match=match):
        fastconv.conv1d(x, wt, **kwargs)


def test_shape_and_dtype_errors():
    with pytest.raises(ValueError, match=r"conv1d: input must be 3-D \(batched\) or 2-D "
                                         r"\(unbatched\) in layout NCW, got 4-D"):
        fastconv.conv1d(np.ones((1, 1, 3, 8)), np.ones((1, 1, 3)))
    with pytest.raises(ValueError, match=r"conv1d: weight must be 3-D \(OIW for layout NCW\)"):
        fastconv.conv1d(np.ones((1, 1, 8)), np.ones((1, 1, 1, 3)))
    with pytest.raises(TypeError, match=r"conv1d: inputs must share one dtype"):
        fastconv.conv1d(np.ones((1, 1, 8)), np.ones((1, 1, 3), np.float32))
    with pytest.raises(ValueError, match=r"conv1d_backward: grad_y must have shape "
                                         r"\(1, 1, 6\)"):
        fastconv.conv1d_backward(np.ones((1, 1, 5)), np.ones((1, 1, 8)), np.ones((1, 1, 3)))


def test_conv2d_still_refuses_1d_and_3d_layouts():
    for name in ("NCW", "NCDHW"):
        with pytest.raises(ValueError, match=rf"conv2d: layout='{name}' is not supported; "
                                             r"acceptable layouts are 'NCHW', 'NHWC'"):
            fastconv.conv2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)), layout=name)


def test_runs_on_views_without_copies():
    x = np.ones((2, 3, 16))
    seen = []
    real = fastconv.conv.conv2d

    def spy(x4, *args, **kwargs):
        seen.append(x4)
        return real(x4, *args, **kwargs)

    fastconv.conv.conv2d = spy
    try:
        fastconv.conv1d(x, np.ones((2, 3, 3)))
    finally:
        fastconv.conv.conv2d = real
    assert seen[0].shape == (2, 3, 1, 16) and np.shares_memory(seen[0], x)


# ------------------------------------------------------------------------ nn.Conv1d
def test_module_shapes_init_and_repr():
    fastconv.manual_seed(0)
    m = fastconv.nn.Conv1d(4, 6, 5, stride=2, padding=2, groups=2)
    assert m.weight.shape == (6, 2, 5) and m.bias.shape == (6,)
    bound = 1 / np.sqrt(2 * 5)
    assert np.abs(m.weight.data).max() <= bound and np.abs(m.bias.data).max() <= bound
    assert repr(m) == ("Conv1d(4, 6, kernel_size=(5,), stride=(2,), padding=(2,), "
                       "groups=2)")
    y = m(np.ones((3, 4, 20), np.float32))
    assert y.shape == (3, 6, 10)
    with pytest.raises(ValueError, match=r"Conv1d: padding_mode='mirror' is not known; "
                                         r"acceptable values are 'zeros', 'reflect'"):
        fastconv.nn.Conv1d(4, 6, 3, padding_mode="mirror")


def test_torch_forward_backward_and_state_dict():
    torch = pytest.importorskip("torch")
    tm = torch.nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2).double()
    m = fastconv.nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2,
                           dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((2, 4, 17))
    assert_layer_matches_torch(tm, m, x)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes_match_torch(mode):
    torch = pytest.importorskip("torch")
    tm = torch.nn.Conv1d(2, 3, 3, padding=2, padding_mode=mode).double()
    m = fastconv.nn.Conv1d(2, 3, 3, padding=2, padding_mode=mode, dtype=np.float64)
    assert repr(m).endswith(f"padding=(2,), padding_mode={mode})")
    assert_layer_matches_torch(tm, m, np.random.default_rng(0).standard_normal((2, 2, 9)))


def test_channels_last_layer_keeps_torchs_weight():
    x = np.random.default_rng(4).standard_normal((2, 4, 11))
    nd.check_channels_last_layer(fastconv.nn.Conv1d, "NWC", x, in_channels=4, out_channels=6,
                              kernel_size=3, stride=2, padding=1, groups=2,
                              padding_mode="reflect")
    with pytest.raises(ValueError, match=r"Conv1d: layout='NHWC' is not supported"):
        fastconv.nn.Conv1d(2, 2, 3, layout="NHWC")
