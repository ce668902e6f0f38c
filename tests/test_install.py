"""Installs: with NUMBA_CACHE_DIR unset, numba's cache is the user's cache directory (one
cache for every checkout, install and way of running fastconv, never the package
directory); a read-only package directory still imports and computes, caching there or,
when nothing is writable, uncached with one warning. The built wheel holds every module
and installs into a fresh virtual environment."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import fastconv

CHILD = textwrap.dedent("""
    import warnings
    warnings.simplefilter("always")
    import os, numpy as np
    import fastconv
    y = fastconv.conv2d(np.arange(9.0).reshape(1, 1, 3, 3),
                        np.array([[[[0.0, 1.0], [2.0, 3.0]]]]), algo="im2col")
    print("RESULT", y.ravel().tolist())
    print("CACHE", os.environ.get("NUMBA_CACHE_DIR"))
    print("FROM", fastconv.__file__)
""")


@pytest.fixture
def tmp_path():
    """A scratch directory reachable by every user (pytest's own is private to root)."""
    import pathlib
    import tempfile

    path = pathlib.Path(tempfile.mkdtemp(prefix="fastconv-install-"))
    os.chmod(path, 0o755)
    yield path
    _restore_permissions(path)
    shutil.rmtree(path, ignore_errors=True)


def _read_only_copy(tmp_path):
    """A copy of the package that the child process cannot write to, and how to run as
    a user for whom that holds (root ignores permission bits, so root runs it as nobody)."""
    src = os.path.dirname(fastconv.__file__)
    site = tmp_path / "site"
    shutil.copytree(src, site / "fastconv",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot drop write access")
        for root, _dirs, files in os.walk(tmp_path):
            os.chmod(root, 0o755)
            for f in files:
                os.chmod(os.path.join(root, f), 0o644)
        os.chmod(tmp_path, 0o755)
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        probe = subprocess.run(prefix + [sys.executable, "-c", "import numpy, numba"],
                               cwd=tmp_path, capture_output=True, timeout=120)
        if probe.returncode != 0:
            pytest.skip("the unprivileged user cannot run this interpreter (its path is "
                        "private): cannot test a read-only install here")
    else:
        for root, _dirs, _files in os.walk(site):
            os.chmod(root, 0o555)
        prefix = []
    return site, prefix


def _run(site, prefix, home):
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", "FASTCONV_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(PYTHONPATH=str(site), HOME=str(home))
    return subprocess.run(prefix + [sys.executable, "-c", CHILD], env=env, cwd=site,
                          capture_output=True,
                          text=True, timeout=300)


def _restore_permissions(path):
    for root, _dirs, _files in os.walk(path):
        os.chmod(root, 0o755)


def test_read_only_package_caches_in_user_cache_dir(tmp_path):
    site, prefix = _read_only_copy(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    if prefix:
        os.chown(home, 65534, 65534)
    try:
        proc = _run(site, prefix, home)
    finally:
        _restore_permissions(site)
    assert proc.returncode == 0, proc.stderr
    assert "RESULT [19.0, 25.0, 37.0, 43.0]" in proc.stdout
    assert f"FROM {site}/fastconv/__init__.py" in proc.stdout
    assert f"CACHE {home}/.cache/fastconv/numba" in proc.stdout
    assert "RuntimeWarning" not in proc.stderr
    assert any(name.endswith(".nbi") for _, _, files in os.walk(home) for name in files)


def test_nothing_writable_runs_uncached_with_one_warning(tmp_path):
    site, prefix = _read_only_copy(tmp_path)
    home = tmp_path / "nohome"  # does not exist and cannot be created by the child
    if not prefix:
        os.chmod(tmp_path, 0o555)
    try:
        proc = _run(site, prefix, home)
    finally:
        os.chmod(tmp_path, 0o755)
        _restore_permissions(site)
    assert proc.returncode == 0, proc.stderr
    assert "RESULT [19.0, 25.0, 37.0, 43.0]" in proc.stdout
    assert f"FROM {site}/fastconv/__init__.py" in proc.stdout
    assert proc.stderr.count("no writable numba cache directory") == 1


def test_writable_package_still_caches_in_user_cache_dir(tmp_path):
    """Not beside the sources: a checkout and the CLI share the user's cache."""
    site = tmp_path / "site"
    shutil.copytree(os.path.dirname(fastconv.__file__), site / "fastconv",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    home = tmp_path / "home"
    home.mkdir()
    proc = _run(site, [], home)
    assert proc.returncode == 0, proc.stderr
    assert "RESULT [19.0, 25.0, 37.0, 43.0]" in proc.stdout
    assert f"CACHE {home}/.cache/fastconv/numba" in proc.stdout
    assert any(name.endswith(".nbi") for _, _, files in os.walk(home) for name in files)
    assert not any(name.endswith((".nbi", ".nbc")) for _, _, files in os.walk(site)
                   for name in files)


# ---------------------------------------------------------------- the wheel, installed fresh

WHEEL_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import fastconv
    y = fastconv.conv2d(np.arange(9.0).reshape(1, 1, 3, 3),
                        np.array([[[[0.0, 1.0], [2.0, 3.0]]]]))
    print("RESULT", y.ravel().tolist())
    print("FROM", fastconv.__file__)
    print("PREFIX", sys.prefix)
""")


def _has_build_backend() -> bool:
    """Whether this environment has the setuptools that pyproject.toml asks for (>= 77:
    an SPDX license string), so the wheel builds without reaching the index."""
    from importlib import metadata

    try:
        return int(metadata.version("setuptools").split(".")[0]) >= 77
    except (metadata.PackageNotFoundError, ValueError):
        return False


def _build_wheel(tmp_path):
    """``pip wheel --no-deps`` of a copy of the source tree (pyproject.toml, README.md and
    the package), so that the build's scratch files stay out of the checkout. Without
    the index when this environment has the build backend, through it otherwise."""
    import importlib.util

    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not installed in this environment")
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastconv.__file__)))
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(root, name), src / name)
    shutil.copytree(os.path.join(root, "fastconv"), src / "fastconv",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist")]
    if _has_build_backend():
        cmd.append("--no-build-isolation")
    proc = subprocess.run(cmd + [str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    wheels = list((tmp_path / "dist").glob("fastconv-*.whl"))
    assert len(wheels) == 1, wheels
    return src, wheels[0]


def test_wheel_holds_every_module_and_the_command(tmp_path):
    import zipfile

    src, wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {os.path.relpath(os.path.join(d, f), src).replace(os.sep, "/")
               for d, _dirs, files in os.walk(src / "fastconv") for f in files
               if f.endswith(".py")}
    assert sources and sources <= names, sorted(sources - names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "fastconv = fastconv.tools.cli:main" in text


def test_wheel_installs_into_a_fresh_venv_and_computes(tmp_path):
    """The built wheel, installed with ``--no-deps`` into a new virtual environment that
    sees this environment's packages (numpy, numba, scipy) through a .pth file, imports
    from the venv and runs one conv2d; its ``fastconv`` command starts."""
    import sysconfig

    _src, wheel = _build_wheel(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    bindir = "Scripts" if os.name == "nt" else "bin"
    python = venv / bindir / ("python.exe" if os.name == "nt" else "python")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                           "-q", "--no-deps", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    site = subprocess.run([str(python), "-c", "import sysconfig; "
                           "print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    # one path line: the parent's site-packages joins sys.path after the venv's own, and
    # its .pth files (an editable install of fastconv among them) are not run.
    parents = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    with open(os.path.join(site, "_fastconv_test_parent.pth"), "w") as fh:
        fh.write("\n".join(sorted(parents)) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "numba_cache")
    proc = subprocess.run([str(python), "-c", WHEEL_CHILD], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "RESULT [19.0, 25.0, 37.0, 43.0]" in proc.stdout
    assert f"FROM {site}{os.sep}fastconv{os.sep}__init__.py" in proc.stdout
    assert f"PREFIX {venv}" in proc.stdout
    command = venv / bindir / "fastconv"
    proc = subprocess.run([str(command), "--help"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: fastconv" in proc.stdout
