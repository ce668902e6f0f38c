"""pad / pad_backward, the padding layers and Conv2d's padding_mode: against the slow
reference (tests/reference.py), as adjoints, by finite differences, and against torch
where it is installed. Errors name the op, the rule and the values."""

import numpy as np
import pytest

import fastconv
from fastconv import Tensor, gradcheck, nn
from fastconv.nn import functional as F
from fastconv.nn.padfold import padded_input

from . import reference as ref

MODES = ["constant", "reflect", "replicate", "circular"]

#: (input shape, pad) that every mode accepts: crops, mixed signs, 1 to 3 axes.
CASES = [
    ((3, 5), (2, 1)),
    ((3, 5), (-1, 3)),
    ((3, 5), (2, -3)),
    ((2, 4, 5), (1, 1, 2, 2)),
    ((2, 4, 5), (-1, 2, 3, -1)),
    ((1, 2, 3, 4), (0, 2, 1, 0)),
    ((1, 2, 3, 4, 3), (1, 2, -1, 1, 2, 0)),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape,p", CASES)
def test_pad_matches_reference(rng, mode, shape, p):
    x = rng.standard_normal(shape)
    y = fastconv.pad(x, p, mode)
    np.testing.assert_array_equal(y, ref.pad(x, p, mode))
    g = rng.standard_normal(y.shape)
    np.testing.assert_allclose(fastconv.pad_backward(g, shape, p, mode),
                               ref.pad_backward(g, shape, p, mode), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape,p", CASES)
def test_pad_backward_is_the_adjoint(rng, mode, shape, p):
    """<pad(x), y> = <x, pad_backward(y)>."""
    x = rng.standard_normal(shape)
    px = fastconv.pad(x, p, mode)
    y = rng.standard_normal(px.shape)
    np.testing.assert_allclose(np.vdot(px, y),
                               np.vdot(x, fastconv.pad_backward(y, shape, p, mode)),
                               rtol=1e-12)


def test_pad_examples_by_hand():
    x = np.array([[0.0, 1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(fastconv.pad(x, (2, 1), "reflect"), [[2, 1, 0, 1, 2, 3, 2]])
    np.testing.assert_array_equal(fastconv.pad(x, (2, 1), "replicate"),
                                  [[0, 0, 0, 1, 2, 3, 3]])
    np.testing.assert_array_equal(fastconv.pad(x, (2, 1), "circular"), [[2, 3, 0, 1, 2, 3, 0]])
    np.testing.assert_array_equal(fastconv.pad(x, (-1, 2), "circular"), [[1, 2, 3, 1, 2]])
    np.testing.assert_array_equal(fastconv.pad(x, (1, -2), value=7.0), [[7, 0, 1]])
    # pads (1, 1) of W and (2, 2) of H
    assert fastconv.pad(np.zeros((1, 2, 3, 4)), (1, 1, 2, 2)).shape == (1, 2, 7, 6)


def test_constant_pad_keeps_any_dtype_and_casts_the_value():
    x = np.arange(4, dtype=np.int64).reshape(2, 2)
    y = fastconv.pad(x, (1, 0, 0, 1), value=2.5)
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, [[2, 0, 1], [2, 2, 3], [2, 2, 2]])
    b = fastconv.pad(np.ones((2,), bool), (1, 1))
    np.testing.assert_array_equal(b, [False, True, True, False])


@pytest.mark.parametrize("mode", MODES)
def test_pad_gradcheck(rng, mode):
    x = Tensor(rng.standard_normal((1, 2, 3, 4)), requires_grad=True)
    assert gradcheck(lambda a: F.pad(a, (2, -1, 1, 2), mode), [x])


@pytest.mark.parametrize("call, match", [
    (lambda x: fastconv.pad(x, (1, 1), "mirror"),
     r"pad: mode='mirror' is not known; acceptable modes are 'constant', 'reflect'"),
    (lambda x: fastconv.pad(x, (1, 1, 1)), r"pad: pad=\(1, 1, 1\) must have an even length"),
    (lambda x: fastconv.pad(x, (1, 1.5)), r"pad: pad=\(1, 1.5\) must be a tuple of ints"),
    (lambda x: fastconv.pad(x, (1,) * 10), r"pads 5 axes but the input of shape \(2, 3, 4, 5\)"),
    (lambda x: fastconv.pad(x, (1, 1), "reflect"),
     r"pad: mode='reflect' pads the last 1, 2 or 3 axes .* got 2 pad values for a 4-D"),
    (lambda x: fastconv.pad(x, (1, 5, 0, 0), "reflect"),
     r"pad: mode 'reflect' needs each pad < the axis size; got pad \(1, 5\) of axis 3 "
     r"\(size 5\)"),
    (lambda x: fastconv.pad(x, (0, 0, 4, -2), "circular"),
     r"pad: mode 'circular' wraps at most once: each pad must be <= the \(cropped\) axis "
     r"size 2; got pad \(4, -2\) of axis 2 \(size 4\)"),
    (lambda x: fastconv.pad(x, (-3, -3)), r"pad: pad \(-3, -3\) of axis 3 \(size 5\) of an "
     r"input of shape \(2, 3, 4, 5\) leaves -1 elements"),
    (lambda x: fastconv.pad(x, (-3, -2, 0, 0), "replicate"),
     r"leaves 0 elements; mode 'replicate' needs at least 1"),
    (lambda x: fastconv.pad(x, (1, 1, 1, 1), "reflect", value=1.0),
     r"pad: mode='reflect' takes no fill value, got value=1.0"),
    (lambda x: fastconv.pad_backward(np.zeros((2, 3, 4, 6)), x.shape, (1, 2)),
     r"pad_backward: grad_y must have pad's output shape \(2, 3, 4, 8\)"),
])
def test_pad_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(np.zeros((2, 3, 4, 5)))


# ------------------------------------------------------------------------------ layers
@pytest.mark.parametrize("layer, mode, value", [
    (nn.ZeroPad2d((1, 2, 0, 3)), "constant", 0.0),
    (nn.ConstantPad2d((1, 2, 0, 3), -1.5), "constant", -1.5),
    (nn.ReflectionPad2d((1, 2, 0, 3)), "reflect", 0.0),
    (nn.ReplicationPad2d((1, 2, 0, 3)), "replicate", 0.0),
])
def test_pad_layers(rng, layer, mode, value):
    x = rng.standard_normal((2, 2, 4, 3))
    np.testing.assert_array_equal(layer(x).numpy(), ref.pad(x, (1, 2, 0, 3), mode, value))
    np.testing.assert_array_equal(layer(x[0]).numpy(), ref.pad(x[0], (1, 2, 0, 3), mode, value))


def test_pad_layer_int_padding_and_errors():
    assert nn.ZeroPad2d(2).padding == (2, 2, 2, 2)
    with pytest.raises(ValueError, match=r"ReflectionPad2d: padding=\(1, 2, 3\) must be an int "
                                         r"or 4 ints \(left, right, top, bottom\)"):
        nn.ReflectionPad2d((1, 2, 3))


# ------------------------------------------------------------------ padding_mode of conv
def _conv_reference(m, x):
    """The layer by hand: reference pad in the layer's mode, then the reference conv."""
    (ph, pw) = m.padding
    xp = ref.pad(x, (pw, pw, ph, ph), "constant" if m.padding_mode == "zeros"
                 else m.padding_mode)
    return ref.conv2d(xp, m.weight.numpy(), m.bias.numpy(), m.stride)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_conv2d_padding_mode_matches_reference(rng, mode):
    m = nn.Conv2d(2, 3, 3, stride=(1, 2), padding=(1, 2), padding_mode=mode,
                  dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 2, 4, 5))
    np.testing.assert_allclose(m(x).numpy(), _conv_reference(m, x), rtol=1e-10, atol=1e-12)
    assert m.padding_mode == mode
    assert list(m.state_dict()) == ["weight", "bias"]


@pytest.mark.parametrize("mode", ["reflect", "circular"])
def test_conv2d_padding_mode_gradcheck(rng, mode):
    m = nn.Conv2d(1, 2, 3, padding=1, padding_mode=mode, dtype=np.float64, rng=rng)
    x = Tensor(rng.standard_normal((1, 1, 3, 4)), requires_grad=True)
    assert gradcheck(lambda a, w: F.conv2d(padded_input(a, mode, 1, 2)[0], w),
                     [x, m.weight])


def test_padded_input_channels_last_and_zeros(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    y, p = padded_input(x, "reflect", ((1, 0), 2), 2)
    assert p == 0
    np.testing.assert_array_equal(y.numpy(), ref.pad(x, (2, 2, 1, 0), "reflect"))
    y2, _ = padded_input(x.transpose(0, 2, 3, 1), "reflect", ((1, 0), 2), 2, "NHWC")
    np.testing.assert_array_equal(y2.numpy(), y.numpy().transpose(0, 2, 3, 1))
    y3, _ = padded_input(x[0].transpose(1, 2, 0), "replicate", 1, 2, "NHWC")   # unbatched
    np.testing.assert_array_equal(y3.numpy(), ref.pad(x[0], (1, 1, 1, 1), "replicate")
                                  .transpose(1, 2, 0))
    same, p = padded_input(x, "zeros", "same", 2)
    assert same is x and p == "same"
    y4, _ = padded_input(x, "circular", "same", 2, kernel_size=(2, 3), dilation=1)
    np.testing.assert_array_equal(y4.numpy(), ref.pad(x, (1, 1, 0, 1), "circular"))


def test_conv2d_padding_mode_errors():
    with pytest.raises(ValueError, match=r"Conv2d: padding_mode='mirror' is not known; "
                                         r"acceptable values are 'zeros', 'reflect'"):
        nn.Conv2d(1, 1, 3, padding_mode="mirror")
    m = nn.Conv2d(1, 1, 3, padding=3, padding_mode="reflect")
    with pytest.raises(ValueError, match=r"Conv2d: mode 'reflect' needs each pad < the axis "
                                         r"size; got pad \(3, 3\) of axis 2 \(size 3\)"):
        m(np.zeros((1, 1, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"Conv: layout='NCDHW' is not a layout of 2 spatial"):
        padded_input(np.zeros((1, 1, 3, 3)), "reflect", 1, 2, "NCDHW")
    with pytest.raises(ValueError, match=r"Conv: input must be 4-D \(batched\) or 3-D"):
        padded_input(np.zeros((3, 3)), "reflect", 1, 2)


# -------------------------------------------------------------------------------- torch
TORCH_PADS = [(1, 1), (0, 3), (-2, 1), (3, -2), (-1, -1), (1, 1, 2, 2), (-1, 2, 3, 0),
              (2, 0, -1, 3), (1, 1, 1, 1, 1, 1), (0, 2, -1, 1, 1, 0)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("p", TORCH_PADS)
def test_pad_matches_torch(rng, mode, p):
    torch = pytest.importorskip("torch")
    shape = {2: (2, 3, 5), 4: (2, 3, 4, 5), 6: (1, 2, 4, 4, 5)}[len(p)]
    x = rng.standard_normal(shape)
    tx = torch.tensor(x, requires_grad=True)
    want = torch.nn.functional.pad(tx, p, mode=mode)
    got = F.pad(Tensor(x, requires_grad=True), p, mode)
    np.testing.assert_array_equal(got.numpy(), want.detach().numpy())
    g = rng.standard_normal(want.shape)
    want.backward(torch.tensor(g))
    np.testing.assert_allclose(fastconv.pad_backward(g, shape, p, mode), tx.grad.numpy(),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_pad_random_sweep_matches_torch(rng, mode):
    torch = pytest.importorskip("torch")
    for _ in range(200):
        k = int(rng.integers(1, 4))
        shape = tuple(int(s) for s in rng.integers(1, 6, k + int(rng.integers(1, 3))))
        p = tuple(int(v) for v in rng.integers(-3, 5, 2 * k))
        try:
            want = torch.nn.functional.pad(torch.tensor(np.ones(shape)), p, mode=mode)
        except (RuntimeError, NotImplementedError):
            continue
        if want.numel() == 0:   # an emptied axis: refused by reflect/replicate here
            continue
        x = rng.standard_normal(shape)
        try:
            got = fastconv.pad(x, p, mode)
        except ValueError:      # torch's circular writes garbage where it wraps twice
            assert mode == "circular"
            continue
        want = torch.nn.functional.pad(torch.tensor(x), p, mode=mode)
        np.testing.assert_array_equal(got, want.numpy(), err_msg=f"{shape} {p}")


def test_constant_pad_int_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.arange(12, dtype=np.int64).reshape(3, 4)
    np.testing.assert_array_equal(
        fastconv.pad(x, (1, -1, 2, 0), value=-2.7),
        torch.nn.functional.pad(torch.tensor(x), (1, -1, 2, 0), value=-2.7).numpy())


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding, stride", [(1, 1), ((1, 2), 2), ("same", 1)])
def test_conv2d_padding_mode_matches_torch(rng, mode, padding, stride):
    torch = pytest.importorskip("torch")
    tm = torch.nn.Conv2d(2, 3, 3, stride=stride, padding=padding, padding_mode=mode).double()
    m = nn.Conv2d(2, 3, 3, stride=stride, padding=padding, padding_mode=mode,
                  dtype=np.float64)
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    x = rng.standard_normal((2, 2, 5, 6))
    tx = torch.tensor(x, requires_grad=True)
    want = tm(tx)
    xt = Tensor(x, requires_grad=True)
    got = m(xt)
    np.testing.assert_allclose(got.numpy(), want.detach().numpy(), rtol=1e-10, atol=1e-12)
    g = rng.standard_normal(want.shape)
    want.backward(torch.tensor(g))
    got.backward(g)
    np.testing.assert_allclose(xt.grad, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m.weight.grad, tm.weight.grad.numpy(), rtol=1e-10, atol=1e-12)
    assert repr(m) == repr(tm)


def test_pad_layers_match_torch():
    torch = pytest.importorskip("torch")
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    pairs = [(nn.ZeroPad2d(1), torch.nn.ZeroPad2d(1)),
             (nn.ConstantPad2d((1, 0, 2, 1), 3.5), torch.nn.ConstantPad2d((1, 0, 2, 1), 3.5)),
             (nn.ReflectionPad2d((1, 2, 2, 1)), torch.nn.ReflectionPad2d((1, 2, 2, 1))),
             (nn.ReplicationPad2d((0, 2, 1, 3)), torch.nn.ReplicationPad2d((0, 2, 1, 3)))]
    for ours, theirs in pairs:
        np.testing.assert_array_equal(ours(x).numpy(), theirs(torch.tensor(x)).numpy())
        assert repr(ours) == repr(theirs)
