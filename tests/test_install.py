"""Installs: with NUMBA_CACHE_DIR unset, numba's cache is the user's cache directory (one
cache for every checkout, install and way of running fastconv, never the package
directory); a read-only package directory still imports and computes, caching there or,
when nothing is writable, uncached with one warning."""

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
