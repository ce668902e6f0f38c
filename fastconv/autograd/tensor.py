"""The :class:`Tensor` and the backward pass over the graph that the ops record.

A Tensor wraps an ndarray. Each of its operators and methods applies one op (a
:class:`~fastconv.autograd.function.Function` of ``arithmetic``, ``shape_ops`` or
``activations``); when gradients are enabled and an input requires them, the op is
recorded on its output, and :meth:`Tensor.backward` (or :func:`grad`) walks that graph
in reverse topological order.

dtype rule: python and numpy scalars take the dtype of the tensor they meet, so a
float32 model stays float32; arrays of different float dtypes promote as numpy does and
gradients are cast back to each input's dtype.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from .. import devices
from . import arrays, function
from .activations import Exp, Log, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from .arithmetic import Add, Div, MatMul, Mul, Neg, Pow, Sub
from .dims import dim_index, flat_shape, permutation_axes, reduction_axes
from .function import Function
from .shape_ops import GetItem, Mean, Permute, Reshape, Sum


class Tensor:
    """An ndarray with an optional gradient and the op that produced it.

    Parameters
    ----------
    data : array_like; kept as is when it is an ndarray (no copy, dtype kept).
    requires_grad : bool; only floating-point tensors may require gradients.

    Attributes: ``data`` (ndarray), ``grad`` (ndarray of ``data``'s shape and dtype, or
    None), ``requires_grad``, ``shape``, ``dtype``, ``ndim``, ``device``.

    ``to("cuda")`` gives a tensor whose ``data`` is a numba device array on the GPU
    (``to("cpu")``, ``cpu()`` and ``numpy()`` bring it back). The ops of CNN training
    (conv2d, pooling, batch norm, relu, flatten/reshape, linear, cross_entropy) run there
    on GPU kernels, and gradients accumulate on the GPU; any other op given a tensor on
    "cuda" raises a RuntimeError that names it, rather than copying to the host behind
    the caller's back.
    """

    # numpy's binary operators return NotImplemented for Tensors, so that
    # ``ndarray + Tensor`` runs Tensor.__radd__ and stays in the graph.
    __array_ufunc__ = None

    def __init__(self, data, requires_grad: bool = False):
        if isinstance(data, Tensor):
            data = data.data
        arr = data if type(data) is np.ndarray or devices.is_device_array(data) \
            else np.asarray(data)
        if requires_grad and arr.dtype.kind != "f":
            raise TypeError(f"Tensor: only floating-point tensors can require gradients, "
                            f"got dtype {arr.dtype}")
        self.data: np.ndarray = arr
        self.grad: np.ndarray | None = None
        self.requires_grad = bool(requires_grad)
        self._ctx: Function | None = None

    # ---- array-like facts
    # a plain tuple: the CUDA simulator's device arrays refuse negative shape indices
    shape = property(lambda self: tuple(self.data.shape))
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    is_leaf = property(lambda self: self._ctx is None)
    device = property(lambda self: "cpu" if type(self.data) is np.ndarray
                      else devices.array_device(self.data),
                      doc='"cpu" or "cuda": where ``data`` lives.')

    def size(self, dim=None):
        """The shape, or the length of axis ``dim`` (torch's size())."""
        return self.shape if dim is None else self.shape[dim_index(dim, self.ndim)]

    def numel(self) -> int:
        return self.data.size

    def __len__(self) -> int:
        return len(self.data)

    def __array__(self, dtype=None, copy=None):
        return self.data if dtype is None else self.data.astype(dtype)

    def __float__(self) -> float:
        return float(self._one("float"))

    def __int__(self) -> int:
        return int(self._one("int"))

    def __bool__(self) -> bool:
        return bool(self._one("bool"))

    def _one(self, op: str):
        if self.data.size != 1:
            raise ValueError(f"{op}: only one-element tensors can be converted to a python "
                             f"number, got shape {self.shape}")
        return self.numpy().item()

    def numpy(self) -> np.ndarray:
        """The underlying ndarray (shared, not copied); for a tensor on "cuda", a copy of
        its data on the host."""
        return self.data if self.device == "cpu" else devices.move("Tensor.numpy",
                                                                     self.data, "cpu")

    def to(self, device) -> Tensor:
        """This tensor on ``device`` ("cpu" or "cuda", torch's names): itself when it is
        there already, else a new leaf tensor holding a copy (a numba device array on
        "cuda"), with the same ``requires_grad``.

        A tensor computed by recorded ops cannot move (the backward pass would have to
        cross devices): move the inputs, and the model with ``Module.to``, before the
        forward pass. ValueError for another device; ``fastconv.cuda.CudaUnavailableError``
        for "cuda" without a usable GPU.

        >>> t = Tensor(np.float32([1, 2]))
        >>> t.to("cpu") is t, t.device
        (True, 'cpu')
        """
        data = devices.move("Tensor.to", self.data, device)
        if data is self.data:
            return self
        if self._ctx is not None:
            raise RuntimeError(f"Tensor.to: this tensor was computed by recorded ops "
                               f"({type(self._ctx).__name__}) and cannot move to {device!r} "
                               "(the backward pass runs on one device); move the inputs and "
                               "the model (Module.to) before the forward pass")
        return Tensor(data, requires_grad=self.requires_grad)

    def cpu(self) -> Tensor:
        """``to("cpu")``."""
        return self.to("cpu")

    def cuda(self) -> Tensor:
        """``to("cuda")``."""
        return self.to("cuda")

    def item(self):
        """The value of a one-element tensor as a python number."""
        return self._one("item")

    def detach(self) -> Tensor:
        """A tensor sharing ``data`` that is outside the graph."""
        return Tensor(self.data)

    def __repr__(self) -> str:
        body = np.array2string(self.numpy(), prefix="tensor(", separator=", ")
        extra = f", dtype={self.dtype}" if self.dtype not in (np.float32, np.int64) else ""
        if self.device != "cpu":
            extra += f", device={self.device!r}"
        if self._ctx is not None:
            extra += f", grad_fn=<{type(self._ctx).__name__}Backward>"
        elif self.requires_grad:
            extra += ", requires_grad=True"
        return f"tensor({body}{extra})"

    # ---- autograd
    def backward(self, grad=None) -> None:
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf requiring grad.

        ``grad`` (same shape as self) is the upstream gradient; it may be omitted only
        for a one-element tensor (then it is 1).
        """
        if not self.requires_grad:
            raise RuntimeError("backward: this tensor does not require grad and has no "
                               "graph (were its inputs created with requires_grad=True, "
                               "outside no_grad?)")
        g = _initial_grad(self, grad, "backward")
        for leaf, leaf_grad in _run_backward(self, g, None).items():
            if leaf.grad is None:
                leaf.grad = arrays.copy_as(leaf_grad, leaf.dtype)
            else:
                leaf.grad = arrays.add(leaf.grad, leaf_grad)

    # ---- arithmetic (python scalars take this tensor's dtype)
    def __add__(self, o): return Add.apply(self, _operand(o, self))
    def __radd__(self, o): return Add.apply(_operand(o, self), self)
    def __sub__(self, o): return Sub.apply(self, _operand(o, self))
    def __rsub__(self, o): return Sub.apply(_operand(o, self), self)
    def __mul__(self, o): return Mul.apply(self, _operand(o, self))
    def __rmul__(self, o): return Mul.apply(_operand(o, self), self)
    def __truediv__(self, o): return Div.apply(self, _operand(o, self))
    def __rtruediv__(self, o): return Div.apply(_operand(o, self), self)
    def __matmul__(self, o): return MatMul.apply(self, _operand(o, self))
    def __rmatmul__(self, o): return MatMul.apply(_operand(o, self), self)
    def __pow__(self, o): return Pow.apply(self, _operand(o, self))
    def __rpow__(self, o): return Pow.apply(_operand(o, self), self)
    def __neg__(self): return Neg.apply(self)
    def __pos__(self): return self

    # ---- comparisons: boolean Tensors outside the graph (as torch); identity hashing
    __hash__ = object.__hash__
    def __eq__(self, o): return _compare(np.equal, self, o)
    def __ne__(self, o): return _compare(np.not_equal, self, o)
    def __lt__(self, o): return _compare(np.less, self, o)
    def __le__(self, o): return _compare(np.less_equal, self, o)
    def __gt__(self, o): return _compare(np.greater, self, o)
    def __ge__(self, o): return _compare(np.greater_equal, self, o)

    def __getitem__(self, index):
        return GetItem.apply(self, index=_plain_index(index))

    # ---- reductions (torch's dim/keepdim; numpy's axis/keepdims accepted too)
    def sum(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        """Sum over ``dim`` (an int, a sequence of ints, or None for all axes); the
        reduced axes are dropped, or kept with length 1 when ``keepdim``."""
        return Sum.apply(self, axis=reduction_axes(dim, axis, self.ndim),
                         keepdims=keepdim or bool(keepdims))

    def mean(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        """Mean over ``dim``, with the axis rules of :meth:`sum`."""
        return Mean.apply(self, axis=reduction_axes(dim, axis, self.ndim),
                          keepdims=keepdim or bool(keepdims))

    def argmax(self, dim=None, keepdim=False):
        """Index of the (first) maximum: over the flattened tensor (a 0-D int64 Tensor)
        when ``dim`` is None, else along ``dim`` (torch's argmax). Outside the graph.

        >>> Tensor(np.float32([[1, 5], [7, 2]])).argmax(1)
        tensor([1, 0])
        """
        if dim is None:
            return Tensor(np.asarray(np.argmax(self.data), np.int64))
        d = dim_index(dim, self.ndim)
        return Tensor(np.argmax(self.data, axis=d, keepdims=bool(keepdim)).astype(np.int64))

    def max(self, dim=None, keepdim=False):
        """The maximum (torch's max). ``dim`` None: a 0-D Tensor; its gradient is shared
        evenly among equal maxima. ``dim`` given: ``(values, indices)`` (a named tuple)
        along ``dim``, the gradient going to the first maximum of each slice.

        >>> t = Tensor(np.float32([[1, 5], [7, 2]]))
        >>> float(t.max())
        7.0
        >>> values, indices = t.max(dim=1)
        >>> values, indices
        (tensor([5., 7.]), tensor([1, 0]))
        """
        if dim is None:
            top = np.max(self.data) if self.data.size else None
            if top is None:
                raise ValueError("max: the tensor is empty; pass dim (or check its shape)")
            if np.isnan(top):
                return GetItem.apply(self, index=np.unravel_index(np.argmax(self.data),
                                                                  self.shape))
            ties = self.data == top
            return Sum.apply(self * Tensor(ties / ties.sum(dtype=self.dtype)), axis=None,
                             keepdims=False)
        d = dim_index(dim, self.ndim)
        idx = np.argmax(self.data, axis=d, keepdims=True).astype(np.int64)
        grids = list(np.ogrid[tuple(slice(n) for n in idx.shape)])
        grids[d] = idx
        values = GetItem.apply(self, index=tuple(grids))
        if not keepdim:
            values, idx = values.reshape(values.shape[:d] + values.shape[d + 1:]), \
                np.squeeze(idx, d)
        return MaxResult(values, Tensor(idx))

    # ---- shape
    def reshape(self, *shape):
        """The same data in ``shape`` (ints or one tuple; one entry may be -1)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return Reshape.apply(self, shape=shape)

    view = reshape

    def flatten(self, start_dim=0, end_dim=-1):
        """Axes start_dim..end_dim merged into one, e.g. (N, C, H, W).flatten(1) is
        (N, C*H*W); a 0-D tensor becomes (1,)."""
        return Reshape.apply(self, shape=flat_shape(self.shape, start_dim, end_dim))

    def permute(self, *dims):
        """The axes reordered: output axis i is input axis ``dims[i]``."""
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        return Permute.apply(self, axes=permutation_axes(dims, self.ndim))

    def transpose(self, dim0=-2, dim1=-1):
        """Swap two axes (torch's transpose)."""
        axes = list(range(self.ndim))
        d0, d1 = dim_index(dim0, self.ndim), dim_index(dim1, self.ndim)
        axes[d0], axes[d1] = axes[d1], axes[d0]
        return Permute.apply(self, axes=tuple(axes))

    @property
    def T(self):
        """All axes reversed: (a, b, c) -> (c, b, a)."""
        return Permute.apply(self, axes=tuple(reversed(range(self.ndim))))

    # ---- elementwise
    def exp(self): return Exp.apply(self)
    def log(self): return Log.apply(self)
    def relu(self): return ReLU.apply(self)
    def tanh(self): return Tanh.apply(self)
    def sigmoid(self): return Sigmoid.apply(self)
    def softmax(self, dim=-1): return Softmax.apply(self, axis=dim_index(dim, self.ndim))
    def log_softmax(self, dim=-1): return LogSoftmax.apply(self, axis=dim_index(dim, self.ndim))


class MaxResult(NamedTuple):
    """``Tensor.max(dim)``'s result: the maxima and their int64 indices along dim."""

    values: Tensor
    indices: Tensor


function._set_tensor_class(Tensor)


def _compare(ufunc, a: Tensor, o) -> Tensor:
    """``ufunc(a, o)`` (a comparison) as a boolean Tensor that requires no gradient."""
    if not isinstance(o, Tensor) and not isinstance(
            o, (numbers.Number, np.generic, np.ndarray, list, tuple)):
        return NotImplemented
    return Tensor(ufunc(a.data, o.data if isinstance(o, Tensor) else np.asarray(o)))


def _initial_grad(out: Tensor, grad, op: str) -> np.ndarray:
    if grad is None:
        if out.data.size != 1:
            raise RuntimeError(f"{op}: grad can be implicitly created only for one-element "
                               f"outputs, got shape {out.shape}; pass grad explicitly")
        return arrays.full_like(out.data, 1)
    g = grad.data if isinstance(grad, Tensor) else grad
    if out.device != "cpu" or devices.array_device(g) != "cpu":
        g = arrays.astype(devices.move(op, g, out.device), out.dtype)
    else:
        g = np.asarray(g, dtype=out.dtype)
    if g.shape != out.shape:
        raise ValueError(f"{op}: grad has shape {g.shape} but the output has shape {out.shape}")
    return g


def _topological_order(root: Tensor) -> list[Tensor]:
    """Tensors of root's graph, every tensor after the tensors it was computed from."""
    order, seen, stack = [], set(), [(root, False)]
    while stack:  # iterative post-order DFS (deep graphs would overflow recursion)
        t, expanded = stack.pop()
        if expanded:
            order.append(t)
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        stack.append((t, True))
        if t._ctx is not None:
            for p in t._ctx.inputs:
                if p is not None and p.requires_grad and id(p) not in seen:
                    stack.append((p, False))
    return order


def _run_backward(root: Tensor, grad: np.ndarray, wanted) -> dict:
    """Propagate ``grad`` from root. Returns {tensor: gradient} for the leaves
    (``wanted`` None) or for the tensors in ``wanted`` (leaves or not)."""
    wanted_ids = None if wanted is None else {id(t) for t in wanted}
    grads = {id(root): grad}
    found = {}
    for t in reversed(_topological_order(root)):
        g = grads.pop(id(t), None)
        if g is None:
            continue
        if wanted_ids is None:
            if t._ctx is None:
                found[t] = g
        elif id(t) in wanted_ids:
            found[id(t)] = g
        if t._ctx is None:
            continue
        ctx = t._ctx
        in_grads = type(ctx).backward(ctx, g)
        if not isinstance(in_grads, tuple):
            in_grads = (in_grads,)
        if len(in_grads) != len(ctx.inputs):
            raise RuntimeError(f"{type(ctx).__name__}.backward returned {len(in_grads)} "
                               f"gradients for {len(ctx.inputs)} inputs")
        for inp, ig in zip(ctx.inputs, in_grads, strict=True):
            if ig is None or inp is None or not inp.requires_grad:
                continue
            if ig.shape != inp.shape:
                raise RuntimeError(f"{type(ctx).__name__}.backward returned a gradient of "
                                   f"shape {ig.shape} for an input of shape {inp.shape}")
            if ig.dtype != inp.data.dtype:
                ig = arrays.astype(ig, inp.dtype)
            prev = grads.get(id(inp))
            # never in place: ig may alias
            grads[id(inp)] = ig if prev is None else arrays.add(prev, ig)
    return found


def grad(output: Tensor, inputs, grad_output=None) -> tuple:
    """d(output)/d(inputs) as ndarrays without touching ``.grad`` (torch.autograd.grad).

    ``inputs`` is a sequence of tensors in output's graph; an input that output does not
    depend on gets zeros.
    """
    inputs = list(inputs)
    if not output.requires_grad:
        raise RuntimeError("grad: output does not require grad")
    g = _initial_grad(output, grad_output, "grad")
    found = _run_backward(output, g, inputs)
    return tuple(found.get(id(t), arrays.full_like(t.data, 0)) for t in inputs)


# --------------------------------------------------------------------------- arg helpers
def _operand(o, ref: Tensor):
    """Python/numpy scalars take ref's dtype (no silent upcast); arrays are kept."""
    if isinstance(o, Tensor):
        return o
    if isinstance(o, (numbers.Real, np.integer, np.floating, np.bool_)):
        if ref.dtype.kind == "f" or not isinstance(o, (float, np.floating)):
            return Tensor(np.asarray(o, dtype=ref.dtype))
        return Tensor(np.asarray(o))
    if isinstance(o, (np.ndarray, list, tuple)):
        return Tensor(np.asarray(o))
    raise TypeError(f"unsupported operand type for a Tensor op: {type(o).__name__}")


def _plain_index(index):
    """An index with its Tensors (integer or boolean arrays) replaced by their data."""
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index
