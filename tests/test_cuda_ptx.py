"""Every CUDA kernel compiles to PTX for a real GPU (no GPU needed).

The simulator (tests/cuda) runs kernels as Python, so it checks neither numba's typing
nor code generation. Here each kernel goes through numba-cuda's full compiler for
compute capability 8.0 with the argument types the wrappers pass, and float32 kernels
must not contain float64 instructions (an accidental NumPy-2-style widening) except
where float64 is meant (batch-norm statistics).

Needs NVIDIA's numba-cuda and the CUDA compiler libraries (NVVM, NVRTC: e.g.
``pip install "cuda-toolkit[nvrtc,nvvm,cccl,cudart]==13.*"`` and their lib directory on
LD_LIBRARY_PATH); skips otherwise, and under the simulator.
"""

import types as pytypes

import pytest

numba = pytest.importorskip("numba")


def _compiler():
    """numba.cuda with compile_ptx usable, or skip."""
    try:
        from numba import cuda
    except Exception as exc:  # pragma: no cover - depends on the install
        pytest.skip(f"numba.cuda not importable: {exc}")
    from fastconv.cuda import _device

    if _device.simulated():
        pytest.skip("the CUDA simulator is on (run in a process of its own)")
    if "numba_cuda" not in getattr(cuda, "__file__", ""):
        pytest.skip("needs NVIDIA's numba-cuda (pip install numba-cuda)")

    def probe(a):
        a[0] = 1.0

    try:
        cuda.compile_ptx(probe, (numba.float32[::1],), cc=(8, 0))
    except Exception as exc:
        pytest.skip(f"no CUDA compiler libraries (NVVM/NVRTC): {type(exc).__name__}: "
                    f"{str(exc)[:200]}")
    return cuda


def _kernels(dtype_name):
    from numba import types

    from fastconv.cuda import _conv_kernels as C
    from fastconv.cuda import _gemm, _layout, _reduce
    from fastconv.cuda import _norm_kernels as N
    from fastconv.cuda import _pool_kernels as P

    f = getattr(numba, dtype_name)
    i = types.int64
    f64 = numba.float64
    a6, a5 = f[:, :, :, :, :, ::1], f[:, :, :, :, ::1]
    a4, a3, a2, a1 = f[:, :, :, ::1], f[:, :, ::1], f[:, ::1], f[::1]
    d1 = f64[::1]
    i3, i2 = types.int64[:, :, ::1], types.int64[:, ::1]
    # (kernel, argument types, float64 arithmetic meant)
    return [
        (C._im2col, (a4, a2) + (i,) * 11, False),
        (C._col2im, (a6, a6, a4) + (i,) * 12, False),
        (C._cnhw_to_y, (a2, a1, i, a3, i), False),
        (C._y_to_cnhw, (a3, a2, i), False),
        (C._conv_direct, (a4, a4, a1, i, a4) + (i,) * 7, False),
        (C._conv_direct_grad_x, (a5, a5, a4) + (i,) * 12, False),
        (C._conv_direct_grad_w, (a4, a4, a4) + (i,) * 7, False),
        (_layout._permute4, (f[:, :, :, :], a4, i, i, i, i), False),
        (_layout._permute4, (types.int64[:, :, :, :], types.int64[:, :, :, ::1], i, i, i, i),
         False),
        (_layout._copy3, (f[:, :, :], a3), False),
        (_layout._copy1, (f[:], a1), False),
        (_layout._fill, (a1, f), False),
        (_gemm.gemm_kernel(dtype_name, 16), (a3, a3, a3, i, i, i, i), False),
        (_reduce.channel_sum_kernel(dtype_name, 256), (a3, a1), False),
        (P._max_pool, (a3, a3, i3) + (i,) * 8, False),
        (P._max_unpool, (a2, i2, a2), False),
        (P._avg_pool, (a3, a3) + (i,) * 6 + (types.boolean,), False),
        (P._avg_unpool, (a3, a3) + (i,) * 6 + (types.boolean,), False),
        (N.stats_kernel(256), (a3, f64, d1, d1, d1), True),
        (N.grad_sums_kernel(256), (a3, a3, d1, d1, d1), True),
        (N._bn_running_update, (d1, d1, i, f64, f[:], f[:]), True),
        (N._bn_eval_stats, (f[:], f[:], f64, d1, d1), True),
        (N._bn_apply, (a3, d1, d1, a1, i, a1, i, a3), True),
        (N._bn_grad_apply, (a3, a3, d1, d1, a1, i, i, d1, d1, a3), True),
        (N._bn_grad_params, (d1, d1, d1, a1, a1), True),
    ]


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_kernels_compile_to_ptx(dtype_name, monkeypatch):
    cuda = _compiler()
    import numba.cuda.dispatcher as dispatcher

    # Device functions are compiled for the current GPU; there is none, so name one.
    monkeypatch.setattr(dispatcher, "get_current_device",
                        lambda: pytypes.SimpleNamespace(compute_capability=(8, 0)))
    failures = []
    for kernel, sig, f64_meant in _kernels(dtype_name):
        name = kernel.py_func.__name__
        try:
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(8, 0))
        except Exception as exc:
            failures.append(f"{name}: {type(exc).__name__}: {str(exc)[:500]}")
            continue
        if dtype_name == "float32" and not f64_meant and ".f64" in ptx:
            failures.append(f"{name}: float64 instructions in a float32 kernel")
    assert not failures, "\n".join(failures)
