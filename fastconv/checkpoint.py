"""Checkpoints without pickles: model, optimiser, schedule, epoch and random state.

A checkpoint is one uncompressed ``.npz`` archive: the arrays as ``a0``, ``a1``, ... and
an entry ``__meta__`` holding a JSON string with the structure, in which every array
appears as ``{"__array__": "a0"}``. Reading refuses object arrays (the only way an
``.npz`` can carry a pickle) before any array is loaded, and loads with
``allow_pickle=False``. Writing is atomic: a temporary file in the same directory, then
``os.replace``, so a crash mid-write leaves the previous file whole.

>>> import os, tempfile
>>> import numpy as np
>>> from fastconv import nn, optim
>>> model = nn.Linear(3, 2)
>>> opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
>>> path = os.path.join(tempfile.mkdtemp(), "ckpt.npz")
>>> save(path, model=model, optimizer=opt, epoch=3, extra={"note": "hi"})
>>> load(path, model=nn.Linear(3, 2), optimizer=opt)
Loaded(epoch=3, extra={'note': 'hi'})
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from typing import Any, NamedTuple

import numpy as np

from .rng import default_generator

FORMAT = "fastconv.checkpoint"
VERSION = 1
_META = "__meta__"


class CheckpointError(ValueError):
    """A file that is not the checkpoint (or state dict) it claims to be."""


class Loaded(NamedTuple):
    """What :func:`load` returns besides restoring the objects in place."""

    epoch: Any
    extra: Any


# ------------------------------------------------------------------ archive reading/writing
def write_npz(path, arrays: dict) -> None:
    """Write ``arrays`` (name -> ndarray) to ``path`` as an uncompressed .npz, atomically:
    into a temporary file in the same directory, flushed to disk, then ``os.replace``."""
    path = os.fspath(path)
    for k, v in arrays.items():
        if np.asarray(v).dtype.hasobject:
            raise TypeError(f"write_npz: {path}: entry {k!r} is an object array; only "
                            "numeric, bool and string arrays are written (no pickles)")
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _entry_header(zf: zipfile.ZipFile, name: str, path: str):
    """(shape, dtype) of the .npy entry ``name``, read from its header only."""
    with zf.open(name) as f:
        try:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read(f)
        except ValueError as e:
            raise CheckpointError(f"{path}: entry {name!r} is not a .npy array ({e})") from None
    return shape, dtype


def read_npz(path) -> dict:
    """The arrays of an .npz written by :func:`write_npz`, in their saved order.

    Raises CheckpointError naming the file when it is not a zip archive (e.g.
    truncated), when an entry is not a .npy array, or when an entry is an object array
    (which would need a pickle: refused before anything is loaded).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not an .npz archive (not a zip file; truncated or "
                              "another format)")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            for name in names:
                if not name.endswith(".npy"):
                    raise CheckpointError(f"{path}: entry {name!r} is not a .npy array")
                shape, dtype = _entry_header(zf, name, path)
                if dtype.hasobject:
                    raise CheckpointError(
                        f"{path}: entry {name[:-4]!r} is an object array ({dtype}, shape "
                        f"{shape}); it would need a pickle to load, refused")
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: unreadable .npz archive ({type(e).__name__}: {e})"
                              ) from None


# ------------------------------------------------------------------ structure <-> JSON
def _pack(obj, arrays: dict):
    """A JSON-able tree for ``obj``; arrays go into ``arrays`` as a0, a1, ..."""
    if isinstance(obj, np.ndarray):
        name = f"a{len(arrays)}"
        arrays[name] = obj
        return {"__array__": name}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_pack(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [_pack(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _pack(v, arrays) for k, v in obj.items()}
        for k in obj:
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint.save: dict key {k!r} is not a str or an int")
        return {"__items__": [[int(k) if isinstance(k, (int, np.integer)) else k,
                               _pack(v, arrays)] for k, v in obj.items()]}
    raise TypeError(f"checkpoint.save: cannot store a {type(obj).__name__} (arrays, "
                    "numbers, strings, None, lists, tuples and dicts only)")


def _unpack(tree, arrays: dict, used: set, path: str):
    if isinstance(tree, list):
        return [_unpack(v, arrays, used, path) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "__array__" in tree:
        name = tree["__array__"]
        if name not in arrays:
            raise CheckpointError(f"{path}: the structure refers to array {name!r}, which "
                                  "the archive lacks")
        used.add(name)
        return arrays[name]
    if "__tuple__" in tree:
        return tuple(_unpack(v, arrays, used, path) for v in tree["__tuple__"])
    if "__items__" in tree:
        return {k: _unpack(v, arrays, used, path) for k, v in tree["__items__"]}
    return {k: _unpack(v, arrays, used, path) for k, v in tree.items()}


def _restore_generator(gen, state, what: str, path: str) -> None:
    try:
        gen.bit_generator.state = state
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: cannot restore the random state of {what!r}: {e}"
                              ) from None


# ------------------------------------------------------------------ public API
def save(path, *, model=None, optimizer=None, scheduler=None, epoch=None, extra=None,
         generators: dict | None = None) -> None:
    """Write a checkpoint (see the module docstring) to ``path``, atomically.

    Parameters
    ----------
    model / optimizer / scheduler : objects with ``state_dict()`` (any may be None).
    epoch, extra : numbers, strings, lists, tuples, dicts and arrays, returned by
        :func:`load`.
    generators : name -> ``numpy.random.Generator`` whose states are saved (e.g. a
        DataLoader's shuffling generator); fastconv's default generator
        (``fastconv.rng``) is always saved, as ``"fastconv"``.
    """
    gens = {"fastconv": default_generator(), **(generators or {})}
    tree = {"format": FORMAT, "version": VERSION, "epoch": epoch, "extra": extra,
            "generators": {k: g.bit_generator.state for k, g in gens.items()}}
    for key, obj in (("model", model), ("optimizer", optimizer), ("scheduler", scheduler)):
        tree[key] = None if obj is None else obj.state_dict()
    arrays: dict = {}
    packed = _pack(tree, arrays)
    arrays[_META] = np.array(json.dumps(packed))
    write_npz(path, arrays)


def load(path, *, model=None, optimizer=None, scheduler=None,
         generators: dict | None = None, restore_rng: bool = True) -> Loaded:
    """Read a checkpoint written by :func:`save` and restore, in place, the objects
    given (and fastconv's default generator unless ``restore_rng=False``; the
    ``generators`` by name). Returns ``Loaded(epoch, extra)``.

    Raises CheckpointError (a ValueError) naming the file and the problem: not an .npz,
    object arrays, no or bad structure, missing or extra arrays, an object asked for
    that the checkpoint lacks, or a state that does not fit the object (shapes, keys).
    """
    path = os.fspath(path)
    arrays = read_npz(path)
    if _META not in arrays:
        raise CheckpointError(f"{path}: no {_META!r} entry; not a fastconv checkpoint "
                              f"(entries {sorted(arrays)[:5]})")
    meta = arrays.pop(_META)
    if meta.dtype.kind != "U" or meta.ndim != 0:
        raise CheckpointError(f"{path}: {_META!r} is a {meta.dtype} array of shape "
                              f"{meta.shape}, not a JSON string")
    try:
        packed = json.loads(str(meta))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: {_META!r} is not valid JSON ({e})") from None
    if not (isinstance(packed, dict) and packed.get("format") == FORMAT):
        raise CheckpointError(f"{path}: the structure does not say format={FORMAT!r}")
    if packed.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {packed.get('version')!r}; this "
                              f"fastconv reads version {VERSION}")
    used: set = set()
    tree = _unpack(packed, arrays, used, path)
    extra_arrays = sorted(set(arrays) - used)
    if extra_arrays:
        raise CheckpointError(f"{path}: arrays {extra_arrays} are not part of the structure")
    for key, obj in (("model", model), ("optimizer", optimizer), ("scheduler", scheduler)):
        if obj is None:
            continue
        if tree.get(key) is None:
            raise CheckpointError(f"{path}: the checkpoint holds no {key} state")
        try:
            obj.load_state_dict(tree[key])
        except (ValueError, TypeError, KeyError) as e:
            raise CheckpointError(f"{path}: the {key} state does not fit: {e}") from None
    saved = tree.get("generators") or {}
    wanted = dict(generators or {})
    if restore_rng:
        wanted["fastconv"] = default_generator()
    for name, gen in wanted.items():
        if name not in saved:
            raise CheckpointError(f"{path}: no random state saved for {name!r} (saved: "
                                  f"{sorted(saved)})")
        _restore_generator(gen, saved[name], name, path)
    return Loaded(tree.get("epoch"), tree.get("extra"))
