"""Array helpers of the autograd layer that work wherever the array lives.

Each takes numpy arrays (computed with numpy, as before) or GPU device arrays (computed
by ``fastconv.cuda``'s kernels through :func:`fastconv.devices.gpu_op`, the result left on
the GPU): the backward pass accumulates gradients and ``fastconv.optim`` updates
parameters with them, so a model moved with ``Module.to("cuda")`` trains without a copy
to the host per op.

>>> import numpy as np
>>> add(np.float32([1, 2]), np.float32([3, 4]))
array([4., 6.], dtype=float32)
>>> on_gpu("relu", np.zeros(2)) is None
True
"""

from __future__ import annotations

import numpy as np

from .. import _elementwise, _pool, devices


def on_gpu(op: str, a):
    """``fastconv.cuda.<op>`` when ``a`` is a GPU array, else None (compute on the host)."""
    return None if type(a) is np.ndarray else devices.gpu_op(op, devices.array_device(a))


def add(a, b):
    """a + b as a new array (same shapes on the GPU; on the host numpy's broadcasting
    into an array from ``fastconv._pool``, or ``_elementwise.add``)."""
    gpu = on_gpu("add", a)
    if gpu is not None:
        return gpu(a, b)
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        return a + b
    out = _elementwise.add(a, b)    # one shape and float dtype: on the threads if large
    if out is None:
        out = _pool.empty(np.broadcast_shapes(a.shape, b.shape), np.result_type(a, b))
        np.add(a, b, out=out)
    return out


def full_like(a, value, dtype=None):
    """An array of a's shape (and dtype, unless given) filled with ``value``."""
    gpu = on_gpu("full_like", a)
    return np.full_like(a, value, dtype=dtype) if gpu is None else gpu(a, value, dtype)


def astype(a, dtype):
    """``a`` in ``dtype``: ``a`` itself when it has it, else a converted copy."""
    gpu = on_gpu("astype", a)
    return a.astype(dtype, copy=False) if gpu is None else gpu(a, dtype)


def copy_as(a, dtype):
    """A new array holding ``a`` in ``dtype`` (never ``a`` itself)."""
    gpu = on_gpu("copy", a)
    if gpu is None:
        return np.array(a, dtype=dtype, copy=True)
    return gpu(a) if np.dtype(a.dtype) == np.dtype(dtype) else on_gpu("astype", a)(a, dtype)


def relu(a):
    """max(a, 0) element-wise, NaN kept (``fastconv._elementwise.relu`` on the host)."""
    gpu = on_gpu("relu", a)
    return _elementwise.relu(a) if gpu is None else gpu(a)


def relu_backward(g, y):
    """g where the forward's output y > 0, else 0."""
    gpu = on_gpu("relu_backward", g)
    return _elementwise.relu_backward(g, y) if gpu is None else gpu(g, y)


def reshape(a, shape):
    """``a`` in ``shape``; a GPU array that is not contiguous is copied first (a device
    array reshapes only contiguous data)."""
    if devices.array_device(a) != "cpu" and not a.is_c_contiguous():
        a = on_gpu("copy", a)(a)
    return a.reshape(shape)


def transpose(a, axes, contiguous: bool = False):
    """``a.transpose(axes)``: a view on the host (a contiguous copy when ``contiguous``);
    on the GPU always a contiguous copy (4-D arrays only)."""
    gpu = on_gpu("permute", a)
    if gpu is not None:
        return gpu(a, tuple(int(i) for i in axes))
    return np.ascontiguousarray(a.transpose(axes)) if contiguous else a.transpose(axes)
