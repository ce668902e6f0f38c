"""Whole networks channels last: layers and models with layout="NHWC" against NCHW."""

import numpy as np
import pytest

import fastconv
from fastconv import models, nn, optim
from fastconv.autograd import Tensor, gradcheck
from fastconv.nn import functional as F


def _nhwc(x):
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _train_steps(model, x, target, steps=2):
    """Losses of ``steps`` SGD(momentum) steps, and the gradients of the last one."""
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, {k: p.grad for k, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["lenet", "resnet"])
def test_model_trains_alike_in_both_layouts(rng, name):
    """One state dict, one batch: the same losses, gradients (torch's shapes, C-contiguous),
    running statistics and outputs after two SGD steps in NCHW and NHWC."""
    if name == "lenet":
        def build(layout):
            return models.lenet5(1, 3, 8, rng=np.random.default_rng(3), layout=layout)
    else:
        def build(layout):
            return models.resnet_small(1, 3, widths=(4, 6), rng=np.random.default_rng(3),
                                       layout=layout)
    a, b = build("NCHW"), build("NHWC")
    b.load_state_dict(a.state_dict())
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    target = np.array([0, 2, 1, 2])
    la, ga = _train_steps(a, x, target)
    lb, gb = _train_steps(b, _nhwc(x), target)
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    for k in ga:
        assert ga[k].shape == gb[k].shape, k
        np.testing.assert_allclose(ga[k], gb[k], rtol=1e-3, atol=1e-5, err_msg=k)
        # C-contiguous as the parameter: the optimiser's one-pass step takes it
        assert gb[k].flags.c_contiguous, k
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        np.testing.assert_allclose(va, vb, rtol=1e-4, atol=1e-5, err_msg=k)
    with fastconv.no_grad():
        np.testing.assert_allclose(a.eval()(x).data, b.eval()(_nhwc(x)).data, rtol=1e-4,
                                   atol=1e-5)
        # one unbatched (H, W, C) image
        assert b(_nhwc(x)[0]).shape == (3,)


def test_nhwc_layers_keep_torch_parameter_shapes_and_say_their_layout():
    conv = nn.Conv2d(3, 5, 3, layout="NHWC", rng=np.random.default_rng(0))
    assert conv.weight.shape == (5, 3, 3, 3)
    assert "layout='NHWC'" in repr(conv) and "layout" not in repr(nn.Conv2d(3, 5, 3))
    net = models.resnet_small(1, 3, widths=(4,), layout="NHWC")
    assert {m.layout for m in net.modules() if hasattr(m, "layout")} == {"NHWC"}
    y = net(np.zeros((2, 6, 6, 1), np.float32))
    assert y.shape == (2, 3)


def test_flatten_nhwc_takes_the_nchw_order(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    got = nn.Flatten(layout="NHWC")(_nhwc(x)).data
    np.testing.assert_array_equal(got, x.reshape(2, -1))
    np.testing.assert_array_equal(nn.Flatten(2, layout="NHWC")(_nhwc(x)).data,
                                  x.reshape(2, 3, 20))
    xt = Tensor(_nhwc(x), requires_grad=True)
    assert gradcheck(lambda t: F.flatten(t, layout="NHWC") * Tensor(np.arange(60.0)), [xt])


def test_conv2d_oihw_weight_with_nhwc_data(rng):
    """weight_layout="OIHW": the NHWC conv of an OIHW weight is the NCHW conv, and its
    gradients (the weight's in OIHW) pass finite differences in float64."""
    x = rng.standard_normal((2, 3, 5, 5))
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    ref = F.conv2d(x, w, b, padding=1).data
    got = F.conv2d(_nhwc(x), w, b, padding=1, layout="NHWC", weight_layout="OIHW").data
    np.testing.assert_allclose(got, _nhwc(ref), rtol=1e-10, atol=1e-12)
    ts = [Tensor(_nhwc(x), requires_grad=True), Tensor(w, requires_grad=True),
          Tensor(b, requires_grad=True)]
    assert gradcheck(lambda xx, ww, bb: F.conv2d(xx, ww, bb, stride=2, padding=1,
                                                 layout="NHWC", weight_layout="OIHW"), ts)


def test_layout_errors():
    with pytest.raises(ValueError, match="conv2d: weight_layout='HWIO' must be None or 'OIHW'"):
        F.conv2d(np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 1, 1)), weight_layout="HWIO")
    with pytest.raises(ValueError, match="Conv2d.*'NCWH'"):
        nn.Conv2d(1, 1, 3, layout="NCWH")
    with pytest.raises(ValueError, match="lenet5: layout='nchw' is not supported"):
        models.lenet5(layout="nchw")
    with pytest.raises(ValueError, match="MaxPool2d.*'CHW'"):
        nn.MaxPool2d(2, layout="CHW")


def test_validated_conv_problems_are_remembered_but_not_their_look_alikes():
    from fastconv._args import conv as conv_args

    a = conv_args.conv_args_from_shapes("conv2d", (2, 3, 8, 8), (4, 3, 3, 3), 1, 1)
    assert conv_args.conv_args_from_shapes("conv2d", (2, 3, 8, 8), (4, 3, 3, 3), 1, 1) is a
    with pytest.raises((TypeError, ValueError), match="conv2d: stride"):
        conv_args.conv_args_from_shapes("conv2d", (2, 3, 8, 8), (4, 3, 3, 3), 1.5, 1)
    with pytest.raises((TypeError, ValueError), match="conv2d: groups"):
        conv_args.conv_args_from_shapes("conv2d", (2, 3, 8, 8), (4, 3, 3, 3), 1, 1, 1, True)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_first_conv_skips_the_gradient_of_the_data(monkeypatch, layout):
    """The input images need no gradient: the first conv's backward is asked for grad_w
    only, the others for grad_x too."""
    from fastconv import conv as conv_mod

    asked = []
    real = conv_mod.gradients

    def spy(grad_y, x, w, args, needs, algo="auto"):
        asked.append(tuple(needs))
        return real(grad_y, x, w, args, needs, algo)

    monkeypatch.setattr(conv_mod, "gradients", spy)
    net = models.lenet5(1, 3, 8, rng=np.random.default_rng(0), layout=layout)
    x = np.zeros((2, 8, 8, 1) if layout == "NHWC" else (2, 1, 8, 8), np.float32)
    F.cross_entropy(net(x), np.array([0, 1])).backward()
    assert asked == [(True, True, True), (False, True, True)]   # backward order


def test_conv2d_padding_mode_in_nhwc(rng):
    a = nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect", rng=np.random.default_rng(0),
                  dtype=np.float64)
    b = nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect", dtype=np.float64,
                  layout="NHWC")
    b.load_state_dict(a.state_dict())
    x = rng.standard_normal((2, 2, 5, 5))
    np.testing.assert_allclose(b(_nhwc(x)).data, _nhwc(a(x).data), rtol=1e-12, atol=1e-12)
