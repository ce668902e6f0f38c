"""Every notebook runs top to bottom in a fresh kernel (small-size mode)."""

import pytest

from .conftest import load_script

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

nb_run = load_script("notebooks/run.py")


def test_there_are_notebooks():
    assert len(nb_run.notebooks()) >= 1


@pytest.mark.parametrize("path", nb_run.notebooks(), ids=lambda p: p.name)
def test_notebook_runs(path):
    nb = nb_run.execute(path, small=True)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    # every notebook draws something
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", []))


@pytest.mark.parametrize("path", nb_run.notebooks(), ids=lambda p: p.name)
def test_notebooks_use_only_the_public_api(path):
    import re

    import nbformat
    nb = nbformat.read(path, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    private = re.findall(r"fastconv(?:\.\w+)*\._\w+", code)
    assert not private, f"{path.name} uses private modules: {sorted(set(private))}"
