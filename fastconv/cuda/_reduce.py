"""Per-channel reductions over (N, H*W): one block per channel, two stages.

Each thread sums a strided share of the channel into a register, then the block adds the
partial sums in a shared-memory tree (``block_sum``). Every output element is written by
thread 0 of its own block: no atomics, and the result does not depend on timing.
Arrays are contiguous NCHW viewed as (N, C, H*W).
"""

from __future__ import annotations

import functools
import types

import numba
import numpy as np
from numba import cuda

from .. import config


def _block_sum(buf, value):
    """The sum of ``value`` over the block (blockDim.x a power of two); every thread gets it."""
    tid = cuda.threadIdx.x
    buf[tid] = value
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if tid < s:
            buf[tid] += buf[tid + s]
        cuda.syncthreads()
        s //= 2
    total = buf[0]
    cuda.syncthreads()  # buf may be reused right after
    return total


def device_function(py_fn, module_globals):
    """Compile ``py_fn`` as a device function that resolves its globals (``cuda``) in
    ``module_globals``, the namespace of the kernels that call it.

    numba's CUDA simulator swaps the ``cuda`` module for its fake once per launch in the
    kernel's module, but per call in a device function's own module, and that per-call
    swap races between the threads of a block (one thread restores the real module while
    another is still inside: "module 'numba.cuda' has no attribute 'threadIdx'"). Bound to
    the kernel module's globals, the device function sees the launch's swap. On a GPU the
    compiled code is the same either way."""
    fn = types.FunctionType(py_fn.__code__, module_globals, py_fn.__name__,
                            py_fn.__defaults__, py_fn.__closure__)
    return cuda.jit(device=True)(fn)


block_sum = device_function(_block_sum, globals())


def reduce_threads() -> int:
    t = int(config.CUDA_REDUCE_THREADS)
    if t < 1 or t & (t - 1):
        raise ValueError(f"config: CUDA_REDUCE_THREADS={t} must be a power of two")
    return t


@functools.cache
def channel_sum_kernel(dtype: str, threads: int):
    nb_dtype = numba.from_dtype(np.dtype(dtype))

    @cuda.jit
    def _channel_sum(g, out):
        """out[c] = sum over n, s of g[n, c, s]."""
        buf = cuda.shared.array(threads, nb_dtype)
        c = cuda.blockIdx.x
        hw = g.shape[2]
        acc = out.dtype.type(0)
        for q in range(cuda.threadIdx.x, g.shape[0] * hw, cuda.blockDim.x):
            acc += g[q // hw, c, q % hw]
        total = block_sum(buf, acc)
        if cuda.threadIdx.x == 0:
            out[c] = total

    return _channel_sum


def channel_sum(g3, out) -> None:
    """out (C,) = g3 (N, C, HW) summed over N and HW."""
    c = g3.shape[1]
    if c == 0:
        return
    threads = reduce_threads()
    channel_sum_kernel(np.dtype(g3.dtype).name, threads)[c, threads](g3, out)
