"""Without a GPU: importing fastconv needs no CUDA, and device='cuda' fails clearly."""

import subprocess
import sys

import numpy as np
import pytest

import fastconv
from fastconv import cuda as fcuda
from fastconv.cuda import _device
from fastconv.tools import cli

NO_GPU = _device.unavailable_reason() is not None


def test_import_does_not_load_numba_cuda():
    code = ("import sys, fastconv, fastconv.cuda; "
            "print('numba.cuda' in sys.modules, fastconv.cuda.CudaUnavailableError.__mro__[1])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "<class", "'RuntimeError'>"]


@pytest.mark.skipif(not NO_GPU, reason="a GPU (or the simulator) is available here")
@pytest.mark.parametrize("call", [
    lambda x: fcuda.conv2d(x, np.ones((1, 1, 2, 2))),
    lambda x: fcuda.conv2d_backward(np.ones((1, 1, 2, 2)), x, np.ones((1, 1, 2, 2))),
    lambda x: fcuda.max_pool2d(x, 2),
    lambda x: fcuda.avg_pool2d_backward(np.ones((1, 1, 1, 1)), x.shape, 2),
    lambda x: fcuda.batch_norm(x, None, None, training=True),
])
def test_unavailable_error_says_why_and_how_to_fix(call):
    x = np.ones((1, 1, 3, 3))
    with pytest.raises(fcuda.CudaUnavailableError,
                       match=r"device='cuda' is unavailable: .*pip install '\.\[cuda\]'` in a "
                             r"fastconv checkout"):
        call(x)
    assert not fcuda.is_available()


def test_missing_numba_cuda_is_named(monkeypatch):
    import numba

    monkeypatch.delattr(numba, "cuda", raising=False)
    monkeypatch.setitem(sys.modules, "numba.cuda", None)
    assert "numba-cuda is not installed" in _device.unavailable_reason()
    with pytest.raises(fcuda.CudaUnavailableError,
                       match=r"conv2d: device='cuda' is unavailable: numba-cuda is not "
                             r"installed .*\.\[cuda\]"):
        fcuda.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)))


@pytest.mark.skipif(not NO_GPU, reason="a GPU (or the simulator) is available here")
@pytest.mark.parametrize("call", [
    lambda x: fastconv.conv2d(x, np.ones((1, 1, 2, 2)), device="cuda"),
    lambda x: fastconv.conv2d_backward(np.ones((1, 1, 2, 2)), x, np.ones((1, 1, 2, 2)),
                                       device="cuda"),
    lambda x: fastconv.max_pool2d(x, 2, device="cuda"),
    lambda x: fastconv.max_pool2d_backward(np.ones((1, 1, 1, 1)), np.zeros((1, 1, 1, 1),
                                           np.int64), x.shape, device="cuda"),
    lambda x: fastconv.avg_pool2d(x, 2, device="cuda"),
    lambda x: fastconv.avg_pool2d_backward(np.ones((1, 1, 1, 1)), x.shape, 2, device="cuda"),
    lambda x: fastconv.batch_norm(x, None, None, training=True, device="cuda"),
    lambda x: fastconv.batch_norm_backward(x, x, np.zeros(1), np.ones(1), device="cuda"),
])
def test_public_functions_raise_unavailable(call):
    with pytest.raises(fcuda.CudaUnavailableError, match=r"device='cuda' is unavailable"):
        call(np.ones((1, 1, 3, 3)))


@pytest.mark.skipif(not NO_GPU, reason="a GPU (or the simulator) is available here")
def test_bench_device_cuda_exits_nonzero_without_traceback(capsys):
    assert cli.main(["bench", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "device='cuda' is unavailable" in err and "Traceback" not in err


def test_public_device_keyword_is_checked():
    with pytest.raises(ValueError, match=r"conv2d: device='gpu' is not supported; acceptable "
                                         r"devices are 'cpu', 'cuda'"):
        fastconv.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)), device="gpu")


def test_numba_builtin_cuda_target_is_refused(monkeypatch):
    """numba's deprecated built-in numba.cuda (implementation "Built-in") is not used:
    numba-cuda is the one supported toolchain."""
    import types

    import numba

    builtin = types.ModuleType("numba.cuda")
    builtin.implementation = "Built-in"
    monkeypatch.setattr(numba, "cuda", builtin, raising=False)
    monkeypatch.setitem(sys.modules, "numba.cuda", builtin)
    reason = _device.unavailable_reason()
    assert "numba-cuda is not installed" in reason and "deprecated built-in" in reason
    with pytest.raises(fcuda.CudaUnavailableError,
                       match=r"max_pool2d: device='cuda' is unavailable: numba-cuda is not "
                             r"installed \(numba.cuda is numba's deprecated built-in CUDA "
                             r"target.*numba-cuda\[cu12\]"):
        fcuda.max_pool2d(np.ones((1, 1, 3, 3)), 2)


def test_numba_cuda_that_cannot_compile_with_this_numpy_is_named(monkeypatch):
    """A GPU is there but numba-cuda's compiler fails to load beside this numpy (seen:
    numba-cuda 0.30.4 with numpy 2.5, whose np.row_stack is gone): the reason names both
    versions and the attribute instead of a traceback from the first kernel's compile."""
    import importlib
    import types

    import numba

    gpu = types.ModuleType("numba.cuda")
    gpu.implementation = "NVIDIA"
    gpu.is_available = lambda: True
    gpu.gpus = [object()]
    monkeypatch.setattr(numba, "cuda", gpu, raising=False)
    monkeypatch.setitem(sys.modules, "numba.cuda", gpu)
    monkeypatch.setattr(_device, "simulated", lambda: False)
    real_import = importlib.import_module

    def fails(name, *a):
        if name == "numba.cuda.cudaimpl":
            raise AttributeError("module 'numpy' has no attribute 'row_stack'")
        return real_import(name, *a)

    monkeypatch.setattr(importlib, "import_module", fails)
    reason = _device.unavailable_reason()
    assert reason.startswith("numba-cuda ") and f"with numpy {np.__version__}" in reason
    assert "no attribute 'row_stack'" in reason
    with pytest.raises(fcuda.CudaUnavailableError, match=r"conv2d: device='cuda' is "
                       r"unavailable: numba-cuda .* cannot compile kernels with numpy"):
        fcuda.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)))
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: None)
    assert _device.unavailable_reason() is None          # the compiler loads: usable


def test_numba_cuda_is_the_installed_toolchain():
    """With numba-cuda installed (the cuda and test extras), numba.cuda is NVIDIA's."""
    cuda, reason = _device._import_cuda()
    if cuda is None:
        pytest.skip(reason)
    assert cuda.implementation == "NVIDIA" and "numba_cuda" in cuda.__file__


def test_tensor_and_module_to(monkeypatch):
    """.to on the host: "cpu" is a no-op, another name a ValueError, "cuda" without a GPU
    the unavailable error naming the method; dtype names still cast."""
    from fastconv import nn
    from fastconv.autograd import Tensor

    t = Tensor(np.ones(2, np.float32), requires_grad=True)
    assert t.to("cpu") is t and t.cpu() is t and t.device == "cpu"
    with pytest.raises(ValueError, match=r"Tensor.to: device='gpu' is not supported; "
                                         r"acceptable devices are 'cpu', 'cuda'"):
        t.to("gpu")
    layer = nn.Linear(2, 3)
    with pytest.raises(ValueError, match=r"Module.to: device='tpu' is not supported"):
        layer.to("tpu")
    assert layer.to("float64").weight.dtype == np.float64
    assert layer.to("cpu").weight.device == "cpu"
    if NO_GPU:
        with pytest.raises(fcuda.CudaUnavailableError,
                           match=r"Tensor.to: device='cuda' is unavailable"):
            t.to("cuda")
        with pytest.raises(fcuda.CudaUnavailableError,
                           match=r"Module.to: device='cuda' is unavailable"):
            layer.to("cuda")


def test_info_reports_cuda_through_numba_cuda(monkeypatch):
    from fastconv.tools import info

    monkeypatch.setattr(_device, "unavailable_reason", lambda: "no CUDA driver found (x)")
    assert info.cuda_status() == "unavailable (no CUDA driver found (x))"
    monkeypatch.setattr(_device, "unavailable_reason", lambda: None)
    monkeypatch.setattr(_device, "simulated", lambda: True)
    assert info.cuda_status() == "available (numba-cuda's simulator: NUMBA_ENABLE_CUDASIM=1)"
