"""Helpers of the pooling kernels: how tasks share out the work, and the driver of the
row loops that sweep a window's column taps (``window_row``).

The plane kernels and the NHWC channel-block kernels run their parallel loop over
(outer item, block) pairs, the outer item a plane or an image and the block a run of
output rows, input rows or channels (``task_block``); each task owns what it writes
(see the package docstring).
"""

from __future__ import annotations

from numba import njit

from ..algos._common import valid_range

C_BLOCK = 16  # channels per task in the NHWC kernels that parallelise over (image, channels)


def row_block(n_planes: int, h_out: int, tasks: int = 256) -> int:
    """Output rows per task for the plane kernels: whole planes when there are many,
    bands of rows otherwise, so there are about ``tasks`` tasks to share out."""
    return max(1, min(h_out, (n_planes * h_out) // tasks))


@njit(inline="always")
def n_blocks(total, size):
    """Blocks of ``size`` that cover ``total`` indices (the last one may be short)."""
    return (total + size - 1) // size


@njit(inline="always")
def task_block(task, size, total):
    """(outer, lo, hi): task ``task`` of a parallel loop over n_blocks(total, size) blocks
    per outer item (a plane or an image) is outer item ``task // n_blocks``, indices
    [lo, hi) of its block."""
    n_blk = n_blocks(total, size)
    lo = (task % n_blk) * size
    return task // n_blk, lo, min(lo + size, total)


@njit(inline="always")
def window_row(taps, src, dst, kw, pw, rw, sw, wd, wo):
    """Every column tap b < kw of a window row: ``taps(src, dst, j_lo, j_hi, off, sw)``
    with off = b*rw - pw, the tap's column offset, and [j_lo, j_hi) the outputs j < wo
    whose column j*sw + off lies inside the row (width wd).

    Strides 1 and 2 reach ``taps`` as literals: with the unsigned indices of the tap
    loops (``U`` in ``algos._common``) LLVM then vectorises them (about 4x on 2x2/2 max
    pooling). Inlined, ``taps`` included, so each kernel compiles its own copy."""
    for b in range(kw):
        off = b * rw - pw
        j_lo, j_hi = valid_range(wo, off, sw, wd)
        if sw == 1:
            taps(src, dst, j_lo, j_hi, off, 1)
        elif sw == 2:
            taps(src, dst, j_lo, j_hi, off, 2)
        else:
            taps(src, dst, j_lo, j_hi, off, sw)
