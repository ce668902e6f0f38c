"""The pool of result arrays (``fastconv._pool``): an array comes back only once nothing
but the pool holds it, and results that are held keep their values."""

import threading

import numpy as np
import pytest

import fastconv
from fastconv import _pool, config

SHAPE = (64, 64, 8)                       # 128 KiB of float32: pooled


@pytest.fixture(autouse=True)
def fresh_pool(monkeypatch):
    monkeypatch.setattr(config, "POOL_BYTES", 64 << 20)
    _pool.clear()
    yield
    _pool.clear()


def test_a_dropped_array_comes_back_for_the_same_shape_and_dtype():
    a = _pool.empty(SHAPE, np.float32)
    addr = a.ctypes.data
    del a
    b = _pool.empty(SHAPE, np.float32)
    assert b.ctypes.data == addr and b.shape == SHAPE and b.flags.c_contiguous
    assert _pool.empty((64, 64, 8), np.float64).ctypes.data != addr   # another dtype
    assert _pool.empty((64, 8, 64), np.float32).ctypes.data != addr   # another shape


def test_held_arrays_and_arrays_with_views_are_not_handed_out_again():
    a = _pool.empty(SHAPE, np.float32)
    b = _pool.empty(SHAPE, np.float32)
    assert a.ctypes.data != b.ctypes.data
    view = a[1:]
    addr = a.ctypes.data
    del a                                  # the view still refers to it
    c = _pool.empty(SHAPE, np.float32)
    assert c.ctypes.data not in (addr, b.ctypes.data)
    held = [b]
    del b
    d = _pool.empty(SHAPE, np.float32)
    assert d.ctypes.data != held[0].ctypes.data
    del view
    assert _pool.empty(SHAPE, np.float32).ctypes.data == addr


def test_pooled_arrays_start_on_a_cache_line_and_views_of_views_keep_them_held():
    a = _pool.empty(SHAPE, np.float32)
    assert a.ctypes.data % _pool.ALIGN == 0
    addr = a.ctypes.data
    view = a.reshape(-1)[::2].reshape(8, -1).T     # refers to a's buffer, not to a
    del a
    assert _pool.empty(SHAPE, np.float32).ctypes.data != addr
    view[0, 0] = 1.0
    del view
    assert _pool.empty(SHAPE, np.float32).ctypes.data == addr
    other = _pool.empty((64, 64, 9), np.float64)  # another shape and dtype: aligned too
    assert other.ctypes.data % _pool.ALIGN == 0


def test_small_arrays_are_not_pooled_and_a_zero_budget_turns_the_pool_off(monkeypatch):
    _pool.empty((8, 8), np.float32)
    assert _pool.held_bytes() == 0
    monkeypatch.setattr(config, "POOL_BYTES", 0)
    _pool.empty(SHAPE, np.float32)
    assert _pool.held_bytes() == 0


def test_the_budget_lets_free_arrays_of_other_shapes_go_and_then_stops_pooling(monkeypatch):
    nbytes = int(np.prod(SHAPE)) * 4
    monkeypatch.setattr(config, "POOL_BYTES", 2 * nbytes)
    a = _pool.empty(SHAPE, np.float32)
    b = _pool.empty(SHAPE, np.float32)
    assert _pool.held_bytes() == 2 * nbytes
    del a                                   # free: let go for a new shape
    c = _pool.empty((64, 8, 64), np.float32)
    assert _pool.held_bytes() == 2 * nbytes
    d = _pool.empty((8, 64, 64), np.float32)  # b and c held: an ordinary array
    assert _pool.held_bytes() == 2 * nbytes
    assert len({b.ctypes.data, c.ctypes.data, d.ctypes.data}) == 3


def test_a_free_array_behind_held_ones_is_let_go(monkeypatch):
    nbytes = int(np.prod(SHAPE)) * 4
    monkeypatch.setattr(config, "POOL_BYTES", 3 * nbytes)
    a, b, c = (_pool.empty(SHAPE, np.float32) for _ in range(3))
    del c                                   # the third of its list: free
    d = _pool.empty((64, 8, 64), np.float32)
    assert _pool.held_bytes() == 3 * nbytes
    assert len({a.ctypes.data, b.ctypes.data, d.ctypes.data}) == 3


def test_threads_never_share_a_held_array():
    held, errors = [], []

    def work(k):
        try:
            mine = []
            for i in range(50):
                a = _pool.empty(SHAPE, np.float32)
                a.fill(k * 1000 + i)
                mine.append(a)
                if i % 3 == 0:
                    mine.pop(0)             # drop some: they may come back to anyone
            held.append((k, mine))
        except Exception as exc:            # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    addrs = [a.ctypes.data for _, mine in held for a in mine]
    assert len(addrs) == len(set(addrs))
    for k, mine in held:                    # every kept array still holds its own fill
        assert all(a.flat[0] // 1000 == k and (a == a.flat[0]).all() for a in mine)


def test_held_results_keep_their_values_while_later_calls_reuse_dropped_ones(rng):
    x = rng.standard_normal((8, 8, 16, 16)).astype(np.float32)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)   # outputs of 128 KiB
    kept = [fastconv.conv2d(x * k, w, padding=1) for k in range(3)]
    assert _pool.held_bytes() >= 3 * kept[0].nbytes
    copies = [y.copy() for y in kept]
    for k in range(6):                      # results dropped at once: reused
        fastconv.conv2d(x * (k + 10), w, padding=1)
    for y, want in zip(kept, copies, strict=True):
        np.testing.assert_array_equal(y, want)
    assert len({y.ctypes.data for y in kept}) == 3
