"""Execute the notebooks top to bottom in fresh kernels.

    python notebooks/run.py            # full size, executed copies in notebooks/executed/
    python notebooks/run.py --small    # the small-size mode the test suite uses

The tests (tests/test_notebooks.py) call ``execute`` with ``small=True``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
SMALL_ENV = "FASTCONV_NOTEBOOK_SMALL"


def notebooks() -> list[pathlib.Path]:
    return sorted(HERE.glob("[0-9][0-9]_*.ipynb"))


def execute(path: pathlib.Path, out: pathlib.Path | None = None, *, small: bool = False,
            timeout: int = 600):
    """Run every cell of ``path`` in a fresh python3 kernel; raise on the first cell error.
    Returns the executed notebook (and writes it to ``out`` when given)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    previous = os.environ.get(SMALL_ENV)
    os.environ[SMALL_ENV] = "1" if small else "0"
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        if previous is None:
            os.environ.pop(SMALL_ENV, None)
        else:
            os.environ[SMALL_ENV] = previous
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out)
    return nb


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="small-size mode (as the tests)")
    p.add_argument("names", nargs="*", help="notebook files (default: all)")
    args = p.parse_args(argv)
    paths = [pathlib.Path(n).resolve() for n in args.names] or notebooks()
    for path in paths:
        t0 = time.perf_counter()
        out = HERE / "executed" / path.name
        execute(path, out, small=args.small)
        print(f"{path.name}: ok in {time.perf_counter() - t0:.1f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
