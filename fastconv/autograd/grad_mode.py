"""Whether ops record the graph: :func:`is_grad_enabled` and the :class:`no_grad` switch.

The state is per thread; it is on unless a ``no_grad`` block of this thread is open.
"""

from __future__ import annotations

import contextlib
import threading

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
