"""Concurrency: many Python threads calling every kernel at once, and worker processes
(fork and spawn) after the parent has used the parallel kernels, give the results of
single-threaded calls."""

import multiprocessing as mp
import threading

import numpy as np
import pytest

import fastconv
from fastconv.autograd import Tensor
from fastconv.nn import fused

N_THREADS = 8
CALLS_PER_THREAD = 50


def _inputs(seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 4, 9, 9)).astype(dtype)
    w = rng.standard_normal((4, 2, 3, 3)).astype(dtype)
    return x, w


def _call(kind: int, seed: int):
    """One of the mixed calls; returns a list of arrays."""
    x, w = _inputs(seed)
    conv_kw = dict(stride=1, padding=1, groups=2)
    algos = fastconv.ALGORITHMS
    if kind < len(algos):
        return [fastconv.conv2d(x, w, **conv_kw, algo=algos[kind])]
    kind -= len(algos)
    if kind < len(algos):
        gy = fastconv.conv2d(x, w, **conv_kw, algo="im2col")
        return list(fastconv.conv2d_backward(np.ones_like(gy), x, w, **conv_kw,
                                             algo=algos[kind]))
    kind -= len(algos)
    if kind == 0:
        y, idx = fastconv.max_pool2d(x, 3, stride=2, padding=1, return_indices=True)
        return [y, idx, fastconv.max_pool2d_backward(np.ones_like(y), idx, x.shape)]
    if kind == 1:
        y = fastconv.avg_pool2d(x, 2, ceil_mode=True)
        return [y, fastconv.avg_pool2d_backward(np.ones_like(y), x.shape, 2, ceil_mode=True)]
    if kind == 2:
        rm, rv = np.zeros(4, x.dtype), np.ones(4, x.dtype)
        y, mean, invstd = fastconv.batch_norm(x, rm, rv, training=True, return_stats=True)
        grads = fastconv.batch_norm_backward(np.ones_like(y), x, mean, invstd)
        return [y, rm, rv, *grads]
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    if kind == 3:   # a residual block's end and a batch norm + ReLU, through autograd
        out = []
        for layout, xx in (("NCHW", x), ("NHWC", xh)):
            t = Tensor(xx, requires_grad=True)
            y = fused.batch_norm_add_relu(t, xx[::-1].copy(), None, None, training=True,
                                          layout=layout)
            y = fused.batch_norm_relu(y, None, None, training=True, layout=layout)
            y.backward(np.ones(y.shape, y.data.dtype))
            out += [y.data, t.grad]
        return out
    wh = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
    return [fastconv.conv2d(xh, wh, **conv_kw, layout="NHWC", algo="im2col")]


N_KINDS = 2 * len(fastconv.ALGORITHMS) + 5


def _schedule(thread: int):
    rng = np.random.default_rng(thread)
    return [(int(rng.integers(N_KINDS)), int(rng.integers(4))) for _ in range(CALLS_PER_THREAD)]


def test_threads_give_single_threaded_results():
    expected = {(k, s): _call(k, s) for k in range(N_KINDS) for s in range(4)}
    failures = []
    errors = []
    barrier = threading.Barrier(N_THREADS)

    def work(t):
        try:
            barrier.wait()
            for kind, seed in _schedule(t):
                for got, want in zip(_call(kind, seed), expected[(kind, seed)], strict=True):
                    if not np.array_equal(got, want):
                        failures.append((t, kind, seed))
        except Exception as exc:  # reported below, not swallowed
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert not failures


def _child(seed):
    return [float(np.sum(a)) for k in range(N_KINDS) for a in _call(k, seed)]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_worker_processes_after_the_parent_used_the_kernels(method):
    parent = [_child(s) for s in (1, 2)]  # the parent runs every parallel kernel first
    with mp.get_context(method).Pool(2) as pool:
        got = pool.map(_child, [1, 2])
    assert got == parent
