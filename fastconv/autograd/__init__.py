"""Reverse-mode automatic differentiation over numpy arrays.

A :class:`Tensor` wraps an ndarray. Every differentiable op is one :class:`Function`
subclass whose ``forward`` and ``backward`` sit side by side and talk through a ``ctx``
(the Function instance: ``ctx.save_for_backward(...)``, ``ctx.saved_tensors``, any
attribute). ``Function.apply`` runs ``forward`` on the arrays and, when gradients are
enabled and an input requires them, records ``ctx`` on the output so that
``Tensor.backward`` can walk the graph in reverse topological order.

Modules:

- ``tensor``: :class:`Tensor`, the backward pass (``Tensor.backward``, :func:`grad`);
- ``function``: the :class:`Function` base and ``Function.apply``;
- ``grad_mode``: :class:`no_grad`, :func:`is_grad_enabled`;
- ``arithmetic``: +, -, *, /, unary -, ** and @ with numpy's broadcasting;
- ``shape_ops``: sum, mean, reshape, permute, indexing;
- ``activations``: exp, log, relu, leaky_relu, gelu, tanh, sigmoid, softmax, log_softmax;
- ``dims``: torch-style ``dim`` arguments turned into numpy axes;
- ``gradcheck``: :func:`gradcheck`, finite differences against the analytic gradient.

The network ops (conv2d, pooling, batch norm, dropout, linear, cross_entropy) live in
``fastconv.nn.functional`` and call the kernels of ``fastconv``. The default random
generator (:func:`manual_seed`, :func:`default_generator`) lives in ``fastconv.rng``
and is re-exported here.

dtype rule: python and numpy scalars take the dtype of the tensor they meet, so a
float32 model stays float32; arrays of different float dtypes promote as numpy does and
gradients are cast back to each input's dtype.
"""

from ..rng import default_generator, manual_seed
from .activations import (
    GELU,
    Exp,
    LeakyReLU,
    Log,
    LogSoftmax,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
    log_softmax_array,
)
from .arithmetic import Add, Div, MatMul, Mul, Neg, Pow, Sub, unbroadcast
from .function import Function
from .grad_mode import is_grad_enabled, no_grad
from .gradcheck import GradcheckError, gradcheck
from .shape_ops import GetItem, Mean, Permute, Reshape, Sum
from .tensor import Tensor, grad

__all__ = [
    "GELU", "Add", "Div", "Exp", "Function", "GetItem", "GradcheckError", "LeakyReLU", "Log",
    "LogSoftmax",
    "MatMul", "Mean", "Mul", "Neg", "Permute", "Pow", "ReLU", "Reshape", "Sigmoid",
    "Softmax", "Sub", "Sum", "Tanh", "Tensor", "default_generator", "grad", "gradcheck",
    "is_grad_enabled", "log_softmax_array", "manual_seed", "no_grad", "unbroadcast",
]
