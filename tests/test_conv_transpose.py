"""conv_transpose2d: the scatter reference, the adjoint of conv2d, every algorithm, both
layouts and dtypes; its backward, the autograd op and nn.ConvTranspose2d (torch where
installed); the plan; errors."""

import numpy as np
import pytest

import fastconv
from fastconv import Tensor, gradcheck, nn

from . import reference as ref
from .conftest import from_nhwc, to_nhwc

ALGOS = fastconv.ALGORITHMS + ("auto",)

# (n, c_in, h, w, c_out, kh, kw, stride, padding, output_padding, dilation, groups)
CASES = [
    (2, 3, 4, 5, 2, 3, 3, 1, 0, 0, 1, 1),
    (2, 3, 4, 5, 2, 3, 3, 1, 1, 0, 1, 1),
    (1, 4, 3, 4, 6, 4, 4, 2, 1, 1, 1, 2),
    (2, 2, 3, 3, 2, 3, 2, (2, 3), (1, 0), (1, 2), 1, 1),
    (1, 2, 4, 3, 4, 3, 3, 1, 1, 0, 2, 2),
    (1, 2, 3, 3, 2, 2, 3, 2, 0, 0, (2, 1), 1),
    (1, 3, 6, 6, 3, 3, 3, 1, 3, 0, 1, 1),       # padding 3 > 2: Winograd's grad_x refuses
    (1, 2, 3, 3, 2, 2, 2, 1, 0, 2, 3, 1),       # output_padding >= stride (dilation 3)
    (1, 1, 2, 2, 2, 2, 3, 1, 2, (2, 1), (3, 2), 1),  # ... reaching into the padding
]


def _cid(case):
    return "n{}c{}_{}x{}_d{}_k{}x{}_s{}_p{}_op{}_r{}_g{}".format(*case).replace(" ", "")


def _problem(case, dtype, seed=0):
    n, c_in, h, w, c_out, kh, kw, stride, padding, out_pad, dilation, groups = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c_in, h, w)).astype(dtype)
    wt = rng.standard_normal((c_in, c_out // groups, kh, kw)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    kwargs = dict(stride=stride, padding=padding, output_padding=out_pad, groups=groups,
                  dilation=dilation)
    return x, wt, b, kwargs


def _pairs(kwargs):
    return {k: (v, v) if isinstance(v, int) and k != "groups" else v
            for k, v in kwargs.items()}


def _run(x, w, b, kwargs, layout, algo):
    """fastconv.conv_transpose2d in ``layout``, the result as NCHW."""
    if layout == "NCHW":
        return fastconv.conv_transpose2d(x, w, b, **kwargs, algo=algo)
    xl, wl = to_nhwc(x, w)
    return from_nhwc(fastconv.conv_transpose2d(xl, wl, b, **kwargs, layout="NHWC",
                                               algo=algo))


def _can_run(algo, case):
    """Winograd computes conv2d's input gradient for 3x3, stride 1, padding at most 2
    (for a dilated layer: in each of its undilated phase problems) only
    (conv_transpose2d refuses the rest)."""
    from fastconv._args import transpose_args_from_shapes
    from fastconv.algos import winograd

    n, c_in, h, w, c_out, kh, kw, stride, padding, out_pad, dilation, groups = case
    a = transpose_args_from_shapes("t", (n, c_in, h, w), (c_in, c_out // groups, kh, kw),
                                   stride, padding, out_pad, groups, dilation)
    return algo != "winograd" or winograd.grad_x_supported(a.conv)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", CASES, ids=_cid)
def test_matches_scatter_reference(case, algo, layout):
    x, w, b, kwargs = _problem(case, np.float64)
    if not _can_run(algo, case):
        with pytest.raises(ValueError, match="conv_transpose2d: algo='winograd'"):
            _run(x, w, b, kwargs, layout, algo)
        return
    want = ref.conv_transpose2d(x, w, b, **_pairs(kwargs))
    got = _run(x, w, b, kwargs, layout, algo)
    assert got.dtype == np.float64 and got.shape == want.shape
    assert ref.rel_error(got, want) < 1e-10


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", [c for c in CASES
                                  if not isinstance(c[9], tuple) and c[9] < c[7]], ids=_cid)
def test_adjoint_of_conv2d(case, algo, layout, dtype):
    """<conv2d(u), v> = <u, conv_transpose2d(v)> with the same weight and geometry."""
    if not _can_run(algo, case):
        pytest.skip("refused (pinned in test_matches_scatter_reference)")
    v, w, _, kwargs = _problem(case, dtype)
    y_shape = ref.conv_transpose2d(v[:, :, :, :], w, None, **_pairs(kwargs)).shape
    u = np.random.default_rng(1).standard_normal(y_shape).astype(dtype)
    conv_kw = {k: kwargs[k] for k in ("stride", "padding", "dilation", "groups")}
    if layout == "NCHW":
        lhs = np.vdot(fastconv.conv2d(u, w, **conv_kw).astype(np.float64), v)
        rhs = np.vdot(u, _run(v, w, None, kwargs, layout, algo).astype(np.float64))
    else:
        ul, wl = to_nhwc(u, w)
        vl = np.ascontiguousarray(v.transpose(0, 2, 3, 1))
        lhs = np.vdot(fastconv.conv2d(ul, wl, **conv_kw, layout="NHWC").astype(np.float64),
                      vl)
        t = fastconv.conv_transpose2d(vl, wl, **kwargs, layout="NHWC", algo=algo)
        rhs = np.vdot(ul, t.astype(np.float64))
    tol = 1e-10 if dtype == np.float64 else 1e-4
    assert abs(lhs - rhs) <= tol * max(1.0, abs(lhs))


def test_output_padding_rows_get_only_the_bias():
    """output_padding past the inputs' reach (stride 1, dilation 3 allows 2): the last
    rows and columns are the bias alone."""
    x, w, b, kwargs = _problem((1, 2, 3, 3, 2, 2, 2, 1, 0, 2, 3, 1), np.float64)
    y = fastconv.conv_transpose2d(x, w, b, **kwargs)
    assert y.shape == (1, 2, 8, 8)
    assert np.array_equal(y[0, :, 6:, :], np.broadcast_to(b[:, None, None], (2, 2, 8)))
    assert ref.rel_error(y, ref.conv_transpose2d(x, w, b, **_pairs(kwargs))) < 1e-12


def test_output_padding_reaches_into_the_cropped_padding():
    """Without output_padding the padding crops the whole output away; output_padding 2
    (dilation 3) extends it at the bottom / right into the cropped rows, where the input's
    last kernel tap lands (torch gives the same)."""
    x = np.ones((1, 1, 1, 1))
    w = np.ones((1, 2, 2, 2))
    b = np.array([3.0, -1.0])
    kwargs = dict(stride=1, padding=2, output_padding=2, dilation=3)
    y = fastconv.conv_transpose2d(x, w, b, **kwargs)
    want = np.broadcast_to(b[None, :, None, None], (1, 2, 2, 2)).copy()
    want[:, :, 1, 1] += 1
    assert np.array_equal(y, want)
    assert np.array_equal(y, ref.conv_transpose2d(x, w, b, **_pairs(kwargs)))
    for kwargs, size in ((dict(padding=3, output_padding=2, dilation=5), 2),
                         (dict(padding=1, output_padding=2, dilation=5), 1)):
        w_ = w if size == 2 else w[:, :, :1, :1]    # no input reaches this output
        y = fastconv.conv_transpose2d(x, w_, b, **kwargs)
        assert np.array_equal(y, np.broadcast_to(b[None, :, None, None], (1, 2, size, size)))
        assert np.array_equal(y, ref.conv_transpose2d(x, w_, b, **_pairs(kwargs)))


def test_unbatched_half_and_empty_batch():
    x, w, b, kwargs = _problem(CASES[2], np.float32)
    want = fastconv.conv_transpose2d(x, w, b, **kwargs)
    one = fastconv.conv_transpose2d(x[0], w, b, **kwargs)
    assert one.shape == want.shape[1:] and np.allclose(one, want[0], atol=1e-5)
    half = fastconv.conv_transpose2d(x.astype(np.float16), w.astype(np.float16),
                                     b.astype(np.float16), **kwargs)
    assert half.dtype == np.float16
    assert ref.rel_error(half, want) < 1e-2
    empty = fastconv.conv_transpose2d(x[:0], w, b, **kwargs)
    assert empty.shape == (0,) + want.shape[1:]


# ------------------------------------------------------------------------------ backward
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[4], CASES[8]], ids=_cid)
def test_backward_matches_the_adjoint_reference(case, algo, layout):
    if not _can_run(algo, case):
        pytest.skip("refused (pinned in test_matches_scatter_reference)")
    x, w, _, kwargs = _problem(case, np.float64)
    p = _pairs(kwargs)
    gy = np.random.default_rng(2).standard_normal(ref.conv_transpose2d(x, w, **p).shape)
    want_x, want_w, want_b = ref.conv_transpose2d_backward(gy, x, w, **p)
    if layout == "NCHW":
        gx, gw, gb = fastconv.conv_transpose2d_backward(gy, x, w, **kwargs, algo=algo)
    else:
        xl, wl = to_nhwc(x, w)
        gx, gw, gb = fastconv.conv_transpose2d_backward(
            np.ascontiguousarray(gy.transpose(0, 2, 3, 1)), xl, wl, **kwargs,
            layout="NHWC", algo=algo)
        gx, gw = from_nhwc(gx), gw.transpose(3, 2, 0, 1)
    assert ref.rel_error(gx, want_x) < 1e-10
    assert ref.rel_error(gw, want_w) < 1e-10
    assert ref.rel_error(gb, want_b) < 1e-12


def test_backward_needs_input_grad_and_unbatched():
    x, w, _, kwargs = _problem(CASES[2], np.float64)
    gy = np.ones((6, 7, 9))
    gx, gw, gb = fastconv.conv_transpose2d_backward(gy, x[0], w, **kwargs,
                                                    needs_input_grad=(True, False, True))
    full = fastconv.conv_transpose2d_backward(gy[None], x[:1], w, **kwargs)
    assert gw is None and gx.shape == x.shape[1:]
    assert np.allclose(gx, full[0][0]) and np.allclose(gb, full[2])


def grouped_gradcheck(algo="auto", n=1):
    """float64 central differences of all three inputs, stride 2 with output_padding,
    groups 2."""
    rng = np.random.default_rng(3)
    x = Tensor(rng.standard_normal((n, 2, 2, 3)), requires_grad=True)
    w = Tensor(rng.standard_normal((2, 2, 3, 2)), requires_grad=True)
    b = Tensor(rng.standard_normal(4), requires_grad=True)

    def fn(x, w, b):
        return nn.functional.conv_transpose2d(x, w, b, stride=2, padding=1,
                                              output_padding=1, groups=2, algo=algo)
    return gradcheck(fn, [x, w, b])


def test_gradcheck_through_autograd():
    assert grouped_gradcheck()


def test_gradcheck_nhwc_dilated():
    rng = np.random.default_rng(4)
    x = Tensor(rng.standard_normal((1, 2, 3, 2)), requires_grad=True)
    w = Tensor(rng.standard_normal((2, 2, 3, 2)), requires_grad=True)
    assert gradcheck(lambda x, w: nn.functional.conv_transpose2d(
        x, w, dilation=2, output_padding=1, layout="NHWC"), [x, w])


# ----------------------------------------------------------------------------------- torch
@pytest.mark.parametrize("case", CASES, ids=_cid)
def test_matches_torch_forward_and_backward(case):
    torch = pytest.importorskip("torch")
    x, w, b, kwargs = _problem(case, np.float64)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv_transpose2d(tx, tw, tb, **kwargs)
    gy = np.random.default_rng(5).standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(gy))
    y = fastconv.conv_transpose2d(x, w, b, **kwargs)
    assert ref.rel_error(y, ty.detach().numpy()) < 1e-12
    grads = fastconv.conv_transpose2d_backward(gy, x, w, **kwargs)
    for got, want in zip(grads, (tx.grad, tw.grad, tb.grad), strict=True):
        assert ref.rel_error(got, want.numpy()) < 1e-12


def test_layer_loads_torch_state_dict():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    theirs = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1,
                                      groups=2, dilation=1)
    ours = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
    state = {k: v.detach().numpy() for k, v in theirs.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in state.items()}
    ours.load_state_dict(state)
    x = np.random.default_rng(6).standard_normal((2, 4, 5, 5)).astype(np.float32)
    want = theirs(torch.tensor(x)).detach().numpy()
    assert np.allclose(ours(x).data, want, atol=1e-5)
    want = theirs(torch.tensor(x), output_size=(10, 10)).detach().numpy()
    assert np.allclose(ours(x, output_size=(10, 10)).data, want, atol=1e-5)


def test_layer_initialisation_bounds_as_torch():
    """torch's fan_in of a (in, out/groups, kh, kw) weight is out/groups * kh * kw."""
    layer = nn.ConvTranspose2d(8, 2, 3, rng=np.random.default_rng(0), dtype=np.float64)
    bound = 1 / np.sqrt(2 * 9)
    assert layer.weight.shape == (8, 2, 3, 3) and layer.bias.shape == (2,)
    assert np.abs(layer.weight.data).max() <= bound
    assert np.abs(layer.weight.data).max() > 0.9 * bound
    assert np.abs(layer.bias.data).max() <= bound


def test_layer_nhwc_draws_the_same_weight():
    a = nn.ConvTranspose2d(3, 4, (2, 3), rng=np.random.default_rng(0))
    b = nn.ConvTranspose2d(3, 4, (2, 3), layout="NHWC", rng=np.random.default_rng(0))
    assert b.weight.shape == (2, 3, 4, 3)
    assert np.array_equal(b.weight.data, a.weight.data.transpose(2, 3, 1, 0))
    x = np.random.default_rng(1).standard_normal((1, 3, 4, 4)).astype(np.float32)
    ya = a(x).data
    yb = b(np.ascontiguousarray(x.transpose(0, 2, 3, 1))).data
    assert np.allclose(ya, yb.transpose(0, 3, 1, 2), atol=1e-5)
    assert "layout='NHWC'" in repr(b)


# ------------------------------------------------------------------------------------ plan
def test_plan_is_the_backward_plan_of_the_conv2d_problem():
    p = fastconv.plan_conv_transpose2d((16, 64, 28, 28), (64, 32, 4, 4), 2, 1)
    beneath = fastconv.plan((16, 32, 56, 56), (64, 32, 4, 4), 2, 1, backward=True)
    assert p.estimates == beneath.estimates
    assert p.algorithm in fastconv.ALGORITHMS


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, match", [
    (dict(stride=2, output_padding=2),
     r"conv_transpose2d: output_padding=2 must be smaller than stride=2 or dilation=1 "
     r"\(height\)"),
    (dict(stride=(1, 2), output_padding=(0, 1), dilation=(1, 1), padding=5),
     r"conv_transpose2d: output height .* = -4 must be positive"),
    (dict(padding="same"), r"conv_transpose2d: padding='same' must be an int or a pair"),
    (dict(groups=2), r"conv_transpose2d: groups=2 must divide C_in=3"),
    (dict(algo="winograd", stride=2),
     r"conv_transpose2d: algo='winograd' needs a 3x3 kernel with stride 1"),
    (dict(algo="magic"), r"conv_transpose2d: algo='magic' is not known"),
])
def test_errors(kwargs, match):
    x, w = np.ones((1, 3, 4, 4)), np.ones((3, 2, 3, 3))
    with pytest.raises(ValueError, match=match):
        fastconv.conv_transpose2d(x, w, **kwargs)


def test_winograd_refuses_a_phase_padded_beyond_2():
    """Dilation 2, padding 5: conv2d's phase problems are padded by 3."""
    x, w = np.ones((1, 3, 12, 12)), np.ones((3, 2, 3, 3))
    with pytest.raises(ValueError, match=r"conv_transpose2d: algo='winograd' does not "
                                         r"compute conv2d's input gradient .* dilation "
                                         r"\(2, 2\)"):
        fastconv.conv_transpose2d(x, w, padding=5, dilation=2, algo="winograd")


def test_array_errors():
    x, w = np.ones((1, 3, 4, 4)), np.ones((3, 2, 3, 3))
    with pytest.raises(ValueError, match=r"conv_transpose2d: weight \(2, 2, 3, 3\) holds "
                                         r"filters for 2 input channels .* C_in=3"):
        fastconv.conv_transpose2d(x, np.ones((2, 2, 3, 3)))
    with pytest.raises(ValueError, match=r"conv_transpose2d: bias must have shape \(C_out,\) "
                                         r"= \(2,\), got \(3,\)"):
        fastconv.conv_transpose2d(x, w, np.ones(3))
    with pytest.raises(TypeError, match="conv_transpose2d: inputs must share one dtype"):
        fastconv.conv_transpose2d(x, w.astype(np.float32))
    with pytest.raises(ValueError, match=r"conv_transpose2d_backward: algo='winograd' needs "
                                         r"a 3x3 kernel with stride 1"):
        fastconv.conv_transpose2d_backward(np.ones((1, 2, 9, 9)), x, w, stride=2,
                                           algo="winograd")
    with pytest.raises(ValueError, match=r"conv_transpose2d_backward: grad_y must have shape "
                                         r"\(1, 2, 6, 6\)"):
        fastconv.conv_transpose2d_backward(np.ones((1, 2, 5, 5)), x, w)


def test_layer_errors():
    with pytest.raises(ValueError, match="ConvTranspose2d: padding_mode='reflect' is not "
                                         "supported; only 'zeros'"):
        nn.ConvTranspose2d(2, 2, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="ConvTranspose2d: groups=3 must divide"):
        nn.ConvTranspose2d(2, 3, 3, groups=3)
    layer = nn.ConvTranspose2d(2, 2, 3, stride=2)
    with pytest.raises(ValueError, match=r"ConvTranspose2d: output_size=\(12, 9\) gives "
                                         r"output height 12, outside the reachable range "
                                         r"\[9, 10\]"):
        layer(np.ones((1, 2, 4, 4), np.float32), output_size=(12, 9))


def test_layer_in_a_sequential_takes_one_unbatched_image_and_trains():
    rng = np.random.default_rng(7)
    net = nn.Sequential(nn.ConvTranspose2d(2, 3, 3, stride=2, rng=rng, dtype=np.float64),
                        nn.ReLU())
    x = rng.standard_normal((2, 4, 4))
    y = net(x)
    assert y.shape == (3, 9, 9)
    assert np.allclose(y.data, net(x[None]).data[0])
    loss = (net(x[None]) * net(x[None])).sum()
    loss.backward()
    assert net[0].weight.grad.shape == (2, 3, 3, 3) and net[0].bias.grad.shape == (3,)
    assert np.abs(net[0].weight.grad).max() > 0
