"""The one bridge from the CPU ops to the GPU layer.

Every public op takes ``device="cpu"`` or ``"cuda"``. The op asks :func:`gpu_op` for its
GPU implementation: ``None`` means run on the CPU; otherwise it is the function of the
same name in ``fastconv.cuda`` (loaded on first use). This is the only module of the CPU
core that knows the GPU layer exists; ``fastconv.cuda`` in turn depends only on the
records (``fastconv._args``, ``fastconv.layout``), the algorithm registry and config.

Examples
--------
>>> from fastconv import devices
>>> devices.gpu_op("conv2d", "cpu") is None
True
>>> devices.gpu_op("conv2d", "tpu")
Traceback (most recent call last):
...
ValueError: conv2d: device='tpu' is not supported; acceptable devices are 'cpu', 'cuda'

Arrays move between the host and the GPU with :func:`move` (the autograd ``Tensor.to``
and ``Module.to`` use it); :func:`array_device` says where an array lives:

>>> import numpy as np
>>> a = np.ones(3)
>>> devices.array_device(a), devices.move("Tensor.to", a, "cpu") is a
('cpu', True)
"""

from __future__ import annotations

import functools

import numpy as np

from ._args import check_device, check_needs_input_grad
from .cuda._device import is_device as is_device_array  # (imports no numba.cuda)


def gpu_op(op: str, device):
    """``None`` for ``device="cpu"``; for ``"cuda"`` the GPU function ``fastconv.cuda.<op>``
    (it raises ``fastconv.cuda.CudaUnavailableError`` when called without a usable GPU).
    ValueError for any other device."""
    if device == "cpu" or check_device(op, device) == "cpu":
        return None
    from . import cuda

    return getattr(cuda, op)


def gpu_backward(op: str, device, needs_input_grad):
    """(needs, gpu) for a backward op: ``needs_input_grad`` checked (three bools) and
    :func:`gpu_op`'s GPU function with those flags bound (None on the CPU)."""
    needs = check_needs_input_grad(op, needs_input_grad)
    gpu = gpu_op(op, device)
    return needs, None if gpu is None else functools.partial(gpu, needs_input_grad=needs)


def array_device(a) -> str:
    """"cuda" for a GPU array (a numba device array or anything exposing
    ``__cuda_array_interface__``), else "cpu"."""
    return "cpu" if type(a) is np.ndarray or not is_device_array(a) else "cuda"


def move(op: str, a, device):
    """``a`` on ``device`` ("cpu" or "cuda"): ``a`` itself when it is there already, else
    a copy: a numba device array (contiguous) for "cuda", a numpy array for "cpu".

    ValueError naming ``op`` for another device; ``fastconv.cuda.CudaUnavailableError``
    (naming ``op``, why and the fix) when "cuda" is asked for without a usable GPU."""
    device = check_device(op, device)
    if array_device(a) == device:
        return a
    from .cuda import _device

    cuda = _device.require(op)
    if device == "cpu":
        return _device.as_device_array(cuda, a).copy_to_host()
    a = np.asarray(a)
    # np.ascontiguousarray would make a 0-D array 1-D; 0-D arrays are contiguous already
    return cuda.to_device(a if a.flags.c_contiguous else np.ascontiguousarray(a))


def require(op: str, device) -> str:
    """``device`` checked ("cpu" or "cuda", as :func:`gpu_op`); for "cuda", now rather than
    at the first kernel, ``fastconv.cuda.CudaUnavailableError`` (naming ``op``, why and
    the fix) when no GPU can be used.

    >>> require("train", "cpu")
    'cpu'
    """
    device = check_device(op, device)
    if device == "cuda":
        from .cuda import _device

        _device.require(op)
    return device
