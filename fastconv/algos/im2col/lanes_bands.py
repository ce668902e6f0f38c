"""The direct lanes kernel (``direct_lanes``) on layers of one block of output channels
whose output rows are whole groups of 8 pixels, every pixel's kernel inside the input
(LeNet's 6 -> 16 5x5 at 12x12): bands of rows (``lanes_plan.band_rows``) in groups of
16 pixels, two groups of 8 alike sharing each load of the weight (``_group16``), in a
task loop of their own.

``direct_lanes._conv_tasks`` runs these bands through ``_groups``, one function that
holds every register tile, whose registers LLVM allocates for all of them at once;
here a task's loop holds ``_group16``, and ``_group8`` for a band's last 8 pixels, on
groups of pixels in adjacent input columns (NCHW at column stride 1, or one input
channel channels last), their offsets constants. LeNet's second layer on 64 images, 2
threads, the kernel alone (Intel Xeon, best of 200 calls): 0.096-0.114 ms through
``_conv_tasks``, 0.087-0.098 in a loop of ``_group16`` alone with its offsets in
registers, 0.073-0.083 with constant offsets.

>>> import numpy as np
>>> from fastconv import conv2d
>>> x = np.ones((2, 6, 12, 12), np.float32)
>>> y = conv2d(x, np.ones((16, 6, 5, 5), np.float32), algo="im2col")
>>> y.shape, float(y[1, 15, 7, 7])
((2, 16, 8, 8), 150.0)
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ... import _lanes
from .._common import U
from .lanes_plan import PIXELS
from .lanes_tiles import _group8, _group16, _pixel_base, _write


def applies(band: int, blocks: int, pair_pixels: int, w_out: int, step: int) -> bool:
    """Whether ``conv_bands`` runs a ``direct_lanes._conv_rows`` call: rows in bands
    (``band`` > 0), one block of output channels, two groups of 8 pixels at once in
    the registers (``pair_pixels``, ``direct_lanes.PAIR_PIXELS``, is 8), output rows
    of whole groups of 8 pixels, and pixels in adjacent input columns (``step``, the
    input elements from one output pixel's to the next's along a row, is 1: NCHW at
    column stride 1, or one input channel channels last; channels last, where groups
    read every C-th value, ran no faster here than through ``_conv_tasks``: LeNet's
    second layer 0.98-1.25x its time).

    >>> applies(2, 1, 8, 8, 1), applies(2, 1, 8, 10, 1), applies(2, 1, 8, 8, 6)
    (True, False, False)
    """
    return (band > 0 and blocks == 1 and pair_pixels == PIXELS and w_out % PIXELS == 0
            and step == 1)


@njit(parallel=True, cache=True)
def conv_bands(xf, xs, fw, fb, fo, os, geo, toff, band, stream, per):
    """``direct_lanes._conv_rows`` with its arguments (no interior columns or pixel
    tile: every pixel inside) for an ``applies`` problem: one task per band of
    ``band`` output rows of an image, ``per`` tasks a run (``_tasks``)."""
    bands = (os[2] + band - 1) // band
    n_tasks = xs[0] * bands
    for chunk in prange((n_tasks + per - 1) // per):
        t0 = np.int64(chunk) * per           # one type: prange's index is unsigned
        _tasks(xf, xs, fw, fb, fo, os, geo, toff, band, stream, t0,
               min(n_tasks, t0 + per))


@njit(cache=True)
def _tasks(xf, xs, fw, fb, fo, os, geo, toff, band, stream, first, end):
    """Tasks first <= task < end of ``conv_bands``: each band's pixels in groups of 16
    along its rows, a last 8 alone, every group's pixels in adjacent input columns:
    their offsets constants (``_adjacent``) that LLVM folds into the loads' addresses
    instead of 7 registers and an add a load. Compiled on its own (as
    ``direct_lanes._conv_tasks``)."""
    xsn, xsh, xsw = xs[4], xs[6], xs[7]
    d_all, ho, wo, osn, osd, osw = os[1], os[2], os[3], os[4], os[5], os[7]
    sh, pt, pl = geo[2], geo[4], geo[5]
    nl = _lanes.count(fb)
    m = min(nl, d_all)
    bias = _lanes.load(fb, U(0))
    rstep = sh * xsh
    offs = _adjacent()
    bands = (ho + band - 1) // band
    for task in range(first, end):
        n = task // bands
        i0 = task % bands * band
        x_base = n * xsn - pt * xsh - pl * xsw
        f, f_hi = i0 * wo, min(ho, i0 + band) * wo
        while f < f_hi:
            x0 = _pixel_base(x_base, f, wo, rstep, 1)
            o = U(n * osn) + U(f) * U(osw)
            rows = (x0, toff, 0, toff.size, 0, PIXELS)
            if f_hi - f < 2 * PIXELS:          # a band's last 8 pixels
                _write(fo, o, _group8(xf, fw, bias, rows, offs, nl), PIXELS, m, osd, osw,
                       nl, stream)
                f += PIXELS
                continue
            g = f + PIXELS
            x8 = _pixel_base(x_base, g, wo, rstep, 1)
            _group16(xf, fw, bias, rows, offs, x8, nl, fo,
                     (o, o + U(PIXELS) * U(osw), m, osd, osw, stream))
            f += 2 * PIXELS
    if stream:
        _lanes.stream_fence()


@njit(inline="always")
def _adjacent():
    """The offsets of 8 pixels from the first in adjacent input columns, as constants
    (``lanes_tiles._offsets``' type)."""
    return U(0), U(1), U(2), U(3), U(4), U(5), U(6), U(7)
