"""Tensor.to / Module.to with device arrays (under the simulator): data moves to the GPU
and back unchanged, and the autograd ops, which have no GPU paths yet, refuse tensors on
"cuda" with an error that says so (no silent host round trip)."""

import numpy as np
import pytest

from fastconv import models, nn
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


def test_ops_on_cuda_tensors_say_they_have_no_gpu_path():
    t = Tensor(np.ones((1, 1, 4, 4), np.float32)).to("cuda")
    with pytest.raises(RuntimeError, match=r"Add: this autograd op has no GPU path yet, and "
                                           r"input\(s\) \[0, 1\] are on device='cuda'"):
        t + t
    with pytest.raises(RuntimeError, match=r"ReLU: this autograd op has no GPU path yet"):
        F.relu(t)
    with pytest.raises(RuntimeError, match=r"Conv2d: .*no GPU path yet.*\.to\('cpu'\)"):
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
    x = Tensor(np.zeros((1, 1, 28, 28), np.float32)).to("cuda")
    with pytest.raises(RuntimeError, match=r"no GPU path yet"):
        model(x)
    with pytest.raises(RuntimeError, match=r"Module.to: casting to float64 is not supported "
                                           r"on device='cuda'"):
        model.to(np.float64)
    model.to("cpu")
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    np.testing.assert_array_equal(params[0].grad, 1)
    bn.to("cuda")
    assert all(not isinstance(b, np.ndarray) for b in bn._buffers.values() if b is not None)
    bn.to("cpu")
    np.testing.assert_array_equal(bn._buffers["running_var"], np.ones(3, np.float32))
