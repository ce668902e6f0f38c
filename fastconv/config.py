"""Every tunable of fastconv in one place.

Values are read once at import from environment variables and may be changed at run
time by assigning to the module attributes (``fastconv.config.WORKSPACE_BYTES = ...``).

| attribute            | environment variable          | default                    |
|----------------------|-------------------------------|----------------------------|
| WORKSPACE_BYTES      | FASTCONV_WORKSPACE_MB         | 256 MiB                    |
| IM2COL_CHUNK_BYTES   | FASTCONV_IM2COL_CHUNK_MB      | 8 MiB                      |
| WINOGRAD_CHUNK_BYTES | FASTCONV_WINOGRAD_CHUNK_MB    | 16 MiB                     |
| WINOGRAD_TILE        | FASTCONV_WINOGRAD_TILE        | 4 (F(4x4, 3x3))            |
| WORKSPACE_CACHE_BYTES| FASTCONV_WORKSPACE_CACHE_MB   | 32 MiB                     |
| POOL_BYTES           | FASTCONV_POOL_MB              | 256 MiB                    |
| PLAN_CACHE_SIZE      | FASTCONV_PLAN_CACHE_SIZE      | 1024 plans                 |
| FFT_WORKERS          | FASTCONV_FFT_WORKERS          | os.cpu_count()             |
| CACHE_DIR            | FASTCONV_CACHE_DIR            | $XDG_CACHE_HOME/fastconv   |
| THREADING_LAYER      | NUMBA_THREADING_LAYER         | tbb, else omp, else workqueue |
| (numba's kernel cache)| NUMBA_CACHE_DIR              | CACHE_DIR/numba            |
| QUIET                | FASTCONV_QUIET                | False (1: no first-compile notice) |
| COMPILE_CHILD        | FASTCONV_COMPILE_CHILD        | "auto" (a child when a core is idle) |
| MNIST_MIRROR         | FASTCONV_MNIST_MIRROR         | None (the usual mirror)    |
| FASHION_MNIST_MIRROR | FASTCONV_FASHION_MNIST_MIRROR | None (the usual mirror)    |
| CIFAR10_MIRROR       | FASTCONV_CIFAR10_MIRROR       | None (the usual mirror)    |
| CUDA_BLOCK           | FASTCONV_CUDA_BLOCK           | 256                        |
| CUDA_MAX_BLOCKS      | FASTCONV_CUDA_MAX_BLOCKS      | 8192                       |
| CUDA_GEMM_TILE       | FASTCONV_CUDA_GEMM_TILE       | 16                         |
| CUDA_REDUCE_THREADS  | FASTCONV_CUDA_REDUCE_THREADS  | 256                        |
| CUDA_DIRECT_MAX_TAPS | FASTCONV_CUDA_DIRECT_MAX_TAPS | 32                         |
| CUDA_DIRECT_MAX_COUT | FASTCONV_CUDA_DIRECT_MAX_COUT | 4                          |
| SMALL_GEMM_MACS      | FASTCONV_SMALL_GEMM_MACS      | 33554432 (2**25)           |
"""

from __future__ import annotations

import os


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"config: environment variable {name}={raw!r} must be a number") from None
    if value <= 0:
        raise ValueError(f"config: environment variable {name}={raw!r} must be positive")
    return value


MIB = 1 << 20

#: Upper bound on the im2col column buffer (bytes). Larger batches are unfolded in chunks.
WORKSPACE_BYTES: int = int(_env_float("FASTCONV_WORKSPACE_MB", 256) * MIB)

#: Target size of one unfolded chunk (bytes): small enough to stay in the last-level cache
#: between the unfold and its GEMM. Never larger than WORKSPACE_BYTES.
IM2COL_CHUNK_BYTES: int = int(_env_float("FASTCONV_IM2COL_CHUNK_MB", 8) * MIB)
#: Transformed tiles plus GEMM result per Winograd chunk (fastconv.algos.winograd): 8-32
#: MiB ran fastest on the resnet layers here; below 4 MiB the (m+2)^2 GEMMs (36 for
#: F(4x4, 3x3), 16 for F(2x2, 3x3)) get too thin. Narrow NCHW layers split their tile
#: rows over the threads in chunks of their own (``winograd.tiling.split_rows``), no
#: larger than this either.
WINOGRAD_CHUNK_BYTES: int = int(_env_float("FASTCONV_WINOGRAD_CHUNK_MB", 16) * MIB)
#: Output block m of algo="winograd", F(m x m, 3x3): 4 (36 multiplications per 16
#: outputs, 4x fewer than direct) or 2 (16 per 4, 2.25x fewer; float32 error about 3x
#: smaller, see tests/test_winograd.py).
WINOGRAD_TILE: int = int(_env_float("FASTCONV_WINOGRAD_TILE", 4))

#: Scratch buffers up to this size are kept per thread and reused across calls (no page
#: faults on every call); larger ones are allocated per call.
WORKSPACE_CACHE_BYTES: int = int(_env_float("FASTCONV_WORKSPACE_CACHE_MB", 32) * MIB)

#: Result arrays (outputs, gradients) of repeating shapes kept for reuse, up to this many
#: bytes (``fastconv._pool``: no fresh pages, and their faults, every training step);
#: 0 turns the pool off.
POOL_BYTES: int = int(_env_float("FASTCONV_POOL_MB", 256) * MIB)

#: How many algorithm choices (plans) ``algo="auto"`` keeps, least recently used first out.
PLAN_CACHE_SIZE: int = int(_env_float("FASTCONV_PLAN_CACHE_SIZE", 1024))

#: fastmath flags for the njit kernels. No "nnan"/"ninf": NaN and Inf must propagate and
#: np.isnan must keep working (numba's fastmath=True would break both).
FASTMATH = {"reassoc", "contract", "arcp", "nsz"}

#: fastconv's own cache directory: the calibration profile, and numba's compiled kernels
#: in ``CACHE_DIR/numba`` unless NUMBA_CACHE_DIR is set (one cache for the CLI, the
#: tests and the user's scripts; ``fastconv warmup`` fills it ahead of time).
CACHE_DIR: str = os.environ.get("FASTCONV_CACHE_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
    "fastconv",
)

#: True: no "compiling kernels for first use" line on stderr (fastconv._runtime). Any
#: value of FASTCONV_QUIET other than "", "0", "false", "no" sets it.
QUIET: bool = os.environ.get("FASTCONV_QUIET", "").strip().lower() not in ("", "0", "false",
                                                                          "no")

#: Whether, on a cold numba cache, the warm-up step of ``fastconv train`` and ``fastconv
#: warmup`` start a child process that compiles part of the kernels meanwhile
#: (fastconv._compile_split): "auto" when a core is idle (the 1-minute load average at
#: most the usable cores - 1), "always" or "never". FASTCONV_COMPILE_CHILD: auto (or
#: unset), always (1, true, yes, on) or never (0, false, no, off).
_CHILD_WORDS = {"": "auto", "auto": "auto", "always": "always", "1": "always",
                "true": "always", "yes": "always", "on": "always", "never": "never",
                "0": "never", "false": "never", "no": "never", "off": "never"}
_child_raw = os.environ.get("FASTCONV_COMPILE_CHILD", "")
if _child_raw.strip().lower() not in _CHILD_WORDS:
    raise ValueError(f"config: environment variable FASTCONV_COMPILE_CHILD={_child_raw!r} "
                     "must be auto, always (1) or never (0)")
COMPILE_CHILD: str = _CHILD_WORDS[_child_raw.strip().lower()]

#: Threading layers tried in order when NUMBA_THREADING_LAYER is unset. TBB is both
#: thread-safe and fork-safe; omp is thread-safe only; workqueue is neither, so calls into
#: parallel kernels are serialised with a lock when it is the layer in use.
THREADING_LAYER_PREFERENCE = ("tbb", "omp", "workqueue")

#: Threads scipy.fft may use for batched transforms.
FFT_WORKERS: int = int(_env_float("FASTCONV_FFT_WORKERS", os.cpu_count() or 1))

#: Matrix products of at most this many multiply-adds (batch * m * k * n) that fastconv's
#: layers run (linear layers, GEMMs of the conv backward) use one BLAS thread
#: (fastconv._blas). A second thread saves little on them, stalls the call whenever it is
#: not scheduled on a busy machine, and after the call OpenBLAS's idle worker spins for a
#: long while on the core numba's kernels need: with LeNet's linear layers on two BLAS
#: threads a training step took 7.3 ms instead of 5.2 ms on the 2-core machine.
SMALL_GEMM_MACS: int = int(_env_float("FASTCONV_SMALL_GEMM_MACS", 1 << 25))

#: Where fastconv.data.load_mnist downloads the IDX files from: a URL prefix (http(s)://,
#: file://) or a local directory. None means the dataset's usual mirror
#: (fastconv.data.MNIST_DATASETS). Files are checked against their SHA-256 either way.
MNIST_MIRROR: str | None = os.environ.get("FASTCONV_MNIST_MIRROR") or None
FASHION_MNIST_MIRROR: str | None = os.environ.get("FASTCONV_FASHION_MNIST_MIRROR") or None
#: Where fastconv.cifar.load_cifar10 downloads cifar-10-python.tar.gz from (as MNIST_MIRROR);
#: None means fastconv.cifar.CIFAR10_MIRROR. The archive is SHA-256 checked either way.
CIFAR10_MIRROR: str | None = os.environ.get("FASTCONV_CIFAR10_MIRROR") or None
# --------------------------------------------------------------------------- CUDA path
# (fastconv.cuda; read when its kernels launch, so they may be changed at run time)

#: Threads per block of the element-wise CUDA kernels (grid-stride loops).
CUDA_BLOCK: int = int(_env_float("FASTCONV_CUDA_BLOCK", 256))

#: Most blocks one element-wise CUDA launch uses; each thread then loops over the rest.
CUDA_MAX_BLOCKS: int = int(_env_float("FASTCONV_CUDA_MAX_BLOCKS", 8192))

#: Side of the shared-memory GEMM tile (TILE x TILE threads per block, one output each).
CUDA_GEMM_TILE: int = int(_env_float("FASTCONV_CUDA_GEMM_TILE", 16))

#: Threads per block of the per-channel reductions (bias gradient, batch-norm sums);
#: a power of two.
CUDA_REDUCE_THREADS: int = int(_env_float("FASTCONV_CUDA_REDUCE_THREADS", 256))

#: conv2d algo="auto" on CUDA uses the direct kernel when the im2col GEMM would be thin:
#: fewer than this many taps per output (C_in/groups * kh * kw) or fewer than
#: CUDA_DIRECT_MAX_COUT output channels per group. Not calibrated on hardware.
CUDA_DIRECT_MAX_TAPS: int = int(_env_float("FASTCONV_CUDA_DIRECT_MAX_TAPS", 32))
CUDA_DIRECT_MAX_COUT: int = int(_env_float("FASTCONV_CUDA_DIRECT_MAX_COUT", 4))
