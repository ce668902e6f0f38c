"""The algorithm registry: each convolution algorithm is one entry.

An :class:`Algorithm` declares everything the rest of fastconv needs to know about it:
its name, which problems it runs (``why_not``), its forward and backward functions,
which gradients its backward computes itself, its cost models and its caveats. Each
algorithm module registers its entry when ``fastconv.algos`` is imported; the ops,
the policy (``fastconv.autotune``), the GPU and Dask front ends, the benchmark and the
tests read the names and entries from here and keep no list of their own.

Contract of the functions an entry holds (arrays in the caller's layout, ``args`` a
``fastconv._args.ConvArgs`` the entry supports):

* ``forward(x, w, args, out, bias=None)`` writes conv2d's result (bias added) into the
  preallocated ``out``. It returns ``False`` when ``out`` must be recomputed by
  :data:`FALLBACK` (Winograd on non-finite values), else ``None`` or ``True``.
* ``backward(grad_y, x, w, args, grad_x, grad_w)`` writes the input and weight gradients
  into the preallocated arrays it is given; ``None`` means "not wanted". It receives only
  the gradients ``grads(args)`` says it computes, and returns ``None`` or a pair
  ``(ok_x, ok_w)`` where ``False`` asks for a recompute by :data:`FALLBACK`. ``x`` is
  read for grad_w only (``conv_transpose2d`` passes a zero stand-in for grad_x alone).
* ``cost(args, profile)`` and ``backward_cost(args, profile)`` return a
  :class:`fastconv.costs.Estimate` (seconds, workspace bytes, a sentence).

Examples
--------
>>> from fastconv.algos import registry
>>> registry.ALGORITHMS
('naive', 'im2col', 'fft', 'winograd')
>>> registry.get("im2col").name
'im2col'
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

#: The algorithm that runs every problem exactly, NaN and Inf included: it recomputes
#: what another algorithm cannot compute or flags as untrustworthy.
FALLBACK = "im2col"


def _always(args) -> None:
    return None


def _both(args) -> tuple[bool, bool]:
    return True, True


@dataclass(frozen=True)
class Algorithm:
    """One convolution algorithm (see the module docstring for the functions' contract).

    ``finite_input_only``: run it only on finite input (the FFT spreads one NaN or Inf
    over whole planes; the fallback gives the direct formula's pattern).
    ``trusted(x, w, bias, args, out) -> bool``: for ``algo="auto"``, whether a result
    meets the documented accuracy (the FFT's error bound); when not, the fallback
    recomputes it. ``layouts``: the layouts it has kernels of its own for; any other
    layout runs through copies to the canonical one (the Layout record's permutations).
    ``devices``: where it runs.
    """

    name: str
    summary: str
    forward: Callable
    backward: Callable
    cost: Callable
    backward_cost: Callable
    why_not: Callable = _always
    grads: Callable = _both
    finite_input_only: bool = False
    trusted: Callable | None = None
    layouts: tuple[str, ...] = ("NCHW", "NHWC")
    devices: tuple[str, ...] = ("cpu",)

    def supports(self, args) -> bool:
        return self.why_not(args) is None


_ENTRIES: dict[str, Algorithm] = {}
#: The names, in registration order (filled in by ``fastconv.algos``).
ALGORITHMS: tuple[str, ...] = ()
_generation = 0


def generation() -> int:
    """A number that changes whenever an entry is added or replaced (plans made before
    are not reused: the policy keys its plan cache with it)."""
    return _generation


def register(entry: Algorithm) -> Algorithm:
    """Add an algorithm (each algorithm module calls this once)."""
    global ALGORITHMS, _generation
    if entry.name in _ENTRIES or entry.name == "auto":
        raise ValueError(f"algorithm {entry.name!r} is already registered or reserved")
    _ENTRIES[entry.name] = entry
    ALGORITHMS = tuple(_ENTRIES)
    _generation += 1
    return entry


def get(name: str) -> Algorithm:
    """The entry called ``name`` (KeyError when there is none)."""
    return _ENTRIES[name]


def names(device: str = "cpu") -> tuple[str, ...]:
    """The algorithms that run on ``device``, in registration order."""
    if device == "cpu":
        return ALGORITHMS
    return tuple(n for n, e in _ENTRIES.items() if device in e.devices)


def applicable(args) -> tuple[str, ...]:
    """The CPU algorithms that can run problem ``args``."""
    return tuple(n for n in names() if _ENTRIES[n].supports(args))


def check_algo(op: str, algo, device: str = "cpu") -> str:
    """``algo`` when it is "auto" or an algorithm of ``device``; ValueError naming the
    op and the acceptable values otherwise."""
    if algo == "auto" or (device == "cpu" and algo in ALGORITHMS):
        return algo
    known = names(device)
    if algo not in known:
        where = "" if device == "cpu" else f" on device {device!r}"
        raise ValueError(f"{op}: algo={algo!r} is not known{where}; acceptable algorithms "
                         f"are 'auto', {', '.join(repr(a) for a in known)}")
    return algo


def check_supported(op: str, algo: str, args) -> None:
    """ValueError when the explicit ``algo`` cannot run problem ``args``, saying why and
    which algorithms can."""
    if algo == "auto":
        return
    reason = get(algo).why_not(args)
    if reason is not None:
        others = [n for n in names() if n != algo]
        raise ValueError(f"{op}: algo={algo!r} {reason} (use algo='auto', "
                         f"{', '.join(repr(n) for n in others[:-1])} or {others[-1]!r})")


@contextlib.contextmanager
def replaced(name: str, **fields):
    """Run with fields of entry ``name`` replaced, e.g. ``forward=`` a wrapper that
    records calls, or ``cost=`` a model that makes "auto" pick it; the entry is
    restored on exit and plans are made afresh meanwhile. A hook for tests and
    experiments (not thread-safe: the table is process-wide).

    >>> from fastconv.algos import registry
    >>> calls = []
    >>> real = registry.get("naive").forward
    >>> with registry.replaced("naive", forward=lambda *a: calls.append(1) or real(*a)):
    ...     pass
    >>> registry.get("naive").forward is real
    True
    """
    global _generation
    old = _ENTRIES[name]
    _ENTRIES[name] = dataclasses.replace(old, **fields)
    _generation += 1
    try:
        yield _ENTRIES[name]
    finally:
        _ENTRIES[name] = old
        _generation += 1
