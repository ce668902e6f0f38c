"""The NHWC forward with the unfold and the GEMM fused in one numba kernel.

The NHWC counterpart of ``fused``. In NHWC a run of output pixels (n, i, j), in order,
is a block of output rows (pixels, D) of the output itself, and its columns are
(pixels, G, KH*KW*Cg) rows whose every tap is a contiguous run of Cg channels (no phase
split needed). Each task is a panel: a band of ``band`` consecutive output rows of the
batch (rows of the flattened (N*Ho) row index, so a panel may run from one image into
the next). The thread that takes it unfolds it into that thread's own column buffer
(``unfold.unfold_row_nhwc``) and at once multiplies it by the HWIO weight
(KH*KW*Cg, Dg) per group with numpy's BLAS on one thread (``fastconv._cblas``),
straight into the output rows; a bias is written into those rows first and the GEMM
adds to it (beta = 1). The columns stay in the core's L2 cache between the unfold and
the GEMM, and the panels are handed out by numba's scheduler. Layers that
``indirect_nhwc`` takes (the register tiles' layers whose weight fits L2) skip the
column buffer altogether.

Examples
--------
>>> import numpy as np
>>> from fastconv._args import conv_args_from_shapes
>>> a = conv_args_from_shapes("conv2d", (8, 224, 224, 3), (7, 7, 3, 64), 2, 3,
...                           layout="NHWC")
>>> fused_nhwc_tiling(a, threads=2)     # 64 panels of 14 rows (1568 pixels)
Tiling(images=1, band=14, col_bytes=921984, image_last=False)
>>> b = conv_args_from_shapes("conv2d", (2, 9, 9, 3), (3, 3, 3, 4), 2, 1, layout="NHWC")
>>> x = np.ones((2, 9, 9, 3), np.float32)
>>> w = np.ones((1, 27, 4), np.float32)            # (G, KH*KW*Cg, Dg)
>>> y = np.empty((2, 5, 5, 4), np.float32)
>>> if available(y.dtype):
...     forward_fused_nhwc(x, w, b, y, None, band=2)
... else:                                          # numpy's BLAS not found
...     y[...] = 27.0
...     y[:, 0, :] = y[:, :, 0] = 18.0
...     y[:, 0, 0] = 12.0
>>> float(y[0, 0, 0, 0]), float(y[0, 0, 2, 0]), float(y[1, 2, 2, 3])
(12.0, 18.0, 27.0)
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from ... import _blas, _cblas, _lanes, _small_gemm, config
from ..._cblas import NO_TRANS, gemm
from ..._runtime import parallel_guard
from ..._small_gemm import TILE_ROWS, panel_product
from .._common import workspace
from .fused import FUSED_MAX_PIXELS, available
from .panels import PANEL_BYTES, PANEL_MIN_PIXELS
from .tiling import Tiling, is_pointwise, unfold_params
from .unfold import unfold_row_nhwc

#: A layer runs fused only when its panels number at least this many per thread (so the
#: threads finish together).
MIN_PANELS_PER_THREAD = 2
#: The fewest registers of output channels whose panels multiply in registers
#: (``register_tiles``): two blocks of ``_small_gemm.panel_product``'s 4.
TILE_MIN_REGISTERS = 8


def fused_nhwc_tiling(args, threads: int | None = None) -> Tiling | None:
    """The panels of the fused NHWC forward of ``args``, or None where it does not
    apply: NHWC layers other than pointwise ones (which need no unfold), strided or not
    (stride 1 ran 0.7-0.98x the time of the tile loop: cifar, resnet_56, resnet_28, a
    5x5 and a dilated layer, LeNet's first) and with more than one output channel per
    group (a depthwise layer's per-group products (pixels x 9) @ (9 x 1) ran 1.27x the
    tile loop's time), in float32 or float64 with numpy's BLAS found
    (``fused.available``) and at least two of numba's threads. Bands of ``band``
    consecutive output rows of the batch (``Tiling.images`` is 1, ``col_bytes`` one
    panel's columns) with at most ``PANEL_BYTES`` of columns and ``FUSED_MAX_PIXELS``
    pixels each, at least ``PANEL_MIN_PIXELS`` pixels, and at least
    ``MIN_PANELS_PER_THREAD`` panels per thread (the rows cut evenly into a multiple of
    the thread count when they are few)."""
    threads = numba.get_num_threads() if threads is None else threads
    if (not args.dims.channels_last or is_pointwise(args) or threads < 2
            or args.c_out == args.groups or not available(args.dtype)):
        return None
    row_bytes = args.c_in * args.kh * args.kw * args.w_out * args.dtype.itemsize
    total = args.n * args.h_out
    rows = min(total, PANEL_BYTES // row_bytes, FUSED_MAX_PIXELS // args.w_out)
    if rows < 1:
        return None
    panels = math.ceil(total / rows)
    if panels < MIN_PANELS_PER_THREAD * threads * 2:     # few: a multiple of the threads
        panels = math.ceil(panels / threads) * threads
    band = math.ceil(total / panels)
    t = Tiling(1, band, band * row_bytes)
    if band * args.w_out < PANEL_MIN_PIXELS or panel_count(args, t) < \
            MIN_PANELS_PER_THREAD * threads:
        return None
    return t


def register_tiles(args) -> bool:
    """Whether the panels' products run in registers (``_small_gemm.panel_product``)
    instead of through BLAS: one group of at least ``TILE_MIN_REGISTERS`` registers of
    output channels, on a host with the registers for it
    (``_small_gemm.FOUR_REGISTER_TILES``). Measured, float32, 2 threads, alternating
    with torch (channels_last): the stride-2 layer (x (16, 56, 56, 64), 3x3 to 128,
    stride 2, padding 1) 8.9-9.6 ms against 10.2-10.8 through BLAS (torch 9.2-9.4); the
    stem (3 -> 64 7x7, stride 2, one block of 4 registers) 11.1 against 10.3, so it
    stays with BLAS."""
    lanes = _lanes.per_register(args.dtype.itemsize)
    return (_small_gemm.FOUR_REGISTER_TILES and args.groups == 1
            and args.c_out >= TILE_MIN_REGISTERS * lanes)


def panel_count(args, t: Tiling) -> int:
    """How many panels ``fused_nhwc_tiling``'s ``t`` cuts the batch's N*Ho output rows
    into."""
    return math.ceil(args.n * args.h_out / t.band)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _forward_fused_nhwc(fn, x, w, out, bias, band, bufs, tiles, ho, wo, sh, sw, pt, pl, rh,
                        rw, kh, kw):
    """out[q0:q0 + pixels] = cols(x, pixels q0..) @ W per group (+ bias), for every band
    of ``band`` output rows of the batch (pixels in (n, i, j) order), one task each.
    x (N, H, W, C), w (G, KH*KW*Cg, Dg), out (N*Ho*Wo, D), all C-contiguous; bias (D,)
    or empty; bufs (T, band*Wo*G*KH*KW*Cg), a column buffer per thread (T = numba's
    thread count); one call per group of the cblas ``?gemm`` at ``fn``, or with
    ``tiles`` (one group, ``register_tiles``) ``_small_gemm.panel_product``. With a
    bias, the output rows are set to it and the GEMMs add to them (the register tiles
    write the products, and the bias is added after)."""
    _, h, wd, c_all = x.shape
    g, kkc, dg = w.shape
    d_all = g * dg
    flat = x.reshape(x.size)
    rows = x.shape[0] * ho
    tasks = (rows + band - 1) // band
    with_bias = bias.shape[0] == d_all
    beta = 1.0 if with_bias else 0.0
    zero = out.dtype.type(0)
    params = (sh, sw, pt, pl, rh, rw, kh, kw)
    for task in prange(tasks):
        q0 = task * band * wo
        length = min(band * wo, rows * wo - q0)
        cols = bufs[numba.get_thread_id()][:length * g * kkc].reshape((length, g, kkc))
        r0 = task * band
        for r in range(r0, r0 + length // wo):
            unfold_row_nhwc(flat, cols, (r - r0) * wo, r // ho, r % ho, h, wd, c_all, wo,
                            params, zero)
        y = out[q0:q0 + length]
        fc = cols.reshape(cols.size)
        fy = y.reshape(y.size)
        if tiles and length >= TILE_ROWS:         # one group: (length, KKC) @ (KKC, D)
            panel_product(fc, 0, kkc, w.reshape(w.size), 0, dg, fy, 0, d_all, length, dg,
                          kkc)
            if with_bias:
                for p in range(length):
                    for d in range(d_all):
                        y[p, d] += bias[d]
        else:
            if with_bias:
                for p in range(length):
                    y[p] = bias
            for gi in range(g):
                gemm(fn, NO_TRANS, NO_TRANS, length, dg, kkc, fc[gi * kkc:], g * kkc, w[gi],
                     dg, beta, fy[gi * dg:], d_all)


def forward_fused_nhwc(x, wmat, args, out, bias, band: int) -> None:
    """``_forward_fused_nhwc`` on numba's threads, numpy's BLAS on one thread each: x
    (N, H, W, C) and out (N, Ho, Wo, D) C-contiguous, wmat (G, KH*KW*Cg, Dg) C-contiguous,
    bias (D,) or None, panels of ``band`` output rows of the batch; needs
    ``available(out.dtype)``."""
    threads = numba.get_num_threads()
    size = args.c_in * args.kh * args.kw * band * args.w_out
    bufs = workspace("im2col.fused_nhwc", threads * size, out.dtype).reshape(threads, size)
    b = np.zeros(0, out.dtype) if bias is None else np.ascontiguousarray(bias, out.dtype)
    with _blas.one_blas_thread(), parallel_guard():
        _forward_fused_nhwc(_cblas.address(out.dtype), x, wmat,
                            out.reshape(-1, out.shape[3]), b.reshape(-1), band, bufs,
                            register_tiles(args), args.h_out, *unfold_params(args))
