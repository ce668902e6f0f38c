"""Helpers of the Winograd transform kernels: which tiles a task covers, padded rows,
the kernel transform's stores.

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
def _task_count(channels, r0, r1, th):
    """Tasks of a transform over the chunk r0..r1: one per channel and image it touches."""
    return channels * _images_of(r0, r1, th)[1]


@njit(inline="always")
def _task_plane(a, task, c0, r0, r1, th):
    """(channel, image, ra, rb, plane) of a transform task on a (N, C, rows, columns):
    tasks run channel-major over the chunk's images; the task covers the image's global
    tile rows [ra, rb) within the chunk r0..r1 and reads or writes the plane
    a[image, c0 + channel]."""
    n_first, images = _images_of(r0, r1, th)
    n = n_first + task % images
    c = task // images
    return c, n, max(r0, n * th), min(r1, (n + 1) * th), a[n, c0 + c]


@njit(inline="always")
def _store_rows(u, o, tmp):
    """u[o // Dg, e, o % Dg, :] = tmp[e] for every entry e: a kernel-transform task's
    values of output channel o (tmp (T, Cg), formed in a local buffer) stored into u
    (G, T, Dg, Cg) row by row (T interleaved stores a plane apart thrash the cache: 4x
    slower)."""
    dg = u.shape[2]
    ug = u[o // dg]
    d = o % dg
    for e in range(tmp.shape[0]):
        ug[e, d, :] = tmp[e]


@njit(inline="always")
def _scalars(a, v0, v1, v2):
    """v0, v1, v2 in the dtype of array a (numba computes int * float32 in float64, so the
    transforms' integer coefficients are passed as values of the array's type)."""
    t = a.dtype.type
    return t(v0), t(v1), t(v2)


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
