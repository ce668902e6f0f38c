"""Tensor.to / Module.to with device arrays (under the simulator): data moves to the GPU
and back unchanged; a LeNet-5 training step (SGD with momentum) on "cuda" matches the
CPU's without copying anything to the host but the loss; the autograd layer's kernels
(fastconv.cuda._autograd) match numpy; and the ops without GPU paths refuse tensors on
"cuda" with an error that says so (no silent host round trip)."""

import numpy as np
import pytest

from fastconv import cuda as fcuda
from fastconv import models, nn, optim, training
from fastconv.autograd import Tensor
from fastconv.nn import functional as F


def test_tensor_to_cuda_and_back():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = Tensor(x, requires_grad=True).to("cuda")
    assert t.device == "cuda" and not isinstance(t.data, np.ndarray)
    assert t.shape == (2, 3) and t.dtype == np.float32 and t.requires_grad and t.is_leaf
    np.testing.assert_array_equal(t.numpy(), x)          # numpy(): a host copy
    back = t.to("cpu")
    assert back.device == "cpu" and isinstance(back.data, np.ndarray)
    np.testing.assert_array_equal(back.data, x)
    assert t.to("cuda") is t and t.cuda() is t
    np.testing.assert_array_equal(t.cpu().data, x)
    assert "device='cuda'" in repr(t)
    assert Tensor(np.float64([2.5])).to("cuda").item() == 2.5
    scalar = Tensor(np.float32(2.5)).to("cuda")                # 0-D stays 0-D
    assert scalar.shape == () and scalar.item() == 2.5


def test_ops_without_a_gpu_path_say_so():
    t = Tensor(np.ones((1, 1, 4, 4), np.float32)).to("cuda")
    with pytest.raises(RuntimeError, match=r"Add: this autograd op has no GPU path yet, and "
                                           r"input\(s\) \[0, 1\] are on device='cuda'"):
        t + t
    with pytest.raises(RuntimeError, match=r"Tanh: this autograd op has no GPU path yet"):
        F.tanh(t)
    with pytest.raises(RuntimeError, match=r"Softmax: .*no GPU path yet.*\.to\('cpu'\)"):
        F.softmax(t)
    from fastconv.nn import fused

    with pytest.raises(RuntimeError, match=r"AddReLU: this autograd op has no GPU path yet"):
        fused.add_relu(t, t)
    with pytest.raises(ValueError, match=r"batch_norm: fuse_relu=True runs on the CPU only, "
                                         r"not on device='cuda'"):
        fused.batch_norm_relu(t, None, None, training=True)
    with pytest.raises(RuntimeError, match=r"Conv2d: input\(s\) \[0\] are on device='cuda' "
                                           r"but input\(s\) \[1\] on device='cpu'"):
        F.conv2d(t, Tensor(np.ones((1, 1, 3, 3), np.float32)))


def test_computed_tensor_cannot_move():
    a = Tensor(np.ones(3, np.float32), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"Tensor.to: this tensor was computed by recorded "
                                           r"ops \(Mul\) and cannot move to 'cuda'"):
        (a * 2).to("cuda")


def test_module_to_cuda_moves_parameters_and_buffers():
    model = models.lenet5(input_size=28, rng=np.random.default_rng(0))
    bn = nn.BatchNorm2d(3)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    params[0].grad = np.ones(params[0].shape, params[0].dtype)
    assert model.to("cuda") is model
    assert all(p.device == "cuda" for p in model.parameters())
    assert list(model.parameters()) == params                  # the same Parameters, moved
    assert params[0].grad is not None and not isinstance(params[0].grad, np.ndarray)
    with pytest.raises(RuntimeError, match=r"Module.to: casting to float64 is not supported "
                                           r"on device='cuda'"):
        model.to(np.float64)
    model.to("cpu")
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    np.testing.assert_array_equal(params[0].grad, 1)
    bn.to("cuda")
    assert not isinstance(bn._buffers["running_var"], np.ndarray)
    assert isinstance(bn._buffers["num_batches_tracked"], np.ndarray)   # a host counter
    bn.to("cpu")
    np.testing.assert_array_equal(bn._buffers["running_var"], np.ones(3, np.float32))


# ------------------------------------------------------------------ a training step
def _step(model, opt, x, y):
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss


def test_lenet_step_on_gpu_matches_cpu_and_copies_only_the_loss(monkeypatch):
    """One SGD (momentum, weight decay) step of LeNet-5 on 2 images of 4x4 (the smallest
    size lenet5 takes): loss and every parameter after the step as on the CPU, and no
    device-to-host copy until loss.item() (then exactly one)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
    y = np.array([3, 7])
    cpu = training.build_model("lenet", 1, 10, 4, np.random.default_rng(0))
    gpu = training.build_model("lenet", 1, 10, 4, np.random.default_rng(0)).to("cuda")
    opts = [optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
            for m in (cpu, gpu)]
    cpu_loss = _step(cpu, opts[0], Tensor(x), y)

    from numba import cuda
    copies = []
    cls = type(cuda.to_device(np.zeros(1)))
    to_host = cls.copy_to_host
    monkeypatch.setattr(cls, "copy_to_host", lambda self, *a, **k: copies.append(
        self.shape) or to_host(self, *a, **k))
    gpu_loss = _step(gpu, opts[1], Tensor(x).to("cuda"), y)
    assert gpu_loss.device == "cuda" and copies == []
    assert gpu_loss.shape == () and abs(gpu_loss.item() - cpu_loss.item()) < 1e-5
    assert copies == [()]
    monkeypatch.undo()

    for (name, p_cpu), p_gpu in zip(cpu.named_parameters(), gpu.parameters(), strict=True):
        assert p_gpu.device == "cuda" and p_gpu.grad is not None, name
        np.testing.assert_allclose(p_gpu.numpy(), p_cpu.data, rtol=1e-5, atol=1e-6,
                                   err_msg=name)
        np.testing.assert_allclose(opts[1].state[id(p_gpu)]["momentum_buffer"].copy_to_host(),
                                   opts[0].state[id(p_cpu)]["momentum_buffer"], rtol=1e-5,
                                   atol=1e-6, err_msg=name)


def test_gradients_accumulate_on_the_gpu():
    """A tensor used twice (linear's input and weight) and two backward passes: the sums of
    the backward pass and of ``.grad`` run on the GPU and match the CPU."""
    a = np.random.default_rng(2).standard_normal((3, 3))      # float64: the kernels too
    grads = []
    for device in ("cpu", "cuda"):
        x = Tensor(a, requires_grad=True).to(device)
        for _ in range(2):
            F.cross_entropy(F.relu(F.linear(x, x)), np.array([0, 2, 1]),
                            reduction="sum").backward()
        assert x.device == device
        grads.append(x.grad if device == "cpu" else x.grad.copy_to_host())
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-12)
    assert grads[1].dtype == np.float64


# ------------------------------------------------------------------ kernels vs numpy
def _dev(a):
    from numba import cuda

    return cuda.to_device(np.ascontiguousarray(a))


def test_relu_add_fill_cast_copy_kernels():
    a = np.float32([[-1, 0, 2.5, np.nan], [-0.0, 3, -2, 1e-30]])
    g = np.arange(8, dtype=np.float32).reshape(2, 4) + 1
    y = fcuda.relu(_dev(a)).copy_to_host()
    np.testing.assert_array_equal(y, np.maximum(a, 0))         # NaN stays NaN
    np.testing.assert_array_equal(fcuda.relu_backward(_dev(g), _dev(y)).copy_to_host(),
                                  np.where(y > 0, g, 0))
    np.testing.assert_array_equal(fcuda.add(_dev(g), _dev(y)).copy_to_host(), g + y)
    full = fcuda.full_like(_dev(g), 1, np.float64).copy_to_host()
    assert full.dtype == np.float64 and full.shape == (2, 4) and (full == 1).all()
    as64 = fcuda.astype(_dev(g), np.float64)
    np.testing.assert_array_equal(as64.copy_to_host(), g.astype(np.float64))
    d = _dev(g)
    assert fcuda.astype(d, np.float32) is d
    strided = _dev(np.arange(12, dtype=np.float32))[::3]          # not contiguous
    np.testing.assert_array_equal(fcuda.copy(strided).copy_to_host(), [0, 3, 6, 9])
    planes = _dev(np.arange(24, dtype=np.float32).reshape(2, 3, 4))[:, :, ::2]
    np.testing.assert_array_equal(fcuda.relu(planes).copy_to_host(),
                                  np.arange(24).reshape(2, 3, 4)[:, :, ::2])
    with pytest.raises(ValueError, match=r"fastconv.cuda: a non-contiguous 2-D device array "
                                         r"of shape \(4, 2\) is not supported here"):
        fcuda.relu(_dev(np.ones((4, 4), np.float32))[:, ::2])


def test_linear_kernels():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 5)).astype(np.float32)         # (*, in)
    w = rng.standard_normal((4, 5)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    g = rng.standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(fcuda.linear(_dev(x), _dev(w), _dev(b)).copy_to_host(),
                               x @ w.T + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fcuda.linear(_dev(x), _dev(w)).copy_to_host(), x @ w.T,
                               rtol=1e-5, atol=1e-5)
    gx, gw, gb = (a.copy_to_host() for a in fcuda.linear_backward(_dev(g), _dev(x), _dev(w)))
    g2, x2 = g.reshape(-1, 4), x.reshape(-1, 5)
    np.testing.assert_allclose(gx, g @ w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gw, g2.T @ x2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gb, g2.sum(0), rtol=1e-5, atol=1e-5)
    assert fcuda.linear_backward(_dev(g), _dev(x), _dev(w), (False, True, False))[::2] == \
        (None, None)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_kernels(reduction):
    """Loss and logits gradient against the formula (float64 in numpy)."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((3, 4)) * 30).astype(np.float32)    # large: needs the shift
    t = np.array([0, 3, 1])
    loss, logp = fcuda.cross_entropy(_dev(x), _dev(t), reduction)
    x64 = x.astype(np.float64)
    ref_logp = x64 - x64.max(1, keepdims=True)
    ref_logp -= np.log(np.exp(ref_logp).sum(1, keepdims=True))
    losses = -ref_logp[np.arange(3), t]
    want = {"mean": losses.mean(), "sum": losses.sum(), "none": losses}[reduction]
    np.testing.assert_allclose(loss.copy_to_host(), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logp.copy_to_host(), ref_logp, rtol=1e-5, atol=1e-5)
    g = np.float32([0.5, -1, 2]) if reduction == "none" else np.float32(0.5)
    gx = fcuda.cross_entropy_backward(_dev(g), logp, _dev(t), reduction).copy_to_host()
    onehot = np.eye(4)[t]
    scale = g[:, None] if reduction == "none" else {"mean": 0.5 / 3, "sum": 0.5}[reduction]
    np.testing.assert_allclose(gx, (np.exp(ref_logp) - onehot) * scale, rtol=1e-5,
                               atol=1e-6)


def test_cross_entropy_targets_on_the_gpu():
    """A host target is checked (then copied); a GPU target is not read back, and a value
    out of range gives NaN in its row (the loss is then NaN)."""
    x = Tensor(np.zeros((2, 3), np.float32), requires_grad=True).to("cuda")
    with pytest.raises(ValueError, match=r"cross_entropy: target value 3 is out of range for "
                                         r"C=3 classes \(must be in \[0, 2\]\)"):
        F.cross_entropy(x, np.array([0, 3]))
    with pytest.raises(ValueError, match=r"cross_entropy: target must have shape \(N,\) = "
                                         r"\(2,\), got \(3,\)"):
        F.cross_entropy(x, _dev(np.array([0, 1, 2])))
    with pytest.raises(TypeError, match=r"cross_entropy: target must hold integer class "
                                        r"indices, got dtype float32"):
        F.cross_entropy(x, _dev(np.float32([0, 1])))
    assert F.cross_entropy(x, _dev(np.array([1, 2]))).item() == pytest.approx(np.log(3))
    losses = F.cross_entropy(x, _dev(np.array([1, 5])), reduction="none").numpy()
    assert losses[0] == pytest.approx(np.log(3)) and np.isnan(losses[1])
    with pytest.raises(RuntimeError, match=r"cross_entropy: target is on device='cuda' but "
                                           r"the input on device='cpu'"):
        F.cross_entropy(np.zeros((2, 3), np.float32), _dev(np.array([1, 2])))


@pytest.mark.parametrize("options", [
    dict(momentum=0.9, dampening=0.1, weight_decay=0.01),
    dict(momentum=0.5, nesterov=True, maximize=True),
    dict(weight_decay=0.1),                                      # no momentum buffer
])
def test_sgd_step_on_the_gpu_matches_the_cpu(options):
    rng = np.random.default_rng(5)
    p0 = rng.standard_normal((3, 4)).astype(np.float32)
    grads = rng.standard_normal((2, 3, 4)).astype(np.float32)
    params = [Tensor(p0.copy(), requires_grad=True), Tensor(p0, requires_grad=True).to("cuda")]
    opts = [optim.SGD([p], lr=0.1, **options) for p in params]
    for g in grads:                                  # two steps: the buffer's first and next
        params[0].grad, params[1].grad = g, _dev(g)
        for opt in opts:
            opt.step()
    np.testing.assert_allclose(params[1].numpy(), params[0].data, rtol=1e-6, atol=1e-7)
    state = opts[1].state_dict()["state"]
    assert set(state.get(0, {})) == set(opts[0].state_dict()["state"].get(0, {}))
    for key, value in state.get(0, {}).items():      # the state dict holds host copies
        assert isinstance(value, np.ndarray)
        np.testing.assert_allclose(value, opts[0].state[id(params[0])][key], rtol=1e-6)
    opts[1].load_state_dict(opts[1].state_dict())    # back onto the GPU
    assert all(not isinstance(v, np.ndarray)
               for v in opts[1].state.get(id(params[1]), {}).values())


def test_optimisers_without_a_gpu_path_and_mixed_devices_say_so():
    p = Tensor(np.ones(3, np.float32), requires_grad=True).to("cuda")
    p.grad = _dev(np.ones(3, np.float32))
    with pytest.raises(RuntimeError, match=r"Adam.step: this optimiser has no GPU path yet, "
                                           r"and a parameter of shape \(3,\) is on "
                                           r"device='cuda'; use SGD"):
        optim.Adam([p]).step()
    p.grad = np.ones(3, np.float32)
    with pytest.raises(RuntimeError, match=r"SGD.step: a parameter of shape \(3,\) is on "
                                           r"device='cuda' but its grad on device='cpu'"):
        optim.SGD([p], lr=0.1).step()
    opt = optim.SGD([p], lr=0.1)
    p.grad = _dev(np.ones(3, np.float32))
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(p.grad.copy_to_host(), 0)


def test_gpu_gradients_pass_gradcheck():
    """fastconv.gradcheck on tensors on "cuda" (float64): linear, relu, flatten and
    cross_entropy against central finite differences of the GPU forward."""
    from fastconv import gradcheck

    rng = np.random.default_rng(6)
    x = Tensor(rng.standard_normal((2, 1, 2)), requires_grad=True).to("cuda")
    w = Tensor(rng.standard_normal((3, 2)), requires_grad=True).to("cuda")
    b = Tensor(rng.standard_normal(3), requires_grad=True).to("cuda")
    original = x.data

    def fn(x, w, b):
        return F.cross_entropy(F.relu(F.linear(F.flatten(x), w, b)), np.array([2, 0]))

    assert gradcheck(fn, (x, w, b))
    assert x.data is original and x.device == "cuda"


@pytest.mark.parametrize("op", [
    lambda t: F.max_pool2d(t, 2),
    lambda t: F.avg_pool2d(t, 2, 1, padding=1, count_include_pad=False),
    lambda t: F.adaptive_avg_pool2d(t, 1),
    lambda t: F.conv2d(t, Tensor(np.ones((2, 1, 2, 2))).to(t.device), padding=1),
], ids=["max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "conv2d"])
def test_pooling_and_conv_ops_on_the_gpu_match_the_cpu(op):
    """Forward and the input's gradient (for a given output gradient) as on the CPU."""
    a = np.random.default_rng(7).standard_normal((1, 1, 3, 4))
    results = []
    for device in ("cpu", "cuda"):
        x = Tensor(a, requires_grad=True).to(device)
        y = op(x)
        assert y.device == device
        g = np.arange(y.data.size, dtype=np.float64).reshape(y.shape) - 2
        y.backward(g)
        results.append((y.numpy(), x.grad if device == "cpu" else x.grad.copy_to_host()))
    for got, want in zip(results[1], results[0], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_batch_norm_layer_trains_on_the_gpu_like_the_cpu():
    """BatchNorm2d (momentum None: the cumulative average, read from the host counter):
    output, gradients and running statistics after two training steps, then an eval
    forward, as on the CPU."""
    rng = np.random.default_rng(8)
    xs = rng.standard_normal((2, 2, 3, 2, 2)) * 3 + 1
    g = rng.standard_normal((3, 2, 2))
    out = {}
    for device in ("cpu", "cuda"):
        bn = nn.BatchNorm2d(3, momentum=None, dtype=np.float64).to(device)
        bn.weight.data = Tensor(np.float64([1.5, -1, 0.5])).to(device).data
        for a in xs:
            x = Tensor(a, requires_grad=True).to(device)
            y = bn(x)
            y.backward(np.broadcast_to(g, a.shape).copy())
        bn.eval()
        z = bn(Tensor(xs[0]).to(device))
        out[device] = [y.numpy(), Tensor(x.grad).numpy(), Tensor(bn.weight.grad).numpy(),
                       Tensor(bn.bias.grad).numpy(), Tensor(bn.running_mean).numpy(),
                       Tensor(bn.running_var).numpy(), z.numpy()]
        assert int(bn.num_batches_tracked) == 2
    for got, want in zip(out["cuda"], out["cpu"], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_channels_last_conv_and_flatten_on_the_gpu_match_the_cpu():
    """NHWC: a permuted input, conv2d with a torch-ordered (OIHW) weight, flatten in NCHW
    order; the gradients of the input and of the weight (back in OIHW) as on the CPU."""
    rng = np.random.default_rng(9)
    a, wa = rng.standard_normal((2, 1, 3, 4)), rng.standard_normal((2, 1, 2, 2))
    results = []
    for device in ("cpu", "cuda"):
        x = Tensor(a, requires_grad=True).to(device)
        w = Tensor(wa, requires_grad=True).to(device)
        y = F.flatten(F.conv2d(x.permute(0, 2, 3, 1), w, padding=1, layout="NHWC",
                               weight_layout="OIHW"), layout="NHWC")
        F.cross_entropy(y, np.array([0, 5]), reduction="sum").backward()
        results.append([y.numpy(), Tensor(x.grad).numpy(), Tensor(w.grad).numpy()])
    for got, want in zip(results[1], results[0], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"fastconv.cuda.permute: only 4-D device arrays "
                                         r"are permuted on the GPU, got shape \(2, 3\)"):
        Tensor(np.ones((2, 3))).to("cuda").transpose(0, 1)
