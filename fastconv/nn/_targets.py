"""Class-index targets of the classification losses, checked where they live.

>>> import numpy as np
>>> class_targets("cross_entropy", [2, 0], (2, 3), "cpu")
array([2, 0])
>>> class_targets("cross_entropy", [3, 0], (2, 3), "cpu")
Traceback (most recent call last):
...
ValueError: cross_entropy: target value 3 is out of range for C=3 classes (must be in [0, 2])
"""

from __future__ import annotations

import numpy as np

from .. import devices
from ..autograd import Tensor
from ..autograd.arrays import on_gpu


def class_targets(op: str, target, logits_shape: tuple, device: str = "cpu"):
    """``target`` (N,) integer classes for logits of ``logits_shape`` (N, C), as intp on
    ``device``. Dtype and shape are checked everywhere; the values in [0, C) on the host
    only (a host target for GPU logits is checked, then copied to the GPU; a GPU target
    is not read back, and the GPU losses mark a bad value with NaN)."""
    t = target.data if isinstance(target, Tensor) else target
    on_host = devices.array_device(t) == "cpu"
    if on_host:
        t = np.asarray(t)
    n, c = logits_shape
    if np.dtype(t.dtype).kind not in "iu":
        raise TypeError(f"{op}: target must hold integer class indices, got dtype {t.dtype}")
    if tuple(t.shape) != (n,):
        raise ValueError(f"{op}: target must have shape (N,) = ({n},), got {tuple(t.shape)}")
    if on_host and t.size and (t.min() < 0 or t.max() >= c):
        bad = t[(t < 0) | (t >= c)][0]
        raise ValueError(f"{op}: target value {bad} is out of range for C={c} classes "
                         f"(must be in [0, {c - 1}])")
    if on_host:
        t = t.astype(np.intp, copy=False)
        return t if device == "cpu" else devices.move(op, t, device)
    if device == "cpu":
        raise RuntimeError(f"{op}: target is on device='cuda' but the input on device='cpu'; "
                           "an op runs on one device")
    return on_gpu("astype", t)(t, np.intp)
