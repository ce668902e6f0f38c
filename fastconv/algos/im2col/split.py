"""The NCHW forward's tiles split over threads, each tile on one thread.

The plain tile loop unfolds a tile with numba's threads, then multiplies it with BLAS's
threads: every tile hands the cores from one pool to the other, and each multi-threaded
GEMM waits for its slowest thread (see ``fastconv._blas``). When there are several
large tiles per thread, each thread here takes a run of whole tiles instead, unfolding
with a serial copy of the unfold kernel and multiplying on one BLAS thread; the threads
meet once, at the end.

Examples
--------
>>> import numpy as np
>>> import fastconv
>>> from fastconv._args import conv_args_from_shapes
>>> a = conv_args_from_shapes("conv2d", (16, 64, 56, 56), (128, 64, 3, 3), 2, 1)
>>> split_tiles(a, threads=2)    # 4 tiles of 4 images: two per thread
True
>>> x = np.ones((2, 3, 5, 5), np.float32)
>>> float(fastconv.conv2d(x, np.ones((4, 3, 3, 3), np.float32), algo="im2col")[0, 0, 0, 0])
27.0
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit

from ... import _blas, config
from .._common import view
from .tiling import column_buffer, gemm_sizes, tile_count, tiles, tiling, unfold_params
from .unfold import _im2col_nchw

#: The unfold kernel compiled without threads, for tiles run one per thread.
_im2col_nchw_serial = njit(cache=True, fastmath=config.FASTMATH)(_im2col_nchw.py_func)

#: Split tiles over the threads when each tile's GEMMs hold at least this many
#: multiply-adds (smaller ones already run on one BLAS thread, ``config.SMALL_GEMM_MACS``)
#: and there are at least ``SPLIT_MIN_TILES_PER_THREAD`` tiles per thread (or a multiple of
#: the thread count), so that the threads finish together.
SPLIT_MIN_TILES_PER_THREAD = 2


def split_tiles(args, threads: int | None = None) -> bool:
    """Whether the NCHW forward of ``args`` runs its tiles split over the threads:
    several tiles per thread (a multiple of the thread count, or at least
    ``SPLIT_MIN_TILES_PER_THREAD`` each) whose GEMMs are not small."""
    threads = numba.get_num_threads() if threads is None else threads
    if threads < 2 or args.dims.channels_last:
        return False
    t = tiling(args)
    if t.image_last:
        return False
    count = tile_count(args, t)
    g, dg, cgkk = gemm_sizes(args)
    macs = t.images * g * dg * cgkk * t.band * args.w_out
    even = count % threads == 0 or count >= SPLIT_MIN_TILES_PER_THREAD * threads * 2
    return count >= SPLIT_MIN_TILES_PER_THREAD * threads and even and \
        macs > config.SMALL_GEMM_MACS


def forward_split(x, wmat, args, out, bias_g) -> None:
    """The NCHW tile loop of ``drivers._forward_nchw`` with runs of whole tiles per
    thread (``split_tiles``): serial unfold, GEMM on one BLAS thread, into ``out``."""
    t = tiling(args)
    g, dg, cgkk = wmat.shape
    ckk = g * cgkk
    conv = unfold_params(args)
    todo = list(tiles(args, t))
    threads = min(numba.get_num_threads(), len(todo))
    bounds = [len(todo) * k // threads for k in range(threads + 1)]

    def part(k: int) -> None:
        buf = column_buffer(args, t)  # per thread
        for n0, nb, i0, band in todo[bounds[k]:bounds[k + 1]]:
            length = band * args.w_out
            cols = view(buf[:nb * ckk * length], (nb, ckk, length))
            _im2col_nchw_serial(x, cols, n0, i0, *conv)
            y = view(out[n0:n0 + nb, :, i0:i0 + band, :], (nb, g, dg, length))
            np.matmul(wmat, view(cols, (nb, g, cgkk, length)), out=y)
            if bias_g is not None:
                y += bias_g

    _blas.on_threads(part, threads)
