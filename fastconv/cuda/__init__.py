"""fastconv on an NVIDIA GPU (numba.cuda): the CPU API, run by CUDA kernels.

Every function takes the arguments of its CPU namesake, validates them the same way
(same errors), and accepts numpy arrays (copied to the GPU, result copied back) or CUDA
device arrays (numba device arrays or anything with ``__cuda_array_interface__``; the
results are then numba device arrays left on the GPU). The public CPU functions reach
these with ``device="cuda"``.

This package imports without CUDA; the kernels (and ``numba.cuda``) load on the first
call, which raises :class:`CudaUnavailableError` (a RuntimeError) saying why when no GPU
can be used and how to fix it (``pip install '.[cuda]'`` in a fastconv checkout, an NVIDIA driver).
Tests run the kernels in numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``).

The autograd layer's own ops on device arrays (:data:`AUTOGRAD_OPS`: relu, gradient sums,
linear, cross entropy, the SGD update; see ``fastconv.cuda._autograd``) are attributes of
this package too, loaded on first use like the rest; ``fastconv.autograd`` and
``fastconv.optim`` reach them through ``fastconv.devices.gpu_op``.
"""

from __future__ import annotations

from ._device import CudaUnavailableError, is_available, require, unavailable_reason


def _impl(op: str, module: str):
    """The implementation of ``op`` (after the availability check), with a GPU
    out-of-memory error turned into a MemoryError that names the op."""
    require(op)
    from importlib import import_module

    fn = getattr(import_module(f"{__name__}.{module}"), op)

    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if type(exc).__name__ == "CudaAPIError" and "OUT_OF_MEMORY" in str(exc):
                raise MemoryError(f"{op}: the GPU ran out of memory ({exc}); use smaller "
                                  "batches, or a smaller FASTCONV_WORKSPACE_MB for the "
                                  "im2col column buffer") from exc
            raise

    return run


def conv2d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, *, layout="NCHW",
           algo="auto"):
    """fastconv.conv2d on the GPU (see fastconv.cuda._conv.conv2d)."""
    return _impl("conv2d", "_conv")(x, w, bias, stride, padding, dilation, groups,
                                    layout=layout, algo=algo)


def conv2d_backward(grad_y, x, w, stride=1, padding=0, dilation=1, groups=1, *,
                    layout="NCHW", algo="auto", needs_input_grad=(True, True, True)):
    """fastconv.conv2d_backward on the GPU (see fastconv.cuda._conv.conv2d_backward)."""
    return _impl("conv2d_backward", "_conv")(grad_y, x, w, stride, padding, dilation, groups,
                                             layout=layout, algo=algo,
                                             needs_input_grad=needs_input_grad)


def conv1d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, *, layout="NCW",
           algo="auto"):
    """fastconv.conv1d on the GPU (see fastconv.cuda._conv1d)."""
    return _impl("conv1d", "_conv1d")(x, w, bias, stride, padding, dilation, groups,
                                      layout=layout, algo=algo)


def conv1d_backward(grad_y, x, w, stride=1, padding=0, dilation=1, groups=1, *,
                    layout="NCW", algo="auto", needs_input_grad=(True, True, True)):
    """fastconv.conv1d_backward on the GPU (see fastconv.cuda._conv1d)."""
    return _impl("conv1d_backward", "_conv1d")(grad_y, x, w, stride, padding, dilation,
                                               groups, layout=layout, algo=algo,
                                               needs_input_grad=needs_input_grad)


def conv3d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, *, layout="NCDHW",
           algo="auto"):
    """fastconv.conv3d on the GPU (see fastconv.cuda._conv3d)."""
    return _impl("conv3d", "_conv3d")(x, w, bias, stride, padding, dilation, groups,
                                      layout=layout, algo=algo)


def conv3d_backward(grad_y, x, w, stride=1, padding=0, dilation=1, groups=1, *,
                    layout="NCDHW", algo="auto", needs_input_grad=(True, True, True)):
    """fastconv.conv3d_backward on the GPU (see fastconv.cuda._conv3d)."""
    return _impl("conv3d_backward", "_conv3d")(grad_y, x, w, stride, padding, dilation,
                                               groups, layout=layout, algo=algo,
                                               needs_input_grad=needs_input_grad)


def conv_transpose2d(x, w, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, layout="NCHW", algo="auto"):
    """fastconv.conv_transpose2d on the GPU (see fastconv.cuda._transpose)."""
    return _impl("conv_transpose2d", "_transpose")(x, w, bias, stride, padding,
                                                   output_padding, groups, dilation,
                                                   layout=layout, algo=algo)


def conv_transpose2d_backward(grad_y, x, w, stride=1, padding=0, output_padding=0, groups=1,
                              dilation=1, *, layout="NCHW", algo="auto",
                              needs_input_grad=(True, True, True)):
    """fastconv.conv_transpose2d_backward on the GPU (see fastconv.cuda._transpose)."""
    return _impl("conv_transpose2d_backward", "_transpose")(
        grad_y, x, w, stride, padding, output_padding, groups, dilation, layout=layout,
        algo=algo, needs_input_grad=needs_input_grad)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *,
               layout="NCHW", return_indices=False):
    """fastconv.max_pool2d on the GPU (see fastconv.cuda._pool.max_pool2d)."""
    return _impl("max_pool2d", "_pool")(x, kernel_size, stride, padding, dilation, ceil_mode,
                                        layout=layout, return_indices=return_indices)


def max_pool2d_backward(grad_y, indices, input_shape, *, layout="NCHW"):
    """fastconv.max_pool2d_backward on the GPU (see fastconv.cuda._pool)."""
    return _impl("max_pool2d_backward", "_pool")(grad_y, indices, input_shape, layout=layout)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               *, layout="NCHW"):
    """fastconv.avg_pool2d on the GPU (see fastconv.cuda._pool.avg_pool2d)."""
    return _impl("avg_pool2d", "_pool")(x, kernel_size, stride, padding, ceil_mode,
                                        count_include_pad, layout=layout)


def avg_pool2d_backward(grad_y, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, *, layout="NCHW"):
    """fastconv.avg_pool2d_backward on the GPU (see fastconv.cuda._pool)."""
    return _impl("avg_pool2d_backward", "_pool")(grad_y, input_shape, kernel_size, stride,
                                                 padding, ceil_mode, count_include_pad,
                                                 layout=layout)


def global_avg_pool2d(x, *, layout="NCHW"):
    """fastconv.global_avg_pool2d on the GPU (see fastconv.cuda._global_pool)."""
    return _impl("global_avg_pool2d", "_global_pool")(x, layout=layout)


def global_avg_pool2d_backward(grad_y, input_shape, *, layout="NCHW"):
    """fastconv.global_avg_pool2d_backward on the GPU (see fastconv.cuda._global_pool)."""
    return _impl("global_avg_pool2d_backward", "_global_pool")(grad_y, input_shape,
                                                               layout=layout)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, layout="NCHW", return_stats=False):
    """fastconv.batch_norm on the GPU (see fastconv.cuda._norm.batch_norm)."""
    return _impl("batch_norm", "_norm")(x, running_mean, running_var, weight, bias, training,
                                        momentum, eps, layout=layout,
                                        return_stats=return_stats)


def batch_norm_backward(grad_y, x, mean, invstd, weight=None, *, training=True, layout="NCHW"):
    """fastconv.batch_norm_backward on the GPU (see fastconv.cuda._norm)."""
    return _impl("batch_norm_backward", "_norm")(grad_y, x, mean, invstd, weight,
                                                 training=training, layout=layout)


#: The GPU paths of the autograd layer's own ops (``fastconv.cuda._autograd``), on device
#: arrays only: ``fastconv.cuda.relu`` etc. load on first use (module ``__getattr__``).
AUTOGRAD_OPS = ("relu", "relu_backward", "add", "full_like", "astype", "copy", "permute",
                "linear",
                "linear_backward", "cross_entropy", "cross_entropy_backward", "sgd_step")


def __getattr__(name):
    if name in AUTOGRAD_OPS:
        return _impl(name, "_autograd")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CudaUnavailableError", "is_available", "unavailable_reason", "require", "conv2d",
           "conv2d_backward", "conv1d", "conv1d_backward", "conv3d", "conv3d_backward",
           "conv_transpose2d", "conv_transpose2d_backward", "max_pool2d",
           "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward", "global_avg_pool2d",
           "global_avg_pool2d_backward", "batch_norm", "batch_norm_backward"]
