"""bench/gpu_check.sh and bench/gpu_check.py without a GPU: the script's syntax and steps,
the helper's arguments, its GEMM shapes and its report on made-up measurements."""

import json
import pathlib
import shutil
import subprocess

import pytest

from .conftest import ROOT, load_script

SCRIPT = ROOT / "bench" / "gpu_check.sh"


@pytest.fixture(scope="module")
def gc():
    return load_script("bench/gpu_check.py")


def test_script_is_valid_bash_and_runs_every_step():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    subprocess.run([bash, "-n", str(SCRIPT)], check=True)
    text = SCRIPT.read_text()
    assert "NUMBA_ENABLE_CUDASIM=0" in text
    for needle in ("step tests ", "tests/cuda", "step bench ", "bench --device cuda",
                   "step compare ", "gpu_check.py measure", "gpu_check.py report"):
        assert needle in text
    # the step limits leave the report inside 10 minutes
    limits = [int(line.split()[2]) for line in text.splitlines() if line.startswith("step ")]
    assert len(limits) == 3 and sum(limits) <= 570


def test_arguments(gc, capsys):
    a = gc.parse_args(["measure", "--out", "d"])
    assert (a.out, a.suite, a.repeats) == ("d", "quick", 10)
    assert gc.parse_args(["report", "--dir", "d"]).dir == "d"
    with pytest.raises(SystemExit):
        gc.parse_args(["measure", "--out", "d", "--repeats", "0"])
    assert "--repeats=0 must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gc.parse_args(["measure"])


def test_median_seconds_syncs_after_every_call(gc):
    calls = []
    secs = gc.median_seconds(lambda: calls.append("f"), lambda: calls.append("s"), 3)
    assert calls == ["f", "s"] * 4 and secs >= 0


def test_gemm_cases_are_the_gpu_im2col_products(gc):
    from fastconv.cuda import _device
    from fastconv.tools.bench.suites import Shape

    if _device._import_cuda()[0] is None:
        pytest.skip("numba-cuda is not installed")
    shapes = [Shape("a", 2, 3, 8, 8, 4, 3, padding=1), Shape("dw", 1, 4, 6, 6, 4, 3, groups=4)]
    assert gc.gemm_cases(shapes) == [("a", 4, 27, 2 * 8 * 8)]   # grouped layers left out


def _fake_run(d: pathlib.Path):
    compare = {
        "env": {"device": "NVIDIA H200", "compute_capability": "9.0"}, "suite": "quick",
        "repeats": 10, "peers": {"cupy": "skipped: ModuleNotFoundError: No module named "
                                          "'cupy'", "torch": "2.5.0"},
        "gemm": [{"layer": "cifar", "M": 32, "K": 288, "N": 16384,
                  "gflops": {"fastconv blocked": 1234.5, "fastconv tiled": 456.7,
                             "cuBLAS (cupy)": "skipped: ModuleNotFoundError: x",
                             "cuBLAS (torch)": 20000.0}}],
        "conv": [{"layer": "cifar", "gflops": {"cuDNN (torch)": 15000.0,
                                               "fastconv im2col": 900.25,
                                               "fastconv naive": 300.0},
                  "rel_error": {"fastconv im2col": 2e-7, "fastconv naive": 3e-7},
                  "error_vs_float64": {"cuDNN (torch)": 4e-7, "fastconv im2col": 5e-7,
                                       "fastconv naive": 6e-7}}],
    }
    (d / "compare.json").write_text(json.dumps(compare))
    (d / "cuda_results.md").write_text("| shape | algo |\n|---|---|\n| cifar | cuda/im2col |\n")
    for name, rc, last in (("tests", 0, "125 passed in 80.0s"), ("bench", 124, ""),
                           ("compare", 0, "")):
        (d / f"{name}.rc").write_text(f"{rc}\n")
        (d / f"{name}.log").write_text(f"noise\n{last}\n")


def test_report_on_made_up_numbers(gc, tmp_path):
    _fake_run(tmp_path)
    text = gc.report(str(tmp_path))
    assert text.startswith("# fastconv GPU check")
    assert "NVIDIA H200 (compute capability 9.0)" in text
    assert "- tests/cuda on the GPU (NUMBA_ENABLE_CUDASIM=0): passed: `125 passed in 80.0s`" \
        in text
    assert "fastconv bench --device cuda --suite quick: timed out" in text
    assert "| cifar | cuda/im2col |" in text
    assert ("| layer | M | K | N | fastconv blocked | fastconv tiled | cuBLAS (cupy) | "
            "cuBLAS (torch) |") in text
    assert "| cifar | 32 | 288 | 16384 | 1234.5 | 456.7 | skipped | 20000.0 |" in text
    assert "| cifar | 15000.0 | 900.2 | 300.0 |" in text
    assert "Largest relative error of fastconv against cuDNN: 3.0e-07." in text
    assert ("Largest relative error against the CPU in float64: cuDNN (torch) 4.0e-07, "
            "fastconv im2col 5.0e-07, fastconv naive 6.0e-07.") in text
    assert "- cupy: skipped: ModuleNotFoundError: No module named 'cupy'" in text


def test_report_without_measurements(gc, tmp_path):
    (tmp_path / "tests.rc").write_text("1\n")
    text = gc.report(str(tmp_path))
    assert "tests/cuda on the GPU (NUMBA_ENABLE_CUDASIM=0): failed (exit 1)" in text
    assert "GEMM and conv2d against cuBLAS and cuDNN: not run" in text
    assert "No comparison measurements" in text
