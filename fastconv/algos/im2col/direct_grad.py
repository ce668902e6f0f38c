"""The direct backward of small layers: the weight gradient in one parallel numba kernel
with each pixel's output-channel gradients in one SIMD register (``fastconv._lanes``),
and the input gradient as forward direct convolutions (``direct_lanes``) of grad_y with
the flipped weight, one per input phase (``direct_grad_input``).

Weight gradient. With x zero-padded (xp (N, Hp, Wp, C), channels last),

    grad_w[a, b, c, block] = sum_{n, i, j} xp[n, i*s_h + a*r_h, j*s_w + b*r_w, c]
                                           * grad_y[n, i, j, block]

for each block of ``count`` output channels (one register). A task holds 8 taps (a, b,
c) (consecutive in HWIO order) in 8 registers and runs over the output pixels of a fixed
run of images (``part_images``): one load of grad_y's lanes feeds 8 fused multiply-adds,
each with one input value in every lane; blocks go in pairs where there are two, each
input value loaded once for both (``_pair_band``: 16 registers; alternating, 2 threads,
grad_w alone: 64 -> 64 3x3 at 7x7 (batch 32) 0.90 -> 0.77 ms NCHW, 0.77 -> 0.66 NHWC;
32 -> 32 at 14x14 0.70-0.74 -> 0.64 ms; 16 -> 16, one block, level). A layer of one
block holds 16 taps at once instead, with AVX-512's 32 registers (``_single16_band``,
``SINGLE16``: one load of grad_y's lanes for 16 multiply-adds; alternating with the
8-tap kernel, 2 threads, grad_w alone: LeNet's 6 -> 16 5x5 at 14x14 (batch 64) 0.45
-> 0.34 ms, 16 -> 16 3x3 at 28x28 (batch 32) 1.09 -> 0.89 NHWC, 1.24 -> 1.04 NCHW,
8 -> 16 0.72 -> 0.65). With AVX2's 16
registers the pair's 16 accumulators spill, yet two passes of 4 taps x 2 blocks measured
no faster (2-core AMD EPYC, calls alternating, 2 threads: 6 -> 16 5x5 at 8x8 (batch 64)
0.67 against 0.60 ms, 64 -> 64 at 7x7 3.4 against 3.1, 32 -> 32 at 32x32 21.7 against
23.7). The padded copy
takes the bounds checks out of the loop. Each run of images sums into its own float32
partial; the partials are added in order in float64, so the result does not depend on
the thread count. A last block of output channels partly filled (LeNet's first layer,
6 channels) is computed whole, its lanes past C_out reading on into the next pixel
(the last image's from a copy with a block's slack) and their sums dropped: 1 -> 6 5x5
at 28x28 (batch 64), NHWC, grad_w and the bias gradient, 2 threads, alternating with
torch: 0.49 ms by the image-last pass, 0.20-0.21 direct (torch 0.19-0.21).

Layers whose kernel rows are whole vectors of taps (KW*C a multiple of the lanes, C_out
in eights: the small ResNets' 16- to 64-channel layers) run the weight gradient in the
register tiles of ``direct_grad_tiles`` instead (3 vectors of taps x 8 output channels
per tile, the input read in place): 16 -> 16 3x3 at 28x28 (batch 32), NHWC, 2 threads,
alternating: 0.41-0.62 ms against 0.55-0.76 here; 64 -> 64 at 7x7 0.52 against 0.65.

Input gradient. For stride 1, grad_x = conv(grad_y, w') with w'[a, b, d, c] =
w[KH-1-a, KW-1-b, c, d] and padding (K-1)*r - p on each side (dilation r); a strided
layer's input phases are such problems with sub-kernels. ``direct_lanes.forward_lanes``
runs them where it applies (``direct_grad_input.input_phases``); other layers take
im2col's other paths for grad_x.

NCHW arrays are copied channels-last first (grad_y once for both gradients; x into the
padded copy directly) and grad_x back.

>>> import numpy as np
>>> from fastconv import conv2d_backward
>>> x = np.ones((8, 6, 6, 16), np.float32)                   # NHWC
>>> w = np.ones((3, 3, 16, 16), np.float32)                  # HWIO
>>> gx, gw, _ = conv2d_backward(np.ones((8, 6, 6, 16), np.float32), x, w, padding=1,
...                             layout="NHWC", algo="im2col")
>>> float(gw[0, 0, 0, 0]), float(gw[1, 1, 0, 0])   # 8 images x 5x5 / 6x6 pixels
(200.0, 288.0)
>>> float(gx[0, 0, 0, 0]), float(gx[0, 2, 2, 0])   # 16 channels x 4 / 9 taps
(64.0, 144.0)
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from ... import _lanes
from ..._args.memo import per_problem
from ..._runtime import guarded
from ...costs import BACKWARD_FACTOR, Estimate, Profile
from .._common import U, view, workspace
from .._nhwc import swap_last2
from . import grad_x_images
from .direct_grad_bands import _fma8, _pair_band, _single16_band, _sums8, _taps8
from .direct_grad_input import input_grad_cost, input_grad_direct, input_phases
from .direct_grad_rows import ROWS_GMACS, rows_apply, rows_macs, weight_grad_rows
from .direct_grad_tiles import (
    TILES_GMACS,
    into_weight,
    run_images,
    tile_images,
    tiles_apply,
    weight_grad_tiles,
)
from .image_last import image_last_tile
from .padded import channels_last_input, padded_size
from .tiling import IMAGE_LAST_MIN_IMAGES

#: Taps accumulated at once (the weight-gradient kernel's 8 registers).
TAPS = 8
#: Whether a layer of one block of output channels sums 16 taps at once
#: (``_single16_band``): where the host has 32 vector registers (AVX-512); its 16
#: accumulators and 2 x 8 input offsets would spill out of AVX2's 16.
SINGLE16 = _lanes.WIDE
#: A run of images (one partial sum of the weight gradient) holds at most about this many
#: bytes of padded input and grad_y ...
PART_BYTES = 2 * 1024 * 1024
#: ... and there are runs enough for this many tasks (when the batch allows).
MIN_TASKS = 8
#: A task's sums (a chunk of taps x one register) take at most this many bytes (in L1,
#: with the input and grad_y rows of a band) ...
CHUNK_BYTES = 8 * 1024
#: ... and it sums a group of taps over a band of at least this many output pixels (whole
#: rows) between loading and storing its registers.
BAND_PIXELS = 48
#: Layers of at most this many input and output channels run the direct backward
#: (wider ones make GEMMs wide enough for BLAS).
MAX_CHANNELS = 64
#: On fewer images than the image-last pass takes, NHWC layers of at least this many
#: input channels run the direct grad_w beside grad_x by GEMMs (``direct_backward_chosen``).
FEW_IMAGES_MIN_C_IN = 6
#: Multiply-adds per second per thread of ``_grad_w_parts`` (float32; half for float64),
#: for the cost model: 35 to 48 measured on the small ResNets' layers (2 threads,
#: batch 32, 16 -> 16 3x3 at 28x28 up to 64 -> 64 at 7x7).
GRAD_W_GMACS = 40.0
#: Whether the image-last pass takes every layer it applies to (``direct_backward_chosen``):
#: with 256-bit registers (AVX2), where the direct kernels measured 1.6-2.8x slower.
PREFER_IMAGE_LAST = not _lanes.WIDE


def _strided_pointwise(a) -> bool:
    """A strided 1x1 layer (its weight gradient here, ``strided_pointwise``)."""
    return a.kh * a.kw == 1 and a.stride != (1, 1)


def direct_backward_applies(args) -> bool:
    """Whether im2col's backward runs the direct weight gradient (``backward_direct``):
    one group, a kernel larger than 1x1 (or a strided 1x1 one, whose grad_w
    ``strided_pointwise`` runs here in either layout), at most ``MAX_CHANNELS`` input and output
    channels (a last block of lanes partly filled is computed whole: ``_d_pad``), any
    number of images."""
    return (args.groups == 1 and args.n > 0
            and (args.kh * args.kw > 1 or _strided_pointwise(args))
            and args.c_in <= MAX_CHANNELS and args.c_out <= MAX_CHANNELS
            and args.h_out > 0 and args.w_out > 0)


def direct_backward_chosen(args, with_grad_x: bool = True) -> bool:
    """Whether im2col's backward runs ``backward_direct``: where it applies, unless
    grad_x is wanted, the direct forward cannot run it (``input_phases``), the layout is
    NCHW and the image-last path forms both gradients in one pass (``image_last_tile``:
    LeNet's 6 -> 16 5x5, NCHW, batch 64: 1.23 ms for both, direct grad_w + image-last
    grad_x 1.28; at 14x14, 2 threads, AVX-512: 0.54 / 0.53 ms, NHWC 0.59-0.61 / 0.48-0.51).
    With 256-bit registers (AVX2, ``PREFER_IMAGE_LAST``) the image-last pass runs
    wherever it applies, for one gradient or both: 2-core AMD EPYC, 2 threads, calls
    alternating, direct / image-last with grad_x, grad_w alone: LeNet's 6 -> 16 5x5
    NCHW 2.51 / 0.90 ms, 1.11 / 0.41; NHWC 2.64 / 1.12, 1.26 / 0.53; 16 -> 16 3x3 at
    28x28 (batch 32) 8.8 / 5.4, 6.0 / 2.8; 16 -> 32 15.1 / 7.7; 32 -> 32 at 14x14 8.3 /
    4.7; NHWC 8 -> 16 at 28x28 4.5 / 2.8.
    On fewer than ``IMAGE_LAST_MIN_IMAGES`` images (no image-last pass) with grad_x
    wanted and the direct forward unable to run it, the tile loop of unfold and GEMMs,
    whose unfold serves both gradients, keeps layers of fewer than
    ``FEW_IMAGES_MIN_C_IN`` input channels, and NCHW ones (batch 2, 2 threads, both
    gradients, the tile loop against direct grad_w and grad_x by GEMMs: NCHW 1 -> 16 3x3
    at 28x28 0.140 / 0.193 ms, 6 -> 16 5x5 at 14x14 0.186 / 0.246, 8 -> 16 3x3 at 28x28
    0.30 / 0.34; NHWC 1 -> 16 0.175 / 0.20, 3 -> 32 at 32x32 0.31 / 0.34, but 6 -> 16
    0.175 / 0.134 and 8 -> 16 0.40 / 0.22). A single NCHW image keeps the tile loop
    for either gradient: one GEMM per gradient over the image's pixels (both gradients,
    direct / tile loop: 16 -> 32 3x3 with stride 2 at 28x28 0.25 / 0.20 ms, 32 -> 64
    with stride 2 at 14x14 0.31 / 0.22, 64 -> 64 at 7x7 0.42 / 0.33)."""
    if not direct_backward_applies(args):
        return False
    if PREFER_IMAGE_LAST and image_last_tile(args, with_grad_x):
        return False
    if args.n == 1 and not args.dims.channels_last:
        return False
    if not with_grad_x or input_phases(args) is not None:
        return True
    if args.n < IMAGE_LAST_MIN_IMAGES:
        return args.dims.channels_last and args.c_in >= FEW_IMAGES_MIN_C_IN
    return args.dims.channels_last or not image_last_tile(args, True)


def part_images(a) -> int:
    """Images per partial sum of the weight gradient: at most about ``PART_BYTES`` of
    padded input and grad_y, and runs enough for ``MIN_TASKS`` tasks (a function of the
    problem alone, never of the threads; ``direct_grad_tiles.run_images``)."""
    nl = _lanes.per_register(a.dtype.itemsize)
    per_run = -(-a.c_out // nl) * -(-a.kh * a.kw * a.c_in // _chunk(a))
    return run_images(a, PART_BYTES, MIN_TASKS, per_run)


@njit(parallel=True, cache=True)
def _grad_w_parts(xp, ps, gf, gs, toff, part, geo, gl):
    """part (P, D_pad/L, T, L) flat, fully written: part[q, blk, t, :] = sum over the images of
    run q (``per`` images each) and their output pixels of xp[pixel's window, tap t] *
    gf[pixel, blk*L : (blk+1)*L]. xp (N, Hp, Wp, C) and gf (N, Ho, Wo, D) flat with
    their shapes ps, gs; where D is not whole blocks of L, a last partial block's lanes
    read on into the next pixel (those lanes' sums are never used), and the last image's
    grad_y is read from gl, a copy with L elements more; toff (T,) each tap's offset in
    xp from its pixel's window corner; geo = (s_h, s_w, per, band, chunk). One task per
    (run, block, chunk of ``chunk`` taps and a pair of blocks, or the last block alone),
    whose sums stay in part (in L1); per band of ``band`` output rows of an image, each
    group of ``TAPS`` taps of the chunk is loaded into registers, summed over the band's
    pixels (whose input and grad_y rows stay in L1 for the chunk's groups) and stored. A
    pair loads each input value once for both blocks (``_fma8x2``)."""
    n_img, hp, wp, c_all = ps
    _, ho, wo, d_all = gs
    sh, sw, per, band, chunk = geo
    nl = _lanes.count(part)
    taps = toff.shape[0]
    nblk = (d_all + nl - 1) // nl
    npair = (nblk + 1) // 2
    n_chunk = (taps + chunk - 1) // chunk
    n_run = (n_img + per - 1) // per
    step = U(sw * c_all)
    zero = _lanes.zeros(part)
    for task in prange(n_run * npair * n_chunk):
        q = task // (npair * n_chunk)
        blk = (task // n_chunk) % npair * 2
        two = blk + 1 < nblk
        t_lo = (task % n_chunk) * chunk
        t_hi = min(taps, t_lo + chunk)
        base = U((q * nblk + blk) * taps * nl)
        other = base + U(taps * nl)                   # the pair's second block
        for t in range(t_lo, t_hi):
            _lanes.store(part, base + U(t * nl), zero)
            if two:
                _lanes.store(part, other + U(t * nl), zero)
        for n in range(q * per, min(n_img, (q + 1) * per)):
            last = n == n_img - 1 and gl.size > 0      # the copy with slack
            g = gl if last else gf
            g_img = 0 if last else n * ho * wo * d_all
            for i0 in range(0, ho, band):
                t0 = t_lo
                while t0 < t_hi:
                    k = min(TAPS, t_hi - t0)
                    o = _taps8(toff, t0, k)
                    a0 = base + U(t0 * nl)
                    rows = (n * hp * wp * c_all, sh * wp * c_all, g_img + blk * nl,
                            wo * d_all, i0, min(ho, i0 + band))
                    if two:
                        _pair_band(part, a0, other + U(t0 * nl), k, xp, g, o, rows, wo,
                                   step, d_all)
                    elif SINGLE16 and t_hi - t0 >= 2 * TAPS:   # one block: 16 taps
                        _single16_band(part, a0, xp, g, o, _taps8(toff, t0 + TAPS, TAPS),
                                       rows, wo, step, d_all)
                        k = 2 * TAPS
                    else:                             # one block, 8 taps or fewer
                        x0, xrow, g0, grow, i_lo, i_hi = rows
                        v = _sums8(part, a0, k)
                        for i in range(i_lo, i_hi):
                            xb = U(x0 + i * xrow)
                            gb = U(g0 + i * grow)
                            for _j in range(wo):
                                v = _fma8(v, xp, xb, o, _lanes.load(g, gb))
                                xb += step
                                gb += U(d_all)
                        for p in range(k):
                            _lanes.store(part, a0 + U(p * nl), v[p])
                    t0 += k


def _chunk(a) -> int:
    """Taps per task: whole groups of ``TAPS``, at most ``CHUNK_BYTES`` of sums, the
    chunks of a layer about equal."""
    taps = a.kh * a.kw * a.c_in
    most = max(TAPS, CHUNK_BYTES // _lanes.LANE_BYTES // TAPS * TAPS)
    chunks = -(-taps // most)
    return -(-taps // (chunks * TAPS)) * TAPS


def _band(a) -> int:
    """Output rows per band: ``BAND_PIXELS`` pixels (at least one row)."""
    return max(1, -(-BAND_PIXELS // a.w_out))


@functools.lru_cache(maxsize=256)
def _tap_offsets(kh: int, kw: int, row_step: int, col_step: int, c_in: int) -> np.ndarray:
    """Each HWIO tap (a, b, c)'s offset in the padded input from its window's corner:
    (a * row_step + b * col_step) * c_in + c, as (KH * KW * C,) int64 (cached per
    geometry, read-only)."""
    rows = np.arange(kh)[:, None, None] * row_step
    cols = np.arange(kw)[None, :, None] * col_step
    offsets = (((rows + cols) * c_in) + np.arange(c_in)).reshape(-1).astype(np.int64)
    offsets.flags.writeable = False
    return offsets


def _d_pad(a) -> int:
    """The output channels the kernels compute: C_out in whole blocks of lanes."""
    nl = _lanes.per_register(a.dtype.itemsize)
    return -(-a.c_out // nl) * nl


def weight_grad_into(x, gy_nhwc, a, grad_w) -> None:
    """grad_w (layout of ``a``, a's dtype) = the weight gradient for x (layout of ``a``)
    and grad_y (N, Ho, Wo, D) C-contiguous: in the register tiles of
    ``direct_grad_tiles`` where they apply, else by ``_grad_w_parts`` (on
    ``padded.channels_last_input``) and ``_sum_parts``."""
    tiles = _tiles_plan(a)
    if tiles is not None:
        weight_grad_tiles(x, gy_nhwc, a, grad_w, *tiles)
        return
    dt = a.dtype
    per = part_images(a)
    runs = -(-a.n // per)
    taps = a.kh * a.kw * a.c_in
    part = workspace("direct_grad.part", runs * _d_pad(a) * taps, dt)
    xp = channels_last_input(x, a, "direct_grad.xp")
    ps = xp.shape
    xp = xp.reshape(-1)
    gf = gy_nhwc.reshape(-1)
    nl = _lanes.per_register(dt.itemsize)
    gl = np.zeros(0 if a.c_out % nl == 0 else gf.size // a.n + nl, dt)
    gl[:gl.size - nl] = gf[gf.size - gl.size + nl:]    # the last image, then slack
    toff = _tap_offsets(a.kh, a.kw, a.dilation[0] * ps[2], a.dilation[1], a.c_in)
    guarded(_grad_w_parts)(xp, ps, gf, gy_nhwc.shape, toff, part,
                           (a.stride[0], a.stride[1], per, _band(a), _chunk(a)), gl)
    into_weight(grad_w, a, lambda out, steps: _sum_parts(
        part, runs, (a.kw, a.c_in, a.c_out), out, steps))


@per_problem
def _tiles_plan(a):
    """(images per run, band of output rows) of ``weight_grad_tiles`` where its register
    tiles take the weight gradient of ``a`` (``tiles_apply``), else None."""
    return (tile_images(a), _band(a)) if tiles_apply(a) else None


@njit(cache=True)
def _sum_parts(part, runs, dims, out, steps):
    """out[a, b, c, d] (flat; element steps ``steps`` for a, b, c, d) = the sum over the
    runs q, in order and in float64, of part[q, d // L, t, d % L] (part flat (runs,
    D_pad/L, T, L); tap t = (a*KW + b)*C + c; dims = (KW, C, D)), rounded once to out's dtype:
    the result does not depend on the thread count."""
    kw, c_all, d_all = dims
    sa, sb, sc, sd = steps
    nl = _lanes.count(part)
    taps = out.size // d_all
    d_pad = (d_all + nl - 1) // nl * nl
    for t in range(taps):
        a, rest = divmod(t, kw * c_all)
        b, c = divmod(rest, c_all)
        base = a * sa + b * sb + c * sc
        for d in range(d_all):
            src = ((d // nl) * taps + t) * nl + d % nl
            acc = 0.0
            for q in range(runs):
                acc += np.float64(part[q * taps * d_pad + src])
            out[base + d * sd] = acc


def nhwc_grad_y(gy, a) -> np.ndarray:
    """grad_y (N, Ho, Wo, D) C-contiguous: gy itself in NHWC, a transposed copy of NCHW."""
    if a.dims.channels_last:
        return np.ascontiguousarray(gy, a.dtype)
    out = workspace("direct_grad.gy", gy.size, a.dtype)
    n, d, ho, wo = gy.shape
    swap_last2(np.ascontiguousarray(gy, a.dtype).reshape(n, d, ho * wo),
               view(out, (n, ho * wo, d)))
    return view(out, (n, ho, wo, d))


def backward_direct(gy, x, w, a, grad_x, grad_w, rest) -> None:
    """The gradients of a ``direct_backward_applies`` problem: grad_w by the direct
    kernel (with the lanes along the output rows where ``by_rows``: grad_y read in
    its own layout), grad_x by ``input_grad_direct`` where ``input_phases`` allows, else
    image by image (``grad_x_images``) where that applies, else by ``rest(grad_x)``
    (im2col's other paths)."""
    rows, direct_x = _direct_paths(a, grad_x is not None, grad_w is not None)
    tiles_w = grad_w is not None and not rows      # these two read grad_y channels last
    if rows:
        weight_grad_rows(x, gy, a, grad_w)
    if tiles_w or direct_x:
        gy_nhwc = nhwc_grad_y(gy, a)
        if tiles_w:
            weight_grad_into(x, gy_nhwc, a, grad_w)
        if direct_x:
            input_grad_direct(gy_nhwc, w, a, grad_x)
    if grad_x is None or direct_x:
        return
    if grad_x_images.applies(a):
        grad_x_images.input_grad_images(gy, w, a, grad_x)
    else:
        rest(grad_x)


@per_problem
def _direct_paths(a, need_x: bool, need_w: bool) -> tuple[bool, bool]:
    """``backward_direct``'s (grad_w ``by_rows``, grad_x by ``input_grad_direct``)."""
    return need_w and by_rows(a), need_x and input_phases(a) is not None


def by_rows(a) -> bool:
    """Whether the weight gradient runs with the lanes along the output rows
    (``direct_grad_rows``): where that applies and the register tiles of
    ``direct_grad_tiles`` do not (their lanes hold taps, so few output channels waste
    none; where both apply the tiles ran 2x faster: 16 -> 8 3x3 at 14x14, batch 32,
    grad_w alone, 2 threads, alternating: NHWC 0.12-0.14 against 0.27-0.31 ms, NCHW
    0.15-0.18 against 0.27-0.30)."""
    return rows_apply(a) and not tiles_apply(a)


def grad_w_cost(a, p: Profile) -> Estimate:
    """Model time of ``weight_grad_into``: the multiply-adds (taps rounded up to whole
    groups of ``TAPS``) at ``GRAD_W_GMACS`` per thread (the register tiles':
    ``TILES_GMACS``; the lanes along the rows: ``rows_macs`` at ``ROWS_GMACS``; half for
    float64), plus the call's fixed cost."""
    if by_rows(a):
        macs, gmacs = rows_macs(a), ROWS_GMACS
    else:
        taps = a.kh * a.kw * a.c_in
        macs = a.n * a.h_out * a.w_out * _d_pad(a) * -(-taps // TAPS) * TAPS
        gmacs = TILES_GMACS if tiles_apply(a) else GRAD_W_GMACS
    rate = gmacs * 1e9 * p.threads * (4 / a.dtype.itemsize)
    return Estimate(p.call_us * 1e-6 + macs / rate, 0,
                    f"direct weight gradient {macs / 1e6:.3g}M multiply-adds "
                    f"{1e3 * macs / rate:.3g} ms")


def direct_backward_cost(a, p: Profile, gemm_forward: Estimate) -> Estimate:
    """Model time of ``backward_direct`` with both gradients: ``grad_w_cost``, the
    direct forwards of ``input_phases`` for grad_x (``input_grad_cost``) or else
    ``BACKWARD_FACTOR``/2 times im2col's GEMM forward ``gemm_forward`` (its grad_x and
    fold), and the copies (the padded input; NCHW: grad_y transposed; grad_x is written
    in place) at the profile's copy bandwidth."""
    call = p.call_us * 1e-6
    gw = grad_w_cost(a, p)
    gx = input_grad_cost(a, p)
    item = a.dtype.itemsize
    hp, wp = padded_size(a)
    moved = a.n * hp * wp * a.c_in * item
    direct_x = gx is not None
    if direct_x:
        how = f"grad_x as {gx.detail} with the flipped weight"
    elif grad_x_images.applies(a):
        gx = grad_x_images.cost(a, p)
        how = f"grad_x by {gx.detail}"
    else:
        gx = Estimate(call + BACKWARD_FACTOR / 2 * (gemm_forward.seconds - call), 0, "")
        how = "grad_x by im2col's GEMMs and fold"
    if not a.dims.channels_last:
        moved += a.n * a.c_out * a.h_out * a.w_out * item
    copies = moved / (p.copy_gbs * 1e9)
    secs = gw.seconds + gx.seconds - call + copies
    return Estimate(secs, 0 if direct_x else gemm_forward.workspace,
                    f"{gw.detail}, {how} {1e3 * (gx.seconds - call):.3g} ms, copies "
                    f"{1e3 * copies:.3g} ms")
