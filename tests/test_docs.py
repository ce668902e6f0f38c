"""The documentation site (docs/) builds from the docstrings with every warning an error,
as `make docs` runs it, and its API reference documents the public modules."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
PUBLIC = ["fastconv", "fastconv.nn", "fastconv.optim", "fastconv.data", "fastconv.checkpoint",
          "fastconv.dask", "fastconv.cuda", "fastconv.layout", "fastconv.algos.registry",
          "fastconv.autotune"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """docs/ built into a scratch directory: the HTML directory, and sphinx's output."""
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    pytest.importorskip("dask.array")  # fastconv.dask's page imports it
    out = tmp_path_factory.mktemp("docs")
    html = out / "html"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q",
                           "-b", "html", "-d", str(out / "doctrees"), DOCS, str(html)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return html, proc


def test_docs_build_without_warnings(site):
    _html, proc = site
    assert proc.returncode == 0, f"sphinx failed:\n{proc.stderr}\n{proc.stdout}"
    assert "WARNING" not in proc.stderr and "ERROR" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("module", PUBLIC)
def test_api_reference_documents_each_public_module(site, module):
    html, proc = site
    page = html / "api" / f"{module}.html"
    assert page.exists(), f"{page} was not built: {proc.stderr}"
    text = page.read_text()
    assert f'id="module-{module}"' in text
    # at least one documented function or class of the module itself
    assert re.search(rf'<dt class="sig sig-object py" id="{re.escape(module)}\.\w', text), module


def test_api_reference_documents_the_main_functions(site):
    html, _proc = site
    text = (html / "api" / "fastconv.html").read_text()
    for name in ("conv2d", "conv2d_backward", "plan", "max_pool2d", "batch_norm", "Tensor"):
        assert f'id="fastconv.{name}"' in text, name
    nn = (html / "api" / "fastconv.nn.html").read_text()
    for name in ("Conv2d", "Module", "BatchNorm2d", "CrossEntropyLoss", "functional.conv2d"):
        assert f'id="fastconv.nn.{name}"' in nn, name
