"""fastconv.dask: results on a 2-process dask.distributed cluster equal the in-memory ones.

One LocalCluster (2 worker processes, 1 thread each) serves the whole module. The index
arithmetic of the halo blocks is also checked exhaustively on its own, without dask.
"""

import itertools
import os
import types

import numpy as np
import pytest

import fastconv

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
fcd = pytest.importorskip("fastconv.dask")

from dask.task_spec import DataNode  # noqa: E402

from fastconv.dask._geometry import Axis, chunk_pieces  # noqa: E402

from . import reference as ref  # noqa: E402
from .conftest import WINOGRAD_REFUSAL, refused, to_nhwc  # noqa: E402


@pytest.fixture(scope="module")
def client():
    # distributed's nannies set OMP_NUM_THREADS=1 etc. in this process before spawning
    # workers; the environment is restored for the tests that run after this module.
    saved = dict(os.environ)
    with fcd.local_cluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster:
        with distributed.Client(cluster) as c:
            yield c
    os.environ.clear()
    os.environ.update(saved)


def nhwc_chunks(chunks):
    """NCHW chunks -> NHWC chunks."""
    n, c, h, w = chunks
    return (n, h, w, c)


# ------------------------------------------------------------------ index arithmetic
def _chunkings(n):
    yield (n,)
    yield (1,) * n
    yield (n // 2, n - n // 2)
    yield (1, n - 1)
    yield tuple(3 for _ in range(n // 3)) + ((n % 3,) if n % 3 else ())


@pytest.mark.parametrize("ceil_mode", [False, True])
def test_axis_blocks_read_the_same_rows_as_the_whole_axis(ceil_mode):
    """For every output row a block keeps, its window in the slice covers the same input
    rows as in the whole axis, real rows are inside the slice and padding is padding."""
    checked = 0
    for n, k, s, r, p_lo, p_hi in itertools.product(range(1, 11), (1, 2, 3), (1, 2, 3),
                                                     (1, 2), (0, 1, 2), (0, 1, 2)):
        if r * (k - 1) + 1 > n + p_lo + p_hi or (ceil_mode and p_lo != p_hi):
            continue  # ceil_mode comes with pooling's symmetric padding
        axis = Axis(n, k, s, r, (p_lo, p_hi), ceil_mode)
        for chunks in set(_chunkings(n)):
            blocks = axis.output_chunks(chunks)
            assert sum(blocks) == axis.out and min(blocks) > 0
            i0 = 0
            for size in blocks:
                a, b, j0 = axis.span(i0, i0 + size)
                assert 0 <= a < b <= n and a % s == 0 and j0 >= 0
                local = Axis(b - a, k, s, r, (p_lo, p_hi), ceil_mode)
                assert local.out >= j0 + size
                for i in range(i0, i0 + size):
                    g0 = i * s - p_lo                 # window start, whole axis
                    l0 = (i - i0 + j0) * s - p_lo     # window start, in the slice
                    assert l0 + a == g0
                    for q in range(k):
                        assert (0 <= g0 + r * q < n) == (0 <= l0 + r * q < b - a)
                    if r == 1:  # avg pooling's clipped window end (torch's divisor rule)
                        assert min(g0 + k, n + p_hi) - a == min(l0 + k, b - a + p_hi)
                    checked += 1
                i0 += size
    assert checked > 5000


def test_chunk_pieces_cover_a_range_in_order():
    chunks = (3, 0, 4, 1, 5)
    for a in range(13):
        for b in range(a + 1, 14):
            pieces = chunk_pieces(chunks, a, b)
            starts = np.cumsum((0,) + chunks)
            rows = [int(starts[i]) + r for i, lo, hi in pieces for r in range(lo, hi)]
            assert rows == list(range(a, b))


def test_output_chunks_follow_input_chunks():
    # stride 2, padding 1: input boundary B -> output boundary ceil((B + 1) / 2)
    axis = Axis(15, 3, 2, 1, (1, 1))
    assert axis.out == 8
    assert axis.output_chunks((5, 4, 6)) == (3, 2, 3)
    assert axis.output_chunks((15,)) == (8,)
    assert axis.span(3, 5) == (4, 10, 1)   # rows 5..9 needed; the slice starts on the grid


# --------------------------------------------------------------------------- conv2d
# (n, c_in, h, w, c_out, kh, kw, stride, padding, dilation, groups, (h chunks, w chunks))
CONV_CASES = [
    (2, 3, 13, 11, 4, 3, 3, 1, 1, 1, 1, ((4, 5, 4), (3, 8))),
    (2, 3, 15, 14, 4, 3, 3, 2, 1, 1, 1, ((5, 4, 6), (7, 7))),          # cuts off the grid
    (1, 2, 17, 16, 3, 3, 2, 3, 0, 2, 1, ((2, 7, 8), (5, 5, 6))),       # stride 3, dilation 2
    (2, 4, 12, 13, 4, 3, 3, (1, 2), ((2, 0), (1, 3)), (2, 1), 2, ((6, 6), (4, 4, 5))),
    (1, 3, 11, 12, 2, 4, 4, 1, "same", 1, 1, ((3, 3, 5), (1, 11))),    # even kernel, 1-wide
    (1, 2, 9, 9, 2, 5, 5, 2, 2, 1, 1, ((2, 2, 2, 3), (9,))),           # kernel > chunks
]
IDS = [f"case{i}" for i in range(len(CONV_CASES))]


def _problem(case, dtype, layout, rng):
    n, c, h, w, d, kh, kw, stride, padding, dilation, groups, (ch, cw) = case
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((d, c // groups, kh, kw)).astype(dtype)
    b = rng.standard_normal(d).astype(dtype)
    chunks = (1, c, ch, cw)
    if layout == "NHWC":
        x, wt = to_nhwc(x, wt)
        chunks = nhwc_chunks(chunks)
    return da.from_array(x, chunks=chunks), x, wt, b, dict(
        stride=stride, padding=padding, dilation=dilation, groups=groups, layout=layout)


@pytest.mark.parametrize("dtype,layout", [(np.float32, "NCHW"), (np.float64, "NHWC")])
@pytest.mark.parametrize("algo", fastconv.ALGORITHMS)
@pytest.mark.parametrize("case", CONV_CASES, ids=IDS)
def test_conv2d_spatial_chunks_equal_in_memory(client, rng, case, algo, dtype, layout):
    xd, x, w, b, kw = _problem(case, dtype, layout, rng)
    if refused(algo, x.shape, w.shape, **kw):
        with pytest.raises(ValueError, match=WINOGRAD_REFUSAL):
            fcd.conv2d(xd, w, b, **kw, algo=algo)
        return
    y = fcd.conv2d(xd, w, b, **kw, algo=algo)
    want = fastconv.conv2d(x, w, b, **kw, algo=algo)
    got = y.compute()
    assert got.shape == want.shape == y.shape and got.dtype == want.dtype
    assert got.flags.c_contiguous or got.size == 0
    if algo == "naive":
        np.testing.assert_array_equal(got, want)  # same loops on the same numbers
    else:  # BLAS and FFT sizes follow the block: equal to rounding
        assert ref.rel_error(got, want) <= ref.tolerance(dtype, algo) / 10


def test_conv2d_matches_reference_through_the_cluster(client, rng):
    case = CONV_CASES[3]
    xd, x, w, b, kw = _problem(case, np.float64, "NCHW", rng)
    want = ref.conv2d(x, w, b, (1, 2), ((2, 0), (1, 3)), (2, 1), groups=2)
    got = fcd.conv2d(xd, w, b, **kw).compute()
    assert ref.rel_error(got, want) <= 1e-10


def test_conv2d_auto_resolves_once_like_in_memory(client, rng):
    # depthwise: "auto" picks the direct algorithm, for the whole problem and every block
    x = rng.standard_normal((2, 4, 10, 10)).astype(np.float32)
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    xd = da.from_array(x, chunks=(1, 4, (5, 5), (3, 7)))
    got = fcd.conv2d(xd, w, None, 1, "same", 2, 4).compute()
    np.testing.assert_array_equal(got, fastconv.conv2d(x, w, None, 1, "same", 2, 4))


def test_conv2d_auto_keeps_the_fft_safeguard_per_block(rng):
    """"auto" means the same in every block as in memory: here it plans FFT, whose
    result is ruined by huge values that no window reads (odd rows of 1e30 under a
    stride-2, dilation-2 kernel), and the policy recomputes it exactly in each block."""
    x = rng.standard_normal((2, 1, 384, 384)).astype(np.float32)
    x[:, :, 1::2, :] = 1e30
    w = rng.standard_normal((1, 1, 31, 31)).astype(np.float32)
    kw = dict(stride=2, dilation=2)
    assert fastconv.choose_algorithm(x.shape, w.shape, **kw) == "fft"
    want = ref.conv2d(x, w, None, (2, 2), ((0, 0), (0, 0)), (2, 2))
    in_memory = fastconv.conv2d(x, w, **kw)
    assert ref.rel_error(in_memory, want) <= 1e-5
    xd = da.from_array(x, chunks=(1, 1, 192, 384))
    got = fcd.conv2d(xd, w, **kw).compute(scheduler="sync")
    assert ref.rel_error(got, want) <= 1e-5


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_conv2d_batch_chunks_map_block_by_block(client, rng, layout):
    x = rng.standard_normal((5, 3, 8, 9)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    chunks = (2, 3, 8, 9)
    if layout == "NHWC":
        x, w = to_nhwc(x, w)
        chunks = nhwc_chunks(chunks)
    y = fcd.conv2d(da.from_array(x, chunks=chunks), w, padding=1, layout=layout,
                   algo="naive")
    assert y.numblocks == (3, 1, 1, 1)
    assert y.chunks[0] == (2, 2, 1)
    # one conv task per batch chunk, reading exactly its input chunk
    np.testing.assert_array_equal(y.compute(),
                                  fastconv.conv2d(x, w, padding=1, layout=layout, algo="naive"))


def test_conv2d_merges_channel_chunks(client, rng):
    x = rng.standard_normal((2, 5, 7, 7))
    w = rng.standard_normal((3, 5, 3, 3))
    y = fcd.conv2d(da.from_array(x, chunks=(1, (2, 3), 4, 7)), w, algo="naive")
    assert y.chunks[1] == (3,)
    np.testing.assert_array_equal(y.compute(), fastconv.conv2d(x, w, algo="naive"))


def test_conv2d_unbatched_input(client, rng):
    x = rng.standard_normal((3, 10, 9))
    w = rng.standard_normal((2, 3, 3, 3))
    y = fcd.conv2d(da.from_array(x, chunks=(3, 4, 5)), w, stride=2, padding=1, algo="naive")
    assert y.ndim == 3
    np.testing.assert_array_equal(y.compute(),
                                  fastconv.conv2d(x, w, stride=2, padding=1, algo="naive"))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("w_shape", [(3, 3), "four-d"])
def test_conv2d_gray_image(rng, layout, w_shape):
    """A 2-D (H, W) image, chunked over rows and columns, as the in-memory conv2d: a 2-D
    weight gives a 2-D result, a 4-D one C_out channels of one unbatched image."""
    x = rng.standard_normal((11, 13))
    if w_shape == "four-d":
        w_shape = (2, 1, 3, 3) if layout == "NCHW" else (3, 3, 1, 2)
    w = rng.standard_normal(w_shape)
    y = fcd.conv2d(da.from_array(x, chunks=(5, 6)), w, padding=1, layout=layout,
                   algo="naive")
    want = fastconv.conv2d(x, w, padding=1, layout=layout, algo="naive")
    assert y.shape == want.shape and want.ndim == (2 if len(w_shape) == 2 else 3)
    np.testing.assert_array_equal(y.compute(scheduler="sync"), want)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_pooling_gray_image(rng, layout):
    x = rng.standard_normal((11, 13))
    xd = da.from_array(x, chunks=(5, 6))
    y, idx = fcd.max_pool2d(xd, 3, 2, padding=1, layout=layout, return_indices=True)
    want, want_idx = fastconv.max_pool2d(x, 3, 2, padding=1, layout=layout,
                                         return_indices=True)
    assert y.shape == want.shape == (6, 7)
    np.testing.assert_array_equal(y.compute(scheduler="sync"), want)
    np.testing.assert_array_equal(idx.compute(scheduler="sync"), want_idx)
    avg = fcd.avg_pool2d(xd, 2, layout=layout).compute(scheduler="sync")
    np.testing.assert_allclose(avg, fastconv.avg_pool2d(x, 2, layout=layout), rtol=1e-12)


def test_conv2d_graph_is_lazy(monkeypatch, rng):
    """Building the graph neither loads the input nor calls the kernel; computing does."""
    import dask

    from fastconv import conv

    loads, convs = [], []
    x = rng.standard_normal((2, 2, 9, 9))
    w = rng.standard_normal((2, 2, 3, 3))

    def load():
        loads.append(1)
        return x

    real = conv.conv2d
    into = conv.forward_into
    monkeypatch.setattr(conv, "forward_into", lambda *a, **k: convs.append(1) or into(*a, **k))
    xd = da.from_delayed(dask.delayed(load)(), x.shape, x.dtype).rechunk((1, 2, 5, 4))
    y = fcd.conv2d(xd, w, padding=1, algo="naive")
    assert loads == [] and convs == []
    got = y.compute(scheduler="sync")
    assert y.numblocks == (2, 1, 2, 2)   # column chunks (4, 4, 1) -> output blocks (5, 4)
    assert len(loads) == 1 and len(convs) == 2 * 2 * 2   # one call per output block
    np.testing.assert_array_equal(got, real(x, w, padding=1, algo="naive"))


def test_conv2d_weights_sit_once_in_the_graph(rng):
    x = rng.standard_normal((4, 2, 12, 12))
    w = rng.standard_normal((3, 2, 3, 3))
    b = rng.standard_normal(3)
    y = fcd.conv2d(da.from_array(x, chunks=(1, 2, 4, 6)), w, b, padding=1)
    graph = dict(y.__dask_graph__())
    holders = [k for k, v in graph.items() if isinstance(v, DataNode) and v.value is w]
    assert len(holders) == 1
    blocks = [k for k in graph if isinstance(k, tuple) and k[0] == y.name]
    assert len(blocks) == 4 * 3 * 2
    assert all(holders[0] in graph[k].dependencies for k in blocks)


def test_conv2d_errors():
    x = da.zeros((2, 4, 8, 8), chunks=(1, 4, 4, 4))
    w = np.zeros((2, 4, 3, 3))
    with pytest.raises(TypeError, match="conv2d: input must be a dask.array.Array, got ndarray"):
        fcd.conv2d(np.zeros((2, 4, 8, 8)), w)
    with pytest.raises(TypeError, match="conv2d: input has dtype int64; accepted dtypes"):
        fcd.conv2d(da.zeros((2, 4, 8, 8), dtype=np.int64), w)
    with pytest.raises(TypeError, match="conv2d: weight must be a numpy.ndarray"):
        fcd.conv2d(x, da.from_array(w))
    with pytest.raises(TypeError, match="conv2d: inputs must share one dtype"):
        fcd.conv2d(x, w.astype(np.float32))
    with pytest.raises(ValueError, match="conv2d: groups=3 must divide C_in=4"):
        fcd.conv2d(x, np.zeros((3, 1, 3, 3)), groups=3)
    with pytest.raises(ValueError, match=r"conv2d: bias must have shape \(C_out,\) = \(2,\)"):
        fcd.conv2d(x, w, np.zeros(3))
    with pytest.raises(ValueError, match="conv2d: algo='fast' is not known"):
        fcd.conv2d(x, w, algo="fast")
    with pytest.raises(ValueError, match="conv2d: kernel height 9 .* larger than the padded"):
        fcd.conv2d(x, w, dilation=4)
    unknown = x[x[:, 0, 0, 0] > 0]
    with pytest.raises(ValueError, match="conv2d: input has unknown chunk sizes"):
        fcd.conv2d(unknown, w)


# -------------------------------------------------------------------------- pooling
POOL_CASES = [  # kernel, stride, padding, dilation, ceil_mode, (h chunks, w chunks)
    (2, None, 0, 1, False, ((5, 4, 6), (7, 8))),
    (3, 2, 1, 1, True, ((5, 4, 6), (1, 14))),
    (3, 1, 1, 2, False, ((2, 13), (6, 3, 6))),
    (4, 3, 2, 1, True, ((7, 8), (5, 5, 5))),
]


def _torch_pool_module():
    """A stand-in for fastconv.pool with torch's pooling (same contract)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional

    def run(fn, x, layout, *args):
        t = torch.from_numpy(np.ascontiguousarray(x))
        t = t.permute(0, 3, 1, 2) if layout == "NHWC" else t
        out = fn(t, *args)
        outs = out if isinstance(out, tuple) else (out,)
        outs = tuple((o.permute(0, 2, 3, 1) if layout == "NHWC" else o).numpy() for o in outs)
        return outs if isinstance(out, tuple) else outs[0]

    def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *,
                   layout="NCHW", return_indices=False):
        return run(F.max_pool2d, x, layout, kernel_size, stride, padding, dilation, ceil_mode,
                   return_indices)

    def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                   count_include_pad=True, *, layout="NCHW"):
        return run(F.avg_pool2d, x, layout, kernel_size, stride, padding, ceil_mode,
                   count_include_pad)

    return types.SimpleNamespace(max_pool2d=max_pool2d, avg_pool2d=avg_pool2d)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("case", POOL_CASES)
def test_pooling_halo_blocks_against_torch(monkeypatch, rng, case, layout):
    """The block arithmetic of the pooling ops, with torch's pooling as the in-memory op
    (in-process scheduler, so the blocks call the stand-in)."""
    pool = _torch_pool_module()
    monkeypatch.setattr(fastconv.pool, "max_pool2d", pool.max_pool2d)
    monkeypatch.setattr(fastconv.pool, "avg_pool2d", pool.avg_pool2d)
    k, s, p, r, ceil_mode, (ch, cw) = case
    x = rng.standard_normal((2, 3, 15, 15))
    chunks = (1, (2, 1), ch, cw)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        chunks = nhwc_chunks(chunks)
    xd = da.from_array(x, chunks=chunks)
    y, idx = fcd.max_pool2d(xd, k, s, p, r, ceil_mode, layout=layout, return_indices=True)
    y, idx = da.compute(y, idx, scheduler="sync")
    want, want_idx = pool.max_pool2d(x, k, s, p, r, ceil_mode, layout=layout,
                                     return_indices=True)
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(idx, want_idx)
    assert idx.dtype == np.int64
    if r == 1:
        for include in (True, False):
            got = fcd.avg_pool2d(xd, k, s, p, ceil_mode, include, layout=layout)
            np.testing.assert_array_equal(
                got.compute(scheduler="sync"),
                pool.avg_pool2d(x, k, s, p, ceil_mode, include, layout=layout))


@pytest.mark.parametrize("case", POOL_CASES)
def test_pooling_on_the_cluster_equals_in_memory(client, rng, case):
    pool = fastconv.pool
    k, s, p, r, ceil_mode, (ch, cw) = case
    x = rng.standard_normal((2, 3, 15, 15)).astype(np.float32)
    xd = da.from_array(x, chunks=(1, (2, 1), ch, cw))
    y, idx = fcd.max_pool2d(xd, k, s, p, r, ceil_mode, return_indices=True)
    y, idx = da.compute(y, idx)
    want, want_idx = pool.max_pool2d(x, k, s, p, r, ceil_mode, return_indices=True)
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(idx, want_idx)
    if r == 1:
        np.testing.assert_array_equal(fcd.avg_pool2d(xd, k, s, p, ceil_mode, False).compute(),
                                      pool.avg_pool2d(x, k, s, p, ceil_mode, False))


def test_pooling_errors():
    x = da.zeros((1, 2, 8, 8), chunks=(1, 1, 4, 4))
    with pytest.raises(ValueError, match="max_pool2d: padding=3 must be at most half the "
                                         "kernel size 4"):
        fcd.max_pool2d(x, 4, padding=3)
    with pytest.raises(ValueError, match="avg_pool2d: output size 0x4 is too small: input "
                                         "8x8, kernel 9x2"):
        fcd.avg_pool2d(x, (9, 2))
    with pytest.raises(ValueError, match="max_pool2d: stride=0 must be positive"):
        fcd.max_pool2d(x, 2, 0)
    with pytest.raises(ValueError, match="max_pool2d: layout='NWHC' is not supported"):
        fcd.max_pool2d(x, 2, layout="NWHC")
    with pytest.raises(TypeError, match="avg_pool2d: input must be a dask.array.Array"):
        fcd.avg_pool2d(np.zeros((1, 2, 8, 8)), 2)
    with pytest.raises(ValueError, match="max_pool2d: input must be 4-D .* got 1-D"):
        fcd.max_pool2d(da.zeros(8), 2)


# --------------------------------------------------------------------------- workers
def test_worker_env_splits_the_cores():
    env = fcd.worker_env(4, 2, cores=16)
    assert env["NUMBA_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "2"
    assert env["OMP_NUM_THREADS"] == env["FASTCONV_FFT_WORKERS"] == "2"
    assert fcd.worker_env(4, 1, cores=2)["NUMBA_NUM_THREADS"] == "1"
    with pytest.raises(ValueError, match="worker_env: n_workers=0 must be a positive int"):
        fcd.worker_env(0)


def _worker_threads():
    import numba
    import threadpoolctl

    import fastconv  # noqa: F401  (as a task would)

    blas = {d["num_threads"] for d in threadpoolctl.threadpool_info() if d["user_api"] == "blas"}
    return numba.config.NUMBA_NUM_THREADS, blas, os.environ.get("NUMBA_CACHE_DIR")


def test_local_cluster_workers_share_the_cores(client):
    share = max(1, (os.cpu_count() or 1) // 2)
    cache = os.environ.get("NUMBA_CACHE_DIR")
    info = client.run(_worker_threads)
    assert len(info) == 2
    for numba_threads, blas, cache_dir in info.values():
        assert numba_threads == share
        assert blas == {share}
        assert cache_dir == (os.path.abspath(cache) if cache else None)


# --------------------------------------------------------------------------- predict
CALLS = []  # (training flag, batch size) of every forward of _Pooler, shared by its copies


class _Pooler:
    """A stand-in Module: the mean of each channel, doubled in evaluation mode."""

    def __init__(self):
        self.training = True

    def eval(self):
        self.training = False
        return self

    def __call__(self, x):
        CALLS.append((self.training, x.shape[0]))
        scale = 1.0 if self.training else 2.0
        return fastconv.Tensor(x.data.mean(axis=(2, 3)) * scale)


def _tiny_cnn():
    nn = fastconv.nn
    fastconv.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 3))
    # a training-mode pass moves the running statistics away from (0, 1), so evaluation
    # mode is visible in the output
    batch = np.random.default_rng(2).standard_normal((8, 2, 8, 8)).astype(np.float32)
    with fastconv.no_grad():
        model(fastconv.Tensor(3 * batch + 1))
    return model


def test_predict_on_the_cluster_equals_an_eval_forward(client, rng):
    model = _tiny_cnn()
    x = rng.standard_normal((7, 2, 8, 8)).astype(np.float32)
    y = fcd.predict(model, da.from_array(x, chunks=(4, 2, 4, 8)), batch_chunk=3)
    assert y.chunks == ((3, 3, 1), (3,))
    assert model.training  # the caller's model is left as it was
    got = y.compute()
    model.eval()
    with fastconv.no_grad():
        want = model(fastconv.Tensor(x)).data
    assert got.dtype == want.dtype and got.shape == (7, 3)
    assert ref.rel_error(got, want) <= 1e-4


def test_predict_is_lazy_and_ships_the_model_once(rng):
    x = rng.standard_normal((5, 2, 3, 3))
    model = _Pooler()
    CALLS.clear()
    y = fcd.predict(model, da.from_array(x, chunks=(2, 2, 3, 3)), output_shape=(2,))
    assert CALLS == [] and model.training
    graph = dict(y.__dask_graph__())
    holders = [k for k, v in graph.items() if isinstance(v, DataNode)
               and isinstance(v.value, _Pooler)]
    blocks = [k for k in graph if isinstance(k, tuple) and k[0] == y.name]
    assert len(holders) == 1 and len(blocks) == 3
    assert all(holders[0] in graph[k].dependencies for k in blocks)
    got = y.compute(scheduler="sync")
    assert sorted(CALLS) == [(False, 1), (False, 2), (False, 2)]   # eval mode, per chunk
    np.testing.assert_allclose(got, 2 * x.mean(axis=(2, 3)), rtol=1e-12)


def test_predict_probes_the_output_shape_once(rng):
    CALLS.clear()
    y = fcd.predict(_Pooler(), da.from_array(rng.standard_normal((4, 3, 2, 2)), chunks=2))
    assert CALLS == [(False, 1)]    # one zero image, to learn the output shape
    assert y.shape == (4, 3) and y.chunks == ((2, 2), (3,)) and y.dtype == np.float64


def test_predict_errors():
    x = da.zeros((4, 1, 2, 2), chunks=2)
    with pytest.raises(TypeError, match="predict: model must be a fastconv.nn.Module"):
        fcd.predict(object(), x)
    with pytest.raises(ValueError, match="predict: batch_chunk=0 must be a positive int"):
        fcd.predict(_Pooler(), x, batch_chunk=0)
    with pytest.raises(TypeError, match="predict: images must be a dask.array.Array"):
        fcd.predict(_Pooler(), np.zeros((4, 1, 2, 2)))


def test_local_cluster_one_worker_gets_all_cores():
    # one process: numba and BLAS threads = all cores (distributed alone would cap BLAS at 1)
    cores = os.cpu_count() or 1
    saved = dict(os.environ)
    try:
        with fcd.local_cluster(n_workers=1, dashboard_address=":0") as cluster:
            with distributed.Client(cluster) as c:
                ((numba_threads, blas, _),) = c.run(_worker_threads).values()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert numba_threads == cores and blas == {cores}
