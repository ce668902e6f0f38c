"""What fastconv runs on: versions, threading layer, BLAS, cache, CUDA."""

from __future__ import annotations

import os
import platform


def blas_info() -> list[dict]:
    """The BLAS libraries loaded in this process (threadpoolctl), with their kernels."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    import numpy  # noqa: F401  (loads numpy's BLAS)
    import scipy.linalg  # noqa: F401  (loads scipy's BLAS, used by np.dot inside njit)

    return [
        {k: v for k, v in lib.items() if k in ("internal_api", "version", "num_threads",
                                               "threading_layer", "architecture", "filepath")}
        for lib in threadpool_info() if lib.get("user_api") == "blas"
    ]


def blas_summary() -> str:
    """The loaded BLAS libraries on one line: API, version, kernel and threads of each."""
    libs = blas_info()
    if not libs:
        return "unknown (install threadpoolctl)"
    def get(b, key):
        return b.get(key) or "unknown"

    return "; ".join(f"{get(b, 'internal_api')} {get(b, 'version')} kernel="
                     f"{get(b, 'architecture')} threads={get(b, 'num_threads')}" for b in libs)


def cuda_status() -> str:
    """Whether fastconv can run its CUDA kernels (numba-cuda, the one supported
    toolchain): "available (<device>, compute capability <cc>)" or "unavailable (why)"."""
    from fastconv.cuda._device import env_summary

    env = env_summary()
    if not env["available"]:
        return f"unavailable ({env['reason']})"
    if env["simulator"]:
        return "available (numba-cuda's simulator: NUMBA_ENABLE_CUDASIM=1)"
    return f"available ({env['device']}, compute capability {env['compute_capability']})"


def collect() -> dict:
    """Everything ``fastconv info`` prints, as a dict."""
    import numba
    import numpy
    import scipy

    from fastconv import __version__, _runtime, config

    # the variables that change BLAS kernels and thread behaviour (OMP_WAIT_POLICY:
    # torch's OpenMP threads in the same process, docs/guide/threads.md)
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                      "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                      "OMP_WAIT_POLICY", "NUMBA_NUM_THREADS",
                                      "NUMBA_THREADING_LAYER")
           if k in os.environ}
    return {
        "fastconv": __version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "numba": numba.__version__,
        "threading_layer": _runtime.threading_layer(),
        "numba_threads": numba.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "blas": blas_summary(),
        "thread_env": env,
        "numba_cache_dir": numba.config.CACHE_DIR or os.environ.get("NUMBA_CACHE_DIR")
        or "(beside the package, __pycache__)",
        "workspace_mib": config.WORKSPACE_BYTES / config.MIB,
        "cuda": cuda_status(),
    }


def as_text(data: dict) -> str:
    """``collect()``'s dict as aligned "key  value" lines, missing values in words.

    >>> print(as_text({"fastconv": "0.1.0", "threading_layer": None, "thread_env": {}}))
    fastconv         0.1.0
    threading_layer  unknown
    thread_env       none set
    """
    width = max(len(k) for k in data)

    def word(k, v):
        if k == "thread_env":
            return " ".join(f"{n}={x}" for n, x in v.items()) or "none set"
        return "unknown" if v is None else v
    return "\n".join(f"{k:<{width}}  {word(k, v)}" for k, v in data.items())
