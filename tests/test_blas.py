"""fastconv._blas: small products on one BLAS thread, results unchanged, limits restored."""

import threading

import numpy as np
import pytest

from fastconv import _blas, _blas_libs, config
from fastconv._blas_libs import numpy_blas


def _numpy_blas_threads():
    return [lib.get_num_threads() for lib in numpy_blas()]


@pytest.mark.parametrize("shapes", [((64, 400), (400, 120)), ((3, 5, 7), (3, 7, 2)),
                                    ((2, 1, 4, 6), (3, 6, 5)), ((300, 200), (200, 300)),
                                    ((3000, 1), (1, 200)), ((2, 1, 4, 1), (3, 1, 5))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_matches_numpy(shapes, dtype, rng):
    a = rng.standard_normal(shapes[0]).astype(dtype)
    b = rng.standard_normal(shapes[1]).astype(dtype)
    want = np.matmul(a, b)
    got = _blas.matmul(a, b)
    assert got.dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 1e-12        # summation order may differ
    assert np.abs(got - want).max() <= tol * np.abs(want).max()
    out = np.empty_like(want)
    assert _blas.matmul(a, b, out=out) is out
    np.testing.assert_array_equal(out, got)
    # transposed (non-contiguous) operands
    bt, at = b.swapaxes(-1, -2)[..., :2, :], a.swapaxes(-1, -2)[..., :, :3]
    want_t = np.matmul(bt, at)
    assert np.abs(_blas.matmul(bt, at) - want_t).max() <= tol * np.abs(want_t).max()


def test_small_products_are_small():
    assert _blas.is_small(64, 400, 120)                    # a LeNet linear layer
    assert not _blas.is_small(1024, 1024, 1024)
    assert _blas.is_small(1, 1, config.SMALL_GEMM_MACS)
    assert not _blas.is_small(2, 1, config.SMALL_GEMM_MACS)


def test_one_blas_thread_limits_and_restores():
    pytest.importorskip("threadpoolctl")
    if not numpy_blas():
        pytest.skip("numpy's BLAS is not visible to threadpoolctl")
    before = _numpy_blas_threads()
    with _blas.one_blas_thread():
        assert _numpy_blas_threads() == [1] * len(before)
        with _blas.one_blas_thread():                      # nested
            assert _numpy_blas_threads() == [1] * len(before)
        assert _numpy_blas_threads() == [1] * len(before)
    assert _numpy_blas_threads() == before


def test_thread_knobs_read_and_set_what_threadpoolctl_sees():
    pytest.importorskip("threadpoolctl")
    libs, knobs = numpy_blas(), _blas_libs.thread_knobs()
    if not libs:
        pytest.skip("numpy's BLAS is not visible to threadpoolctl")
    assert len(knobs) == len(libs)
    for lib, (get, put) in zip(libs, knobs, strict=True):
        before = lib.get_num_threads()
        assert get() == before
        try:
            put(1)
            assert lib.get_num_threads() == 1 and get() == 1
        finally:
            put(before)
        assert lib.get_num_threads() == before


def test_concurrent_small_products_restore_the_limit(rng):
    """4 threads x 10 small products: every result right, thread counts restored."""
    pytest.importorskip("threadpoolctl")
    before = _numpy_blas_threads()
    a = rng.standard_normal((64, 400)).astype(np.float32)
    b = rng.standard_normal((400, 120)).astype(np.float32)
    want = a @ b
    failures = []
    barrier = threading.Barrier(4)

    def work():
        barrier.wait()
        for _ in range(10):
            if not np.allclose(_blas.matmul(a, b), want, rtol=1e-5):
                failures.append(1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert _numpy_blas_threads() == before


def test_limit_for_small_and_large_products():
    pytest.importorskip("threadpoolctl")
    if not numpy_blas():
        pytest.skip("numpy's BLAS is not visible to threadpoolctl")
    before = _numpy_blas_threads()
    with _blas.limit_for(config.SMALL_GEMM_MACS):
        assert _numpy_blas_threads() == [1] * len(before)
    with _blas.limit_for(config.SMALL_GEMM_MACS + 1):
        assert _numpy_blas_threads() == before
    assert _numpy_blas_threads() == before


def test_conv2d_layer_runs_small_layers_on_one_blas_thread(rng, monkeypatch):
    """The autograd conv2d wraps the forward of small layers in _blas.limit_for."""
    from fastconv.nn import functional as F

    seen = []
    real = _blas.limit_for
    monkeypatch.setattr(_blas, "limit_for", lambda macs: (seen.append(macs), real(macs))[1])
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    F.conv2d(x, w, padding=1)
    F.conv2d(x[0], w, padding=1)                                        # unbatched
    F.conv2d(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), w.transpose(2, 3, 1, 0),
             padding=1, layout="NHWC")
    assert seen == [2 * 64 * w.size, 64 * w.size, 2 * 64 * w.size]


@pytest.mark.parametrize("shared_left", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_split_matmul_matches_numpy(shared_left, dtype, rng):
    """Batches above and below the small-product limit, split over threads or not; the
    BLAS thread counts are restored afterwards."""
    before = _numpy_blas_threads()
    for batch, m, k, n in ((16, 64, 64, 3000), (3, 4, 5, 6), (1, 8, 8, 8), (36, 500, 1, 64)):
        a = rng.standard_normal((m, k) if shared_left else (batch, m, k)).astype(dtype)
        b = rng.standard_normal((batch, k, n)).astype(dtype)
        out = np.full((batch, m, n), np.nan, dtype)
        assert _blas.split_matmul(a, b, out) is out
        want = np.matmul(a, b)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        assert np.abs(out - want).max() <= tol * np.abs(want).max()
    assert _numpy_blas_threads() == before


def _split_checksum(seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((16, 64, 64)).astype(np.float32)
    b = rng.standard_normal((16, 64, 3000)).astype(np.float32)
    out = np.empty((16, 64, 3000), np.float32)
    _blas.split_matmul(a, b, out)
    return float(np.abs(out - np.matmul(a, b)).max() / np.abs(out).max())


def test_split_matmul_in_a_forked_child():
    """A child forked after the parent's helper threads exist gets helpers of its own
    (it inherits the pool object, not its threads) instead of waiting forever."""
    import multiprocessing as mp

    import numba

    if numba.get_num_threads() < 2:
        pytest.skip("one numba thread: split_matmul runs no helper threads")
    assert _split_checksum(0) < 1e-5            # the parent's pool now has its threads
    with mp.get_context("fork").Pool(1) as pool:
        result = pool.apply_async(_split_checksum, (1,))
        assert result.get(timeout=60) < 1e-5


@pytest.mark.parametrize("n, count", [(16, 8), (5, 2), (3, 7), (1, 1)])
def test_runs_hand_each_run_out_once(n, count):
    """Threads claiming runs until none is left take every run exactly once; the runs
    cut the n items in order, none empty (at most n runs)."""
    runs, taken = _blas.Runs(n, count), [[] for _ in range(3)]

    def part(k):
        while (run := runs.claim()) is not None:
            taken[k].append(run)

    _blas.on_threads(part, 3)
    got = sorted(r for t in taken for r in t)
    assert [j for j, _ in got] == list(range(min(n, count)))
    assert [i for _, items in got for i in items] == list(range(n))
    assert all(len(items) > 0 for _, items in got) and runs.claim() is None
