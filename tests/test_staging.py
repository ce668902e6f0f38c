"""The copies of NCHW rows to channels-last buffers and back (``algos.staging``) against
numpy, over row widths below, at and past whole vectors and runs, spans cut at either
side, padding, channel counts off the groups of 8 and the vectors, strided views; and
the masked loads and stores they use (``fastconv._lanes_part``), which must not touch
what lies past their count."""

import ctypes
import mmap
import sys

import numpy as np
import pytest
from numba import njit

from fastconv import _lanes
from fastconv._lanes_part import load_first, store_columns_part
from fastconv.algos.staging import raveled, stage_in, stage_out

NL = _lanes.per_register(4)


@njit
def _first(a, i, k, out):
    _lanes.store(out, 0, load_first(a, i, k))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_load_first_takes_k_values_and_zeroes_the_other_lanes(dtype):
    n = _lanes.per_register(np.dtype(dtype).itemsize)
    a = np.arange(1, 3 * n + 1, dtype=dtype)
    out = np.empty(n, dtype)
    for i, k in [(0, 0), (0, 1), (2, n - 1), (n, n), (3 * n - 3, 3)]:
        _first(a, i, k, out)
        want = np.zeros(n, dtype)
        want[:k] = a[i:i + k]
        np.testing.assert_array_equal(out, want)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mprotect via libc")
def test_load_first_reads_nothing_past_its_count():
    """The last 3 values of a page whose next page may not be read (a whole vector
    loaded from there would end the process)."""
    page = mmap.PAGESIZE
    buf = mmap.mmap(-1, 2 * page)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mprotect(ctypes.c_void_p(addr + page), ctypes.c_size_t(page), 0) == 0
    a = np.frombuffer(buf, np.float32, count=page // 4)
    a[-3:] = 7
    out = np.empty(NL, np.float32)
    _first(a, page // 4 - 3, 3, out)
    np.testing.assert_array_equal(out[:3], 7)
    np.testing.assert_array_equal(out[3:], 0)
    assert libc.mprotect(ctypes.c_void_p(addr + page), ctypes.c_size_t(page), 3) == 0


@njit
def _columns_part(out, i, step, m, runs, width):
    vs = (_lanes.load(m, 0), _lanes.load(m, NL), _lanes.load(m, 2 * NL),
          _lanes.load(m, 3 * NL), _lanes.load(m, 4 * NL), _lanes.load(m, 5 * NL),
          _lanes.load(m, 6 * NL), _lanes.load(m, 7 * NL))
    store_columns_part(out, i, step, vs, runs, width)


@pytest.mark.parametrize("runs,width", [(NL, 8), (3, 8), (NL, 5), (1, 1), (0, 8), (5, 0)])
def test_store_columns_part_writes_its_runs_only(runs, width):
    m = np.arange(8 * NL, dtype=np.float32).reshape(8, NL)     # m[p, k]: vector p, lane k
    step, at = 11, 3
    out = np.full(at + step * NL + 8, -1.0, np.float32)
    _columns_part(out, at, step, m.reshape(-1), runs, width)
    want = np.full_like(out, -1.0)
    for k in range(runs):
        want[at + k * step:at + k * step + width] = m[:width, k]
    np.testing.assert_array_equal(out, want)


@njit
def _stage_in(x, xf, n, top, left, rows, span, xs):
    stage_in(x, xf, n, top, left, rows, span, xs, 0)


@njit
def _stage_out(ys, span, y, yf, n, top, rows):
    stage_out(ys, 0, span, y, yf, n, top, rows)


def _staged_in(x, n, top, left, rows, span):
    """stage_in's result from numpy: (rows, cols, C), -1 in the columns it leaves."""
    _, c, h, w = x.shape
    q0, q1, cols = span
    want = np.full((rows, cols, c), -1.0, x.dtype)
    padded = np.zeros((c, h + 2 * rows + 2, w + 2 * cols + 2), x.dtype)
    padded[:, rows + 1:rows + 1 + h, cols + 1:cols + 1 + w] = x[n]
    for r in range(rows):
        for q in range(q0, q1):
            want[r, q] = padded[:, rows + 1 + top + r, cols + 1 + left + q]
    return want


WIDTHS = [1, 3, 7, 8, 9, NL - 1, NL, NL + 1, NL + 7, 2 * NL + 3, 3 * NL + NL // 2 + 1]


@pytest.mark.parametrize("w", WIDTHS)
@pytest.mark.parametrize("c", [8, 11, 24])
def test_stage_in_matches_numpy(rng, w, c):
    x = rng.standard_normal((2, c, 5, w)).astype(np.float32)
    for top, left, rows, span in [(-1, -1, 6, (0, w + 2, w + 2)),      # padding both sides
                                  (2, -1, 6, (0, w + 2, w + 3)),       # rows past the end
                                  (0, 0, 3, (0, w, w)),
                                  (1, -2, 2, (1, max(2, w - 1), w + 4)),   # a cut span
                                  (-4, 0, 3, (0, w, w))]:              # rows all above
        cols = span[2]
        xs = np.full(rows * cols * c + 5, -1.0, np.float32)
        for arr in (x, x[:, :, :, ::-1]):                              # strided: by value
            xs[:] = -1
            _stage_in(arr, raveled(arr), 1, top, left, rows, span, xs)
            np.testing.assert_array_equal(
                xs[:-5].reshape(rows, cols, c), _staged_in(arr, 1, top, left, rows, span))
            assert (xs[-5:] == -1).all()


@pytest.mark.parametrize("w", WIDTHS)
@pytest.mark.parametrize("d", [NL, 2 * NL, 12])
def test_stage_out_matches_numpy(rng, w, d):
    rows, top = 3, 1
    for q0, q1 in [(0, w), (min(2, w - 1), w), (0, max(1, w - 3))]:
        cols = w + 2
        ys = rng.standard_normal(rows * cols * d).astype(np.float32)
        y = np.full((2, d, 5, w), -1.0, np.float32)
        _stage_out(ys, (q0, q1, cols), y, raveled(y), 1, top, rows)
        want = np.full_like(y, -1.0)
        want[1, :, top:top + rows, q0:q1] = (
            ys.reshape(rows, cols, d)[:, q0:q1].transpose(2, 0, 1))
        np.testing.assert_array_equal(y, want)
