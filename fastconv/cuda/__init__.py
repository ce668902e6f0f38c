"""fastconv on an NVIDIA GPU (numba.cuda): the CPU API, run by CUDA kernels.

Every function takes the arguments of its CPU namesake, validates them the same way
(same errors), and accepts numpy arrays (copied to the GPU, result copied back) or CUDA
device arrays (numba device arrays or anything with ``__cuda_array_interface__``; the
results are then numba device arrays left on the GPU). The public CPU functions reach
these with ``device="cuda"``.

This package imports without CUDA; the kernels (and ``numba.cuda``) load on the first
call, which raises :class:`CudaUnavailableError` (a RuntimeError) saying why when no GPU
can be used and how to fix it (``pip install 'fastconv[cuda]'``, an NVIDIA driver).
Tests run the kernels in numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``).
"""

from __future__ import annotations

from ._device import CudaUnavailableError, is_available, require, unavailable_reason


def _impl(op: str, module: str):
    require(op)
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), op)


def conv2d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, *, layout="NCHW",
           algo="auto"):
    """fastconv.conv2d on the GPU (see fastconv.cuda._conv.conv2d)."""
    return _impl("conv2d", "_conv")(x, w, bias, stride, padding, dilation, groups,
                                    layout=layout, algo=algo)


def conv2d_backward(grad_y, x, w, stride=1, padding=0, dilation=1, groups=1, *,
                    layout="NCHW", algo="auto"):
    """fastconv.conv2d_backward on the GPU (see fastconv.cuda._conv.conv2d_backward)."""
    return _impl("conv2d_backward", "_conv")(grad_y, x, w, stride, padding, dilation, groups,
                                             layout=layout, algo=algo)


__all__ = ["CudaUnavailableError", "is_available", "unavailable_reason", "require", "conv2d",
           "conv2d_backward"]
