"""Helpers of the Winograd transform kernels: which tiles a task covers, padded rows.

Tiles are numbered by global tile row r over the batch (image r // th, tile row r % th)
and processed in chunks of rows r0..r1; a transform task handles one channel of one
image within the chunk.
"""

from __future__ import annotations

from numba import njit

from .._common import U


@njit(inline="always")
def _images_of(r0, r1, th):
    """(first image, number of images) that global tile rows r0..r1 (th per image) touch."""
    n_first = r0 // th
    return n_first, (r1 - 1) // th - n_first + 1


@njit(inline="always")
def _task_rows(task, images, n_first, r0, r1, th):
    """(channel, image, ra, rb) of a transform task: tasks run channel-major over the
    chunk's images, and the task covers the image's global tile rows [ra, rb) within
    the chunk r0..r1."""
    n = n_first + task % images
    return task // images, n, max(r0, n * th), min(r1, (n + 1) * th)


@njit(inline="always")
def _padded_row(img, src_row, row, lo, hi, pl):
    """row[q] = img[src_row, q - pl] where that lies inside the image, else 0 (columns
    [lo, hi) of row are the image's)."""
    zero = row.dtype.type(0)
    if src_row < 0 or src_row >= img.shape[0]:
        for q in range(U(row.size)):
            row[q] = zero
        return
    src = img[src_row]
    for q in range(U(lo)):
        row[q] = zero
    for q in range(U(hi - lo)):
        row[U(lo) + q] = src[U(lo - pl) + q]
    for q in range(U(hi), U(row.size)):
        row[q] = zero

