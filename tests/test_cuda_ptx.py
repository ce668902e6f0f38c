"""Every CUDA kernel of fastconv.cuda compiles to PTX for real GPUs (no GPU needed).

The simulator (tests/cuda) runs kernels as Python, so it checks neither numba's typing
nor code generation. Here each kernel goes through numba-cuda's full compiler (NVVM) for
compute capabilities 8.0 (A100) and 9.0 (H100/H200) in float32 (8.0 only in float64,
to keep the test at about 20 s of CPU) with the argument types the wrappers pass, and
float32 kernels must not contain float64 instructions (an accidental NumPy-2-style
widening) except where float64 is meant (batch-norm statistics).

The kernels are found in the package's source, not listed by hand: every function that
``@cuda.jit`` (without ``device=True``) decorates, or that ``cuda.jit(name)`` compiles,
in any module of fastconv/cuda. :func:`kernels` gives each its argument types; a kernel
found in the source but missing there (or there but gone from the source) fails the test.

Needs NVIDIA's numba-cuda and its compiler libraries (``pip install '.[cuda]'``, which
the test extra includes). Without them the test skips, unless FASTCONV_REQUIRE_PTX=1
(``make test`` sets it): then it fails. Runs in a process without the simulator.
"""

import ast
import os
import pathlib
import types as pytypes

import pytest

numba = pytest.importorskip("numba")

import fastconv.cuda  # noqa: E402

CCS = ((8, 0), (9, 0))
PACKAGE = pathlib.Path(fastconv.cuda.__file__).parent


def _skip_or_fail(reason):
    if os.environ.get("FASTCONV_REQUIRE_PTX") == "1":
        pytest.fail(f"FASTCONV_REQUIRE_PTX=1 but {reason}")
    pytest.skip(reason)


def _compiler():
    """numba.cuda with compile_ptx usable; else skip (fail with FASTCONV_REQUIRE_PTX=1)."""
    from fastconv.cuda import _device

    if _device.simulated():
        pytest.skip("the CUDA simulator is on (this test runs in a process of its own)")
    cuda, reason = _device._import_cuda()
    if cuda is None:
        _skip_or_fail(reason)

    def probe(a):
        a[0] = 1.0

    try:
        cuda.compile_ptx(probe, (numba.float32[::1],), cc=CCS[0])
    except Exception as exc:
        _skip_or_fail(f"the CUDA compiler libraries (NVVM) do not work: "
                      f"{type(exc).__name__}: {str(exc)[:300]}")
    return cuda


# ------------------------------------------------------------------- kernels in the source
def _is_cuda_jit(node) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "jit"
            and isinstance(node.value, ast.Name) and node.value.id == "cuda")


def _is_device(call: ast.Call) -> bool:
    return any(k.arg == "device" and isinstance(k.value, ast.Constant) and k.value.value
               for k in call.keywords)


def kernels_in_source() -> set[tuple[str, str]]:
    """(module file name, function name) of every kernel defined in fastconv/cuda."""
    found = set()
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                for dec in node.decorator_list:
                    if _is_cuda_jit(dec) or (isinstance(dec, ast.Call) and _is_cuda_jit(dec.func)
                                             and not _is_device(dec)):
                        found.add((path.name, node.name))
            elif (isinstance(node, ast.Call) and _is_cuda_jit(node.func) and node.args
                  and isinstance(node.args[0], ast.Name) and not _is_device(node)):
                found.add((path.name, node.args[0].id))  # cuda.jit(fn): fn is a kernel
    return found


def _key(kernel) -> tuple[str, str]:
    code = kernel.py_func.__code__
    return pathlib.Path(code.co_filename).name, code.co_name


# ------------------------------------------------------------------- argument types
def kernels(dtype_name):
    """[(kernel, argument types, float64 arithmetic meant)] for one float dtype."""
    from numba import types

    from fastconv.cuda import _conv3d_kernels as C3
    from fastconv.cuda import _conv_kernels as C
    from fastconv.cuda import _elementwise as E
    from fastconv.cuda import _gemm, _global_pool, _layout, _reduce
    from fastconv.cuda import _norm_kernels as N
    from fastconv.cuda import _pool_kernels as P
    from fastconv.cuda import _transpose as T

    f = getattr(numba, dtype_name)
    i = types.int64
    b = types.boolean
    f64 = numba.float64
    a8 = f[:, :, :, :, :, :, :, ::1]
    a6, a5 = f[:, :, :, :, :, ::1], f[:, :, :, :, ::1]
    a4, a3, a2, a1 = f[:, :, :, ::1], f[:, :, ::1], f[:, ::1], f[::1]
    d1 = f64[::1]
    i3, i2, i1 = types.int64[:, :, ::1], types.int64[:, ::1], types.int64[::1]
    gemm_args = (a3, a3, a3, i, i, i, i)
    return [
        (C._im2col, (a4, a2) + (i,) * 11, False),
        (C._col2im, (a6, a6, a4) + (i,) * 12, False),
        (C._cnhw_to_y, (a2, a1, i, a3, i), False),
        (C._y_to_cnhw, (a3, a2, i), False),
        (C._conv_direct, (a4, a4, a1, i, a4) + (i,) * 7, False),
        (C._conv_direct_grad_x, (a5, a5, a4) + (i,) * 12, False),
        (C._conv_direct_grad_w, (a4, a4, a4) + (i,) * 7, False),
        (T._place, (a4, a1, i, a4), False),
        (C3._vol2col, (a5, a2) + (i,) * 16, False),
        (C3._col2vol, (a8, a8, a5) + (i,) * 17, False),
        (C3._conv3d_direct, (a5, a5, a1, i, a5) + (i,) * 10, False),
        (C3._conv3d_direct_grad_x, (a6, a6, a5) + (i,) * 17, False),
        (C3._conv3d_direct_grad_w, (a5, a5, a5) + (i,) * 10, False),
        (_layout._permute4, (f[:, :, :, :], a4, i, i, i, i), False),
        (_layout._permute4, (types.int64[:, :, :, :], types.int64[:, :, :, ::1], i, i, i, i),
         False),
        (_layout._copy3, (f[:, :, :], a3), False),
        (_layout._copy2, (f[:, :], a2), False),
        (_layout._copy5, (f[:, :, :, :, :], a5), False),
        (_layout._copy1, (f[:], a1), False),
        (_layout._fill, (a1, f), False),
        (_gemm.gemm_kernel(dtype_name, 16), gemm_args, False),
        (_gemm.blocked_gemm_kernel(dtype_name, 16, 4, 8), gemm_args, False),
        (_reduce.channel_sum_kernel(dtype_name, 256), (a3, a1), False),
        (P._max_pool, (a3, a3, i3) + (i,) * 8, False),
        (P._max_unpool, (a2, i2, a2), False),
        (P._avg_pool, (a3, a3) + (i,) * 6 + (b,), False),
        (P._avg_unpool, (a3, a3) + (i,) * 6 + (b,), False),
        (_global_pool.plane_mean_kernel(dtype_name, 256), (a2, a1), False),
        (_global_pool._spread, (a1, a2), False),
        (N.stats_kernel(256), (a3, f64, d1, d1, d1), True),
        (N.grad_sums_kernel(256), (a3, a3, d1, d1, d1), True),
        (N._bn_running_update, (d1, d1, i, f64, f[:], f[:]), True),
        (N._bn_eval_stats, (f[:], f[:], f64, d1, d1), True),
        (N._bn_apply, (a3, d1, d1, a1, i, a1, i, a3), True),
        (N._bn_grad_apply, (a3, a3, d1, d1, a1, i, i, d1, d1, a3), True),
        (N._bn_grad_params, (d1, d1, d1, a1, a1), True),
        (E._relu, (a1, a1), False),
        (E._relu_backward, (a1, a1, a1), False),
        (E._add, (a1, a1, a1), False),
        (E._sgd, (a1, a1, a1, f, f, f, f, i, i, i), False),
        (E._bias_rows, (a2, a1), False),
        (E._column_sum, (a2, a1), False),
        (E._log_softmax_nll, (a2, i1, a2, a1), False),
        (E.sum_kernel(dtype_name, 256), (a1, a1, f), False),
        (E._cross_entropy_grad, (a2, i1, a1, i, f, a2), False),
    ]


def test_every_kernel_in_the_source_has_argument_types():
    """The source scan finds the kernels (so the compile test below covers them all)."""
    found = kernels_in_source()
    assert ("_gemm.py", "_gemm") in found and ("_conv_kernels.py", "gather") in found
    assert ("_reduce.py", "_block_sum") not in found  # a device function
    listed = {_key(k) for k, _, _ in kernels("float32")}
    assert found - listed == set(), "kernels without argument types in kernels()"
    assert listed - found == set(), "kernels() lists kernels the source scan cannot see"


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_kernels_compile_to_ptx(dtype_name, monkeypatch):
    cuda = _compiler()
    import numba.cuda.dispatcher as dispatcher

    # Device functions are compiled for the current GPU; there is none, so name one.
    monkeypatch.setattr(dispatcher, "get_current_device",
                        lambda: pytypes.SimpleNamespace(compute_capability=CCS[0]))
    failures = []
    compiled = set()
    for kernel, sig, f64_meant in kernels(dtype_name):
        name = kernel.py_func.__name__
        for cc in CCS if dtype_name == "float32" else CCS[:1]:
            try:
                ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc)
            except Exception as exc:
                failures.append(f"{name} (sm_{cc[0]}{cc[1]}): {type(exc).__name__}: "
                                f"{str(exc)[:500]}")
                continue
            assert f".target sm_{cc[0]}{cc[1]}" in ptx
            if dtype_name == "float32" and not f64_meant and ".f64" in ptx:
                failures.append(f"{name}: float64 instructions in a float32 kernel")
        compiled.add(_key(kernel))
    assert not failures, "\n".join(failures)
    assert compiled == kernels_in_source()


def test_missing_compiler_fails_when_required(monkeypatch):
    monkeypatch.setenv("FASTCONV_REQUIRE_PTX", "1")
    with pytest.raises(pytest.fail.Exception, match="FASTCONV_REQUIRE_PTX=1 but no NVVM"):
        _skip_or_fail("no NVVM")
    monkeypatch.delenv("FASTCONV_REQUIRE_PTX")
    with pytest.raises(pytest.skip.Exception, match="no NVVM"):
        _skip_or_fail("no NVVM")


def test_blocked_gemm_keeps_its_tile_in_registers():
    """The register-blocked GEMM's 4 x 4 accumulators and operand rows stay in registers
    (no local memory), and its inner loop does 2 multiply-adds per shared-memory load
    (R*R = 16 per 2R = 8 loads); the tiled GEMM does one per 2 loads."""
    cuda = _compiler()
    from numba import types

    from fastconv.cuda import _gemm

    a3 = numba.float32[:, :, ::1]
    sig = (a3, a3, a3) + (types.int64,) * 4
    blocked, _ = cuda.compile_ptx(_gemm.blocked_gemm_kernel("float32", 16, 4, 8).py_func, sig,
                                  cc=CCS[0])
    tiled, _ = cuda.compile_ptx(_gemm.gemm_kernel("float32", 16).py_func, sig, cc=CCS[0])
    assert "st.local" not in blocked and "ld.local" not in blocked
    assert blocked.count("fma.rn.f32") >= 2 * blocked.count("ld.shared") > 0
    assert 2 * tiled.count("fma.rn.f32") <= tiled.count("ld.shared")
