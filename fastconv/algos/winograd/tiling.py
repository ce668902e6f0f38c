"""The Winograd tile size, the chunks of tile rows (NCHW: split over the threads,
``split_rows``), the transformed-tile workspace and the polyphase split of dilated
layers."""

from __future__ import annotations

import math

import numba

from ... import config
from .._common import serial_twin, workspace
from .f2 import _input_transform, _kernel_transform, _output_transform
from .f4 import _input_transform4, _kernel_transform4, _output_transform4

#: Output block size m of F(m x m, 3x3) -> (kernel transform, input transform, output
#: transform).
_KERNELS = {2: (_kernel_transform, _input_transform, _output_transform),
            4: (_kernel_transform4, _input_transform4, _output_transform4)}
#: The input and output transforms compiled without threads, for layers whose tile rows
#: are split over the threads (``per_thread``), by m.
_SERIAL = {m: (serial_twin(kernels[1]), serial_twin(kernels[2]))
           for m, kernels in _KERNELS.items()}


def tile_size() -> int:
    """The output block m of F(m x m, 3x3) that ``algo="winograd"`` uses:
    ``config.WINOGRAD_TILE`` (4 by default; 2 is the more accurate variant)."""
    m = int(config.WINOGRAD_TILE)
    if m not in _KERNELS:
        raise ValueError(f"conv2d: config.WINOGRAD_TILE={config.WINOGRAD_TILE!r} must be 2 "
                         "or 4 (F(2x2, 3x3) or F(4x4, 3x3))")
    return m


def transformed(m: int) -> int:
    """Values per transformed tile: (m + 2)^2."""
    return (m + 2) * (m + 2)


def tile_grid(h_out: int, w_out: int, m: int) -> tuple[int, int]:
    """Tile rows and tile columns covering an h_out x w_out output with m x m blocks."""
    return -(-h_out // m), -(-w_out // m)


def chunk_rows(args, m: int | None = None) -> int:
    """Tile rows per chunk of an NCHW F(m x m, 3x3) (default: ``tile_size()``): each
    thread's chunks of its share of the tile rows, or the chunks of a wide layer
    (``split_rows``)."""
    m = tile_size() if m is None else m
    th, tw = tile_grid(args.h_out, args.w_out, m)
    return split_rows(args.n * th, tw, args.c_in // args.groups, args.c_out // args.groups,
                      args.dtype.itemsize, m)[1]


#: NCHW layers of at most this many channels per group, in and out together, split
#: their tile rows over the threads (``per_thread``): each thread transforms its own
#: chunks with single-threaded kernels and runs their GEMMs on one BLAS thread, so a
#: chunk stays in its core's cache from its transforms to its GEMMs and back. Against
#: chunks of 16 MiB whose transforms and GEMMs are each split over both threads
#: (2 threads, float32, F(4x4, 3x3)): forward 0.78x, weight gradient 0.73x on the bench
#: suite's cifar layer (32 -> 32 channels), 0.76x and 0.95x on resnet_56 (64 -> 64);
#: resnet_28 (128 -> 128) forward 1.03-1.07x, resnet_14 (256 -> 256) 1.07-1.12x, so
#: wider layers keep the shared chunks.
PER_THREAD_MAX_CHANNELS = 128
#: Bytes of transformed tiles and GEMM operand or result one thread's chunk aims at
#: (``split_rows``): 4 MiB ran best on the cifar and resnet_56 layers (2-8 MiB tried).
THREAD_CHUNK_BYTES = 4 << 20
#: Tiles per thread's chunk at least (the GEMMs' long side), whatever
#: ``THREAD_CHUNK_BYTES`` says: thinner GEMMs run below their rate.
THREAD_CHUNK_TILES = 256


def per_thread(cg: int, dg: int) -> bool:
    """Whether an NCHW layer of ``cg`` -> ``dg`` channels per group splits its tile rows
    over the threads (``PER_THREAD_MAX_CHANNELS``)."""
    return cg + dg <= PER_THREAD_MAX_CHANNELS


def split_rows(total_rows, tw, cg, dg, itemsize, m) -> tuple[int, int]:
    """(threads, rows) of an NCHW F(m x m, 3x3) over ``total_rows`` tile rows of tw
    tiles each.

    A layer that splits its tile rows (``per_thread``) gives one even run to each
    thread (as many as numba uses, at most one per row), and each thread goes through
    its run in chunks of ``rows`` tile rows: about ``THREAD_CHUNK_BYTES`` of (m+2)^2 *
    (Cg + Dg) * rows * tw elements, at least ``THREAD_CHUNK_TILES`` tiles, at most the
    thread's run, ``config.WINOGRAD_CHUNK_BYTES`` and its share of
    ``config.WORKSPACE_BYTES``; at least one row; the chunks of a run evened out (two of
    28 rows rather than 37 and 19). A wider layer has one run (threads 1) in chunks of
    ``config.WINOGRAD_CHUNK_BYTES`` within the workspace budget, each chunk's transforms
    and GEMMs split over the threads."""
    if not per_thread(cg, dg):
        return 1, _rows_per_chunk(total_rows, tw, cg, dg, itemsize, m)
    threads = max(1, min(numba.get_num_threads(), total_rows))
    run = -(-total_rows // threads)
    per_row = transformed(m) * (cg + dg) * tw * itemsize
    want = max(THREAD_CHUNK_BYTES // per_row, -(-THREAD_CHUNK_TILES // tw))
    cap = min(config.WINOGRAD_CHUNK_BYTES, config.WORKSPACE_BYTES // threads) // per_row
    rows = max(1, min(run, want, cap))
    return threads, -(-run // -(-run // rows))


def thread_runs(total_rows: int, threads: int) -> list[tuple[int, int]]:
    """The even runs [lo, hi) of tile rows, one per thread (``split_rows``)."""
    return [(total_rows * k // threads, total_rows * (k + 1) // threads)
            for k in range(threads)]


def _rows_per_chunk(total_rows, tw, cg, dg, itemsize, m, chunk_bytes=None,
                    budget=None) -> int:
    chunk_bytes = config.WINOGRAD_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    budget = config.WORKSPACE_BYTES if budget is None else budget
    per_row = transformed(m) * (cg + dg) * tw * itemsize
    return max(1, min(total_rows, min(chunk_bytes, budget) // per_row))


def workspace_bytes(args) -> int:
    """Scratch bytes of the forward: the chunks' transformed tiles and GEMM results (one
    per thread in NCHW, ``split_rows``; one in NHWC) and the transformed kernel (both
    layouts have transforms of their own)."""
    item = args.dtype.itemsize
    m = tile_size()
    t = transformed(m)
    th, tw = tile_grid(args.h_out, args.w_out, m)
    cg, dg = args.c_in // args.groups, args.c_out // args.groups
    if args.dims.channels_last:
        threads, rows = 1, _rows_per_chunk(args.n * th, tw, cg, dg, item, m)
    else:
        threads, rows = split_rows(args.n * th, tw, cg, dg, item, m)
    return threads * t * (cg + dg) * rows * tw * item + t * args.c_out * cg * item


def chunks(args, m: int | None = None) -> int:
    """Chunks of tile rows the forward (or, with m, F(m x m, 3x3)) runs in, over all
    threads (``split_rows``; NHWC: one run, ``nhwc.run_nhwc``)."""
    m = tile_size() if m is None else m
    th, tw = tile_grid(args.h_out, args.w_out, m)
    cg, dg = args.c_in // args.groups, args.c_out // args.groups
    if args.dims.channels_last:
        return math.ceil(args.n * th / _rows_per_chunk(args.n * th, tw, cg, dg,
                                                       args.dtype.itemsize, m))
    threads, rows = split_rows(args.n * th, tw, cg, dg, args.dtype.itemsize, m)
    return sum(math.ceil((hi - lo) / rows) for lo, hi in thread_runs(args.n * th, threads))


#: Elements between consecutive planes of the transformed tiles beyond the plane itself:
#: the transforms write/read all (m+2)^2 planes at once, and planes a multiple of 4 KiB
#: apart all map to the same cache sets (the F(4x4, 3x3) input transform ran 1.5-2x
#: slower so).
PLANE_PAD = 16


def problem(x_shape, y_shape, groups: int, m: int, itemsize: int):
    """(th, tw, Cg, Dg, threads, rows) of an NCHW F(m x m, 3x3) from x (N, C_in, H, W)
    to y (N, C_out, Ho, Wo): tile rows and columns per image, channels per group, and
    the threads and tile rows per chunk (``split_rows``)."""
    n, c_in = x_shape[:2]
    c_out, ho, wo = y_shape[1:]
    cg, dg = c_in // groups, c_out // groups
    th, tw = tile_grid(ho, wo, m)
    return (th, tw, cg, dg) + split_rows(n * th, tw, cg, dg, itemsize, m)


def chunk_planes(total_rows: int, rows: int, tw: int, cg: int, dg: int, m: int, dtype,
                 start: int = 0):
    """For every chunk of ``rows`` of the tile rows ``start`` .. ``total_rows``: (r0, r1,
    cols, (v, v_planes), (p, p_planes)), tile rows r0..r1 of cols = (r1 - r0)*tw tiles,
    with this thread's planes (``_planes``) of the chunk's transformed input (Cg rows)
    and of its other GEMM operand or result (Dg rows)."""
    t = transformed(m)
    for r0 in range(start, total_rows, rows):
        r1 = min(total_rows, r0 + rows)
        cols = (r1 - r0) * tw
        yield (r0, r1, cols, _planes("winograd_v", t, cg, cols, dtype),
               _planes("winograd_m", t, dg, cols, dtype))


def _planes(slot, t, rows, cols, dtype):
    """A workspace of t planes (rows, cols), PLANE_PAD elements apart: returned as the
    (t, rows, cols) view for the GEMMs and the (t, rows*cols + PLANE_PAD) array the
    kernels index (plane e, element row*cols + col)."""
    stride = rows * cols + PLANE_PAD
    flat = workspace(slot, t * stride, dtype).reshape(t, stride)
    return flat[:, :rows * cols].reshape(t, rows, cols), flat


def phases(out: int, pad: int, dilation: int) -> list[tuple[int, int, int, int]]:
    """The polyphase split of one axis of a dilated 3x3 correlation with stride 1.

    Output i = d*i' + rho reads inputs i + d*a - pad = d*(i' + a - p') + sigma with
    sigma = (rho - pad) mod d and p' = -floor((rho - pad) / d): an undilated correlation
    of the input's phase sigma (every d-th element from sigma) with padding p' before it.
    Returns (rho, sigma, p', outputs of phase rho) for every phase with outputs."""
    out_phases = []
    for rho in range(min(dilation, out)):
        sigma = (rho - pad) % dilation
        out_phases.append((rho, sigma, -((rho - pad) // dilation),
                           len(range(rho, out, dilation))))
    return out_phases
