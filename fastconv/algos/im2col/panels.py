"""The split NCHW forward's tiles cut to the size of a core's L2 cache ("panels").

Split over the threads (``split``), each thread unfolds a tile and multiplies it on its
own core. Tiles of ``config.IM2COL_CHUNK_BYTES`` (8 MiB: a stem layer's whole image,
7.4 MB of columns) outgrow that core's L2 cache: the unfold writes the columns out to
memory and the GEMM reads them back. Panels of at most ``PANEL_BYTES`` stay in L2
between the two, as long as each panel's GEMM still spans ``PANEL_MIN_PIXELS`` output
pixels (narrower GEMMs run slower than the traffic they save). Measured on one core
(serial unfold + one-thread OpenBLAS, time per layer against 8 MiB tiles): the stem
(x (8, 3, 224, 224), w (64, 3, 7, 7), stride 2, padding 3) 0.82 in bands of 31 rows;
stride2 (x (16, 64, 56, 56), w (128, 64, 3, 3), stride 2) 0.91 in one-image tiles;
a (128, 128, 28, 28) 3x3 layer 1.19 in 16-row bands of 448 pixels (not taken).

Examples
--------
>>> from fastconv._args import conv_args_from_shapes
>>> a = conv_args_from_shapes("conv2d", (8, 3, 224, 224), (64, 3, 7, 7), 2, 3)
>>> t = panel_tiling(a, threads=2)
>>> t.images, t.band, t.col_bytes      # 4 bands of 28 rows an image, 1.8 MB each
(1, 28, 1843968)
>>> b = conv_args_from_shapes("conv2d", (16, 128, 28, 28), (128, 128, 3, 3), 1, 1)
>>> panel_tiling(b, threads=2) is None  # panels of 448 pixels: too narrow
True
"""

from __future__ import annotations

import math

from .split import split_tiles
from .tiling import Tiling, tiling

#: Columns per panel: the per-core L2 cache (2 MiB on the reference machine).
PANEL_BYTES = 2 << 20

#: A panel's GEMM spans at least this many output pixels (one 28x28 image): a 128 x 1152
#: weight matrix times 448-pixel panels ran 1.19x slower than 8 MiB tiles.
PANEL_MIN_PIXELS = 784


def panel_tiling(args, threads: int | None = None) -> Tiling | None:
    """The L2-sized tiling of the split NCHW forward of ``args`` (``split_tiles``), or
    None when its tiles already fit in ``PANEL_BYTES`` or panels would be too narrow.

    Whole images (as many as fit in ``PANEL_BYTES``) when one fits, else bands of one
    image's output rows, of even heights (the stem's 112 rows: 4 bands of 28, not
    31, 31, 31 and 19)."""
    if not split_tiles(args, threads):
        return None
    if tiling(args).col_bytes <= PANEL_BYTES:
        return None
    t = tiling(args, chunk_bytes=PANEL_BYTES)
    if t.band < args.h_out:
        band = math.ceil(args.h_out / math.ceil(args.h_out / t.band))
        t = Tiling(1, band, t.col_bytes // t.band * band)
    if t.images * t.band * args.w_out < PANEL_MIN_PIXELS:
        return None
    return t
