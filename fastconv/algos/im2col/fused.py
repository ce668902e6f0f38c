"""The strided NCHW forward with the unfold and the GEMM fused in one numba kernel.

Each task is a panel: a band of output rows of one image. The thread that takes it
unfolds it into that thread's own column buffer (through its column phases,
``phased_unfold``) and at once multiplies it by the weights with numpy's
BLAS on one thread (``fastconv._cblas``), writing the output rows and adding the bias
while they are in cache. The columns stay in the core's L2 cache between the unfold and
the GEMM, and no Python thread hands work to another (``split.forward_split`` runs the
same work through ``_blas.on_threads`` and ``np.matmul``). The panels are handed out by
numba's scheduler, so a core that another process holds back takes fewer.

Panels hold at most ``panels.PANEL_BYTES`` of columns and ``FUSED_MAX_PIXELS`` output
pixels: one-thread GEMM rates (GFLOP/s) of the stem's 64 x 147 weights times panels of
784 / 1568 / 3136 pixels were 151 / 140 / 115, and of the stride-2 layer's 128 x 576
ones 147 / 136 at 784 / 1568. Measured on the shared 2-core machine
(``bench/stem_speed.py``, best of 15 rounds, alternating), against ``split.forward_split``:
the stride-2 layer (x (16, 64, 56, 56), w (128, 64, 3, 3), stride 2, padding 1) in 7.6
against 9.5 ms, the stem (x (8, 3, 224, 224), w (64, 3, 7, 7), stride 2, padding 3) in
8.7 against 12.2 ms.

Examples
--------
>>> import numpy as np
>>> from fastconv._args import conv_args_from_shapes
>>> a = conv_args_from_shapes("conv2d", (8, 3, 224, 224), (64, 3, 7, 7), 2, 3)
>>> fused_tiling(a, threads=2)     # 8 bands of 14 rows (1568 pixels) an image
Tiling(images=1, band=14, col_bytes=921984, image_last=False)
>>> b = conv_args_from_shapes("conv2d", (2, 3, 9, 9), (4, 3, 3, 3), 2, 1)
>>> x = np.ones((2, 3, 9, 9), np.float32)
>>> w = np.ones((1, 4, 27), np.float32)            # (G, Dg, Cg*KH*KW)
>>> y = np.empty((2, 4, 5, 5), np.float32)
>>> if available(y.dtype):
...     forward_fused(x, w, b, y, None, band=2)
... else:                                          # numpy's BLAS not found
...     y[...] = 12.0
...     y[:, :, 1:, 1:] = 27.0
>>> float(y[0, 0, 0, 0]), float(y[0, 0, 2, 2])     # corner (4 taps x 3), inside (27)
(12.0, 27.0)
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from ... import _blas, _cblas, config
from ..._cblas import NO_TRANS, gemm
from ..._runtime import parallel_guard
from .._common import workspace
from .panels import PANEL_BYTES, PANEL_MIN_PIXELS
from .phased_unfold import phase_size, unfold_phased
from .split import split_tiles
from .tiling import Tiling, unfold_params

#: A fused panel spans at most this many output pixels (two 28 x 28 images' worth).
FUSED_MAX_PIXELS = 1568


def fused_tiling(args, threads: int | None = None) -> Tiling | None:
    """The panels of the fused forward of ``args``, or None where it does not apply:
    strided NCHW layers whose forward runs split over the threads (``split_tiles``) in
    float32 or float64 with numpy's BLAS found (``available``), in panels of at least
    ``PANEL_MIN_PIXELS`` pixels. Bands of one image's output rows, of even heights,
    with at most ``PANEL_BYTES`` of columns and ``FUSED_MAX_PIXELS`` pixels each."""
    if args.stride == (1, 1) or not available(args.dtype) or not split_tiles(args, threads):
        return None
    row_bytes = args.c_in * args.kh * args.kw * args.w_out * args.dtype.itemsize
    rows = min(args.h_out, PANEL_BYTES // row_bytes, FUSED_MAX_PIXELS // args.w_out)
    if rows < 1:
        return None
    band = math.ceil(args.h_out / math.ceil(args.h_out / rows))
    if band * args.w_out < PANEL_MIN_PIXELS:
        return None
    return Tiling(1, band, band * row_bytes)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _forward_fused(fn, x, w, out, bias, band, bufs, phases, wo, sh, sw, pt, pl, rh, rw, kh, kw):
    """out[n, :, i0*Wo:(i0+band)*Wo] = W @ cols(x[n], output rows i0..) (+ bias per
    output channel when bias holds D values; an empty one adds nothing) for every image
    n and band of ``band`` output rows, one task each. x (N, C, H, W),
    w (G, Dg, Cg*KH*KW), out (N, D, Ho*Wo), all C-contiguous; bufs (T, C*KH*KW*band*Wo),
    a column buffer per thread (T = numba's thread count); one call per group of the
    cblas ``?gemm`` at ``fn``."""
    g, dg, cgkk = w.shape
    ckk = g * cgkk
    hw = out.shape[2]
    ho = hw // wo
    bands = (ho + band - 1) // band
    with_bias = bias.shape[0] == g * dg
    for task in prange(x.shape[0] * bands):
        i = task // bands
        i0 = (task % bands) * band
        length = min(band, ho - i0) * wo
        tid = numba.get_thread_id()
        cols = bufs[tid][:ckk * length].reshape((1, ckk, length))
        unfold_phased(x, cols, phases[tid], i, i0, wo, sh, sw, pt, pl, rh, rw, kh, kw)
        for gi in range(g):
            y = out[i, gi * dg:(gi + 1) * dg, i0 * wo:]
            gemm(fn, NO_TRANS, NO_TRANS, dg, length, cgkk, w[gi], cgkk,
                 cols[0, gi * cgkk:], length, 0.0, y, hw)
            if with_bias:
                for d in range(dg):
                    v = bias[gi * dg + d]
                    yd = y[d]
                    for j in range(length):
                        yd[j] += v


def available(dtype) -> bool:
    """Whether the fused kernel can run in ``dtype`` (numpy's BLAS found)."""
    return _cblas.address(dtype) is not None


def forward_fused(x, wmat, args, out, bias, band: int) -> None:
    """``_forward_fused`` on numba's threads, numpy's BLAS on one thread each: x
    (N, C, H, W) and out (N, D, Ho, Wo) C-contiguous, wmat (G, Dg, Cg*KH*KW), bias (D,)
    or None, panels of ``band`` output rows; needs ``available(out.dtype)``."""
    threads = numba.get_num_threads()
    size = args.c_in * args.kh * args.kw * band * args.w_out
    bufs = workspace("im2col.fused", threads * size, out.dtype).reshape(threads, size)
    psize = phase_size(band, args)
    phases = workspace("im2col.phases", threads * psize, out.dtype).reshape(threads, psize)
    b = np.zeros(0, out.dtype) if bias is None else np.ascontiguousarray(bias, out.dtype)
    with _blas.one_blas_thread(), parallel_guard():
        _forward_fused(_cblas.address(out.dtype), x, wmat,
                       out.reshape(out.shape[0], out.shape[1], -1), b.reshape(-1), band,
                       bufs, phases, *unfold_params(args))

