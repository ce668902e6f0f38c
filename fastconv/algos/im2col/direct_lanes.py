"""The direct lanes convolution: small layers on many small images (LeNet's 6 -> 16
channels 5x5) in one parallel numba kernel, without a layout copy or a GEMM, in either
layout (the kernel takes the input's and output's element strides).

``_conv_rows`` (the register tiles it runs are in ``lanes_tiles``) takes one output row
(n, i) per task and, for each block of ``count`` output channels (one SIMD register,
``fastconv._lanes``), accumulates 8 output pixels of the row at once in 8 registers:

    acc_p += x[n, c, i*s_h - p_t + a*r_h, (j + p)*s_w - p_l + b*r_w] * w[block, c, a, b]

over the taps (a, b, c): one load of the weight's lanes feeds 8 fused multiply-adds,
each with one input value in every lane, and the weight stays in L1. Blocks run in pairs
where there are two, each input value loaded once for both: 8 pixels x 2 blocks
(``_group8x2``, 16 accumulators; 5-18% faster on the small ResNets' stride-2 layers)
with AVX-512's 32 registers, 4 pixels x 2 blocks twice (``_group4x2``) with AVX2's 16
(``PAIR_PIXELS``). A layer of one block (LeNet's 16 channels) runs two groups of 8
pixels whose inputs lie the same offsets apart at once instead (``_group16``, 16
accumulators, AVX-512), and so does each block of a pair in NCHW where 16 pixels of a
row lie alike: a channel's 16 pixels are one whole 64-byte line of its row, where
``_group8x2`` wrote halves of lines (the stem, 3 -> 64 7x7 stride 2 on 8 images,
alternating processes: 9.93-10.06 -> 9.70-9.81 ms, AMD EPYC). The 8 pixels' inputs lie
s_w column strides apart; a group's offsets step from pixel to pixel (``_offsets``). The
taps are ordered per kernel row as two nested levels, each with its own input stride,
and the weight is packed in the same order (layout as data, ``_tap_order``): NHWC
without column dilation: one run of KW*C contiguous values; otherwise the longer of the
kernel columns and the channels inner. A register tile runs them as one flat loop over a
table of their input offsets (``_tap_offsets``): with the levels as nested loops, LLVM
kept one pointer per pixel as a loop variable, spilled them to the stack and updated
them there on every tap (LeNet's 6 -> 16 5x5 layer ran 1.35-1.67x slower, 16 -> 16 3x3
at 28x28 1.25-1.5x; AMD EPYC with AVX-512).

The 8 pixels must lie inside the image's columns (a row's last few repeat the first
pixel's taps and drop those sums; at most 4 run in 4 accumulators, ``_group4``); pixels
whose kernel reaches into the left or right padding run one at a time over their valid
columns, unless the input is first copied zero-padded and channels last
(``_prepadded``). Rows of taps outside the image are skipped. The bias starts each
accumulator; output channels beyond C_out (up to a whole block) are computed from zero
weights and not written. An output pixel's lanes are one vector store in NHWC; in NCHW a
group's 8 registers are written transposed, as runs of 8 pixels per channel
(``_lanes.store_columns``; 1.05-1.1x faster than lane by lane).

>>> import numpy as np
>>> from fastconv import conv2d
>>> x = np.ones((8, 6, 6, 2), np.float32)            # NHWC
>>> w = np.ones((3, 3, 2, 16), np.float32)           # HWIO
>>> y = conv2d(x, w, padding=1, layout="NHWC", algo="im2col")
>>> float(y[0, 0, 0, 0]), float(y[0, 2, 2, 15])      # a corner: 2 channels x 4 taps
(8.0, 18.0)
>>> y = conv2d(np.ones((8, 16, 9, 9), np.float32), np.ones((16, 16, 3, 3), np.float32),
...            stride=2, algo="im2col")               # NCHW
>>> y.shape, float(y[7, 15, 3, 3])
((8, 16, 4, 4), 144.0)
"""

from __future__ import annotations

import functools

import numpy as np
from numba import get_num_threads, njit, prange

from ... import _lanes
from ..._runtime import guarded
from ...layout import NHWC
from .._common import U, interior_columns, read_only, view, workspace
from . import lanes_bands
from .image_last import _flat_view, contiguous_geometry, strided_flat
from .lanes_plan import PIXELS, _prepadded, band_rows
from .lanes_tiles import (
    _edge_pixel,
    _group4,
    _group4x2,
    _group8,
    _group8x2,
    _group16,
    _offsets,
    _pixel_base,
    _put,
    _write,
)
from .padded import padded_channels_last, padded_size

#: Pixels of the register tile that runs a pair of blocks of output channels:
#: ``_group8x2`` (8 pixels, 16 accumulators) where the host has 32 vector registers
#: (AVX-512), else ``_group4x2`` (4 pixels, 8 accumulators) twice a group, since
#: ``_group8x2`` spills out of AVX2's 16 registers. AVX2 (2-core AMD EPYC, 2 threads,
#: best of 9): the stem (3 -> 64 7x7 stride 2) 22.6-25.4 -> 14.6-17.2 ms, 16 -> 16 3x3
#: at 28x28 (batch 32) 1.57-1.63 -> 1.19-1.27 ms NCHW, 32 -> 32 at 14x14 1.35-1.42 ->
#: 1.00-1.12, 64 -> 64 at 7x7 1.64-1.66 -> 1.06-1.07.
PAIR_PIXELS = 8 if _lanes.WIDE else 4

#: ``_conv_rows`` hands each thread about this many runs of consecutive tasks.
CHUNKS_PER_THREAD = 8


@njit(inline="always")
def _task_count(xs, os, band):
    """``_conv_rows``' tasks: an image's output rows, or its bands of ``band`` rows."""
    return xs[0] * ((os[2] + band - 1) // band if band > 0 else os[2])


def _task_run(xs, os, band) -> int:
    """Tasks a call of ``_conv_tasks`` runs: about CHUNKS_PER_THREAD runs a thread."""
    return max(1, _task_count.py_func(xs, os, band) // (CHUNKS_PER_THREAD * get_num_threads()))


@njit(inline="always")
def _sixteen(f, f_hi, offs, px, pair_px):
    """Whether pixels f .. f + 15 of ``_groups``' run can go as two groups of 8 alike
    (``_group16``): 32 vector registers (pair_px is ``PIXELS``), 16 pixels left, and
    the second 8 the same offsets apart as the first (offs, ``_offsets``)."""
    _, _, wrap, rstep, cstep = px
    return pair_px == PIXELS and f_hi - f >= 2 * PIXELS and \
        _offsets(f + PIXELS, PIXELS, wrap, rstep, cstep) == offs


@njit(inline="always")
def _groups(xf, fw, fb, fo, px, base, rows, bp, pair, wlen, nl, d_all, outs, pair_px):
    """Output pixels f_lo <= f < f_hi of blocks bp and bp + pair (pair 0 or 1) in groups
    of 8, every pixel's kernel inside the image: px = (f_lo, f_hi, wrap, rstep, cstep),
    the pixels numbered along output rows of ``wrap`` columns (``_offsets``); base =
    (x_base, o_base): the input offset of pixel 0's tap (0, 0, 0) and the output offset
    of pixel 0; rows = (toff, t_lo, t_hi) (``_group4``); outs = (s_d, s_w), the output's
    channel and column strides (pixel f at o_base + f * s_w)."""
    f_lo, f_hi, wrap, rstep, cstep = px
    x_base, o_base = base
    toff, t_lo, t_hi = rows
    osd, osw, stream = outs
    uosd, uosw = U(osd), U(osw)
    w0 = bp * wlen
    m0, m1 = min(nl, d_all - bp * nl), min(nl, d_all - (bp + 1) * nl)
    b0 = _lanes.load(fb, U(bp * nl))
    f = f_lo
    while f < f_hi:
        k = min(PIXELS, f_hi - f)
        x0 = _pixel_base(x_base, f, wrap, rstep, cstep)
        offs = _offsets(f, k, wrap, rstep, cstep)
        o = U(o_base + bp * nl * osd) + U(f) * uosw
        if k <= PIXELS // 2:           # the last few: half a group
            if pair and pair_px < PIXELS:
                _group4x2(xf, fw, b0, _lanes.load(fb, U((bp + 1) * nl)),
                          (x0, toff, t_lo, t_hi, w0, k), offs, wlen, nl, fo,
                          (o, o + U(nl) * uosd, m0, m1, osd, osw, stream))
                break
            for half in range(1 + pair):
                vs4 = _group4(xf, fw, _lanes.load(fb, U((bp + half) * nl)),
                              (x0, toff, t_lo, t_hi, w0 + half * wlen, k), offs, nl)
                _write(fo, o + U(half * nl) * uosd, vs4, k, m1 if half else m0, osd, osw,
                       nl, stream)
            break
        rows8 = (x0, toff, t_lo, t_hi, w0, k)
        if (not pair or (osw == 1 and osd > 1)) and _sixteen(f, f_hi, offs, px, pair_px):
            # one block, or NCHW: each block's 16 pixels, whole cache lines of its rows
            x8 = _pixel_base(x_base, f + PIXELS, wrap, rstep, cstep)
            for half in range(1 + pair):
                oh = o + U(half * nl) * uosd
                _group16(xf, fw, _lanes.load(fb, U((bp + half) * nl)),
                         (x0, toff, t_lo, t_hi, w0 + half * wlen, k), offs, x8, nl, fo,
                         (oh, oh + U(PIXELS) * uosw, m1 if half else m0, osd, osw, stream))
            k = 2 * PIXELS
        elif pair and pair_px < PIXELS:  # two halves of 4 pixels x 2 blocks
            for quad in range(2):
                kh4 = min(PIXELS // 2, k - quad * (PIXELS // 2))
                f4 = f + quad * (PIXELS // 2)
                r4 = (x0 + offs[quad * (PIXELS // 2)], toff, t_lo, t_hi, w0, kh4)
                oh = o + U(quad * (PIXELS // 2)) * uosw
                _group4x2(xf, fw, b0, _lanes.load(fb, U((bp + 1) * nl)), r4,
                          _offsets(f4, kh4, wrap, rstep, cstep), wlen, nl, fo,
                          (oh, oh + U(nl) * uosd, m0, m1, osd, osw, stream))
        elif pair:
            _group8x2(xf, fw, b0, _lanes.load(fb, U((bp + 1) * nl)), rows8, offs, wlen,
                      nl, fo, (o, o + U(nl) * uosd, m0, m1, osd, osw, stream))
        else:
            _write(fo, o, _group8(xf, fw, b0, rows8, offs, nl), k, m0, osd, osw, nl,
                   stream)
        f += k


@njit(parallel=True, cache=True)
def _conv_rows(xf, xs, fw, fb, fo, os, geo, taps, toff, j_lo, j_hi, pair_px, band,
               stream, per):
    """out = conv(x, w) + bias, x (N, C, H, W) and out (N, D, Ho, Wo) given as flat
    arrays xf, fo and the shape and element strides of their canonical views, xs =
    (N, C, H, W, s_n, s_c, s_h, s_w), os alike: one kernel for every layout. A kernel
    row's taps run as taps = (n_u, s_u, n_v, s_v, b_v): n_u outer steps of s_u input
    elements, n_v inner ones of s_v; b_v > 0: each kernel column is b_v inner steps
    (the outer level holds the channels or nothing), b_v = 0: one outer step (the
    inner level holds the channels). fw: the weight as (D_pad/L, KH*n_u*n_v, L) flat in
    that tap order, L lanes a block, zero beyond D; toff (KH*n_u*n_v,) each tap's input
    offset in that order (``_tap_offsets``); fb (D_pad,) the bias (zeros without one).
    geo = (KH, KW, s_h, s_w, p_t, p_l, r_h, r_w); output columns j_lo <= j < j_hi have
    their whole kernel inside the image's columns. pair_px: the pixels of a pair of
    blocks' register tile (``PAIR_PIXELS``). One task per output row (module
    docstring), or, with band > 0 (every output pixel's kernel inside the image, the
    output's rows contiguous: ``lanes_plan.band_rows``), per band of ``band`` rows of
    an image, whose pixels run as one sequence in groups of 8 across the rows. stream:
    whole vectors are stored past the caches (``_lanes.store_stream``; every one on a
    vector boundary). per: tasks a run (``_task_run``)."""
    n_tasks = _task_count(xs, os, band)
    for chunk in prange((n_tasks + per - 1) // per):
        t0 = np.int64(chunk) * per           # one type: prange's index is unsigned
        _conv_tasks(xf, xs, fw, fb, fo, os, geo, taps, toff, j_lo, j_hi, pair_px, band,
                    stream, t0, min(n_tasks, t0 + per))


@njit(cache=True)
def _conv_tasks(xf, xs, fw, fb, fo, os, geo, taps, toff, j_lo, j_hi, pair_px, band,
                stream, first, end):
    """Tasks first <= task < end of ``_conv_rows`` (each an image's output row or band
    of rows). Compiled on its own, not inlined into the parallel loop: numba's parallel
    passes over the inlined register tiles made the first call on LeNet's 6 -> 16 layer
    compile for 120 s (45 s this way); a run of tasks a call keeps the call's cost off
    short rows (one task a call: 16 -> 16 3x3 at 28x28 NCHW 8% slower)."""
    n_img, c_all, h, wd, xsn, xsc, xsh, xsw = xs
    _, d_all, ho, wo, osn, osd, osh, osw = os
    kh, kw, sh, sw, pt, pl, rh, rw = geo
    nu, su, nv, sv, bv = taps
    nl = _lanes.count(fb)
    wlen = kh * nu * nv * nl
    uosd, uosw = U(osd), U(osw)
    blocks = fb.shape[0] // nl
    bands = (ho + band - 1) // band if band > 0 else ho
    for task in range(first, end):
        n = task // bands
        if band > 0:                       # a band's pixels as one sequence
            i0 = task % bands * band
            px = (i0 * wo, min(ho, i0 + band) * wo, wo, sh * xsh, sw * xsw)
            base = (n * xsn - pt * xsh - pl * xsw, n * osn)
            for bp in range(0, blocks, 2):
                _groups(xf, fw, fb, fo, px, base, (toff, 0, kh * nu * nv), bp,
                        1 if bp + 1 < blocks else 0, wlen, nl, d_all, (osd, osw, stream),
                        pair_px)
        else:                              # a row, its edge pixels first
            i = task % bands
            a_lo = max(0, (pt - i * sh + rh - 1) // rh)           # rows of taps in the image
            a_hi = min(kh, (h + pt - i * sh + rh - 1) // rh)
            obase = n * osn + i * osh
            t_lo, t_hi = a_lo * nu * nv, max(a_lo, a_hi) * nu * nv
            for bp in range(0, blocks, 2):     # pairs of blocks of output channels
                pair = 1 if bp + 1 < blocks else 0
                for d0 in range(bp * nl, (bp + 1 + pair) * nl, nl):
                    m = min(nl, d_all - d0)
                    wb = U(d0 // nl * wlen)
                    bias = _lanes.load(fb, U(d0))
                    ob = U(obase + d0 * osd)
                    for e in range(j_lo + wo - j_hi):  # pixels reaching into the padding
                        j = e if e < j_lo else j_hi + e - j_lo
                        col0 = j * sw - pl
                        b_lo = max(0, (rw - 1 - col0) // rw)    # kernel columns in the image
                        cols = (col0, rw, xsw, b_lo,
                                max(b_lo, min(kw, (wd - col0 + rw - 1) // rw)))
                        v = bias
                        for a in range(a_lo, a_hi):
                            xrow = n * xsn + (i * sh - pt + a * rh) * xsh
                            v = _edge_pixel(xf, fw, v, xrow, wb + U(a * nu * nv * nl), taps,
                                            cols, nl)
                        _put(fo, ob + U(j) * uosw, uosd, v, m, nl, stream)
                # groups of 8 pixels inside the image, along the row (wrap: never)
                px = (j_lo, j_hi, wo + 1, 0, sw * xsw)
                base = (n * xsn + (i * sh - pt) * xsh - pl * xsw, obase)
                _groups(xf, fw, fb, fo, px, base, (toff, t_lo, t_hi), bp, pair, wlen, nl,
                        d_all, (osd, osw, stream), pair_px)
    if stream:
        _lanes.stream_fence()


def _tap_order(args, xs) -> tuple[int, int, int, int, int]:
    """``_conv_rows``'s taps (n_u, s_u, n_v, s_v, b_v) for an input of canonical strides
    xs[4:] = (s_n, s_c, s_h, s_w): a kernel row whose channels and columns are one
    contiguous run (NHWC, column dilation 1) runs as one inner loop of KW*C taps, any
    other as two loops, the longer inner: the kernel columns outer and the channels
    inner, or (fewer channels than kernel columns, an RGB stem's 3 -> 64 7x7 in NCHW)
    the channels outer and the columns inner. (NCHW 3x3 layers with the channels outer
    measured 1.2x slower: inner loops of 3 taps.)"""
    c, kw, rw = args.c_in, args.kw, args.dilation[1]
    xsc, xsw = xs[5], xs[7]
    if rw == 1 and xsw == c * xsc:
        return (1, 0, kw * c, xsc, c)
    if c < kw:
        return (c, xsc, kw, rw * xsw, 1)
    return (kw, rw * xsw, c, xsc, 0)


@functools.lru_cache(maxsize=256)
def _tap_offsets(kh: int, row_step: int, taps) -> np.ndarray:
    """The input offset of every tap (a, u, q) relative to tap (0, 0, 0), in the order
    of the packed weight: a * row_step + u * s_u + q * s_v, as (KH * n_u * n_v,) int64
    (row_step: the input elements between kernel rows, r_h * s_h); read-only, one per
    geometry (a layer's every call shares it)."""
    nu, su, nv, sv, _ = taps
    offsets = (np.arange(kh)[:, None, None] * row_step + np.arange(nu)[None, :, None] * su
               + np.arange(nv)[None, None, :] * sv).reshape(-1).astype(np.int64)
    offsets.flags.writeable = False
    return offsets


def _packed_weight(w, dtype, taps) -> np.ndarray:
    """OIHW (D, C, KH, KW) (any strides) -> (D_pad/L, KH*KW*C, L) flat, taps in the
    order of ``_tap_order``'s ``taps``: (a, b, c), or (a, c, b) with the channels outer
    and the columns inner; zero beyond D. In the calling thread's workspace (on a cache
    line, for whole-vector loads; valid until the next call)."""
    return _packed_operands(w, None, dtype, taps)[0]


def _packed_operands(w, bias, dtype, taps):
    """(the packed weight of ``_packed_weight``, the bias (D,) or None as (D_pad,) with
    zeros beyond D, or all zeros), both in the calling thread's workspace, packed by one
    kernel call (``_pack``: numpy's strided copies and fills took 4 us a call on
    LeNet's 6 -> 16 layer)."""
    d, c, kh, kw = w.shape
    nl = _lanes.per_register(dtype.itemsize)
    blocks = -(-d // nl)
    packed = view(workspace("direct_lanes.w", blocks * kh * kw * c * nl, dtype),
                  (blocks, kh * kw * c, nl))
    fb = workspace("direct_lanes.bias", blocks * nl, dtype)
    pack_weight(w, bias, taps, packed, fb)
    return packed.reshape(-1), fb


def pack_weight(w, bias, taps, packed, fb) -> None:
    """packed (D_pad/L, KH*KW*C, L) = the OIHW weight w (any strides) with its taps in
    the order of ``_tap_order``'s ``taps``, zero beyond D; fb (D_pad,) = bias (D,),
    zeros beyond it or without one (None)."""
    c = w.shape[1]
    pack_blocks(w.transpose(*((2, 1, 3, 0) if taps[0] == c and taps[4] == 1 else (2, 3, 1, 0))),
                bias, packed, fb)


def pack_blocks(src, bias, packed, fb) -> None:
    """packed (D_pad/L, taps, L) = src (three axes of taps in the packed order, then
    D; any strides) in blocks of L = packed.shape[2] output channels, zero beyond D; fb
    (D_pad,) = bias (D,), zeros beyond it or without one (None)."""
    _pack(src, packed, _NO_BIAS[packed.dtype.char] if bias is None else bias, fb)


#: An empty bias per dtype for ``_pack`` (no bias: zeros).
_NO_BIAS = {t: np.zeros(0, t) for t in "fd"}


@njit(cache=True)
def _pack(src, packed, bias, fb):
    """packed[k, t, l] = src[t's three indices, k*L + l] over the taps t in src's order
    (its first three axes), zero beyond src's D = src.shape[3]; fb[l] = bias[l] below
    bias's length, else zero."""
    d = src.shape[3]
    nl = packed.shape[2]
    for k in range(packed.shape[0]):
        t = 0
        for i in range(src.shape[0]):
            for j in range(src.shape[1]):
                for q in range(src.shape[2]):
                    for lane in range(nl):
                        e = k * nl + lane
                        packed[k, t, lane] = src[i, j, q, e] if e < d else 0
                    t += 1
    for e in range(fb.shape[0]):
        fb[e] = bias[e] if e < bias.shape[0] else 0


@functools.lru_cache(maxsize=256)
def _call_parts(args, prepadded: bool):
    """The parts of a ``forward_lanes`` call that depend on the problem (and on whether
    its input is padded first, ``_prepadded``) alone, worked out once per layer and
    shape: the input's canonical geometry (C-contiguous), the tap order and offsets,
    the geometry tuple, the interior columns, the band of rows and the canonical
    geometry of a C-contiguous output."""
    (pt, _), (pl, _) = args.padding
    if prepadded:      # channels last whatever the layout: the longer tap loops
        hp, wp = padded_size(args)
        xs = contiguous_geometry((args.n, hp, wp, args.c_in), NHWC)
        pt, pl, interior = 0, 0, (0, args.w_out)
    else:
        xs = contiguous_geometry(args.dims.shape(args.n, args.c_in, args.h, args.w),
                                  args.dims)
        interior = interior_columns(args)
    taps = _tap_order(args, xs)
    geo = (args.kh, args.kw, *args.stride, pt, pl, *args.dilation)
    toff = _tap_offsets(args.kh, args.dilation[0] * xs[6], taps)
    out_geo = contiguous_geometry(args.y_layout_shape, args.dims)
    return xs, taps, toff, geo, interior, band_rows(args, xs[2], pt, interior), out_geo


def forward_lanes(x, w, args, out, bias) -> None:
    """The forward of a ``lanes_applies`` problem: out (layout ``args.dims``, any
    strides; positive ones written in place, ``image_last.strided_flat``) = conv(x, w)
    + bias (C_out,) when given, x and w in the same layout. Wraps ``_conv_rows``; narrow
    maps with pixels in the padding are padded first, into a channels-last copy
    (``_prepadded``)."""
    dt = args.dtype
    strided = strided_flat(out, args.dims)
    target = out if out.flags.c_contiguous or strided else np.empty(out.shape, dt)
    prepadded = _prepadded(args)
    xs, taps, toff, geo, interior, band, out_geo = _call_parts(args, prepadded)
    if prepadded:
        xf = padded_channels_last(x, args, "direct_lanes.xp").reshape(-1)
    else:
        xf = np.ascontiguousarray(x, dt).reshape(-1)
    xf = read_only(xf)         # one compiled kernel for read-only and writable inputs
    fo, os = strided or (_flat_view(target), out_geo)
    fw, fb = _packed_operands(args.dims.weight_to_canonical_view(w), bias, dt, taps)
    band = band if os[6] == os[3] * os[7] else 0       # the output's rows contiguous
    stream = int(os[5] == 1 and _lanes.can_stream(out, args.c_out))    # channels last
    if lanes_bands.applies(band, fb.size // _lanes.per_register(dt.itemsize), PAIR_PIXELS,
                           args.w_out, geo[3] * xs[7]):
        guarded(lanes_bands.conv_bands)(xf, xs, fw, fb, fo, os, geo, toff, band, stream,
                                        _task_run(xs, os, band))
    else:
        guarded(_conv_rows)(xf, xs, fw, fb, fo, os, geo, taps, toff, *interior,
                            PAIR_PIXELS, band, stream, _task_run(xs, os, band))
    if target is not out:
        out[...] = target
