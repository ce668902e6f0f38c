"""Datasets and batching: scikit-learn's digits, MNIST / Fashion-MNIST (downloaded, checked,
cached), a synthetic-shapes set that needs nothing, a DataLoader and a seeded split.
CIFAR-10 is in ``fastconv.cifar`` (its loader reuses :func:`fetch`).

Images are float32 (N, 1, H, W) in [0, 1]; labels are int64 (N,).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.parse
import urllib.request

import numpy as np

from . import config
from .rng import default_generator


# ------------------------------------------------------------------------------- digits
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes).

    Returns images float32 (1797, 1, 8, 8) scaled from 0..16 to [0, 1] and labels int64.
    Needs scikit-learn (``pip install '.[examples]'`` in a fastconv checkout); the data
    ships with it.
    """
    path = _sklearn_digits_file()
    if path is not None:   # the file scikit-learn reads, without importing it (0.5 s)
        table = np.loadtxt(path, delimiter=",")
        pixels, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    else:
        try:
            from sklearn.datasets import load_digits as _sk_load_digits
        except ImportError:
            raise ImportError("load_digits needs scikit-learn, which is in fastconv's "
                              "'examples' extra: pip install '.[examples]' in a fastconv "
                              "checkout (or pip install scikit-learn)") from None
        d = _sk_load_digits()
        pixels, target = d.images, d.target
    return (pixels / 16.0).astype(np.float32)[:, None, :, :], target.astype(np.int64)


def _sklearn_digits_file() -> str | None:
    """scikit-learn's digits.csv.gz (64 pixels and the label per row), None when
    scikit-learn is missing or keeps it elsewhere."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz")
    return path if os.path.isfile(path) else None


# -------------------------------------------------------------------------------- MNIST
#: name -> (default mirror, {file name: SHA-256 of the gzipped file})
MNIST_DATASETS = {
    "mnist": (
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        {
            "train-images-idx3-ubyte.gz":
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz":
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz":
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz":
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
    ),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        {
            "train-images-idx3-ubyte.gz":
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz":
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz":
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz":
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
    ),
}

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
               0x0E: ">f8"}


def read_idx(raw: bytes, name: str = "IDX data") -> np.ndarray:
    """Parse an (uncompressed) IDX file: 2 zero bytes, a type code, the number of
    dimensions, the dimensions as big-endian uint32, then the values."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"read_idx: {name} is not an IDX file (bad magic number "
                         f"{raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"read_idx: {name} is truncated inside its header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"read_idx: {name} has {len(raw)} bytes but its header {shape} of "
                         f"{dtype} needs {expected}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _source(mirror: str, name: str) -> str:
    """A URL for ``name`` under ``mirror`` (a URL or a local directory)."""
    if urllib.parse.urlparse(mirror).scheme in ("http", "https", "file", "ftp"):
        return mirror.rstrip("/") + "/" + name
    return "file://" + urllib.request.pathname2url(os.path.abspath(os.path.join(mirror, name)))


def fetch(name: str, mirror: str, sha256: str, cache_dir: str) -> str:
    """The path of ``name`` in ``cache_dir``, downloading it from ``mirror`` when absent.

    The file is written only after its SHA-256 matches; a mismatch raises ValueError
    (and a cached file that no longer matches is fetched again).
    """
    path = os.path.join(cache_dir, name)
    if os.path.exists(path) and _sha256(path) == sha256:
        return path
    os.makedirs(cache_dir, exist_ok=True)
    url = _source(mirror, name)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=60) as resp:
                    shutil.copyfileobj(resp, out)
            except OSError as e:
                raise OSError(f"fetch: could not download {url}: {e}") from e
        got = _sha256(tmp)
        if got != sha256:
            raise ValueError(f"fetch: checksum mismatch for {name} from {url}: SHA-256 is "
                             f"{got}, expected {sha256}; the mirror serves a different or "
                             "corrupt file")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_mnist(train: bool = True, *, dataset: str = "mnist", mirror: str | None = None,
               cache_dir: str | None = None, checksums: dict | None = None):
    """MNIST or Fashion-MNIST (``dataset="fashion-mnist"``) from the IDX files.

    Parameters
    ----------
    train : the 60,000 training images (True) or the 10,000 test images.
    mirror : URL prefix (http(s)://, file://) or local directory holding the four .gz
        files; default: ``fastconv.config.MNIST_MIRROR`` / ``FASHION_MNIST_MIRROR``
        (environment ``FASTCONV_MNIST_MIRROR`` / ``FASTCONV_FASHION_MNIST_MIRROR``), else
        the dataset's usual mirror (see ``MNIST_DATASETS``).
    cache_dir : where the files are kept; default ``fastconv.config.CACHE_DIR/<dataset>``.
    checksums : {file name: SHA-256} replacing the published checksums (for private
        copies; the tests use it).

    Returns
    -------
    images float32 (N, 1, 28, 28) in [0, 1], labels int64 (N,).
    """
    if dataset not in MNIST_DATASETS:
        raise ValueError(f"load_mnist: dataset={dataset!r} is not known; acceptable values "
                         f"are {', '.join(map(repr, MNIST_DATASETS))}")
    default_mirror, sums = MNIST_DATASETS[dataset]
    configured = config.MNIST_MIRROR if dataset == "mnist" else config.FASHION_MNIST_MIRROR
    mirror = mirror or configured or default_mirror
    sums = {**sums, **(checksums or {})}
    cache_dir = cache_dir or os.path.join(config.CACHE_DIR, dataset)
    prefix = "train" if train else "t10k"
    arrays = []
    for kind in ("images-idx3", "labels-idx1"):
        name = f"{prefix}-{kind}-ubyte.gz"
        path = fetch(name, mirror, sums[name], cache_dir)
        with gzip.open(path, "rb") as f:
            arrays.append(read_idx(f.read(), name))
    images, labels = arrays
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"load_mnist: images {images.shape} and labels {labels.shape} do not "
                         "form a dataset (expected (N, H, W) and (N,))")
    return (images.astype(np.float32) / np.float32(255))[:, None], labels.astype(np.int64)


# ------------------------------------------------------------------------------- shapes
SHAPE_CLASSES = ("square", "circle", "cross", "line")


def make_shapes(n: int = 1000, size: int = 16, *, noise: float = 0.1, seed: int = 0):
    """Synthetic images of outlined squares, circles, crosses and lines, labelled by shape.

    Each image has one shape of random position and size (``SHAPE_CLASSES[label]``),
    intensity 1 on a 0 background, plus Gaussian noise of std ``noise``, clipped to
    [0, 1]. Lines are horizontal, vertical or diagonal. Classes are balanced
    (label = i % 4, then shuffled). Deterministic in ``seed``.

    Returns images float32 (n, 1, size, size) and labels int64 (n,).
    """
    if size < 8:
        raise ValueError(f"make_shapes: size={size} must be at least 8")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(SHAPE_CLASSES)).astype(np.int64)
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.zeros((n, 1, size, size), np.float32)
    for i, label in enumerate(labels):
        r = rng.uniform(size * 0.2, size * 0.4)                    # half-size
        cy, cx = rng.uniform(r, size - 1 - r, 2)                   # centre, fully inside
        dy, dx = yy - cy, xx - cx
        if label == 0:      # square outline
            m = np.abs(np.maximum(np.abs(dy), np.abs(dx)) - r) < 0.75
        elif label == 1:    # circle outline
            m = np.abs(np.hypot(dy, dx) - r) < 0.75
        elif label == 2:    # cross (+)
            m = (((np.abs(dy) < 0.75) & (np.abs(dx) <= r))
                 | ((np.abs(dx) < 0.75) & (np.abs(dy) <= r)))
        else:               # line through the centre: horizontal, vertical or diagonal
            t = rng.integers(4)
            ny, nx = [(1, 0), (0, 1), (1, -1), (1, 1)][t]
            dist = np.abs(dy * ny + dx * nx) / np.hypot(ny, nx)       # to the line
            along = np.abs(dx * ny - dy * nx) / np.hypot(ny, nx)      # along the line
            m = (dist < 0.75) & (along <= r)
        images[i, 0] = m
    images += rng.normal(0.0, noise, images.shape).astype(np.float32)
    np.clip(images, 0, 1, out=images)
    return images, labels


# ------------------------------------------------------------------------------ batching
def train_test_split(*arrays, test_size: float = 0.2, seed: int = 0):
    """Shuffle with ``seed`` and split every array along axis 0, as scikit-learn:
    returns (a_train, a_test, b_train, b_test, ...). ``test_size`` is a fraction
    (the test set gets ceil(test_size * n) rows) or a row count."""
    if not arrays:
        raise ValueError("train_test_split: at least one array is required")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"train_test_split: arrays have different lengths "
                         f"{[len(a) for a in arrays]}")
    if isinstance(test_size, float):
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"train_test_split: test_size={test_size} must be in (0, 1)")
        n_test = int(np.ceil(test_size * n))
    else:
        n_test = int(test_size)
    if not 0 < n_test < n:
        raise ValueError(f"train_test_split: test_size={test_size} gives {n_test} test rows "
                         f"of {n}; both parts must be non-empty")
    perm = np.random.default_rng(seed).permutation(n)
    test, train = perm[:n_test], perm[n_test:]
    out = []
    for a in arrays:
        a = np.asarray(a)
        out += [a[train], a[test]]
    return out


class DataLoader:
    """Batches of arrays that share their first axis (torch's DataLoader over a
    TensorDataset; yields tuples of ndarrays).

    Parameters
    ----------
    dataset : an ndarray or a tuple/list of ndarrays of equal length.
    batch_size : rows per batch.
    shuffle : draw a fresh permutation at each iteration (epoch).
    drop_last : drop the last, smaller batch.
    seed : seeds the shuffling generator (a Generator is also accepted); None uses
        fastconv's default generator (``fastconv.manual_seed``). Two loaders with the
        same seed give the same batches, epoch after epoch.
    """

    def __init__(self, dataset, batch_size: int = 1, shuffle: bool = False,
                 drop_last: bool = False, seed=None):
        arrays = (dataset,) if isinstance(dataset, np.ndarray) else tuple(dataset)
        arrays = tuple(np.asarray(a) for a in arrays)
        if not arrays:
            raise ValueError("DataLoader: dataset holds no arrays")
        if len({len(a) for a in arrays}) != 1:
            raise ValueError(f"DataLoader: arrays have different lengths "
                             f"{[len(a) for a in arrays]}")
        if not (isinstance(batch_size, (int, np.integer)) and batch_size > 0):
            raise ValueError(f"DataLoader: batch_size={batch_size!r} must be a positive int")
        self.arrays, self.batch_size = arrays, int(batch_size)
        self.shuffle, self.drop_last = shuffle, drop_last
        if seed is None:
            self._rng = None
        elif isinstance(seed, np.random.Generator):
            self._rng = seed
        else:
            self._rng = np.random.default_rng(seed)
        self.single = isinstance(dataset, np.ndarray)

    @property
    def generator(self) -> np.random.Generator | None:
        """The generator that shuffles the batches (None: fastconv's default generator);
        its state is what a checkpoint saves to redraw an epoch's order."""
        return self._rng

    @property
    def n(self) -> int:
        return len(self.arrays[0])

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def __iter__(self):
        if self.shuffle:
            rng = self._rng if self._rng is not None else default_generator()
            order = rng.permutation(self.n)
        else:
            order = None
        for b in range(len(self)):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            idx = order[sl] if order is not None else sl
            batch = tuple(a[idx] for a in self.arrays)
            yield batch[0] if self.single else batch
