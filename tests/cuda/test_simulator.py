"""The simulator's shared arrays: every thread of a block gets the same one.

numba's simulator allocates a ``cuda.shared.array`` with an unlocked lookup-then-insert;
fastconv.cuda._simulator makes it atomic. Slowing numpy.empty (which the allocation
calls) opens the window between lookup and insert wide, so without the lock the threads
of the first block get private arrays and the GEMM tile and block reductions come out
wrong on every launch; with it the results match the CPU.
"""

import time

import numpy as np
import pytest

from fastconv import cuda as fcuda

from .. import reference as ref
from .conftest import SIMULATED

pytestmark = pytest.mark.skipif(not SIMULATED, reason="the simulator's allocator only")


@pytest.fixture
def slow_numpy_empty(monkeypatch):
    real_empty = np.empty

    def empty(*args, **kwargs):
        time.sleep(2e-3)  # other simulated threads run meanwhile
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(np, "empty", empty)


def test_gemm_tiles_share_their_shared_arrays(slow_numpy_empty):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 5, 5))
    w = rng.standard_normal((4, 3, 3, 3))
    got = fcuda.conv2d(x, w, padding=1, algo="im2col")
    want = ref.conv2d(x, w, None, (1, 1), ((1, 1), (1, 1)), (1, 1), 1)
    assert ref.rel_error(got, want) <= 1e-12


def test_block_reductions_share_their_shared_arrays(slow_numpy_empty):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4, 4)) * 2 + 0.5
    rm, rv = np.zeros(3), np.ones(3)
    y = fcuda.batch_norm(x, rm, rv, training=True)
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    assert np.abs(y - (x - mean) / np.sqrt(var + 1e-5)).max() <= 1e-12
    assert np.abs(rm - 0.1 * mean.ravel()).max() <= 1e-12
