"""Module, Parameter, Sequential, and saving state dicts as .npz (torch's names)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from .. import devices
from ..autograd import Tensor
from ..checkpoint import read_npz, write_npz


class Parameter(Tensor):
    """A Tensor that a Module registers as a learnable parameter (requires_grad=True)."""

    def __init__(self, data, requires_grad: bool = True):
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


class IncompatibleKeys(NamedTuple):
    missing_keys: list
    unexpected_keys: list


class Module:
    """Base class of layers and models.

    Assigning a :class:`Parameter`, a Module, or (after :meth:`register_buffer`) an
    ndarray to an attribute registers it, in assignment order, for
    :meth:`parameters`, :meth:`children` and :meth:`state_dict`. Calling the module runs
    :meth:`forward`.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ---- registration
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"cannot assign {name!r} before Module.__init__() call "
                                 f"(call super().__init__() first in {type(self).__name__})")
        params, buffers, modules = self._parameters, self._buffers, self._modules
        if isinstance(value, Parameter):
            buffers.pop(name, None)
            modules.pop(name, None)
            self.__dict__.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None)
            buffers.pop(name, None)
            self.__dict__.pop(name, None)
            modules[name] = value
        elif name in params:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} to parameter {name!r} "
                                "(a Parameter or None is required)")
            params[name] = None
        elif name in buffers:
            buffers[name] = None if value is None else np.asarray(value)
        elif name in modules and value is None:
            modules[name] = None
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # only called when normal lookup fails
        for store in ("_parameters", "_buffers", "_modules"):
            d = self.__dict__.get(store)
            if d is not None and name in d:
                return d[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for store in (self._parameters, self._buffers, self._modules):
            if name in store:
                del store[name]
                return
        object.__delattr__(self, name)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: {name!r} must be a Parameter or None, got "
                            f"{type(param).__name__}")
        self.__dict__.pop(name, None)
        self._parameters[name] = param

    def register_buffer(self, name: str, array) -> None:
        """A non-learnable array saved in the state dict (e.g. running statistics)."""
        self.__dict__.pop(name, None)
        self._buffers[name] = None if array is None else np.asarray(array)

    def add_module(self, name: str, module: Module | None) -> None:
        self._modules[name] = module

    # ---- traversal
    def named_modules(self, prefix: str = "", memo=None) -> Iterator[tuple[str, Module]]:
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            if m is not None:
                yield from m.named_modules(f"{prefix}.{name}" if prefix else name, memo)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, m in self._modules.items():
            if m is not None:
                yield name, m

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def _named_members(self, store: str, prefix: str, recurse: bool):
        seen = set()
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mod_prefix, m in mods:
            for name, v in getattr(m, store).items():
                if v is None or id(v) in seen:
                    continue
                seen.add(id(v))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), v

    def named_parameters(self, prefix: str = "", recurse: bool = True):
        yield from self._named_members("_parameters", prefix, recurse)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True):
        yield from self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse: bool = True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    # ---- modes and gradients
    def train(self, mode: bool = True) -> Module:
        """Training mode (batch norm uses batch statistics, dropout drops) or not."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> Module:
        """Evaluation mode: batch norm uses its running statistics; dropout is off."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Set every parameter's grad to None."""
        for p in self.parameters():
            p.grad = None

    def apply(self, fn) -> Module:
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    def to(self, dtype_or_device) -> Module:
        """In place, like torch: ``to(dtype)`` (e.g. np.float64) casts floating parameters
        and buffers; ``to("cuda")`` / ``to("cpu")`` moves every parameter (with its grad)
        and floating-point buffer to that device (integer counters stay on the host; see
        ``Tensor.to``). On "cuda", conv2d, pooling, batch norm, relu, flatten, linear and
        cross_entropy run on the GPU and ``optim.SGD`` trains there; other ops raise a
        RuntimeError naming themselves."""
        if isinstance(dtype_or_device, str):
            try:
                np.dtype(dtype_or_device)
            except TypeError:  # not a dtype name: a device
                return self._to_device(dtype_or_device)
        dtype = np.dtype(dtype_or_device)
        if dtype.kind != "f":
            raise TypeError(f"Module.to: dtype must be a floating type, got {dtype}")
        for m in self.modules():
            for p in m._parameters.values():
                if p is not None and p.dtype.kind == "f":
                    p.data = _on_host(p.data, dtype).astype(dtype)
                    p.grad = None
            for name, b in m._buffers.items():
                if b is not None and b.dtype.kind == "f":
                    m._buffers[name] = _on_host(b, dtype).astype(dtype)
        return self

    def _to_device(self, device) -> Module:
        for m in self.modules():
            for p in m._parameters.values():
                if p is not None:
                    p.data = devices.move("Module.to", p.data, device)
                    if p.grad is not None:
                        p.grad = devices.move("Module.to", p.grad, device)
            for name, b in m._buffers.items():
                # integer buffers (BatchNorm2d's num_batches_tracked) are counters that the
                # layers update and read on the host each step: they stay there
                if b is not None and b.dtype.kind == "f":
                    m._buffers[name] = devices.move("Module.to", b, device)
        return self

    def float(self) -> Module:
        return self.to(np.float32)

    def double(self) -> Module:
        return self.to(np.float64)

    # ---- state
    def state_dict(self) -> OrderedDict:
        """Copies of every parameter and buffer, keyed by dotted name (torch's keys)."""
        out = OrderedDict()
        for prefix, m in self.named_modules():
            for store in (m._parameters, m._buffers):
                for name, v in store.items():
                    if v is not None:
                        key = f"{prefix}.{name}" if prefix else name
                        v = v.data if isinstance(v, Tensor) else v   # a host copy:
                        out[key] = np.array(devices.move("Module.state_dict", v, "cpu"),
                                            copy=True)
        return out

    def load_state_dict(self, state_dict, strict: bool = True) -> IncompatibleKeys:
        """Copy arrays into the parameters and buffers, in place (cast to their dtypes).

        With strict=True, missing or unexpected keys raise ValueError; shapes must match.
        """
        targets = {}
        for prefix, m in self.named_modules():
            for store in (m._parameters, m._buffers):
                for name, v in store.items():
                    if v is not None:
                        targets[f"{prefix}.{name}" if prefix else name] = v
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in state_dict if k not in targets]
        if strict and (missing or unexpected):
            raise ValueError(f"load_state_dict for {type(self).__name__}: missing keys "
                             f"{missing}, unexpected keys {unexpected}")
        for key, target in targets.items():
            if key not in state_dict:
                continue
            value = state_dict[key]
            value = np.asarray(value.data if isinstance(value, Tensor) else value)
            dest = target.data if isinstance(target, Tensor) else target
            if value.shape != dest.shape:
                raise ValueError(f"load_state_dict for {type(self).__name__}: {key} has shape "
                                 f"{value.shape} in the state dict but {dest.shape} in the "
                                 "model")
            if devices.is_device_array(dest):          # a model moved to the GPU
                dest.copy_to_device(np.ascontiguousarray(value, dest.dtype))
            else:
                np.copyto(dest, value, casting="unsafe")
        return IncompatibleKeys(missing, unexpected)

    # ---- calling and printing
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def fused_after(self, prev: Module):
        """A callable computing ``self(prev(x))`` as one fused op, or None (the default):
        :class:`Sequential` runs such adjacent pairs through it (batch norm + ReLU,
        linear + ReLU, ReLU + max pooling)."""
        return None

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = []
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n" + "\n".join(lines) + "\n)"


class Sequential(Module):
    """Modules applied in order: Sequential(m0, m1, ...) or Sequential(OrderedDict).

    Adjacent pairs that the second module fuses (``Module.fused_after``) run as one op:
    BatchNorm2d or Linear then ReLU, ReLU then MaxPool2d (same results, one op and one
    pass fewer)."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (dict, OrderedDict)):
            for name, m in modules[0].items():
                self.add_module(name, _check_module("Sequential", name, m))
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), _check_module("Sequential", i, m))

    def forward(self, x):
        """Each module applied in turn. A 3-D (C, H, W) input to a Sequential that starts
        with an image layer (``takes_images``: Conv2d, BatchNorm2d, the pools) runs as a
        batch of one, and the output comes back without its batch axis (a LeNet maps one
        image to (num_classes,))."""
        mods = list(self._modules.values())
        if mods and getattr(mods[0], "takes_images", False) and getattr(x, "ndim", 0) == 3:
            return call_unbatched(self.forward, x)
        i = 0
        while i < len(mods):     # a pair the second module fuses (fused_after) as one op
            pair = mods[i + 1].fused_after(mods[i]) if i + 1 < len(mods) else None
            x = mods[i](x) if pair is None else pair(x)
            i += 1 if pair is None else 2
        return x

    def __getitem__(self, i):
        mods = list(self._modules.values())
        if isinstance(i, slice):
            return Sequential(*mods[i])
        return mods[i]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


def _on_host(a, dtype):
    """``a`` when it is a host array; casting on the GPU is not supported (RuntimeError)."""
    if devices.array_device(a) != "cpu":
        raise RuntimeError(f"Module.to: casting to {np.dtype(dtype)} is not supported on "
                           "device='cuda'; cast on the CPU first (Module.to('cpu'))")
    return a


def call_unbatched(forward, x):
    """``forward`` of one unbatched image ``x`` (3-D: (C, H, W), or (H, W, C) for NHWC
    layers) run as a batch of one; its output without the batch axis."""
    x = x if isinstance(x, Tensor) else Tensor(np.asarray(x))
    y = forward(x.reshape((1,) + x.shape))
    return y.reshape(y.shape[1:])


def _check_module(op, name, m):
    if not isinstance(m, Module):
        raise TypeError(f"{op}: element {name!r} must be a Module, got {type(m).__name__}")
    return m


def save(state_dict, path) -> None:
    """Write a state dict (name -> array), or a Module's (``model.state_dict()``), to
    ``path`` as an uncompressed .npz, atomically (a temporary file in the same directory,
    then ``os.replace``); no pickles. Read it back with
    ``model.load_state_dict(nn.load(path))``.

    >>> import os, tempfile, fastconv.nn as nn
    >>> path = os.path.join(tempfile.mkdtemp(), "lin.npz")
    >>> nn.save(nn.Linear(2, 1), path)
    >>> sorted(nn.load(path))
    ['bias', 'weight']
    """
    if isinstance(state_dict, Module):
        state_dict = state_dict.state_dict()
    elif not hasattr(state_dict, "items"):
        raise TypeError(f"save: expected a Module or its state dict (model.state_dict(), "
                        f"a mapping name -> array), got {type(state_dict).__name__}; for "
                        "a model with its optimizer use fastconv.checkpoint.save")
    write_npz(path, {k: np.asarray(v.data if isinstance(v, Tensor) else v)
                     for k, v in state_dict.items()})


def load(path) -> OrderedDict:
    """Read a state dict written by :func:`save` (keys in their saved order).

    Raises ``fastconv.checkpoint.CheckpointError`` (a ValueError) naming the file when it
    is not an .npz archive or holds an object array (refused, never unpickled).
    """
    return OrderedDict(read_npz(path))
