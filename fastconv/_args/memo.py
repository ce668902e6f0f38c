"""Validation done once per problem: :func:`remembered` keeps the records of a check
that depends on its arguments' values alone (shapes, sizes, flags, names).

A training step asks for the same few problems every step; validating a convolution
from scratch took about 0.1 ms, a pooling 30 us inside a step, a look-up a few us. The
key keeps apart values that compare equal but validate apart (True and 1, 2.0 and 2:
``_key``); errors are never remembered (each call with bad
arguments raises again, naming its own op).

>>> calls = []
>>> @remembered
... def double(op, n):
...     calls.append(n)
...     return 2 * n
>>> double("a", 3), double("b", 3), calls
(6, 6, [3])
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

#: Records kept per check; the whole store is dropped when it is full.
MAX_ENTRIES = 1024


def remembered(check):
    """``check(op, *args, **kwargs)`` with its results kept by the repr of everything
    but ``op`` (the record does not name the op; an error does, and is not kept)."""
    store: dict = {}

    @functools.wraps(check)
    def wrapper(op, *args, **kwargs):
        key = _key(args, kwargs)
        hit = store.get(key)
        if hit is not None:
            return hit
        return _keep(store, key, check(op, *args, **kwargs))

    return wrapper


def kept(store: dict, key, make):
    """``store[key]``, else ``make()``'s result kept there (as ``remembered`` keeps its
    records: the whole store dropped when full; an error from ``make`` is not kept), for
    a check whose key is not simply its arguments."""
    hit = store.get(key)
    if hit is not None:
        return hit
    return _keep(store, key, make())


def _keep(store: dict, key, result):
    """``store[key] = result`` (the store dropped first when it holds ``MAX_ENTRIES``)."""
    if len(store) >= MAX_ENTRIES:
        store.clear()
    store[key] = result
    return result


def key_of(*values) -> tuple:
    """A record's key for ``values`` by ``_key``'s rules (True apart from 1, 2.0 from 2)."""
    return _key(values, None)


def _key(args, kwargs) -> tuple:
    """The record's key: plain ints, strings and tuples of ints as they are, a dtype as
    its type string (numpy's dtype repr runs Python code: 10 us a call), anything else
    (other tuples, numpy scalars) as its repr in a 1-tuple, which tells (1, 1) from the
    string "(1, 1)"; a float or bool as (its type, it), which tells True from 1 and 2.0
    from 2; tuples of tuples of ints (a padding's pairs) as they are. A conv2d call's
    key took 2.6 us as one repr of everything, 1.3 us so; ints, strings and shapes go in
    without a call of ``_plain`` each."""
    key = tuple(v if (t := type(v)) is int or t is str or (
        t is tuple and _INTS.issuperset(map(type, v))) else _plain(v) for v in args)
    return (*key, *((k, _plain(v)) for k, v in kwargs.items())) if kwargs else key


_INTS = frozenset((int,))


def _plain(value):
    """A key's part for one argument (``_key``)."""
    kind = type(value)
    if kind is int or kind is str or (kind is tuple and _INTS.issuperset(map(type, value))):
        return value                                  # a shape: a tuple of ints
    if kind is float or kind is bool:
        return kind, value                            # apart from ints, without a repr
    if kind is tuple and all(type(v) is tuple and _INTS.issuperset(map(type, v))
                             for v in value):
        return value                # pairs of ints: ((top, bottom), (left, right))
    return value.str if isinstance(value, np.dtype) else (repr(value),)


#: The ``cache_clear`` of every ``per_problem`` function (``forget_per_problem``).
_PER_PROBLEM: list = []


def per_problem(decide):
    """``decide(problem, *flags)``, a choice that depends on a problem record, a few
    hashable flags and module constants alone, with its results kept per arguments (256
    at most, least recently used dropped): a training step makes the same few
    problems' choices on every call of every layer. ``forget_per_problem`` (which
    ``fastconv.autotune.clear_cache`` calls) forgets them all, e.g. after a bound was
    changed.

    >>> @per_problem
    ... def wide(a, at_least):
    ...     return a >= at_least
    >>> wide(64, 32), wide.cache_info().currsize
    (True, 1)
    >>> forget_per_problem(); wide.cache_info().currsize
    0
    """
    kept_fn = functools.lru_cache(maxsize=256)(decide)
    _PER_PROBLEM.append(kept_fn.cache_clear)
    return kept_fn


def forget_per_problem() -> None:
    """Forget every ``per_problem`` function's kept results."""
    for clear in _PER_PROBLEM:
        clear()


class HashOnce:
    """For frozen dataclasses hashed on every call (a plan's key holds the problem and the
    profile): the hash of the fields, worked out on first use and kept (a frozen
    dataclass's own hashes every field each time). The kept hash is not pickled (a
    string's hash differs between processes), nor anything else but the fields. A
    class takes it with ``__hash__ = HashOnce.__hash__`` in its own body (a dataclass
    replaces an inherited one).

    >>> @dataclasses.dataclass(frozen=True)
    ... class Point(HashOnce):
    ...     x: int
    ...     y: int
    ...     __hash__ = HashOnce.__hash__
    >>> hash(Point(1, 2)) == hash((1, 2)), Point(1, 2) == Point(1, 2)
    (True, True)
    """

    def __hash__(self) -> int:
        h = self.__dict__.get("_hash_once")
        if h is None:
            h = hash(tuple(getattr(self, f.name) for f in dataclasses.fields(self)))
            object.__setattr__(self, "_hash_once", h)
        return h

    def __getstate__(self) -> dict:
        # the fields alone: neither the kept hash nor values a subclass keeps
        # (``functools.cached_property``) go into a pickle
        return {f.name: self.__dict__[f.name] for f in dataclasses.fields(self)}
