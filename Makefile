# Set-up is automatic: each target creates .venv when it is missing and installs the
# package (editable) with the extras it needs. Only python3 is required.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=
# numba's kernel cache: the one every way of running fastconv shares (the user cache
# directory, $XDG_CACHE_HOME/fastconv/numba/<hash of the kernel sources>) unless
# NUMBA_CACHE_DIR is set.

.PHONY: test test-slow bench notebooks lint clean info docs

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# One stamp per set of extras; reinstalled when pyproject.toml changes.
$(VENV)/.stamp-test: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[test,bench,examples,dask,docs]"
	touch $@

$(VENV)/.stamp-bench: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[bench,test]"
	touch $@

$(VENV)/.stamp-docs: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[docs,dask]"
	touch $@

$(VENV)/.stamp-dev: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# Two pytest processes: the CPU suite with every docstring example of the package
# (doctest), the wheel install (tests/test_install.py), the docs build with warnings as
# errors (tests/test_docs.py, the docs extra) and every CUDA kernel compiled to PTX for
# real GPUs (tests/test_cuda_ptx.py: FASTCONV_REQUIRE_PTX=1 makes a missing compiler a
# failure, not a skip), then the CUDA kernels under numba-cuda's simulator
# (NUMBA_ENABLE_CUDASIM must be set before numba is imported). The test extra installs
# numba-cuda[cu12] (the toolchain and its libraries; no GPU needed). Both always run;
# either failing fails the target.
test: $(VENV)/.stamp-test
	@status=0; \
	FASTCONV_REQUIRE_PTX=1 $(PY) -m pytest tests fastconv --doctest-modules --ignore=tests/cuda $(PYTEST_ARGS) || status=$$?; \
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest tests/cuda $(PYTEST_ARGS) || status=$$?; \
	exit $$status

test-slow: $(VENV)/.stamp-test
	$(PY) -m pytest tests --ignore=tests/cuda -m slow $(PYTEST_ARGS)

# The quick suite and the kernel-size sweep (a few minutes on 2 cores); the report
# (results.json, results.md, PNG plots) goes to bench/results/. The full suite:
# `fastconv bench --suite default`; pytest-benchmark: `pytest bench/ --benchmark-only`.
bench: $(VENV)/.stamp-bench
	$(PY) -m fastconv.tools info
	$(PY) -m fastconv.tools bench --suite quick kernel-sweep --out bench/results

# Run every notebook top to bottom for a person (executed copies in notebooks/executed/).
notebooks: $(VENV)/.stamp-test
	$(PY) notebooks/run.py

info: $(VENV)/.stamp-bench
	$(PY) -m fastconv.tools info

lint: $(VENV)/.stamp-dev
	$(PY) -m ruff check fastconv tests bench

# The documentation site, from the docstrings and docs/*.md, into docs/_build/html;
# any warning fails the build (-W). tests/test_docs.py runs the same build in `make test`.
docs: $(VENV)/.stamp-docs
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html
	@echo "docs: open docs/_build/html/index.html"

clean:
	rm -rf $(VENV) .numba_cache .pytest_cache .benchmarks bench/results build *.egg-info docs/_build
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
