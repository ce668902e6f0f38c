"""fastconv bench --device cuda: rows, table and the simulator refusal (tiny shapes)."""

import numpy as np
import pytest

from fastconv.tools.bench import Shape
from fastconv.tools.bench import cuda as bench

from .conftest import SIMULATED

TINY = (Shape("tiny", 2, 3, 6, 6, 4, 3, padding=1), Shape("tiny_s2", 1, 2, 7, 7, 3, 3, stride=2))


def test_rows_check_against_the_cpu():
    seen = []

    def progress(jobs):
        seen.extend(jobs)
        return jobs

    rows = bench.run_cuda_bench(TINY, progress, repeats=1)
    assert len(seen) == len(rows) == 4
    assert [(r["shape"], r["algo"]) for r in rows] == [
        ("tiny", "naive"), ("tiny", "im2col"), ("tiny_s2", "naive"), ("tiny_s2", "im2col")]
    for r in rows:
        assert r["ok"] and r["rel_error"] <= 1e-4
        assert r["seconds"] > 0 and np.isfinite(r["gflops"]) and r["gflops"] > 0
    table = bench.format_cuda_table(rows)
    assert table.count("\n") == 5 and "| tiny_s2 | cuda/im2col |" in table


@pytest.mark.skipif(not SIMULATED, reason="on a GPU the command runs (bench/gpu_check.sh)")
def test_cli_refuses_the_simulator(capsys):
    assert bench.cli_main(TINY) == 2
    assert "NUMBA_ENABLE_CUDASIM=1" in capsys.readouterr().err
