"""CIFAR-10 loading on small generated archives (no network): layout, scaling, labels,
the cache, the configured mirror, checksums, and refusal of crafted pickles whose side
effects must not happen."""

import hashlib
import io
import os
import pickle
import shutil
import struct
import tarfile
import urllib.request

import numpy as np
import pytest

from fastconv import cifar, config

PER_BATCH = 3


def _archive(path, batches: dict) -> str:
    """Write a .tar.gz holding ``{member name: bytes}`` and return its SHA-256."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, blob in batches.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    path.write_bytes(buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


def _batches(rng, protocol=2):
    """The six batches, PER_BATCH images each, pickled like the real ones."""
    arrays, blobs = {}, {}
    for name in (*cifar.CIFAR10_TRAIN_BATCHES, cifar.CIFAR10_TEST_BATCH):
        data = rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, PER_BATCH)]
        arrays[name] = data, labels
        blobs[name] = pickle.dumps({b"batch_label": b"a batch", b"data": data,
                                    b"labels": labels, b"filenames": [b"f.png"] * PER_BATCH},
                                   protocol=protocol)
    return arrays, blobs


@pytest.fixture
def mirror(tmp_path, rng):
    src = tmp_path / "mirror"
    src.mkdir()
    arrays, blobs = _batches(rng)
    sha = _archive(src / cifar.CIFAR10_ARCHIVE, blobs)
    return src, arrays, sha


@pytest.mark.parametrize("as_url", [False, True])
def test_load_cifar10_from_a_mirror(tmp_path, mirror, as_url):
    src, arrays, sha = mirror
    url = "file://" + urllib.request.pathname2url(str(src)) if as_url else str(src)
    cache = tmp_path / "cache"
    x_tr, y_tr, x_te, y_te = cifar.load_cifar10(mirror=url, cache_dir=str(cache), sha256=sha)
    train = [arrays[n] for n in cifar.CIFAR10_TRAIN_BATCHES]
    assert x_tr.dtype == np.float32 and x_tr.shape == (5 * PER_BATCH, 3, 32, 32)
    assert x_te.shape == (PER_BATCH, 3, 32, 32)
    assert x_tr.flags.c_contiguous and 0 <= x_tr.min() and x_tr.max() <= 1
    # image 4 = batch 2's image 1; its red plane is the first 1024 bytes, row by row
    data, labels = train[1]
    np.testing.assert_array_equal(x_tr[4, 0], data[1, :1024].reshape(32, 32) / np.float32(255))
    np.testing.assert_array_equal(x_tr[4, 2, 5], data[1, 2048 + 160:2048 + 192] / np.float32(255))
    assert y_tr.dtype == np.int64 and y_tr.tolist() == sum((b[1] for b in train), [])
    assert y_te.tolist() == arrays[cifar.CIFAR10_TEST_BATCH][1]
    assert os.listdir(cache) == [cifar.CIFAR10_ARCHIVE]


def test_load_cifar10_nhwc_cache_and_config_mirror(tmp_path, mirror, monkeypatch):
    src, _, sha = mirror
    monkeypatch.setattr(config, "CIFAR10_MIRROR", str(src))
    monkeypatch.setattr(cifar, "CIFAR10_SHA256", sha)         # the documented hook
    cache = str(tmp_path / "cache")
    nchw = cifar.load_cifar10(cache_dir=cache)
    (src / cifar.CIFAR10_ARCHIVE).unlink()                      # now from the cache only
    nhwc = cifar.load_cifar10(layout="NHWC", cache_dir=cache)
    assert nhwc[0].shape == (5 * PER_BATCH, 32, 32, 3) and nhwc[0].flags.c_contiguous
    np.testing.assert_array_equal(nhwc[0], nchw[0].transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(nhwc[3], nchw[3])
    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path / "home"))
    with pytest.raises(OSError, match="fetch: could not download"):
        cifar.load_cifar10()                                  # default cache: empty
    shutil.copy(os.path.join(cache, cifar.CIFAR10_ARCHIVE), src)
    np.testing.assert_array_equal(cifar.load_cifar10()[1], nchw[1])
    assert os.listdir(tmp_path / "home" / "cifar10") == [cifar.CIFAR10_ARCHIVE]


def test_load_cifar10_bad_checksum(tmp_path, mirror):
    src, _, sha = mirror
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="checksum mismatch for cifar-10-python.tar.gz"):
        cifar.load_cifar10(mirror=str(src), cache_dir=str(cache), sha256="0" * 64)
    assert not cache.exists() or os.listdir(cache) == []
    # the published checksum is the default: the small archive does not match it
    with pytest.raises(ValueError, match=f"expected {cifar.CIFAR10_SHA256}"):
        cifar.load_cifar10(mirror=str(src), cache_dir=str(cache))


def test_load_cifar10_rechecks_the_bytes_it_reads(tmp_path, mirror, monkeypatch):
    """A file that changes between fetch's check and the read is not unpickled."""
    src, _, sha = mirror
    cache = tmp_path / "cache"
    cifar.load_cifar10(mirror=str(src), cache_dir=str(cache), sha256=sha)
    real_fetch = cifar.fetch

    def fetch_then_tamper(*args):
        path = real_fetch(*args)
        with open(path, "ab") as f:
            f.write(b"tampered")
        return path

    monkeypatch.setattr(cifar, "fetch", fetch_then_tamper)
    with pytest.raises(ValueError, match="load_cifar10: checksum mismatch .* not reading it"):
        cifar.load_cifar10(mirror=str(src), cache_dir=str(cache), sha256=sha)


def _python2_batch(data: np.ndarray, labels: list) -> bytes:
    """A batch pickled as the published ones were (python 2, protocol 2): keys and the
    array's bytes as python 2 strs, the array by numpy.core.multiarray._reconstruct."""
    def s(b):                                   # SHORT_BINSTRING
        return b"U" + bytes([len(b)]) + b
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s(b"b")
             + b"\x87R(K\x01K" + bytes([len(data)]) + b"M" + struct.pack("<H", 3072)
             + b"\x86cnumpy\ndtype\n" + s(b"u1") + b"K\x00K\x01\x87R(K\x03" + s(b"|")
             + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T"
             + struct.pack("<I", data.nbytes) + data.tobytes() + b"tb")
    label_list = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return b"\x80\x02}(" + s(b"data") + array + s(b"labels") + label_list + b"u."


def test_load_cifar10_reads_python2_batches(tmp_path, rng):
    arrays, _ = _batches(rng)
    blobs = {name: _python2_batch(*arrays[name]) for name in arrays}
    src = tmp_path / "mirror"
    src.mkdir()
    sha = _archive(src / cifar.CIFAR10_ARCHIVE, blobs)
    x_tr, y_tr, x_te, y_te = cifar.load_cifar10(mirror=str(src), cache_dir=str(tmp_path / "c"),
                                                sha256=sha)
    data, labels = arrays[cifar.CIFAR10_TEST_BATCH]
    np.testing.assert_array_equal(np.rint(x_te.reshape(PER_BATCH, -1) * 255), data)
    assert y_te.tolist() == labels and x_tr.shape == (5 * PER_BATCH, 3, 32, 32)


class _WritesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class _RunsAShellCommand:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("payload", [_WritesAFile, _RunsAShellCommand])
def test_a_malicious_batch_is_refused_and_does_nothing(tmp_path, rng, payload):
    """A checksum-valid archive whose batch would run code when unpickled."""
    marker = tmp_path / "pwned"
    _, blobs = _batches(rng)
    evil = pickle.dumps({b"data": payload(str(marker)), b"labels": [0]}, protocol=2)
    blobs[cifar.CIFAR10_TRAIN_BATCHES[2]] = evil
    src = tmp_path / "mirror"
    src.mkdir()
    sha = _archive(src / cifar.CIFAR10_ARCHIVE, blobs)
    with pytest.raises(pickle.UnpicklingError, match=r"cifar10: the pickle asks for "
                       r"(_?io\.open|builtins\.open|posix\.system|os\.system|nt\.system), which a "
                       "CIFAR-10 batch never needs"):
        cifar.load_cifar10(mirror=str(src), cache_dir=str(tmp_path / "c"), sha256=sha)
    assert not marker.exists()
    pickle.loads(evil)                 # the payload is real: plain pickle runs it
    assert marker.exists()


def test_restricted_unpickler_admits_what_batches_need_only(rng):
    a = rng.integers(0, 256, (2, 5), dtype=np.uint8)
    for protocol in (2, 4, 5):
        obj = {b"data": a, b"labels": [1, 2], "x": (1.5, 2 + 3j, {4}, frozenset([5]), True,
                                                    bytearray(b"z"), "s")}
        back = cifar.restricted_loads(pickle.dumps(obj, protocol=protocol))
        np.testing.assert_array_equal(back[b"data"], a)
        assert back["x"] == obj["x"] and back[b"labels"] == [1, 2]
    for evil in (pickle.dumps(np.float64(1.0)),                 # numpy scalars: not needed
                 pickle.dumps(eval, protocol=2),
                 b"c__builtin__\neval\n(S'1'\ntR."):             # a python 2 pickle
        with pytest.raises(pickle.UnpicklingError, match="cifar10: the pickle asks for"):
            cifar.restricted_loads(evil)
    with pytest.raises(pickle.UnpicklingError, match="_codecs.encode with encoding 'rot13'"):
        cifar.restricted_loads(b"c_codecs\nencode\n(Vabc\nVrot13\ntR.")


def _one_bad_batch(tmp_path, rng, batch) -> dict:
    _, blobs = _batches(rng)
    blobs[cifar.CIFAR10_TEST_BATCH] = pickle.dumps(batch, protocol=2)
    src = tmp_path / "mirror"
    src.mkdir(exist_ok=True)
    sha = _archive(src / cifar.CIFAR10_ARCHIVE, blobs)
    return dict(mirror=str(src), cache_dir=str(tmp_path / "c"), sha256=sha)


@pytest.mark.parametrize("batch, message", [
    ([1, 2], "cifar-10-batches-py/test_batch is not a CIFAR-10 batch"),
    ({b"data": np.zeros((2, 3071), np.uint8), b"labels": [0, 1]},
     r"test_batch's b'data' must be a \(n, 3072\) uint8 array, got uint8 \(2, 3071\)"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]},
     r"must be a \(n, 3072\) uint8 array, got float32"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]},
     "test_batch's b'labels' must be a list of 2 ints in 0..9"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "must be a list of 2 ints"),
])
def test_load_cifar10_malformed_batches(tmp_path, rng, batch, message):
    with pytest.raises(ValueError, match=message):
        cifar.load_cifar10(**_one_bad_batch(tmp_path, rng, batch))


def test_load_cifar10_errors(tmp_path, mirror, rng):
    src, _, sha = mirror
    with pytest.raises(ValueError, match="load_cifar10: layout='CHW' is not supported"):
        cifar.load_cifar10(layout="CHW", mirror=str(src), sha256=sha)
    _, blobs = _batches(rng)
    del blobs[cifar.CIFAR10_TRAIN_BATCHES[4]]
    other = tmp_path / "other"
    other.mkdir()
    sha = _archive(other / cifar.CIFAR10_ARCHIVE, blobs)
    with pytest.raises(ValueError, match="cifar10: the archive has no "
                       "cifar-10-batches-py/data_batch_5"):
        cifar.load_cifar10(mirror=str(other), cache_dir=str(tmp_path / "c"), sha256=sha)
