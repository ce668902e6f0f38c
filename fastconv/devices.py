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
"""

from __future__ import annotations

from ._args import check_device


def gpu_op(op: str, device):
    """``None`` for ``device="cpu"``; for ``"cuda"`` the GPU function ``fastconv.cuda.<op>``
    (it raises ``fastconv.cuda.CudaUnavailableError`` when called without a usable GPU).
    ValueError for any other device."""
    if check_device(op, device) == "cpu":
        return None
    from . import cuda

    return getattr(cuda, op)
