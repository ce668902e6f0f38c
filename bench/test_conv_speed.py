"""conv2d forward per algorithm on every shape of the suite, seeded, beside torch.

The direct ("naive") algorithm runs on one image (it is far slower); compare per image.
"""

import numpy as np
import pytest

import fastconv
from fastconv.tools.bench import engine

ALGOS = ["naive", "im2col", "fft", "winograd", "auto"]


@pytest.fixture
def arrays(shape):
    return shape.arrays(np.float32, seed=0)


def _rounds(shape, algo):
    # keep slow combinations short: about a second each
    return 1 if algo in ("naive", "fft") and shape.flops() > 2e8 else 5


@pytest.mark.parametrize("algo", ALGOS)
def test_forward(benchmark, shape, algo, arrays):
    x, w = arrays
    if not engine.applies(algo, shape.args(np.float32)):
        pytest.skip(f"{algo} does not apply to this layer (winograd: 3x3, stride 1)")
    if algo == "naive":
        x = x[:1]
    benchmark.group = shape.name
    benchmark.extra_info.update(images=int(x.shape[0]), flops=shape.flops() * x.shape[0]
                                // shape.n)
    y = benchmark.pedantic(fastconv.conv2d, args=(x, w), kwargs=dict(algo=algo,
                                                                         **shape.kwargs()),
                           rounds=_rounds(shape, algo), warmup_rounds=1)
    assert y.shape[0] == x.shape[0]


def test_torch(benchmark, shape, arrays):
    torch = pytest.importorskip("torch")
    x, w = (torch.from_numpy(a) for a in arrays)
    benchmark.group = shape.name

    def run():
        with torch.inference_mode():
            return torch.nn.functional.conv2d(x, w, **shape.kwargs())

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)


def test_sgemm_of_the_im2col_tile(benchmark, shape):
    m, k, n, count = engine.im2col_gemm(shape)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    out = np.empty((m, n), np.float32)
    benchmark.group = shape.name
    benchmark.extra_info.update(m=m, k=k, n=n, tiles=count)
    benchmark.pedantic(np.matmul, args=(a, b), kwargs=dict(out=out), rounds=5,
                       warmup_rounds=1)
