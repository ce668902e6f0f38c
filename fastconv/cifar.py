"""CIFAR-10 from its python-pickle archive (``cifar-10-python.tar.gz``): downloaded once,
SHA-256 checked, cached, and read without running code from the file.

The archive holds ``cifar-10-batches-py/data_batch_1`` .. ``data_batch_5`` (the 50,000
training images) and ``test_batch`` (10,000), each a pickled dict whose ``b"data"`` is a
(10000, 3072) uint8 array (the red, green and blue 32x32 planes of each image, row by row)
and ``b"labels"`` a list of ints in 0..9.

Safety: the archive's bytes are hashed in memory and only those bytes are read, and only
after their SHA-256 matched; each batch is then unpickled by :class:`RestrictedUnpickler`,
which resolves nothing but numpy's array reconstruction and a few harmless builtins, so a
crafted batch whose pickle names ``os.system`` (or any other callable) is refused with
``pickle.UnpicklingError`` before anything runs.

Examples
--------
>>> import pickle
>>> import numpy as np
>>> from fastconv.cifar import restricted_loads
>>> batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 7]}
>>> restricted_loads(pickle.dumps(batch, protocol=2))[b"labels"]
[3, 7]
>>> class Evil:
...     def __reduce__(self):
...         return (print, ("this never runs",))
>>> restricted_loads(pickle.dumps(Evil()))  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
_pickle.UnpicklingError: cifar10: the pickle asks for builtins.print, which a CIFAR-10 ...
"""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import pickle
import tarfile

import numpy as np

from . import config
from . import layout as _layout
from .data import fetch

#: The archive, its usual mirror and its published SHA-256.
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MIRROR = "https://www.cs.toronto.edu/~kriz/"
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
#: The batches inside the archive: training, then test.
CIFAR10_TRAIN_BATCHES = tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "cifar-10-batches-py/test_batch"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


def _latin1_encode(text, encoding="latin1", errors="strict"):
    """``_codecs.encode`` as protocol-2 pickles of bytes use it (latin-1 only)."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"cifar10: the pickle asks for _codecs.encode with "
                                     f"encoding {encoding!r}; only latin-1 is admitted")
    return codecs.encode(text, "latin1", errors)


def _numpy_reconstructors() -> dict:
    """(module, name) -> object for what numpy's pickles of plain arrays name: the
    array reconstruction function (under numpy's old and new module names), ndarray,
    dtype and, for protocol 5, the frombuffer helper."""
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    allowed = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, frombuffer.__name__)] = frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    return allowed


_BUILTINS = ("list", "dict", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int",
             "float", "complex", "bool")


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose :meth:`find_class` admits only what CIFAR-10 batches need:
    numpy's reconstruction of plain arrays (see :func:`_numpy_reconstructors`), the
    builtins for lists, dicts, tuples, sets, strings, bytes and numbers, and
    ``_codecs.encode`` with latin-1 (protocol-2 pickles of bytes). Anything else raises
    ``pickle.UnpicklingError`` naming it, before it can be called."""

    _allowed = None

    def find_class(self, module, name):
        if RestrictedUnpickler._allowed is None:
            allowed = _numpy_reconstructors()
            for b in _BUILTINS:
                allowed[("builtins", b)] = allowed[("__builtin__", b)] = getattr(
                    __import__("builtins"), b)
            allowed[("_codecs", "encode")] = _latin1_encode
            RestrictedUnpickler._allowed = allowed
        try:
            return RestrictedUnpickler._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"cifar10: the pickle asks for {module}.{name}, which a CIFAR-10 batch never "
                "needs; refusing to load it") from None


def restricted_loads(data: bytes):
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (python 2 strings as bytes,
    as the CIFAR-10 batches were written by python 2)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


def _batch(archive: tarfile.TarFile, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The images (n, 3072) uint8 and labels (n,) int64 of one batch, checked."""
    try:
        member = archive.getmember(name)
    except KeyError:
        raise ValueError(f"cifar10: the archive has no {name}") from None
    f = archive.extractfile(member)
    if f is None:
        raise ValueError(f"cifar10: {name} in the archive is not a regular file")
    batch = restricted_loads(f.read())
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"cifar10: {name} is not a CIFAR-10 batch (a dict with b'data' "
                         "and b'labels')")
    images, labels = batch[b"data"], batch[b"labels"]
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8
            and images.ndim == 2 and images.shape[1] == 3072):
        what = (f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray)
                else type(images).__name__)
        raise ValueError(f"cifar10: {name}'s b'data' must be a (n, 3072) uint8 array, got "
                         f"{what}")
    if not (isinstance(labels, list) and len(labels) == len(images)
            and all(type(v) is int and 0 <= v < 10 for v in labels)):
        raise ValueError(f"cifar10: {name}'s b'labels' must be a list of {len(images)} ints "
                         "in 0..9")
    return images, np.array(labels, np.int64)


def load_cifar10(*, layout: str = "NCHW", mirror: str | None = None,
                 cache_dir: str | None = None, sha256: str | None = None):
    """CIFAR-10: (x_train, y_train, x_test, y_test).

    Parameters
    ----------
    layout : "NCHW" (images (N, 3, 32, 32)) or "NHWC" ((N, 32, 32, 3)).
    mirror : URL prefix (http(s)://, file://) or local directory holding
        ``cifar-10-python.tar.gz``; default ``fastconv.config.CIFAR10_MIRROR``
        (environment ``FASTCONV_CIFAR10_MIRROR``), else :data:`CIFAR10_MIRROR`.
    cache_dir : where the archive is kept; default ``fastconv.config.CACHE_DIR/cifar10``.
    sha256 : the archive's expected SHA-256 instead of the published
        :data:`CIFAR10_SHA256` (for private copies; the tests use it).

    Returns
    -------
    x_train float32 (50000, 3, 32, 32) in [0, 1], y_train int64 (50000,), x_test float32
    (10000, 3, 32, 32), y_test int64 (10000,) (fewer images for a smaller archive).

    The archive is checked against its SHA-256 when downloaded and again, in memory,
    before any batch is read; a mismatch raises ValueError. Batches are unpickled by
    :class:`RestrictedUnpickler` (no code from the file runs).
    """
    lay = _layout.get("load_cifar10", layout)
    expected = (sha256 or CIFAR10_SHA256).lower()
    mirror = mirror or config.CIFAR10_MIRROR or CIFAR10_MIRROR
    cache_dir = cache_dir or os.path.join(config.CACHE_DIR, "cifar10")
    path = fetch(CIFAR10_ARCHIVE, mirror, expected, cache_dir)
    with open(path, "rb") as f:
        raw = f.read()
    got = hashlib.sha256(raw).hexdigest()
    if got != expected:          # changed on disk since fetch checked it
        raise ValueError(f"load_cifar10: checksum mismatch for {path}: SHA-256 is {got}, "
                         f"expected {expected}; not reading it")
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as archive:
        train = [_batch(archive, name) for name in CIFAR10_TRAIN_BATCHES]
        test = _batch(archive, CIFAR10_TEST_BATCH)

    def images(data: np.ndarray) -> np.ndarray:
        x = data.reshape(-1, 3, 32, 32)
        if not lay.is_canonical:
            x = x.transpose(lay.from_canonical)
        x = np.ascontiguousarray(x, dtype=np.float32)
        x /= np.float32(255)
        return x

    x_train = images(np.concatenate([b[0] for b in train]))
    y_train = np.concatenate([b[1] for b in train])
    return x_train, y_train, images(test[0]), test[1]
