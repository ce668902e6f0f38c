"""Data: IDX parsing, MNIST download/checksum/cache on small generated files (no network),
digits, synthetic shapes, DataLoader and train_test_split."""

import gzip
import hashlib
import os
import sys
import urllib.request

import numpy as np
import pytest

import fastconv
from fastconv import data


def _idx(arr: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[arr.dtype]
    head = bytes([0, 0, code, arr.ndim]) + b"".join(int(n).to_bytes(4, "big")
                                                    for n in arr.shape)
    return head + arr.tobytes()


@pytest.fixture
def mirror(tmp_path, rng):
    """A directory with tiny MNIST-format files (5 train, 3 test images) and their sums."""
    src = tmp_path / "mirror"
    src.mkdir()
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": np.array([3, 1, 4, 1, 5], np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": np.array([9, 2, 6], np.uint8),
    }
    sums = {}
    for name, arr in arrays.items():
        blob = gzip.compress(_idx(arr))
        (src / name).write_bytes(blob)
        sums[name] = hashlib.sha256(blob).hexdigest()
    return src, arrays, sums


@pytest.mark.parametrize("as_url", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_load_mnist_from_a_mirror(tmp_path, mirror, as_url, train):
    src, arrays, sums = mirror
    where = urllib.request.pathname2url(str(src))
    url = "file://" + where if as_url else str(src)
    cache = tmp_path / "cache"
    x, y = data.load_mnist(train, mirror=url, cache_dir=str(cache), checksums=sums)
    prefix = "train" if train else "t10k"
    raw = arrays[f"{prefix}-images-idx3-ubyte.gz"]
    assert x.dtype == np.float32 and x.shape == (len(raw), 1, 28, 28)
    np.testing.assert_array_equal(x[:, 0], raw.astype(np.float32) / 255)
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, arrays[f"{prefix}-labels-idx1-ubyte.gz"])
    assert sorted(os.listdir(cache)) == sorted(f"{prefix}-{k}-ubyte.gz"
                                               for k in ("images-idx3", "labels-idx1"))


def test_load_mnist_uses_the_cache_and_config_mirror(tmp_path, mirror, monkeypatch):
    src, arrays, sums = mirror
    monkeypatch.setattr(fastconv.config, "MNIST_MIRROR", str(src))
    monkeypatch.setattr(fastconv.config, "CACHE_DIR", str(tmp_path / "home"))
    x1, y1 = data.load_mnist(checksums=sums)           # default cache dir under CACHE_DIR
    assert os.path.isdir(tmp_path / "home" / "mnist")
    for f in src.iterdir():                            # the mirror disappears
        f.unlink()
    x2, y2 = data.load_mnist(checksums=sums)           # served from the cache
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)


def test_load_mnist_bad_checksum(tmp_path, mirror):
    src, _, sums = mirror
    cache = tmp_path / "cache"
    # the published MNIST checksums do not match the tiny files
    with pytest.raises(ValueError, match=r"checksum mismatch for train-images-idx3-ubyte.gz "
                       r"from file://.*SHA-256 is [0-9a-f]{64}, expected 440fcabf"):
        data.load_mnist(mirror=str(src), cache_dir=str(cache))
    assert not os.listdir(cache)                       # nothing half-written is kept


def test_load_mnist_refetches_a_corrupt_cached_file(tmp_path, mirror):
    src, arrays, sums = mirror
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    _, y = data.load_mnist(False, mirror=str(src), cache_dir=str(cache), checksums=sums)
    np.testing.assert_array_equal(y, arrays["t10k-labels-idx1-ubyte.gz"])


def test_load_mnist_errors(tmp_path, mirror):
    src, _, sums = mirror
    with pytest.raises(ValueError, match="dataset='cifar' is not known; acceptable values "
                       "are 'mnist', 'fashion-mnist'"):
        data.load_mnist(dataset="cifar")
    with pytest.raises(OSError, match="could not download file://"):
        data.load_mnist(mirror=str(tmp_path / "nowhere"), cache_dir=str(tmp_path / "c"))
    # Fashion-MNIST has its own checksums; the same files pass with explicit sums
    x, _ = data.load_mnist(dataset="fashion-mnist", mirror=str(src),
                           cache_dir=str(tmp_path / "f"), checksums=sums)
    assert x.shape == (5, 1, 28, 28)


def test_read_idx(rng):
    arr = rng.integers(-5, 5, (2, 3, 4)).astype(">i4")
    np.testing.assert_array_equal(data.read_idx(_idx(arr)), arr)
    with pytest.raises(ValueError, match="not an IDX file \\(bad magic number 01020304\\)"):
        data.read_idx(b"\x01\x02\x03\x04" + bytes(8))
    with pytest.raises(ValueError, match="truncated inside its header"):
        data.read_idx(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(ValueError, match=r"has 20 bytes but its header \(2, 3\) of uint8 "
                       "needs 18"):
        data.read_idx(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(8))


def test_load_digits():
    pytest.importorskip("sklearn")
    x, y = data.load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))


def test_load_digits_reads_the_same_as_sklearn(monkeypatch):
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    assert data._sklearn_digits_file() is not None   # read without importing sklearn
    x, y = data.load_digits()
    d = sklearn_datasets.load_digits()
    np.testing.assert_array_equal(x[:, 0], (d.images / 16.0).astype(np.float32))
    np.testing.assert_array_equal(y, d.target)
    monkeypatch.setattr(data, "_sklearn_digits_file", lambda: None)   # elsewhere: sklearn's
    x2, y2 = data.load_digits()
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)


def test_load_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)            # not installed
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)   # import fails
    with pytest.raises(ImportError, match=r"needs scikit-learn, which is in fastconv's "
                       r"'examples' extra: pip install '\.\[examples\]' in a fastconv checkout"):
        data.load_digits()


def test_make_shapes():
    x, y = data.make_shapes(200, 16, seed=3)
    assert x.shape == (200, 1, 16, 16) and x.dtype == np.float32 and y.dtype == np.int64
    assert x.min() >= 0 and x.max() <= 1
    np.testing.assert_array_equal(np.bincount(y), [50, 50, 50, 50])
    x2, y2 = data.make_shapes(200, 16, seed=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(x, data.make_shapes(200, 16, seed=4)[0])
    # classes differ: noise-free crosses light few pixels, squares/circles many
    clean, yc = data.make_shapes(400, 16, noise=0.0, seed=0)
    ink = clean.sum((1, 2, 3))
    per_class = [ink[yc == k].mean() for k in range(4)]
    assert per_class[0] > per_class[2] and per_class[1] > per_class[3]
    with pytest.raises(ValueError, match="size=4 must be at least 8"):
        data.make_shapes(10, 4)


def test_dataloader_batches_cover_everything_once():
    x = np.arange(10)[:, None] * np.ones((1, 3))
    y = np.arange(10)
    dl = data.DataLoader((x, y), batch_size=4)
    batches = list(dl)
    assert len(dl) == 3 and [len(b[1]) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
    dl = data.DataLoader((x, y), batch_size=4, drop_last=True)
    assert len(dl) == 2 and [len(b[1]) for b in dl] == [4, 4]
    single = list(data.DataLoader(y, batch_size=5))
    assert isinstance(single[0], np.ndarray) and len(single) == 2


def test_dataloader_shuffling_is_seeded():
    y = np.arange(20)
    a = data.DataLoader((y,), batch_size=6, shuffle=True, seed=11)
    b = data.DataLoader((y,), batch_size=6, shuffle=True, seed=11)
    ea1, ea2 = [np.concatenate([t[0] for t in a]) for _ in range(2)]
    eb1, eb2 = [np.concatenate([t[0] for t in b]) for _ in range(2)]
    np.testing.assert_array_equal(ea1, eb1)            # same seed: same epochs
    np.testing.assert_array_equal(ea2, eb2)
    assert not np.array_equal(ea1, ea2)                # a fresh order every epoch
    np.testing.assert_array_equal(np.sort(ea1), y)     # a permutation
    assert not np.array_equal(ea1, y)
    c = data.DataLoader((y,), batch_size=6, shuffle=True, seed=12)
    assert not np.array_equal(np.concatenate([t[0] for t in c]), ea1)
    fastconv.manual_seed(5)                            # seed=None: the default generator
    d1 = np.concatenate([t[0] for t in data.DataLoader((y,), 6, shuffle=True)])
    fastconv.manual_seed(5)
    d2 = np.concatenate([t[0] for t in data.DataLoader((y,), 6, shuffle=True)])
    np.testing.assert_array_equal(d1, d2)


def test_dataloader_errors():
    with pytest.raises(ValueError, match=r"arrays have different lengths \[3, 2\]"):
        data.DataLoader((np.ones(3), np.ones(2)))
    with pytest.raises(ValueError, match="batch_size=0 must be a positive int"):
        data.DataLoader(np.ones(3), batch_size=0)


def test_train_test_split():
    x = np.arange(50).reshape(25, 2)
    y = np.arange(25)
    xtr, xte, ytr, yte = data.train_test_split(x, y, test_size=0.2, seed=1)
    assert len(xte) == 5 and len(xtr) == 20
    np.testing.assert_array_equal(xtr[:, 0] // 2, ytr)            # rows stay paired
    np.testing.assert_array_equal(np.sort(np.concatenate([ytr, yte])), y)
    again = data.train_test_split(x, y, test_size=0.2, seed=1)
    np.testing.assert_array_equal(again[3], yte)
    assert not np.array_equal(data.train_test_split(x, y, seed=2)[3], yte)
    assert len(data.train_test_split(y, test_size=7)[1]) == 7
    with pytest.raises(ValueError, match=r"test_size=1.5 must be in \(0, 1\)"):
        data.train_test_split(y, test_size=1.5)
    with pytest.raises(ValueError, match=r"different lengths \[25, 3\]"):
        data.train_test_split(y, y[:3])
