"""Optimisers and learning-rate schedules with torch's update formulas and names.

Parameters are updated in place (``p.data``), in their own dtype. ``params`` may be an
iterable of Tensors or of dicts (parameter groups with their own options); schedules
change ``group["lr"]``. :class:`SGD` also updates parameters on "cuda" (``Module.to``) in
place on the GPU, with its buffers there; the other optimisers refuse them.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from . import devices
from .autograd import Tensor
from .autograd.arrays import full_like, on_gpu


class Optimizer:
    """Base class: parameter groups, per-parameter state, ``zero_grad``."""

    #: whether ``step`` updates parameters that live on the GPU
    gpu = False

    def __init__(self, params, defaults: dict):
        self.defaults = defaults
        self.param_groups: list[dict] = []
        self.state: dict[int, dict] = {}  # id(param) -> state
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, group: dict) -> None:
        group = dict(group)
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"{type(self).__name__}: can only optimise Tensors, got "
                                f"{type(p).__name__}")
            if not p.requires_grad:
                raise ValueError(f"{type(self).__name__}: a parameter of shape {p.shape} "
                                 "does not require grad")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError(f"{type(self).__name__}: some parameters appear in more than "
                             "one parameter group")
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        self._check(group)
        group["params"] = params
        self.param_groups.append(group)

    def _check(self, group: dict) -> None:
        name = type(self).__name__
        for key in ("lr", "weight_decay", "momentum", "eps"):
            if key in group and not group[key] >= 0:
                raise ValueError(f"{name}: {key}={group[key]} must be non-negative")
        if "betas" in group:
            b1, b2 = group["betas"]
            if not (0 <= b1 < 1 and 0 <= b2 < 1):
                raise ValueError(f"{name}: betas={group['betas']} must lie in [0, 1)")

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of every parameter (to None, or to zeros)."""
        for g in self.param_groups:
            for p in g["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad = full_like(p.grad, 0)

    def _params_with_grad(self, group):
        for p in group["params"]:
            if p.grad is None:
                continue
            if type(p.data) is not np.ndarray or type(p.grad) is not np.ndarray:
                if p.device != "cpu" and not self.gpu:
                    raise RuntimeError(f"{type(self).__name__}.step: this optimiser has no "
                                       "GPU path yet, and a parameter of shape "
                                       f"{p.shape} is on device='cuda'; use SGD, or train "
                                       "on the CPU (Module.to('cpu'))")
                if devices.array_device(p.grad) != p.device:
                    raise RuntimeError(f"{type(self).__name__}.step: a parameter of shape "
                                       f"{p.shape} is on device={p.device!r} but its grad on "
                                       f"device={devices.array_device(p.grad)!r}")
            yield p, p.grad, self.state.setdefault(id(p), {})

    def step(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    #: the names a parameter's state may hold (checked by :meth:`load_state_dict`)
    _state_keys: tuple = ()

    def state_dict(self) -> dict:
        """The optimiser's state in torch's structure: ``{"state": {index: {name: value}},
        "param_groups": [{hyper-parameters..., "params": [indices]}]}``, where a
        parameter's index is its position across the groups. Arrays are copies.

        >>> import numpy as np
        >>> from fastconv.nn import Parameter
        >>> p = Parameter(np.ones(2))
        >>> opt = SGD([p], lr=0.1, momentum=0.9)
        >>> p.grad = np.ones(2); opt.step()
        >>> sd = opt.state_dict()
        >>> sd["state"][0]["momentum_buffer"], sd["param_groups"][0]["params"]
        (array([1., 1.]), [0])
        """
        index: dict[int, int] = {}
        groups = []
        for g in self.param_groups:
            packed = {k: v for k, v in g.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in g["params"]]
            groups.append(packed)
        state = {index[pid]: {k: _host_copy(v) for k, v in s.items()}
                 for pid, s in self.state.items() if pid in index and s}
        return {"state": dict(sorted(state.items())), "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore :meth:`state_dict`'s output (hyper-parameters, buffers, step counts).

        The group count, each group's parameter count, the state's names and the arrays'
        shapes must match this optimiser; arrays are copied in the parameters' dtypes.
        Raises ValueError saying what differs.
        """
        name = f"{type(self).__name__}.load_state_dict"
        if not (isinstance(state_dict, dict) and set(state_dict) == {"state", "param_groups"}):
            got = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict)
            raise ValueError(f"{name}: expected a dict with the keys 'state' and "
                             f"'param_groups', got {got}")
        saved = list(state_dict["param_groups"])
        if len(saved) != len(self.param_groups):
            raise ValueError(f"{name}: the state dict has {len(saved)} parameter groups, the "
                             f"optimiser {len(self.param_groups)}")
        params = []
        for i, (g, s) in enumerate(zip(self.param_groups, saved, strict=True)):
            if len(s.get("params", ())) != len(g["params"]):
                raise ValueError(f"{name}: parameter group {i} has "
                                 f"{len(s.get('params', ()))} parameters in the state dict, "
                                 f"{len(g['params'])} in the optimiser")
            params += g["params"]
        state = {}
        for key, entry in state_dict["state"].items():
            i = int(key)
            if not 0 <= i < len(params):
                raise ValueError(f"{name}: state for parameter {key!r}, but the optimiser has "
                                 f"{len(params)} parameters")
            unknown = sorted(set(entry) - set(self._state_keys))
            if unknown:
                raise ValueError(f"{name}: parameter {i} has unknown state {unknown}; "
                                 f"{type(self).__name__} keeps {list(self._state_keys)}")
            p, restored = params[i], {}
            for k, v in entry.items():
                if k == "step":
                    restored[k] = int(v)
                    continue
                v = np.asarray(v)
                if v.shape != p.shape:
                    raise ValueError(f"{name}: {k} of parameter {i} has shape {v.shape} in "
                                     f"the state dict, the parameter {p.shape}")
                restored[k] = devices.move(name, v.astype(p.dtype, copy=True), p.device)
            state[id(p)] = restored
        groups = []
        for g, s in zip(self.param_groups, saved, strict=True):
            new = {k: v for k, v in s.items() if k != "params"}
            if "betas" in new:
                new["betas"] = tuple(new["betas"])
            self._check(new)
            groups.append({**new, "params": g["params"]})
        self.param_groups[:] = groups
        self.state = state


def _host_copy(v):
    """A host copy of an array of the state (numpy or on the GPU); other values as they are."""
    if isinstance(v, np.ndarray):
        return np.array(v, copy=True)
    return devices.move("Optimizer.state_dict", v, "cpu") if devices.is_device_array(v) else v


class SGD(Optimizer):
    """Stochastic gradient descent with momentum.

    torch.optim.SGD's formula::

        g = grad + weight_decay * p
        buf = g (first step), else momentum * buf + (1 - dampening) * g
        g = g + momentum * buf (nesterov) or buf
        p -= lr * g
    """

    _state_keys = ("momentum_buffer",)
    gpu = True

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
                 maximize: bool = False):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"SGD: nesterov momentum requires momentum > 0 and dampening = "
                             f"0, got momentum={momentum}, dampening={dampening}")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize))

    def step(self) -> None:
        for group in self.param_groups:
            lr, mom, damp = group["lr"], group["momentum"], group["dampening"]
            wd, nesterov = group["weight_decay"], group["nesterov"]
            for p, g, state in self._params_with_grad(group):
                gpu = None if type(p.data) is np.ndarray else on_gpu("sgd_step", p.data)
                if gpu is not None:      # one kernel, in place on the GPU
                    buf = gpu(p.data, g, state.get("momentum_buffer"), lr, mom, damp, wd,
                              nesterov, group["maximize"])
                    if buf is not None:
                        state["momentum_buffer"] = buf
                    continue
                buf = state.get("momentum_buffer")
                if mom != 0 and _one_pass_applies(p.data, g, buf):
                    first = buf is None
                    if first:
                        buf = state["momentum_buffer"] = np.empty_like(p.data)
                    dt = p.data.dtype.type
                    _sgd_momentum(p.data.reshape(-1), g.reshape(-1), buf.reshape(-1), dt(lr),
                                  dt(mom), dt(1 - damp), dt(wd),
                                  (first, damp != 0, nesterov, group["maximize"]))
                    continue
                g = -g if group["maximize"] else g
                if wd != 0:
                    g = g + wd * p.data
                if mom != 0:
                    if buf is None:
                        buf = state["momentum_buffer"] = np.array(g, copy=True)
                    else:
                        buf *= mom
                        buf += g if damp == 0 else (1 - damp) * g
                    g = g + mom * buf if nesterov else buf
                p.data -= lr * g


def _one_pass_applies(p, g, buf) -> bool:
    """Whether ``_sgd_momentum`` runs an SGD step: parameter and gradient (and the
    momentum buffer, when there is one) C-contiguous float32 or float64 arrays of one
    shape and dtype."""
    return (isinstance(g, np.ndarray) and p.dtype.char in "fd" and g.dtype == p.dtype
            and g.shape == p.shape and p.flags.c_contiguous and g.flags.c_contiguous
            and (buf is None or (buf.dtype == p.dtype and buf.shape == p.shape
                                 and buf.flags.c_contiguous)))


@njit(cache=True)
def _sgd_momentum(p, g, buf, lr, mom, keep, wd, flags):
    """One SGD step with momentum on flat arrays in one pass, rounding as numpy's
    sequence of whole-array operations does (each product and sum in the arrays' dtype;
    lr, mom, keep = 1 - dampening and wd already in it), so the result is the same to the
    bit. flags = (first, damped, nesterov, maximize): g = -grad if maximize; g += wd * p;
    buf = g on the first step, else mom * buf + (keep * g if damped else g); p -= lr *
    (g + mom * buf if nesterov else buf). (Per parameter, numpy's four to six calls and
    their temporaries took 60-140 us of a LeNet-5 training step.)"""
    first, damped, nesterov, maximize = flags
    for i in range(p.size):
        gi = -g[i] if maximize else g[i]
        if wd != 0:
            gi = gi + wd * p[i]
        if first:
            b = gi
        else:
            b = buf[i] * mom
            b = b + (keep * gi if damped else gi)
        buf[i] = b
        p[i] = p[i] - lr * (gi + mom * b if nesterov else b)


class Adam(Optimizer):
    """Adam (torch.optim.Adam's formula, L2 penalty through the gradient)::

        g = grad + weight_decay * p
        m += (1 - beta1) * (g - m);  v = beta2 * v + (1 - beta2) * g * g
        p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    With amsgrad, v is replaced by its running maximum in the denominator.
    """

    _decoupled = False
    _state_keys = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, maximize: bool = False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize))

    def step(self) -> None:
        for group in self.param_groups:
            lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
            wd, amsgrad = group["weight_decay"], group["amsgrad"]
            for p, g, state in self._params_with_grad(group):
                g = -g if group["maximize"] else g
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = np.zeros_like(p.data)
                    state["exp_avg_sq"] = np.zeros_like(p.data)
                    if amsgrad:
                        state["max_exp_avg_sq"] = np.zeros_like(p.data)
                state["step"] += 1
                t = state["step"]
                if wd != 0:
                    if self._decoupled:
                        p.data *= 1 - lr * wd
                    else:
                        g = g + wd * p.data
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m += (1 - b1) * (g - m)  # torch's lerp
                v *= b2
                v += (1 - b2) * g * g
                if amsgrad:
                    np.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
                    v = state["max_exp_avg_sq"]
                step_size = lr / (1 - b1 ** t)
                denom = np.sqrt(v) / math.sqrt(1 - b2 ** t) + eps
                p.data -= step_size * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (torch.optim.AdamW): ``p *= 1 - lr * weight_decay``
    before the Adam step, and the gradient carries no penalty. Default weight_decay 0.01."""

    _decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, maximize: bool = False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize)


# ------------------------------------------------------------------------------ schedules
class LRScheduler:
    """Base class: ``step()`` once per epoch sets every group's lr from
    :meth:`lr_at` (a closed form in the epoch count ``last_epoch``)."""

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: {type(optimizer).__name__} is not an "
                            "Optimizer")
        self.optimizer = optimizer
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.step()

    def lr_at(self, base_lr: float, epoch: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self) -> None:
        self.last_epoch += 1
        for g, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            g["lr"] = self.lr_at(base, self.last_epoch)
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        return list(self._last_lr)

    def state_dict(self) -> dict:
        """The schedule's attributes but the optimiser (torch's structure), e.g.
        ``{"T_max": 10, "eta_min": 0.0, "base_lrs": [0.1], "last_epoch": 3, ...}``."""
        return {k: list(v) if isinstance(v, list) else v
                for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore :meth:`state_dict`'s output; its names and the number of base rates
        must match this schedule (ValueError otherwise)."""
        name = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, dict):
            raise ValueError(f"{name}: expected a dict, got {type(state_dict).__name__}")
        mine = set(self.state_dict())
        missing, unknown = sorted(mine - set(state_dict)), sorted(set(state_dict) - mine)
        if missing or unknown:
            raise ValueError(f"{name}: missing keys {missing}, unknown keys {unknown}")
        n = len(self.optimizer.param_groups)
        if len(state_dict["base_lrs"]) != n:
            raise ValueError(f"{name}: {len(state_dict['base_lrs'])} base learning rates in "
                             f"the state dict, {n} parameter groups in the optimiser")
        self.__dict__.update({k: list(v) if isinstance(v, (list, tuple)) else v
                              for k, v in state_dict.items()})


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1):
        if not (isinstance(step_size, int) and step_size > 0):
            raise ValueError(f"StepLR: step_size={step_size!r} must be a positive int")
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr, epoch):
        return base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2."""

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1):
        if not (isinstance(T_max, int) and T_max > 0):
            raise ValueError(f"CosineAnnealingLR: T_max={T_max!r} must be a positive int")
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr, epoch):
        return self.eta_min + (base_lr - self.eta_min) * (
            1 + math.cos(math.pi * epoch / self.T_max)) / 2
