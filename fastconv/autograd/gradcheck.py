"""Finite-difference checking of analytic gradients: :func:`gradcheck`."""

from __future__ import annotations

import numpy as np

from .. import devices
from .grad_mode import no_grad
from .tensor import Tensor, grad


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
        place and restored (a tensor on "cuda": a host copy is perturbed and copied to the
        GPU for each evaluation, and the original device array put back).
    eps : step of the central difference (f(x + eps) - f(x - eps)) / (2 eps).
    atol, rtol : an entry passes when ``|analytic - numeric| <= atol + rtol * |numeric|``.

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
            analytic[i][k] = _host(gi).ravel()

    for i in checked:
        t = inputs[i]
        x = _host(t.data)
        flat = x.reshape(-1)  # a view when x is contiguous (checked below)
        if not np.shares_memory(flat, x):
            raise ValueError(f"gradcheck: input {i} must be C-contiguous")
        numeric = np.zeros_like(analytic[i])
        original = t.data
        try:
            for j in range(flat.size):
                orig = flat[j]
                flat[j] = orig + eps
                plus = _evaluate(fn, inputs, t, x, original)
                flat[j] = orig - eps
                minus = _evaluate(fn, inputs, t, x, original)
                flat[j] = orig
                numeric[:, j] = (plus - minus) / (2 * eps)
        finally:
            t.data = original
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


def _host(a) -> np.ndarray:
    """``a`` itself on the host, a host copy of a GPU array."""
    return a if isinstance(a, np.ndarray) else devices.move("gradcheck", a, "cpu")


def _evaluate(fn, inputs, t, x, original) -> np.ndarray:
    """fn's output (flat, float64, on the host) with ``t`` holding ``x``: in place on the
    host, a copy on the GPU when ``t`` lives there."""
    if x is not original:
        t.data = devices.move("gradcheck", x, devices.array_device(original))
    with no_grad():
        return np.array(_host(fn(*inputs).data), dtype=np.float64).ravel()
