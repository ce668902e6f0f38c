"""pytest-benchmark suite over the layer shapes of ``fastconv bench``.

Run with ``pytest bench/ --benchmark-only`` (bench/ is not in the test paths, so
``make test`` does not run it). The project's pytest configuration disables benchmarks
(``--benchmark-disable``) for the test suite; here they are enabled again.
Options: ``--bench-suite quick|default|kernel-sweep|tiny`` (default quick).
"""

import pytest


def pytest_addoption(parser):
    parser.addoption("--bench-suite", default="quick",
                     help="fastconv.tools.bench suite to run: quick, default, kernel-sweep, tiny")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # addopts carries --benchmark-disable for the unit tests; benchmarks run here.
    if hasattr(config.option, "benchmark_disable"):
        config.option.benchmark_disable = False


def pytest_generate_tests(metafunc):
    if "shape" in metafunc.fixturenames:
        from fastconv.tools.bench import SUITES

        suite = SUITES[metafunc.config.getoption("--bench-suite")]
        metafunc.parametrize("shape", suite, ids=[s.name for s in suite])
