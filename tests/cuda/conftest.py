"""CUDA kernels under numba's CUDA simulator (tiny shapes: it runs every GPU thread as a
Python thread).

Run in a process of their own: ``NUMBA_ENABLE_CUDASIM=1 pytest tests/cuda`` (the
Makefile's ``test`` target does). The simulator is chosen when numba is first imported,
so this file turns it on only if numba is not loaded yet; on a machine with a GPU,
``NUMBA_ENABLE_CUDASIM=0 pytest tests/cuda`` runs the same tests on the hardware.
"""

import os
import sys

if "numba" not in sys.modules:
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import pytest  # noqa: E402

from fastconv import config  # noqa: E402
from fastconv.cuda import _device  # noqa: E402

UNAVAILABLE = _device.unavailable_reason()
SIMULATED = UNAVAILABLE is None and _device.simulated()

if UNAVAILABLE is not None:
    # numba was imported without the simulator (e.g. `pytest tests` in one process) and
    # there is no GPU: these tests belong to their own process (see above).
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(autouse=True, scope="session")
def _fast_simulator():
    """The simulator spends its time switching Python threads: switch often."""
    if not SIMULATED:
        yield
        return
    old = sys.getswitchinterval()
    sys.setswitchinterval(2e-5)
    yield
    sys.setswitchinterval(old)


@pytest.fixture(autouse=True)
def small_launches(monkeypatch):
    """Tiny blocks and grids in the simulator, so each thread loops (grid-stride) and the
    GEMMs and reductions see partial tiles; the hardware keeps the defaults. The blocked
    GEMM: 2 x 2 threads of 2 x 2 outputs (4 x 4 tiles), K in steps of 3."""
    if SIMULATED:
        from fastconv.cuda import _gemm

        monkeypatch.setattr(_gemm, "BLOCKED", (2, 2, 3))
        monkeypatch.setattr(config, "CUDA_BLOCK", 32)
        monkeypatch.setattr(config, "CUDA_MAX_BLOCKS", 4)
        monkeypatch.setattr(config, "CUDA_GEMM_TILE", 4)
        monkeypatch.setattr(config, "CUDA_REDUCE_THREADS", 8)


@pytest.fixture
def launches(monkeypatch):
    """The names of the kernels the convolution paths launch, in order: each kernel's
    function name, and the im2col GEMMs as "gemm" (forward), "gemm_t" (column gradient,
    A transposed) and "gemm_w" (weight gradient, B transposed)."""
    from fastconv.cuda import _conv, _conv3d, _im2col

    names = []
    real_launch, real_gemm = _conv.launch, _im2col.gemm

    def launch(kernel, *args):
        names.append(kernel.py_func.__code__.co_name)
        real_launch(kernel, *args)

    def gemm(*args, **kw):
        names.append("gemm_t" if kw.get("trans_a") else "gemm_w" if kw.get("trans_b")
                     else "gemm")
        real_gemm(*args, **kw)

    for module in (_conv, _conv3d, _im2col):
        monkeypatch.setattr(module, "launch", launch)
    monkeypatch.setattr(_im2col, "gemm", gemm)
    return names


def assert_layer_matches_cpu(make_layer, a):
    """``make_layer()`` moved to "cuda" gives the CPU's output and gradients of the input,
    weight and bias, for the input ``a`` and a fixed output gradient."""
    import numpy as np

    from fastconv import Tensor

    results = []
    for device in ("cpu", "cuda"):
        m = make_layer().to(device)
        x = Tensor(a, requires_grad=True).to(device)
        y = m(x)
        assert y.device == device
        g = np.linspace(-1, 1, int(np.prod(y.shape))).reshape(y.shape)
        y.backward(Tensor(g).to(device).data)
        results.append([Tensor(t).numpy() for t in (y.data, x.grad, m.weight.grad,
                                                    m.bias.grad)])
    for got, want in zip(results[1], results[0], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
