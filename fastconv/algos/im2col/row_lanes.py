"""The NCHW forward of an image network's input layer (a few input channels, a kernel
of many taps, wide output rows: ResNet's stem, 3 -> 64 channels 7x7 with stride 2 at
224 x 224) with an output row's pixels in the lanes of a vector register.

The direct lanes kernel (``direct_lanes``) holds a pixel's block of output channels in
a register and, in NCHW, writes each group of pixels transposed; here a register holds
``count`` consecutive output pixels of one output channel, so an output row is written
as whole vectors (past the caches where its rows start on cache lines and the output
is large, ``_lanes.can_stream``). The input's rows are first split into their column
phases, zero-padded (``_split_phases``, with ``phased_unfold``'s row splitter): phase q
of a padded row holds its columns q, q + s_w, ..., so that the output pixels j .. j +
count - 1 of row i read, for tap (c, a, b), ``count`` contiguous values:

    y[n, d, i, j] = bias[d] + sum_{c, a, b} w[d, c, a, b]
                    * phase(n, c, i*s_h + a*r_h, (b*r_w - p_l) % s_w)[j + k_b]

with k_b = (b*r_w - p_l) // s_w + ceil(p_l / s_w) (the phase rows start with that many
zero columns).

A tile (``_tile3``) accumulates 3 vectors of a row's pixels for ``BLOCK`` = 8 output
channels (24 of AVX-512's 32 registers): per tap, 3 loads of the input, 8 broadcasts of
the weight and 24 fused multiply-adds. The rest of a row runs in one-vector tiles of 8
channels (``_tile1``), the last ending at the row's end (it then overlaps the tile
before and writes those outputs again with the same values). Output channels beyond
C_out (up to a whole block) are computed from zero weights and not written.

Measured on the 2-core Intel Xeon (AVX-512), 2 threads, float32 NCHW, alternating in
one process, best of 11 rounds (``bench/stem_speed.py stem stem_1 rgb_5x5_s2 rgb_5x5
gray_7x7_s2``): this kernel's time over the path each layer took before (the direct
lanes kernel; for the 5x5 layers the unfold and GEMM), and over torch's: the stem on 8
images 0.88 and 1.07 (7.06 ms, torch 6.58), on 1 image 0.86 and 1.42; 3 -> 32 5x5
stride 2 at 128 x 128 (batch 8) 0.54 and 1.23; 3 -> 16 5x5 at 64 x 64 (batch 16) 0.40
and 1.11; 1 -> 64 7x7 stride 2 (batch 4) 0.81 and 1.06 (a busier minute before: 0.68,
0.66, 0.56, 0.47, 0.65 over the paths before). Left to the other paths, after a
prototype ran them slower than those: kernels of fewer than ``MIN_TAPS`` taps (3 -> 64
3x3 at 224 x 224, batch 4: 1.7x the GEMM's time; CIFAR's 3 -> 32 3x3: 1.07x; LeNet's
1 -> 6 5x5: 1.18x), wider inputs (16 -> 64 3x3 stride 2 at 112 x 112: 1.29x, its phases
as large as its input, 12.8 MB), rows shorter than a tile, and hosts without AVX-512's
32 registers (the tile's 24 sums would spill).

>>> import numpy as np
>>> from fastconv import conv2d
>>> x = np.ones((1, 3, 120, 120), np.float32)
>>> y = conv2d(x, np.ones((8, 3, 7, 7), np.float32), stride=2, padding=3)
>>> y.shape, float(y[0, 0, 0, 0]), float(y[0, 7, 30, 30])   # a corner: 3 x 4 x 4 taps
((1, 8, 60, 60), 48.0, 147.0)
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from numba import njit, prange

from ... import _lanes
from ..._runtime import guarded
from ...costs import Estimate, Profile
from .._common import U, read_only, view, workspace
from .direct_lanes import pack_blocks
from .phased_unfold import _phase_geometry, _split_rows

#: Output channels of a tile.
BLOCK = 8
#: Vectors of pixels of the wide tile (``_tile3``).
TILE_VECTORS = 3
#: The layers taken (``applies``): at most this many input channels and output channels
#: (a block's weight, taps x 8 values, stays in L1), and kernels of this many taps
#: C_in*KH*KW at least (fewer: the per-tile costs outweigh the taps' multiply-adds) and
#: at most.
MAX_IN_CHANNELS, MAX_OUT_CHANNELS, MIN_TAPS, MAX_TAPS = 4, 64, 48, 600
#: Multiply-adds per second per thread (float32; half for float64) for the cost model
#: (one-vector tiles counted as whole ones): the stem on 8 images, the kernel alone
#: (944M multiply-adds), Intel Xeon, 2 threads: 6.4-6.6 ms in quiet minutes, 9.5-10 in
#: busy ones (72 and 48 GMAC/s a thread).
ROW_GMACS = 60.0
#: Tasks per numba thread of ``_rows`` at least (bands of rows where images x blocks of
#: output channels are fewer).
TASKS_PER_THREAD = 4


def applies(a) -> bool:
    """Whether im2col's forward of ``a`` runs here: NCHW, one group, float32 or float64,
    at most ``MAX_IN_CHANNELS`` input and ``MAX_OUT_CHANNELS`` output channels, a kernel
    of ``MIN_TAPS`` to ``MAX_TAPS`` taps, output rows of at least one wide tile, on a
    host with AVX-512's registers (``_lanes.WIDE``). Any stride, padding and dilation.

    >>> from fastconv._args import conv_args_from_shapes
    >>> stem = conv_args_from_shapes("t", (8, 3, 224, 224), (64, 3, 7, 7), 2, 3)
    >>> applies(stem) == _lanes.WIDE
    True
    >>> applies(conv_args_from_shapes("t", (8, 3, 224, 224), (64, 3, 3, 3), 1, 1))
    False
    """
    return _lanes.WIDE and _fits(a)


@functools.lru_cache(maxsize=256)
def _fits(a) -> bool:
    """``applies`` but for the host (asked on every forward: worked out once a problem)."""
    taps = a.c_in * a.kh * a.kw
    return (not a.dims.channels_last and a.groups == 1
            and a.dtype in (np.float32, np.float64)
            and a.c_in <= MAX_IN_CHANNELS and a.c_out <= MAX_OUT_CHANNELS
            and MIN_TAPS <= taps <= MAX_TAPS
            and a.w_out >= TILE_VECTORS * _lanes.per_register(a.dtype.itemsize))


@functools.lru_cache(maxsize=64)
def _geometry(a) -> tuple[int, int, int, np.ndarray]:
    """(rows, left, width, toff): the padded rows of an image's channel that are split
    (every row the output reads), the zero columns that start a phase row and its
    length (``phased_unfold``'s geometry of a band of all output rows), and each tap's
    offset (c, a, b order, the weight's) in an image's phases from output pixel (0,
    0)'s, which the read of pixel (i, j) adds i*s_h*s_w*width + j to."""
    (sh, sw), (dh, dw) = a.stride, a.dilation
    pl = a.padding[1][0]
    rows, left, width = _phase_geometry.py_func(a.h_out, a.kh, a.kw, sh, sw, pl, dh, dw,
                                                a.w_out)
    c, ka, kb = np.meshgrid(np.arange(a.c_in), np.arange(a.kh) * dh,
                            np.arange(a.kw) * dw - pl, indexing="ij")
    toff = ((c * rows + ka) * sw + kb % sw) * width + kb // sw + left
    toff = toff.reshape(-1).astype(np.int64)
    toff.flags.writeable = False
    return rows, left, width, toff


def _row_slots(a) -> int:
    """Output pixels a row's tiles compute (whole vectors, the last one overlapping)."""
    lanes = _lanes.per_register(a.dtype.itemsize)
    wide, rest = divmod(a.w_out, TILE_VECTORS * lanes)
    return wide * TILE_VECTORS * lanes + -(-rest // lanes) * lanes


def cost(a, p: Profile) -> Estimate:
    """Model time of ``forward``: the multiply-adds of whole tiles (blocks of 8 output
    channels, rows in whole vectors) at ``ROW_GMACS`` per thread, the phases' copy at
    the profile's copy rate, and the call's fixed cost."""
    rows, _, width, _ = _geometry(a)
    blocks = -(-a.c_out // BLOCK)
    macs = a.n * a.h_out * _row_slots(a) * blocks * BLOCK * a.c_in * a.kh * a.kw
    phases = a.n * a.c_in * rows * a.stride[1] * width * a.dtype.itemsize
    seconds = (p.call_us * 1e-6 + phases / (p.copy_gbs * 1e9)
               + macs / (ROW_GMACS * 1e9 * p.threads * (4 / a.dtype.itemsize)))
    return Estimate(seconds, phases,
                    f"row lanes kernel (no GEMM, the input in column phases), "
                    f"{macs / 1e6:.3g}M multiply-adds {1e3 * seconds:.3g} ms")


def forward(x, w, args, out, bias) -> None:
    """out (N, C_out, Ho, Wo) = conv(x, w) + bias (C_out,) when given, for an
    ``applies`` problem; x (N, C_in, H, W) and w (C_out, C_in, KH, KW). Splits x into
    its phases in the calling thread's workspace, then runs ``_rows``."""
    dt = args.dtype
    rows, left, width, toff = _geometry(args)
    (sh, sw), pt = args.stride, args.padding[0][0]
    size = args.n * args.c_in * rows * sw * width
    xp = workspace("row_lanes.phases", size, dt)
    full = min(args.w // sw, width - left)
    guarded(_split_phases)(read_only(np.ascontiguousarray(x, dt)), xp,
                           (rows, sw, width, pt, left, full))
    target = out if out.flags.c_contiguous else np.empty(out.shape, dt)
    blocks = -(-args.c_out // BLOCK)
    fw = view(workspace("row_lanes.w", blocks * toff.size * BLOCK, dt),
              (blocks, toff.size, BLOCK))
    fb = workspace("row_lanes.bias", blocks * BLOCK, dt)
    pack_blocks(w.transpose(1, 2, 3, 0), bias, fw, fb)     # taps in (c, a, b) order
    stream = int(_lanes.can_stream(target, args.w_out))
    geo = (args.n, args.c_out, args.h_out, args.w_out, size // max(args.n, 1),
           sh * sw * width, blocks, _band(args.n * blocks, args.h_out))
    guarded(_rows)(xp, fw.reshape(-1), fb, target.reshape(-1), toff, geo, stream)
    if target is not out:
        out[...] = target


def _band(tasks: int, rows: int) -> int:
    """Output rows of a task of ``_rows``: all of an image's, or bands of them where
    ``tasks`` (images x blocks of channels) are fewer than ``TASKS_PER_THREAD`` a
    thread."""
    bands = -(-TASKS_PER_THREAD * numba.get_num_threads() // tasks)
    return max(1, rows // bands)


#: Phase rows a task of ``_split_phases`` splits.
SPLIT_ROWS = 32


@njit(parallel=True, cache=True)
def _split_phases(x, xp, geo):
    """xp (N, C, rows, s_w, width), flat = the rows -p_t .. rows - p_t - 1 of x (N, C, H,
    W) split into their column phases after ``left`` zero columns, zero outside the
    image (``phased_unfold._split_rows``; ``full``: the whole groups of s_w input
    columns read); geo = (rows, s_w, width, p_t, left, full). One task per
    ``SPLIT_ROWS`` rows of an image's channel."""
    n, c = x.shape[:2]
    rows, sw, width, pt, left, full = geo
    chunks = -(-rows // SPLIT_ROWS)
    zero = xp.dtype.type(0)
    for task in prange(n * c * chunks):
        t = np.int64(task)                    # one type: prange's index is unsigned
        plane, r0 = t // chunks, t % chunks * SPLIT_ROWS
        r1 = min(rows, r0 + SPLIT_ROWS)
        start = (plane * rows + r0) * sw * width
        ph = xp[start:start + (r1 - r0) * sw * width].reshape((r1 - r0, sw, width))
        _split_rows(x[plane // c, plane % c], ph, r0 - pt, left, full, zero)


@njit(parallel=True, cache=True)
def _rows(xp, fw, fb, fo, toff, geo, stream):
    """fo (N, D, Ho, Wo), flat = the convolution of the phases xp (``_split_phases``)
    by fw (D_pad/8, taps, 8), flat, plus fb (D_pad,); toff: each tap's phase offset
    (``_geometry``); geo = (N, D, Ho, Wo, elements of an image's phases, elements from
    one output row's phase rows to the next's, D_pad/8, rows of a band). One task per
    image, block of output channels and band of output rows: row by row, in tiles along
    the row, so that a task writes its 8 channels' planes as 8 runs and keeps its
    block's weight in L1 (against one task per output row of all 64 channels,
    alternating, best of 45: the stem on 8 images 0.96-0.99 of the time, on one image
    0.84). stream: every row starts on a vector boundary and whole vectors go past the
    caches."""
    n, d, ho, wo, image, row_step, blocks, band = geo
    nl = _lanes.count(fo)
    wide = TILE_VECTORS * nl
    bands = -(-ho // band)
    for task in prange(n * blocks * bands):
        t = np.int64(task)                    # one type: prange's index is unsigned
        img, blk, b = t // (blocks * bands), (t // bands) % blocks, t % bands
        d0 = blk * BLOCK
        w0 = d0 * toff.size
        for i in range(b * band, min(ho, (b + 1) * band)):
            x_row = img * image + i * row_step
            o_row = ((img * d + d0) * ho + i) * wo
            j = 0
            while j + wide <= wo:
                _tile3(xp, x_row + j, toff, fw, w0, fo, o_row + j, ho * wo, d - d0, fb,
                       d0, stream)
                j += wide
            while j < wo:
                j = min(j, wo - nl)           # the last vector ends at the row's end
                _tile1(xp, x_row + j, toff, fw, w0, fo, o_row + j, ho * wo, d - d0, fb,
                       d0, stream)
                j += nl
        if stream:
            _lanes.stream_fence()


@njit(inline="always")
def _put3(fo, o, plane, nl, left, fb, d, v0, v1, v2, r, stream):
    """Output channel d + r's three vectors (plus its bias) at o + r*plane, where r <
    left (a real channel)."""
    if r < left:
        at = U(o) + U(r) * U(plane)
        b = _lanes.splat(fo, fb[d + r])
        _lanes.put(fo, at, _lanes.add(v0, b), stream)
        _lanes.put(fo, at + U(nl), _lanes.add(v1, b), stream)
        _lanes.put(fo, at + U(2 * nl), _lanes.add(v2, b), stream)


@njit(inline="always")
def _put1(fo, o, plane, left, fb, d, v, r, stream):
    """``_put3`` for one vector."""
    if r < left:
        _lanes.put(fo, U(o) + U(r) * U(plane), _lanes.add(v, _lanes.splat(fo, fb[d + r])),
                   stream)


@njit(inline="always")
def _fma3(a0, a1, a2, s, v0, v1, v2):
    """(a0 + s*v0, a1 + s*v1, a2 + s*v2): one weight's scalar times three vectors."""
    return _lanes.fma(a0, s, v0), _lanes.fma(a1, s, v1), _lanes.fma(a2, s, v2)


@njit
def _tile3(xp, x0, toff, fw, w0, fo, o, plane, left, fb, d, stream):
    """Three vectors of pixels (input from x0, output at o) of output channels d .. d +
    7 (the weight's block at w0), over every tap."""
    nl = _lanes.count(fo)
    z = _lanes.zeros(fo)
    a0, a1, a2, b0, b1, b2, c0, c1, c2, e0, e1, e2 = z, z, z, z, z, z, z, z, z, z, z, z
    f0, f1, f2, g0, g1, g2, h0, h1, h2, k0, k1, k2 = z, z, z, z, z, z, z, z, z, z, z, z
    for t in range(U(toff.size)):
        at = U(x0) + U(toff[t])
        v0 = _lanes.load(xp, at)
        v1 = _lanes.load(xp, at + U(nl))
        v2 = _lanes.load(xp, at + U(2 * nl))
        wt = U(w0) + t * U(BLOCK)
        a0, a1, a2 = _fma3(a0, a1, a2, fw[wt], v0, v1, v2)
        b0, b1, b2 = _fma3(b0, b1, b2, fw[wt + U(1)], v0, v1, v2)
        c0, c1, c2 = _fma3(c0, c1, c2, fw[wt + U(2)], v0, v1, v2)
        e0, e1, e2 = _fma3(e0, e1, e2, fw[wt + U(3)], v0, v1, v2)
        f0, f1, f2 = _fma3(f0, f1, f2, fw[wt + U(4)], v0, v1, v2)
        g0, g1, g2 = _fma3(g0, g1, g2, fw[wt + U(5)], v0, v1, v2)
        h0, h1, h2 = _fma3(h0, h1, h2, fw[wt + U(6)], v0, v1, v2)
        k0, k1, k2 = _fma3(k0, k1, k2, fw[wt + U(7)], v0, v1, v2)
    _put3(fo, o, plane, nl, left, fb, d, a0, a1, a2, 0, stream)
    _put3(fo, o, plane, nl, left, fb, d, b0, b1, b2, 1, stream)
    _put3(fo, o, plane, nl, left, fb, d, c0, c1, c2, 2, stream)
    _put3(fo, o, plane, nl, left, fb, d, e0, e1, e2, 3, stream)
    _put3(fo, o, plane, nl, left, fb, d, f0, f1, f2, 4, stream)
    _put3(fo, o, plane, nl, left, fb, d, g0, g1, g2, 5, stream)
    _put3(fo, o, plane, nl, left, fb, d, h0, h1, h2, 6, stream)
    _put3(fo, o, plane, nl, left, fb, d, k0, k1, k2, 7, stream)


@njit
def _tile1(xp, x0, toff, fw, w0, fo, o, plane, left, fb, d, stream):
    """``_tile3`` for one vector of pixels."""
    z = _lanes.zeros(fo)
    a, b, c, e, f, g, h, k = z, z, z, z, z, z, z, z
    for t in range(U(toff.size)):
        v = _lanes.load(xp, U(x0) + U(toff[t]))
        wt = U(w0) + t * U(BLOCK)
        a, b = _lanes.fma(a, fw[wt], v), _lanes.fma(b, fw[wt + U(1)], v)
        c, e = _lanes.fma(c, fw[wt + U(2)], v), _lanes.fma(e, fw[wt + U(3)], v)
        f, g = _lanes.fma(f, fw[wt + U(4)], v), _lanes.fma(g, fw[wt + U(5)], v)
        h, k = _lanes.fma(h, fw[wt + U(6)], v), _lanes.fma(k, fw[wt + U(7)], v)
    _put1(fo, o, plane, left, fb, d, a, 0, stream)
    _put1(fo, o, plane, left, fb, d, b, 1, stream)
    _put1(fo, o, plane, left, fb, d, c, 2, stream)
    _put1(fo, o, plane, left, fb, d, e, 3, stream)
    _put1(fo, o, plane, left, fb, d, f, 4, stream)
    _put1(fo, o, plane, left, fb, d, g, 5, stream)
    _put1(fo, o, plane, left, fb, d, h, 6, stream)
    _put1(fo, o, plane, left, fb, d, k, 7, stream)
