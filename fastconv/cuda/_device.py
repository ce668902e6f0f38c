"""Is a GPU usable, moving arrays between host and device, and launching kernels.

Nothing here imports ``numba.cuda`` at module import; :func:`require` does, and turns
every way it can fail into :class:`CudaUnavailableError`.
"""

from __future__ import annotations

import importlib
import os
from importlib import metadata

import numpy as np

from .. import config

INSTALL_HINT = ("install the CUDA extra with `pip install '.[cuda]'` in a fastconv checkout "
                "(NVIDIA's numba-cuda with its CUDA 12 compiler and runtime libraries: "
                "`pip install 'numba-cuda[cu12]'`) and an NVIDIA driver for a CUDA-capable GPU")


class CudaUnavailableError(RuntimeError):
    """device='cuda' was asked for but no usable GPU is there; the message says why."""


def _unavailable(op: str | None, reason: str) -> CudaUnavailableError:
    prefix = f"{op}: " if op else ""
    return CudaUnavailableError(f"{prefix}device='cuda' is unavailable: {reason}. To use the "
                                f"GPU, {INSTALL_HINT}.")


def _import_cuda():
    """(numba.cuda, None) or (None, why it cannot be used).

    Only NVIDIA's numba-cuda counts: it takes over the name ``numba.cuda`` when installed
    (its ``implementation`` is "NVIDIA"); numba's own deprecated built-in target
    ("Built-in") is refused, so nothing runs on a toolchain that is not supported."""
    try:
        from numba import cuda
    except Exception as exc:  # ImportError, or a broken install
        return None, f"numba-cuda is not installed ({type(exc).__name__}: {exc})"
    if getattr(cuda, "implementation", None) != "NVIDIA":
        return None, ("numba-cuda is not installed (numba.cuda is numba's deprecated "
                      "built-in CUDA target, which fastconv does not support)")
    return cuda, None


def simulated() -> bool:
    """True when numba's CUDA simulator runs the kernels (NUMBA_ENABLE_CUDASIM=1, read by
    numba-cuda's own configuration)."""
    try:
        from numba.cuda.core import config as cconf
    except ImportError:  # no numba-cuda: nothing runs, simulated or not
        return False
    return bool(getattr(cconf, "ENABLE_CUDASIM", False))


def _compiler_reason() -> str | None:
    """None when numba-cuda's kernel compiler loads beside this numpy, else why not.

    numba-cuda loads its numpy typing at the first kernel's compile, where a numpy newer
    than it knows can fail (numba-cuda 0.30.4 with numpy 2.5: ``np.row_stack`` is
    gone); loading it here turns that into a reason instead of a traceback mid-call."""
    try:
        importlib.import_module("numba.cuda.cudaimpl")
    except AttributeError as exc:
        try:
            version = metadata.version("numba-cuda")
        except metadata.PackageNotFoundError:  # pragma: no cover - numba.cuda came from elsewhere
            version = "?"
        return (f"numba-cuda {version} cannot compile kernels with numpy {np.__version__} "
                f"(AttributeError: {exc}); install a numba-cuda release that supports this "
                "numpy, or a numpy it supports")
    except ImportError:  # another layout of numba-cuda: its first compile will tell
        pass
    return None


def unavailable_reason() -> str | None:
    """None when kernels can run (on a GPU or in the simulator), else why not."""
    cuda, reason = _import_cuda()
    if cuda is None:
        return reason
    if simulated():
        return None
    try:
        if cuda.is_available() and len(cuda.gpus) > 0:
            return _compiler_reason()
    except Exception as exc:  # pragma: no cover - depends on the driver
        return f"no usable CUDA driver or GPU ({type(exc).__name__}: {' '.join(str(exc).split())})"
    # is_available() swallows the driver's error; ask again to get its words.
    try:
        cuda.get_current_device()
    except Exception as exc:
        text = " ".join(str(exc).split())
        if "driver" in text.lower():
            return f"no CUDA driver found ({text})"
        return f"no usable NVIDIA GPU found ({text})"
    return "no usable NVIDIA GPU found"  # pragma: no cover


def is_available() -> bool:
    """True when fastconv can run its CUDA kernels (on a GPU or in the simulator)."""
    return unavailable_reason() is None


def require(op: str | None = None):
    """``numba.cuda`` when usable, else CudaUnavailableError naming the op, why and the fix."""
    reason = unavailable_reason()
    if reason is not None:
        raise _unavailable(op, reason)
    if simulated():
        from . import _simulator

        _simulator.install()  # shared arrays, allocated race-free (see _simulator)
    return _import_cuda()[0]


# ----------------------------------------------------------------------------- arrays
def is_device(a) -> bool:
    """A numba device array, or any object exposing __cuda_array_interface__."""
    return not isinstance(a, np.ndarray) and (
        bool(getattr(a, "__cuda_ndarray__", False)) or hasattr(a, "__cuda_array_interface__"))


def host_spec(a):
    """What the CPU argument checks should see for ``a``.

    Host arrays (and None, lists, anything else) pass through unchanged; a device array
    becomes a zero-byte numpy stand-in of the same shape and dtype (every stride 0), so
    the CPU's own validation runs on it and raises exactly the CPU's errors."""
    if not is_device(a):
        return a
    dtype = getattr(a, "dtype", None)
    if not isinstance(dtype, np.dtype):  # a foreign array type: view it through numba
        a = as_device_array(require(), a)
    return np.lib.stride_tricks.as_strided(np.zeros(1, a.dtype), shape=tuple(a.shape),
                                           strides=(0,) * len(a.shape))


def as_device_array(cuda, a):
    """A numba device array for a device input (zero-copy for foreign GPU arrays)."""
    if getattr(a, "__cuda_ndarray__", False):
        return a
    return cuda.as_cuda_array(a)


class Residency:
    """Moves one call's arrays to the device and the results back where they came from.

    If any array argument is already on the GPU, results stay on the GPU (numba device
    arrays); otherwise inputs are copied in and results copied back to numpy arrays.
    """

    def __init__(self, *arrays):
        self.cuda = require()
        self.on_device = any(a is not None and is_device(a) for a in arrays)

    def to_device(self, a):
        if a is None:
            return None
        if is_device(a):
            return as_device_array(self.cuda, a)
        return self.cuda.to_device(np.ascontiguousarray(a))

    def result(self, d):
        if d is None or self.on_device:
            return d
        return d.copy_to_host()


# ----------------------------------------------------------------------------- launches
def launch_1d(total: int) -> tuple[int, int]:
    """(blocks, threads) for a grid-stride kernel over ``total`` items: config.CUDA_BLOCK
    threads per block, at most config.CUDA_MAX_BLOCKS blocks (each thread then loops)."""
    threads = max(1, int(config.CUDA_BLOCK))
    blocks = max(1, min(-(-total // threads), int(config.CUDA_MAX_BLOCKS)))
    return blocks, threads


def launch(kernel, total: int, *params) -> None:
    """Run the grid-stride ``kernel(*params)`` over ``total`` items (see :func:`launch_1d`);
    nothing is launched when ``total`` is 0."""
    if total > 0:
        blocks, threads = launch_1d(total)
        kernel[blocks, threads](*params)


def env_summary() -> dict:
    """What fastconv sees of CUDA (for the bench header and error reports)."""
    reason = unavailable_reason()
    out = {"available": reason is None, "simulator": reason is None and simulated(),
           "reason": reason, "NUMBA_ENABLE_CUDASIM": os.environ.get("NUMBA_ENABLE_CUDASIM")}
    if reason is None and not out["simulator"]:
        cuda = _import_cuda()[0]
        dev = cuda.get_current_device()
        out["device"] = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
        out["compute_capability"] = ".".join(str(v) for v in dev.compute_capability)
    return out
