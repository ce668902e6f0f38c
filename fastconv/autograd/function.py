"""The :class:`Function` base: one differentiable op, its forward and backward together.

``Function.apply`` wraps its inputs as Tensors, runs ``forward`` on their arrays and,
when the graph is recorded, keeps the op instance (``ctx``) on the output Tensor so that
the backward pass of ``fastconv.autograd.tensor`` can call ``backward``.
"""

from __future__ import annotations

import numpy as np

from .grad_mode import is_grad_enabled

# The class that Function.apply wraps inputs and results in: fastconv.autograd.tensor's
# Tensor, installed by that module (:func:`_set_tensor_class`) as soon as it is defined.
# Tensor's operators are built on the ops that subclass Function, so this module cannot
# import it.
Tensor = None


def _set_tensor_class(cls) -> None:
    global Tensor
    Tensor = cls


class Function:
    """One differentiable op. Subclasses define, torch-style::

        @staticmethod
        def forward(ctx, *arrays, **options) -> ndarray
        @staticmethod
        def backward(ctx, grad) -> one gradient (or None) per positional input

    Positional inputs are the differentiable operands (Tensors, arrays or None);
    keyword options are passed through unchanged. ``forward`` receives ndarrays (None
    stays None) and returns one ndarray; ``backward`` receives the gradient of that
    output (an ndarray of the output's shape) and returns, for each positional input,
    None or an ndarray of that input's shape (it is cast to the input's dtype). It may
    skip work for inputs whose ``ctx.needs_input_grad[i]`` is False.
    ``ctx.needs_input_grad`` is set before ``forward`` runs and is all False when no
    graph is recorded (inside ``no_grad``, or no input requires grad), so ``forward``
    may skip what only ``backward`` needs.

    ``ctx`` is the Function instance: ``ctx.save_for_backward(*arrays)`` keeps arrays
    for ``ctx.saved_tensors``, and any other attribute may be set on it.

    GPU: an op whose ``gpu`` class attribute is True also takes inputs on "cuda" (all of
    them there: its forward and backward then get and return numba device arrays); any
    other op refuses them with a RuntimeError that names it.
    """

    #: whether forward and backward accept GPU device arrays (see the class docstring)
    gpu: bool = False

    def __init__(self):
        self.saved_tensors: tuple = ()
        self.needs_input_grad: tuple[bool, ...] = ()
        self.inputs: tuple = ()

    def save_for_backward(self, *arrays) -> None:
        self.saved_tensors = arrays

    @staticmethod
    def forward(ctx, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **options) -> Tensor:
        """Run the op on ``inputs`` (Tensors, array-likes or None) and return a Tensor;
        it records ``ctx`` for the backward pass when gradients are enabled and an input
        requires them."""
        # one loop over the inputs (every op of a training step passes here)
        tensors, arrays, needs = [], [], []
        host = True
        for a in inputs:
            if a is None:
                tensors.append(None)
                arrays.append(None)
                needs.append(False)
                continue
            t = a if isinstance(a, Tensor) else Tensor(a)
            tensors.append(t)
            arrays.append(t.data)
            needs.append(t.requires_grad)
            host = host and type(t.data) is np.ndarray
        tensors = tuple(tensors)
        if not host:
            _check_device(cls, tensors)
        ctx = cls()
        track = any(needs) and is_grad_enabled()
        ctx.needs_input_grad = tuple(needs) if track else (False,) * len(needs)
        out = cls.forward(ctx, *arrays, **options)
        result = Tensor(out, requires_grad=track)
        if track:
            ctx.inputs = tensors
            result._ctx = ctx
        return result


def _check_device(cls, tensors) -> None:
    """RuntimeError when an input lives on the GPU and the op has no GPU path (an honest
    error instead of a silent copy per op), or when its inputs are on different devices."""
    if all(t is None or type(t.data) is np.ndarray for t in tensors):
        return      # all on the CPU (the common case, without the device checks)
    on_gpu = [i for i, t in enumerate(tensors) if t is not None and t.device != "cpu"]
    if not on_gpu:
        return
    op = cls.__name__
    if not cls.gpu:
        raise RuntimeError(f"{op}: this autograd op has no GPU path yet, and input(s) "
                           f"{on_gpu} are on device='cuda'; move them with .to('cpu') (a "
                           "model with Module.to('cpu')), or call the array functions "
                           "(fastconv.conv2d, max_pool2d, ...) with device='cuda'")
    on_cpu = [i for i, t in enumerate(tensors) if t is not None and t.device == "cpu"]
    if on_cpu:
        raise RuntimeError(f"{op}: input(s) {on_gpu} are on device='cuda' but input(s) "
                           f"{on_cpu} on device='cpu'; an op runs on one device (move them "
                           "with .to('cuda'))")
