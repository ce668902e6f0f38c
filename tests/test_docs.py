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
    for name in ("conv2d", "conv2d_backward", "conv_transpose2d", "plan_conv_transpose2d",
                 "plan", "max_pool2d", "batch_norm", "Tensor"):
        assert f'id="fastconv.{name}"' in text, name
    nn = (html / "api" / "fastconv.nn.html").read_text()
    for name in ("Conv2d", "ConvTranspose2d", "Module", "BatchNorm2d", "CrossEntropyLoss",
                 "functional.conv2d", "functional.conv_transpose2d"):
        assert f'id="fastconv.nn.{name}"' in nn, name


def _python_blocks(path, section):
    """The ```python blocks of one '## section' of a Markdown file, in order."""
    text = open(path, encoding="utf-8").read()
    part = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", part, flags=re.S)


@pytest.mark.parametrize("path", ["README.md", "docs/getting-started.md"])
def test_quick_start_runs_as_written(path, capsys):
    """The quick start's blocks, run one after the other as a reader would: the worked
    example prints its result, the NHWC plan names an algorithm, the model trains."""
    import numpy as np

    import fastconv

    blocks = _python_blocks(os.path.join(ROOT, path), "Quick start")
    assert len(blocks) == (4 if path == "README.md" else 3), blocks
    namespace = {}
    for block in blocks:
        exec(compile(block, path, "exec"), namespace)
    assert "[[[[19. 25.]\n   [37. 43.]]]]" in capsys.readouterr().out
    assert namespace["p"].algorithm in fastconv.ALGORITHMS
    assert namespace["y"].dtype == np.int64  # the labels, after the training block
    model, x, y = namespace["model"], namespace["x"], namespace["y"]
    model.eval()
    with fastconv.no_grad():
        accuracy = (model(x).numpy().argmax(1) == y).mean()
    assert accuracy > 0.8, accuracy
    if path == "README.md":   # images as image libraries hold them
        assert namespace["blurred"].shape == (480, 640, 3)
        assert namespace["small"].shape == (240, 320, 3)
        assert namespace["edges"].shape == (480, 640)
