"""Reverse-mode automatic differentiation over numpy arrays.

A :class:`Tensor` wraps an ndarray. Every differentiable op is one :class:`Function`
subclass whose ``forward`` and ``backward`` sit side by side and talk through a ``ctx``
(the Function instance: ``ctx.save_for_backward(...)``, ``ctx.saved_tensors``, any
attribute). ``Function.apply`` runs ``forward`` on the arrays and, when gradients are
enabled and an input requires them, records ``ctx`` on the output so that
``Tensor.backward`` can walk the graph in reverse topological order.

The ops defined here are the tensor algebra (arithmetic with broadcasting, matmul,
reductions, reshaping, exp/log/relu/tanh/sigmoid, softmax/log_softmax). The network ops
(conv2d, pooling, batch norm, dropout, linear, cross_entropy) live in
``fastconv.nn.functional`` and call the kernels of ``fastconv``.

dtype rule: python and numpy scalars take the dtype of the tensor they meet, so a
float32 model stays float32; arrays of different float dtypes promote as numpy does and
gradients are cast back to each input's dtype.
"""

from __future__ import annotations

import contextlib
import numbers
import threading

import numpy as np

from . import _elementwise

# --------------------------------------------------------------------------- global state
_state = threading.local()


def is_grad_enabled() -> bool:
    """Whether ops record the graph (False inside ``no_grad``)."""
    return getattr(_state, "grad_enabled", True)


class no_grad(contextlib.ContextDecorator):
    """Context manager (or decorator) in which no graph is recorded, as torch.no_grad.

    Per thread; nests (the previous states are kept on a per-thread stack, so one
    instance may be entered from several threads or recursively).
    """

    def __enter__(self):
        if not hasattr(_state, "saved"):
            _state.saved = []
        _state.saved.append(is_grad_enabled())
        _state.grad_enabled = False
        return self

    def __exit__(self, *exc):
        _state.grad_enabled = _state.saved.pop()
        return False


_generator = np.random.default_rng()


def manual_seed(seed: int) -> np.random.Generator:
    """Seed fastconv's default generator (weight initialisation, dropout, shuffling).

    Returns the new ``numpy.random.Generator``.
    """
    global _generator
    _generator = np.random.default_rng(seed)
    return _generator


def default_generator() -> np.random.Generator:
    """The generator used where no ``rng`` argument is given (see :func:`manual_seed`)."""
    return _generator


# --------------------------------------------------------------------------------- Tensor
class Tensor:
    """An ndarray with an optional gradient and the op that produced it.

    Parameters
    ----------
    data : array_like; kept as is when it is an ndarray (no copy, dtype kept).
    requires_grad : bool; only floating-point tensors may require gradients.

    Attributes: ``data`` (ndarray), ``grad`` (ndarray of ``data``'s shape and dtype, or
    None), ``requires_grad``, ``shape``, ``dtype``, ``ndim``.
    """

    # numpy's binary operators return NotImplemented for Tensors, so that
    # ``ndarray + Tensor`` runs Tensor.__radd__ and stays in the graph.
    __array_ufunc__ = None

    def __init__(self, data, requires_grad: bool = False):
        if isinstance(data, Tensor):
            data = data.data
        arr = np.asarray(data)
        if requires_grad and arr.dtype.kind != "f":
            raise TypeError(f"Tensor: only floating-point tensors can require gradients, "
                            f"got dtype {arr.dtype}")
        self.data: np.ndarray = arr
        self.grad: np.ndarray | None = None
        self.requires_grad = bool(requires_grad)
        self._ctx: Function | None = None

    # ---- array-like facts
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    is_leaf = property(lambda self: self._ctx is None)

    def size(self, dim=None):
        """The shape, or the length of axis ``dim`` (torch's size())."""
        return self.shape if dim is None else self.shape[_axis(dim, self.ndim)]

    def numel(self) -> int:
        return self.data.size

    def __len__(self) -> int:
        return len(self.data)

    def __array__(self, dtype=None, copy=None):
        return self.data if dtype is None else self.data.astype(dtype)

    def numpy(self) -> np.ndarray:
        """The underlying ndarray (shared, not copied)."""
        return self.data

    def item(self):
        """The value of a one-element tensor as a python number."""
        if self.data.size != 1:
            raise ValueError(f"item: only one-element tensors can be converted to a python "
                             f"number, got shape {self.shape}")
        return self.data.item()

    def detach(self) -> Tensor:
        """A tensor sharing ``data`` that is outside the graph."""
        return Tensor(self.data)

    def __repr__(self) -> str:
        body = np.array2string(self.data, prefix="tensor(", separator=", ")
        extra = f", dtype={self.dtype}" if self.dtype not in (np.float32, np.int64) else ""
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
                leaf.grad = np.array(leaf_grad, dtype=leaf.dtype, copy=True)
            else:
                leaf.grad = leaf.grad + leaf_grad

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

    def __getitem__(self, index):
        return GetItem.apply(self, index=_plain_index(index))

    # ---- reductions (torch's dim/keepdim; numpy's axis/keepdims accepted too)
    def sum(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        return Sum.apply(self, axis=_axes(dim, axis, self.ndim), keepdims=keepdim or bool(keepdims))

    def mean(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        return Mean.apply(self, axis=_axes(dim, axis, self.ndim),
                          keepdims=keepdim or bool(keepdims))

    # ---- shape
    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return Reshape.apply(self, shape=shape)

    view = reshape

    def flatten(self, start_dim=0, end_dim=-1):
        return Reshape.apply(self, shape=_flat_shape(self.shape, start_dim, end_dim))

    def permute(self, *dims):
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        return Permute.apply(self, axes=_check_perm(dims, self.ndim))

    def transpose(self, dim0=-2, dim1=-1):
        """Swap two axes (torch's transpose)."""
        axes = list(range(self.ndim))
        d0, d1 = _axis(dim0, self.ndim), _axis(dim1, self.ndim)
        axes[d0], axes[d1] = axes[d1], axes[d0]
        return Permute.apply(self, axes=tuple(axes))

    @property
    def T(self):
        return Permute.apply(self, axes=tuple(reversed(range(self.ndim))))

    # ---- elementwise
    def exp(self): return Exp.apply(self)
    def log(self): return Log.apply(self)
    def relu(self): return ReLU.apply(self)
    def tanh(self): return Tanh.apply(self)
    def sigmoid(self): return Sigmoid.apply(self)
    def softmax(self, dim=-1): return Softmax.apply(self, axis=_axis(dim, self.ndim))
    def log_softmax(self, dim=-1): return LogSoftmax.apply(self, axis=_axis(dim, self.ndim))


# ------------------------------------------------------------------------------- Function
class Function:
    """One differentiable op. Subclasses define, torch-style::

        @staticmethod
        def forward(ctx, *arrays, **options) -> ndarray
        @staticmethod
        def backward(ctx, grad) -> one gradient (or None) per positional input

    Positional inputs are the differentiable operands (Tensors, arrays or None);
    keyword options are passed through unchanged. ``forward`` receives ndarrays (None
    stays None) and returns one ndarray; ``backward`` receives the gradient of that
    output and may skip work for inputs whose ``ctx.needs_input_grad[i]`` is False.
    ``ctx.needs_input_grad`` is set before ``forward`` runs and is all False when no
    graph is recorded (inside ``no_grad``, or no input requires grad), so ``forward``
    may skip what only ``backward`` needs.
    """

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
        tensors = tuple(None if a is None else a if isinstance(a, Tensor) else Tensor(a)
                        for a in inputs)
        ctx = cls()
        needs = tuple(t is not None and t.requires_grad for t in tensors)
        track = any(needs) and is_grad_enabled()
        ctx.needs_input_grad = needs if track else (False,) * len(needs)
        out = cls.forward(ctx, *(None if t is None else t.data for t in tensors), **options)
        result = Tensor(out, requires_grad=track)
        if track:
            ctx.inputs = tensors
            result._ctx = ctx
        return result


def _initial_grad(out: Tensor, grad, op: str) -> np.ndarray:
    if grad is None:
        if out.data.size != 1:
            raise RuntimeError(f"{op}: grad can be implicitly created only for one-element "
                               f"outputs, got shape {out.shape}; pass grad explicitly")
        return np.ones_like(out.data)
    g = np.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=out.dtype)
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
            stack.extend((p, False) for p in t._ctx.inputs
                         if p is not None and p.requires_grad and id(p) not in seen)
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
            ig = ig.astype(inp.dtype, copy=False)
            prev = grads.get(id(inp))
            grads[id(inp)] = ig if prev is None else prev + ig  # never in place: ig may alias
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
    return tuple(found.get(id(t), np.zeros_like(t.data)) for t in inputs)


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


def _axis(d, ndim: int) -> int:
    if not isinstance(d, numbers.Integral):
        raise TypeError(f"dim={d!r} must be an int")
    if not -max(ndim, 1) <= d < max(ndim, 1):
        raise ValueError(f"dim={d} is out of range for a {ndim}-D tensor")
    return int(d) % max(ndim, 1)


def _axes(dim, axis, ndim: int):
    """Canonical reduction axes (a sorted tuple) or None for all."""
    if dim is not None and axis is not None:
        raise TypeError("pass either dim or axis, not both")
    d = dim if dim is not None else axis
    if d is None:
        return None
    ds = (d,) if isinstance(d, numbers.Integral) else tuple(d)
    out = tuple(sorted({_axis(x, ndim) for x in ds}))
    if len(out) != len(ds):
        raise ValueError(f"dim={d!r} repeats an axis")
    return out


def _check_perm(dims, ndim: int) -> tuple:
    axes = tuple(_axis(d, ndim) for d in dims)
    if sorted(axes) != list(range(ndim)):
        raise ValueError(f"permute: dims={tuple(dims)} is not a permutation of the {ndim} axes")
    return axes


def _flat_shape(shape, start_dim: int, end_dim: int) -> tuple:
    if len(shape) == 0:
        return (1,)
    s, e = _axis(start_dim, len(shape)), _axis(end_dim, len(shape))
    if s > e:
        raise ValueError(f"flatten: start_dim={start_dim} comes after end_dim={end_dim}")
    return tuple(shape[:s]) + (int(np.prod(shape[s:e + 1])),) + tuple(shape[e + 1:])


def _plain_index(index):
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index


def unbroadcast(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum g over the axes that broadcasting added or stretched, giving ``shape``."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape)
                                      if n == 1 and g.shape[lead + i] != 1)
    return g.sum(axis=axes, keepdims=True).reshape(shape)


# ------------------------------------------------------------------------------ the ops
class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = a.shape, b.shape
        return a + b

    @staticmethod
    def backward(ctx, g):
        return unbroadcast(g, ctx.shapes[0]), unbroadcast(g, ctx.shapes[1])


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = a.shape, b.shape
        return a - b

    @staticmethod
    def backward(ctx, g):
        return unbroadcast(g, ctx.shapes[0]), unbroadcast(-g, ctx.shapes[1])


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        ga = unbroadcast(g * b, a.shape) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(g * a, b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        ga = unbroadcast(g / b, a.shape) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(-g * a / (b * b), b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, g):
        return -g


class Pow(Function):
    """a ** b; d/db = a**b * log(a) (taken as 0 where a == 0, as torch does)."""

    @staticmethod
    def forward(ctx, a, b):
        out = a ** b
        ctx.save_for_backward(a, b, out)
        return out

    @staticmethod
    def backward(ctx, g):
        a, b, out = ctx.saved_tensors
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = unbroadcast(g * b * a ** (b - 1), a.shape)
        if ctx.needs_input_grad[1]:
            with np.errstate(divide="ignore", invalid="ignore"):
                loga = np.where(a == 0, 0, np.log(np.where(a == 0, 1, a)))
            gb = unbroadcast(g * out * loga, b.shape)
        return ga, gb


class MatMul(Function):
    """a @ b with numpy's rules (1-D operands, broadcast batch axes)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        a2 = a[None, :] if a.ndim == 1 else a            # (.., n, k)
        b2 = b[:, None] if b.ndim == 1 else b            # (.., k, m)
        g2 = g
        if b.ndim == 1:
            g2 = g2[..., None]
        if a.ndim == 1:
            g2 = g2[..., None, :]
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = unbroadcast(g2 @ np.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape)
        if ctx.needs_input_grad[1]:
            gb = unbroadcast(np.swapaxes(a2, -1, -2) @ g2, b2.shape).reshape(b.shape)
        return ga, gb


class Sum(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.shape, ctx.axis, ctx.keepdims = a.shape, axis, keepdims
        return np.sum(a, axis=axis, keepdims=keepdims)

    @staticmethod
    def backward(ctx, g):
        if not ctx.keepdims and ctx.axis is not None:
            g = np.expand_dims(g, ctx.axis)
        return np.broadcast_to(g, ctx.shape)


class Mean(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.shape, ctx.axis, ctx.keepdims = a.shape, axis, keepdims
        ctx.count = a.size if axis is None else int(np.prod([a.shape[i] for i in axis]))
        return np.mean(a, axis=axis, keepdims=keepdims)

    @staticmethod
    def backward(ctx, g):
        if not ctx.keepdims and ctx.axis is not None:
            g = np.expand_dims(g, ctx.axis)
        return np.broadcast_to(g / ctx.count, ctx.shape)


class Reshape(Function):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        return a.reshape(shape)

    @staticmethod
    def backward(ctx, g):
        return g.reshape(ctx.shape)


class Permute(Function):
    @staticmethod
    def forward(ctx, a, axes):
        ctx.axes = axes
        return a.transpose(axes)

    @staticmethod
    def backward(ctx, g):
        return g.transpose(np.argsort(ctx.axes))


class GetItem(Function):
    @staticmethod
    def forward(ctx, a, index):
        ctx.shape, ctx.dtype, ctx.index = a.shape, a.dtype, index
        return a[index]

    @staticmethod
    def backward(ctx, g):
        out = np.zeros(ctx.shape, ctx.dtype)
        np.add.at(out, ctx.index, g)  # repeated indices accumulate
        return out


class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        out = np.exp(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        return g * ctx.saved_tensors[0]


class Log(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.log(a)

    @staticmethod
    def backward(ctx, g):
        return g / ctx.saved_tensors[0]


class ReLU(Function):
    @staticmethod
    def forward(ctx, a):
        out = _elementwise.relu(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        return _elementwise.relu_backward(g, ctx.saved_tensors[0])


class Tanh(Function):
    @staticmethod
    def forward(ctx, a):
        out = np.tanh(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        y = ctx.saved_tensors[0]
        return g * (1 - y * y)


class Sigmoid(Function):
    @staticmethod
    def forward(ctx, a):
        # exp of a non-positive number only: no overflow for large |a|
        e = np.exp(-np.abs(a))
        out = np.where(a >= 0, 1 / (1 + e), e / (1 + e))
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        y = ctx.saved_tensors[0]
        return g * y * (1 - y)


class Softmax(Function):
    """exp(x - max) / sum(exp(x - max)) along ``axis`` (stable for large inputs)."""

    @staticmethod
    def forward(ctx, a, axis=-1):
        e = np.exp(a - a.max(axis=axis, keepdims=True))
        out = e / e.sum(axis=axis, keepdims=True)
        ctx.save_for_backward(out)
        ctx.axis = axis
        return out

    @staticmethod
    def backward(ctx, g):
        y = ctx.saved_tensors[0]
        return y * (g - (g * y).sum(axis=ctx.axis, keepdims=True))


class LogSoftmax(Function):
    """x - max - log(sum(exp(x - max))) along ``axis``."""

    @staticmethod
    def forward(ctx, a, axis=-1):
        out = log_softmax_array(a, axis)
        ctx.save_for_backward(out)
        ctx.axis = axis
        return out

    @staticmethod
    def backward(ctx, g):
        y = ctx.saved_tensors[0]
        return g - np.exp(y) * g.sum(axis=ctx.axis, keepdims=True)


def log_softmax_array(a: np.ndarray, axis: int) -> np.ndarray:
    """Stable log-softmax of an ndarray."""
    shifted = a - a.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


# ------------------------------------------------------------------------------ gradcheck
class GradcheckError(AssertionError):
    """Raised by :func:`gradcheck` when an analytic gradient disagrees with finite
    differences."""


def gradcheck(fn, inputs, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3) -> bool:
    """Compare the analytic Jacobian of ``fn`` with central finite differences.

    Parameters
    ----------
    fn : callable taking the tensors of ``inputs`` and returning one Tensor.
    inputs : Tensor or sequence of Tensors; those with ``requires_grad`` are checked and
        must be float64 (float32 differences are too coarse). Their data is perturbed in
        place and restored.
    eps : step of the central difference (f(x + eps) - f(x - eps)) / (2 eps).
    atol, rtol : an entry passes when |analytic - numeric| <= atol + rtol * |numeric|.

    Returns
    -------
    True, or raises :class:`GradcheckError` naming the input, the worst entry and the max
    error. The full Jacobian is built (one backward pass per output element, two forward
    passes per input element), so use tiny shapes.
    """
    inputs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    checked = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} has dtype {inputs[i].dtype}; use float64")

    out = fn(*inputs)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor, got {type(out).__name__}")
    out_size = out.data.size
    analytic = {i: np.zeros((out_size, inputs[i].data.size)) for i in checked}
    for k in range(out_size):
        seed = np.zeros(out_size)
        seed[k] = 1.0
        grads = grad(out, [inputs[i] for i in checked], seed.reshape(out.shape))
        for i, gi in zip(checked, grads, strict=True):
            analytic[i][k] = gi.ravel()

    for i in checked:
        x = inputs[i].data
        flat = x.reshape(-1)  # a view when x is contiguous (checked below)
        if not np.shares_memory(flat, x):
            raise ValueError(f"gradcheck: input {i} must be C-contiguous")
        numeric = np.zeros_like(analytic[i])
        for j in range(flat.size):
            orig = flat[j]
            flat[j] = orig + eps
            with no_grad():
                plus = np.array(fn(*inputs).data, dtype=np.float64).ravel()
            flat[j] = orig - eps
            with no_grad():
                minus = np.array(fn(*inputs).data, dtype=np.float64).ravel()
            flat[j] = orig
            numeric[:, j] = (plus - minus) / (2 * eps)
        err = np.abs(analytic[i] - numeric)
        bad = err > atol + rtol * np.abs(numeric)
        if bad.any():
            k, j = np.unravel_index(np.argmax(np.where(bad, err, -1)), err.shape)
            raise GradcheckError(
                f"gradcheck: gradient of input {i} (shape {x.shape}) is wrong: max error "
                f"{err.max():.3e} (atol={atol}, rtol={rtol}); worst at output element {k}, "
                f"input element {np.unravel_index(j, x.shape)}: analytic "
                f"{analytic[i][k, j]:.6e} vs numeric {numeric[k, j]:.6e}")
    return True
