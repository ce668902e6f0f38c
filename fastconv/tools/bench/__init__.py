"""Benchmark API: time conv2d per algorithm on layer shapes, beside SGEMM, torch and scipy.

Used by ``fastconv bench``, the pytest-benchmark suite and scripts in bench/, and the
notebooks (``from fastconv.tools import bench``). The parts:

- :mod:`.suites`: the layer shapes (``Shape``) and suites of them, the algorithms timed;
- :mod:`.runner`: the CPU runs (``run``), the SGEMM reference, the machine (``environment``);
- :mod:`.load`: what other processes take from the CPU meanwhile, waits for an idle machine;
- :mod:`.report`: results, summary, markdown tables, results.json / results.md (``write``);
- :mod:`.plots`: the PNG plots;
- :mod:`.engine`: the engine internals the benchmark reads (what "auto" ran, im2col's GEMMs);
- :mod:`.cuda`: ``fastconv bench --device cuda``;
- :mod:`.dask`, :mod:`.train`, :mod:`.memory`, :mod:`.startup`, :mod:`.ops` (with the
  NumPy :mod:`.baselines`): the measurements behind the scripts in bench/ (imported on use).
"""

from __future__ import annotations

from .engine import im2col_gemm
from .load import LOAD_THRESHOLD, LoadMeter, wait_until_idle
from .plots import plot
from .report import (
    FOOTNOTE,
    Report,
    Result,
    format_header,
    format_overview,
    format_shapes,
    format_suite,
    format_summary,
    format_table,
    legend,
    relate,
    shape_fields,
    summarize,
    write,
)
from .runner import (
    MAX_REPEATS,
    MIN_MEASURE_SECONDS,
    environment,
    median_time,
    run,
    sgemm_gflops,
)
from .suites import (
    ALGOS,
    DEFAULT_SUITE,
    EXTRAS,
    HWIO_FROM_OIHW,
    KERNEL_SWEEP,
    NHWC_FROM_NCHW,
    QUICK_SUITE,
    SUITES,
    TINY_SUITE,
    Shape,
)

__all__ = [
    "ALGOS", "DEFAULT_SUITE", "EXTRAS", "FOOTNOTE", "HWIO_FROM_OIHW", "KERNEL_SWEEP",
    "LOAD_THRESHOLD", "MAX_REPEATS", "MIN_MEASURE_SECONDS", "NHWC_FROM_NCHW", "QUICK_SUITE",
    "SUITES", "TINY_SUITE", "LoadMeter", "Report", "Result", "Shape", "environment",
    "format_header", "format_overview", "format_shapes", "format_suite", "format_summary",
    "format_table", "im2col_gemm", "legend", "median_time", "plot", "relate", "run",
    "sgemm_gflops", "shape_fields", "summarize", "wait_until_idle", "write",
]
