"""The direct image-last convolution: small stride-1 layers on many small images in one
parallel numba kernel, without a GEMM (LeNet's 1 -> 6 and 6 -> 16 channels 5x5).

On tiles of many small images the GEMM forward (``image_last.forward_image_last``)
hands each tile from numba's threads to OpenBLAS's and back; on a layer this small the
handover costs as much as the arithmetic. ``_conv_tiles`` does the whole layer in
numba's threads, one task per tile of B images:

1. copy the tile's images image-last and zero-padded, xp (C, Hp, Wp, B), in the task's
   own buffer (Hp = Ho + (KH-1)*r_h rows: every tap of every output row lies inside);
2. for each block of 4 output channels and output row i, accumulate the output row
   image-last, acc[k, j*B + n] for j < Wo, n < B (one run of Wo*B values), as

       acc[k, :] = bias[d0 + k] + sum of w[d0 + k, c, a, b] * xp[c, i + a*r_h, b*r_w :, :]

   over the taps (c, a, b), 3 vectors of the run at a time with their 4 x 3 sums held
   in registers through every tap (``_rows4``): one load of the input feeds 4 output
   channels, one weight 3 vectors. Accumulating in memory instead, 4 taps per pass
   over the run, took 1.4x the time on LeNet's 1 -> 6 5x5 layer (batch 64, NCHW,
   2 threads, best of 9 rounds alternating: 0.161-0.166 against 0.114 ms; torch 0.185);
3. write the 4 rows to out[n, d0 + k, i, :].

x and out may be NCHW or NHWC (the kernel takes their element strides), the weight
OIHW.

>>> import numpy as np
>>> from fastconv import conv2d
>>> x = np.ones((8, 2, 6, 6), np.float32)
>>> w = np.ones((4, 2, 3, 3), np.float32)
>>> y = conv2d(x, w, padding=1, algo="im2col")
>>> float(y[0, 0, 0, 0]), float(y[0, 0, 2, 2])   # a corner: 2 channels x 4 taps
(8.0, 18.0)
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from numba import njit, prange

from ... import _lanes, config
from ..._runtime import parallel_guard
from ...costs import Estimate, Profile
from ...layout import NCHW
from .._common import U
from .image_last import _flat
from .tiling import IMAGE_LAST_MIN_IMAGES

#: Multiply-adds per second per thread of ``_conv_tiles`` (float32; about 35 GMAC/s on
#: one core of the 2-core AVX-512 machine on LeNet's layers), for the cost model.
DIRECT_GMACS = 35.0
#: The direct kernel runs layers of at most this many output channels (wider layers
#: make wide GEMMs, which BLAS runs faster).
DIRECT_MAX_CHANNELS = 64
#: ... and at most this many taps C*KH*KW (more: the GEMM is wide enough for BLAS).
DIRECT_MAX_TAPS = 400
#: ... and at least this many taps, unless at most ``THIN_CHANNELS`` output channels:
#: with few taps per output the fixed work per output (bias fill, write-back, the last
#: taps' single passes) dominates, and only the thinnest GEMMs lose to it. Measured
#: (batch 64, 2 threads, direct vs the GEMM path): LeNet's 1 -> 6 5x5 (25 taps) 0.27 vs
#: 0.42 ms, 3 -> 6 5x5 (75 taps) 1.1 vs 1.4 ms, 16 -> 32 3x3 at 16x16 (144 taps) 2.9 vs
#: 5.0 ms; with the sums in registers (``_rows4``), NCHW, alternating, best of 7 rounds:
#: 3 -> 16 3x3 at 32x32 0.50 vs 0.59 ms (NHWC 0.44 vs 0.44), batch 32 0.24 vs 0.33,
#: 1 -> 16 3x3 at 28x28, batch 32 (a small ResNet's stem) 0.14 vs 0.20 (torch 0.12),
#: but 3 -> 32 3x3 at 32x32 0.92 vs 0.78. NHWC keeps 8: its output channels are written
#: one value a line, and 1 -> 16 5x5 at 28x28 (padding 2, batch 64) ran 0.72 ms against
#: torch's 0.28 (the direct lanes kernel's layer there).
DIRECT_MIN_TAPS = 64
THIN_CHANNELS = {"NCHW": 16, "NHWC": 8}
#: Widest output row (wider rows make long GEMM rows).
MAX_WIDTH = 32
#: Images per task: at most this many, fewer when the padded tile would exceed
#: ``TILE_BYTES`` or leave a thread without a task.
MAX_TILE = 32
TILE_BYTES = 256 * 1024


def direct_forward_applies(args) -> bool:
    """Whether the forward of ``args`` (either layout) runs ``forward_direct``: several
    small images (at least ``IMAGE_LAST_MIN_IMAGES``, output rows of at most
    ``MAX_WIDTH`` pixels, a padded image within a quarter of ``TILE_BYTES``), one group,
    stride 1, a kernel larger than 1x1, at most ``DIRECT_MAX_CHANNELS`` output channels,
    at most ``DIRECT_MAX_TAPS`` taps C*KH*KW and at least ``DIRECT_MIN_TAPS`` (any number
    for at most ``THIN_CHANNELS[layout]`` output channels), and leading padding within
    the kernel's reach ((KH-1)*r_h, (KW-1)*r_w; the padded tile starts there)."""
    if (args.groups != 1 or args.stride != (1, 1)
            or args.n < IMAGE_LAST_MIN_IMAGES or args.kh * args.kw == 1):
        return False
    rh, rw = args.dilation
    hp, wp = args.h_out + (args.kh - 1) * rh, args.w_out + (args.kw - 1) * rw
    taps = args.c_in * args.kh * args.kw
    return (args.c_out <= DIRECT_MAX_CHANNELS and 0 < args.w_out <= MAX_WIDTH
            and (DIRECT_MIN_TAPS <= taps or args.c_out <= THIN_CHANNELS[args.layout])
            and taps <= DIRECT_MAX_TAPS
            and 4 * args.c_in * hp * wp * args.dtype.itemsize <= TILE_BYTES
            and args.padding[0][0] <= (args.kh - 1) * rh
            and args.padding[1][0] <= (args.kw - 1) * rw)


@njit(inline="always")
def _rows4(fx, fy, fw, fb, offs, ib, run, d0, taps):
    """fy[k*run + t] = fb[d0 + k] + sum over taps q of fw[(d0 + k)*taps + q] *
    fx[offs[q] + ib + t] for the 4 rows k and t < run: runs of 3 vectors of t with the 12
    sums in registers over every tap (each input load feeds 4 output channels, each
    weight 3 vectors), then single vectors, then single values (``_tail``)."""
    nl = U(_lanes.count(fy))
    b0, b1, b2, b3 = fb[d0], fb[d0 + 1], fb[d0 + 2], fb[d0 + 3]
    wr = U(d0 * taps)
    w1 = wr + U(taps)
    w2 = w1 + U(taps)
    w3 = w2 + U(taps)
    y1, y2, y3 = run, U(2) * run, U(3) * run
    t3 = run - run % (U(3) * nl)
    for t in range(U(0), t3, U(3) * nl):
        s0, s1 = _lanes.splat(fy, b0), _lanes.splat(fy, b1)
        s2, s3 = _lanes.splat(fy, b2), _lanes.splat(fy, b3)
        a00 = a01 = a02 = s0
        a10 = a11 = a12 = s1
        a20 = a21 = a22 = s2
        a30 = a31 = a32 = s3
        for q in range(taps):
            uq = U(q)
            xo = offs[q] + ib + t
            v0 = _lanes.load(fx, xo)
            v1 = _lanes.load(fx, xo + nl)
            v2 = _lanes.load(fx, xo + U(2) * nl)
            c0, c1, c2, c3 = fw[wr + uq], fw[w1 + uq], fw[w2 + uq], fw[w3 + uq]
            a00, a01, a02 = _fma3(a00, a01, a02, c0, v0, v1, v2)
            a10, a11, a12 = _fma3(a10, a11, a12, c1, v0, v1, v2)
            a20, a21, a22 = _fma3(a20, a21, a22, c2, v0, v1, v2)
            a30, a31, a32 = _fma3(a30, a31, a32, c3, v0, v1, v2)
        _store3(fy, t, nl, a00, a01, a02)
        _store3(fy, y1 + t, nl, a10, a11, a12)
        _store3(fy, y2 + t, nl, a20, a21, a22)
        _store3(fy, y3 + t, nl, a30, a31, a32)
    t1 = run - run % nl
    for t in range(t3, t1, nl):
        a0, a1 = _lanes.splat(fy, b0), _lanes.splat(fy, b1)
        a2, a3 = _lanes.splat(fy, b2), _lanes.splat(fy, b3)
        for q in range(taps):
            uq = U(q)
            v = _lanes.load(fx, offs[q] + ib + t)
            a0, a1 = _lanes.fma(a0, fw[wr + uq], v), _lanes.fma(a1, fw[w1 + uq], v)
            a2, a3 = _lanes.fma(a2, fw[w2 + uq], v), _lanes.fma(a3, fw[w3 + uq], v)
        _lanes.store(fy, t, a0)
        _lanes.store(fy, y1 + t, a1)
        _lanes.store(fy, y2 + t, a2)
        _lanes.store(fy, y3 + t, a3)
    _tail(fx, fy, fw, fb, offs, ib, run, d0, taps, t1)


@njit(inline="always")
def _fma3(a0, a1, a2, c, v0, v1, v2):
    """(a0 + c*v0, a1 + c*v1, a2 + c*v2) for vectors a, v and a scalar c."""
    return _lanes.fma(a0, c, v0), _lanes.fma(a1, c, v1), _lanes.fma(a2, c, v2)


@njit(inline="always")
def _store3(fy, i, nl, u0, u1, u2):
    """fy[i : i + 3*nl] = the vectors u0, u1, u2 (nl lanes each)."""
    _lanes.store(fy, i, u0)
    _lanes.store(fy, i + nl, u1)
    _lanes.store(fy, i + U(2) * nl, u2)


@njit(inline="always")
def _tail(fx, fy, fw, fb, offs, ib, run, d0, taps, t0):
    """``_rows4`` for t0 <= t < run (fewer than one vector), value by value."""
    for k in range(4):
        y, wk = U(k) * run, U((d0 + k) * taps)
        for t in range(t0, run):
            fy[y + t] = fb[d0 + k]
        for q in range(taps):
            c, xo = fw[wk + U(q)], offs[q] + ib
            for t in range(t0, run):
                fy[y + t] += c * fx[xo + t]


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _conv_tiles(xf, xs, w4, offs, fo, os, tile, hp, wp, pt, pl, bias):
    """The stride-1 convolution of x, plus bias (D4,) (zero past the D channels), into
    out. x (N, C, H, W) and out (N, D, Ho, Wo) are given as flat arrays xf, fo and the
    shape and element strides of their (N, C, H, W) views, xs = (N, C, H, W, s_n, s_c,
    s_h, s_w), os alike: one kernel for every layout. w4 (D4, T): the weight
    (D, C*KH*KW) with zero rows up to a multiple of 4; offs (T,): tap t's offset in a
    padded tile (C, hp, wp, tile) for output row 0, ((c*hp + a*r_h)*wp + b*r_w)*tile.
    Input row i, column j sits at row i + pt, column j + pl of the tile (parts beyond
    hp, wp are never read: dropped). One task per tile of ``tile`` images (the module
    docstring's three steps)."""
    n_img, c_all, h, wd, xsn, xsc, xsh, xsw = xs
    _, d_all, ho, wo, osn, osd, osh, osw = os
    d4, taps = w4.shape
    fw = w4.reshape(w4.size)
    ut, run, step = U(tile), U(wo * tile), U(wp * tile)
    rows, cols = min(h, hp - pt), min(wd, wp - pl)
    for tt in prange((n_img + tile - 1) // tile):
        n0 = tt * tile
        nb = min(tile, n_img - n0)
        xp = np.zeros(c_all * hp * wp * tile, fo.dtype)
        acc = np.empty(4 * wo * tile, fo.dtype)
        for c in range(c_all):       # contiguous writes: runs of the tile's images
            for i in range(rows):
                line = U(((c * hp + i + pt) * wp + pl) * tile)
                src = U(n0 * xsn + c * xsc + i * xsh)
                for j in range(U(cols)):
                    dst, sj = line + j * ut, src + j * U(xsw)
                    for b in range(U(nb)):
                        xp[dst + b] = xf[sj + b * U(xsn)]
        for i in range(ho):          # the input rows of output row i stay in cache
            for d0 in range(0, d4, 4):
                _rows4(xp, acc, fw, bias, offs, U(i) * step, run, d0, taps)
                for k in range(min(4, d_all - d0)):
                    for b in range(nb):
                        o = U((n0 + b) * osn + (d0 + k) * osd + i * osh)
                        for j in range(U(wo)):
                            fo[o + j * U(osw)] = acc[U(k) * run + j * ut + U(b)]


def _tile(n: int, image_bytes: int) -> int:
    """Images per task: at most ``MAX_TILE`` and ``TILE_BYTES`` of padded tile, and at
    least one task per thread when the batch allows."""
    per_thread = -(-n // max(1, numba.get_num_threads()))
    return max(1, min(MAX_TILE, per_thread, TILE_BYTES // max(1, image_bytes)))


@functools.lru_cache(maxsize=64)
def _tap_offsets(c, kh, kw, rh, rw, hp, wp, tile) -> np.ndarray:
    """offs[(ci*KH + a)*KW + b] = ((ci*hp + a*rh)*wp + b*rw)*tile (uint64; cached, not
    to be written)."""
    cc, aa, bb = np.meshgrid(np.arange(c), np.arange(kh) * rh, np.arange(kw) * rw,
                             indexing="ij")
    return (((cc * hp + aa) * wp + bb) * tile).ravel().astype(np.uint64)


def direct_conv(x, w, out, pads, dilation, bias, dims=NCHW) -> None:
    """out = the stride-1 convolution of x with w (D, C, KH, KW) (OIHW, any strides),
    leading padding ``pads`` (top, left), ``dilation`` (r_h, r_w), plus bias (D,) when
    given; x and out in layout ``dims`` (any strides). Wraps ``_conv_tiles``."""
    d, c, kh, kw = w.shape
    rh, rw = dilation
    target = out if out.flags.c_contiguous else np.empty(out.shape, out.dtype)
    xf, xs = _flat(np.ascontiguousarray(x), dims)
    fo, os = _flat(target, dims)
    hp, wp = os[2] + (kh - 1) * rh, os[3] + (kw - 1) * rw
    tile = _tile(xs[0], c * hp * wp * out.dtype.itemsize)
    if d % 4 == 0 and w.dtype == out.dtype and w.flags.writeable:  # no padded copy
        w4 = np.ascontiguousarray(w).reshape(d, c * kh * kw)
    else:
        w4 = np.zeros((-(-d // 4) * 4, c * kh * kw), out.dtype)
        w4[:d] = w.reshape(d, c * kh * kw)
    offs = _tap_offsets(c, kh, kw, rh, rw, hp, wp, tile)
    b4 = np.zeros(w4.shape[0], out.dtype)      # the bias, zero up to w4's rows
    if bias is not None:
        b4[:d] = bias
    with parallel_guard():
        _conv_tiles(xf, xs, w4, offs, fo, os, tile, hp, wp, pads[0], pads[1], b4)
    if target is not out:
        out[...] = target


def forward_direct(x, w, args, out, bias) -> None:
    """The forward of a ``direct_forward_applies`` problem into ``out`` (layout
    ``args.dims``, any strides), bias (D,) added when given."""
    direct_conv(x, args.dims.weight_to_canonical_view(w), out,
                (args.padding[0][0], args.padding[1][0]), args.dilation, bias, args.dims)


def direct_cost(a, p: Profile) -> Estimate:
    """Model time of ``forward_direct``: the multiply-adds (output channels rounded up
    to 4) at ``DIRECT_GMACS`` per thread (float64 at half the rate), plus the call's
    fixed cost; the copies are a small part on these layers."""
    d4 = -(-a.c_out // 4) * 4
    macs = a.n * d4 * a.h_out * a.w_out * a.c_in * a.kh * a.kw
    rate = DIRECT_GMACS * 1e9 * p.threads * (4 / a.dtype.itemsize)
    hp, wp = a.h_out + (a.kh - 1) * a.dilation[0], a.w_out + (a.kw - 1) * a.dilation[1]
    tile = _tile(a.n, a.c_in * hp * wp * a.dtype.itemsize)
    workspace = (a.c_in * hp * wp + 4 * a.w_out) * tile * a.dtype.itemsize * p.threads
    return Estimate(p.call_us * 1e-6 + macs / rate, workspace,
                    f"direct image-last kernel (no GEMM), {macs / 1e6:.3g}M multiply-adds "
                    f"{1e3 * macs / rate:.3g} ms")
