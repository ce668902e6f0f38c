"""The weight gradient in register tiles that read the input in place: for layers whose
kernel rows are whole vectors of taps (``tiles_apply``: KW*C a multiple of the lanes,
undilated kernel columns, output channels in eights; the small ResNets' 16, 32 and 64
channel 3x3 layers).

With x zero-padded and channels last (xp (N, Hp, Wp, C)), a kernel row a's taps (b, c)
for the output pixel (n, i, j) are one contiguous run of KW*C values,

    xp[n, i*s_h + a*r_h, j*s_w*C : j*s_w*C + KW*C]   (flat over the row's (W, C)),

so the weight gradient of kernel row a is a GEMM over the output pixels,

    grad_w[a, t, d] = sum_{n, i, j} run(n, i, j, a)[t] * grad_y[n, i, j, d],

whose left operand is read where it lies. A tile holds 3 vectors of taps x 8 output
channels in 24 registers (AVX-512's 32): per pixel, 3 vector loads of the run and 8
broadcasts of grad_y feed 24 fused multiply-adds, against one broadcast of the input
per multiply-add in ``direct_grad``'s lanes-over-channels kernel. Each task sums a run
of images (``tile_images``) for one kernel row and 8 output channels into
its own float32 partial, band of output rows by band (the band's input and grad_y rows
stay in L1 across its tiles); the runs' partials are added in order in float64, so the
result does not depend on the thread count.

>>> import numpy as np
>>> from fastconv import conv2d_backward
>>> x = np.ones((8, 6, 6, 16), np.float32)                   # NHWC
>>> w = np.ones((3, 3, 16, 16), np.float32)                  # HWIO
>>> _, gw, _ = conv2d_backward(np.ones((8, 6, 6, 16), np.float32), x, w, padding=1,
...                            layout="NHWC", algo="im2col",
...                            needs_input_grad=(False, True, False))
>>> float(gw[0, 0, 0, 0]), float(gw[1, 1, 0, 0])   # 8 images x 5x5 / 6x6 pixels
(200.0, 288.0)
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ... import _lanes
from ..._runtime import guarded
from .._common import U, workspace
from .padded import channels_last_input, padded_size

#: Vectors of taps and output channels of a tile (24 accumulators).
VECTORS = 3
CHANNELS = 8
#: Whether the tiles run: with AVX-512's 32 registers (24 accumulators spill out of
#: AVX2's 16).
ENABLED = _lanes.WIDE
#: Multiply-adds per second per thread, for the cost model (float32; half for float64):
#: 55-70 measured on the small ResNets' 3x3 layers (batch 32, 2 threads), against
#: ``direct_grad``'s 40.
TILES_GMACS = 60.0
#: A run of images (one partial sum, ``tile_images``) holds at most about this many
#: bytes of padded input and grad_y (half a core's L2: each task goes through its run's
#: images for one kernel row and 8 output channels) ...
RUN_BYTES = 1 << 20
#: ... and there are runs enough for this many tasks (runs x KH x C_out/8).
MIN_TASKS = 24


def tile_images(a) -> int:
    """Images per partial sum of ``weight_grad_tiles`` for problem ``a``: runs of at most
    about ``RUN_BYTES`` of padded input and grad_y, at least ``MIN_TASKS`` tasks, the
    runs a power of two (as equal as the batch allows); a function of the problem
    alone, never of the threads. Against ``direct_grad.part_images`` (2 MB a run, 8
    tasks), grad_w alone, NHWC, 2 threads of an Intel Xeon with 2 MB of L2 a core, best
    of 5, three rounds alternating: 64 -> 64 3x3 at 56x56 (batch 16, one image a run
    instead of two) 15.4-15.8 -> 11.6-12.3 ms; 32 -> 32 at 32x32 (batch 64, 2 instead
    of 8) 4.2-4.3 -> 3.9-4.0; 32 -> 64 with stride 2 at 14x14 (batch 32, 16 instead of
    32) 0.30-0.31 -> 0.23-0.24; the small ResNet's other layers level.

    >>> from fastconv._args import conv_args_from_shapes
    >>> tile_images(conv_args_from_shapes("t", (16, 56, 56, 64), (3, 3, 64, 64),
    ...                                   padding=1, layout="NHWC"))
    1
    """
    return run_images(a, RUN_BYTES, MIN_TASKS, a.kh * -(-a.c_out // CHANNELS), True)


def run_images(a, run_bytes: int, min_tasks: int, tasks_per_run: int,
               power_of_two: bool = False) -> int:
    """Images per run (one partial sum of a direct weight gradient, ``tile_images``,
    ``direct_grad.part_images``): runs of at most about ``run_bytes`` of padded input
    and grad_y an image, enough of them for ``min_tasks`` tasks of ``tasks_per_run``
    each, their count rounded up to a power of two with ``power_of_two``; at most one
    run an image."""
    hp, wp = padded_size(a)
    image = (hp * wp * a.c_in + a.h_out * a.w_out * a.c_out) * a.dtype.itemsize
    runs = max(-(-a.n * image // run_bytes), -(-min_tasks // tasks_per_run))
    if power_of_two:
        runs = 1 << (runs - 1).bit_length()
    return -(-a.n // min(a.n, runs))


def tiles_apply(a) -> bool:
    """Whether ``weight_grad_tiles`` runs the weight gradient of ``a``: a kernel row's
    taps KW*C whole vectors of lanes, at least a tile's ``VECTORS`` (undilated columns),
    C_out a multiple of ``CHANNELS``, on a host of 32 vector registers (``ENABLED``)."""
    nl = _lanes.per_register(a.dtype.itemsize)
    return (ENABLED and a.groups == 1 and a.dilation[1] == 1
            and (a.kw * a.c_in) % nl == 0 and a.kw * a.c_in >= VECTORS * nl
            and a.c_out % CHANNELS == 0)


@njit(inline="always")
def _fma3(v, s, x0, x1, x2):
    """(v[0] + s * x0, v[1] + s * x1, v[2] + s * x2): one broadcast for 3 multiply-adds."""
    f = _lanes.fma
    return f(v[0], s, x0), f(v[1], s, x1), f(v[2], s, x2)


@njit(inline="always")
def _fma3x8(p, q, r, gf, gb, x0, x1, x2):
    """p[k] + g_k * x0, q[k] + g_k * x1, r[k] + g_k * x2 for the 8 registers k, g_k =
    grad_y[gb + k]: channel by channel, each broadcast feeding its 3 multiply-adds
    at once (28 registers live: with the broadcasts hoisted, 35 spilled)."""
    c0 = _fma3((p[0], q[0], r[0]), gf[gb], x0, x1, x2)
    c1 = _fma3((p[1], q[1], r[1]), gf[gb + U(1)], x0, x1, x2)
    c2 = _fma3((p[2], q[2], r[2]), gf[gb + U(2)], x0, x1, x2)
    c3 = _fma3((p[3], q[3], r[3]), gf[gb + U(3)], x0, x1, x2)
    c4 = _fma3((p[4], q[4], r[4]), gf[gb + U(4)], x0, x1, x2)
    c5 = _fma3((p[5], q[5], r[5]), gf[gb + U(5)], x0, x1, x2)
    c6 = _fma3((p[6], q[6], r[6]), gf[gb + U(6)], x0, x1, x2)
    c7 = _fma3((p[7], q[7], r[7]), gf[gb + U(7)], x0, x1, x2)
    return ((c0[0], c1[0], c2[0], c3[0], c4[0], c5[0], c6[0], c7[0]),
            (c0[1], c1[1], c2[1], c3[1], c4[1], c5[1], c6[1], c7[1]),
            (c0[2], c1[2], c2[2], c3[2], c4[2], c5[2], c6[2], c7[2]))


@njit(inline="always")
def _load8(part, o):
    nl = _lanes.count(part)
    return (_lanes.load(part, o), _lanes.load(part, o + U(nl)),
            _lanes.load(part, o + U(2 * nl)), _lanes.load(part, o + U(3 * nl)),
            _lanes.load(part, o + U(4 * nl)), _lanes.load(part, o + U(5 * nl)),
            _lanes.load(part, o + U(6 * nl)), _lanes.load(part, o + U(7 * nl)))


@njit(inline="always")
def _store8(part, o, v):
    nl = _lanes.count(part)
    for k in range(8):
        _lanes.store(part, o + U(k * nl), v[k])


@njit(cache=True)
def _tile_band(part, o, xp, gf, rows, vec, wo, step, d_all):
    """One tile's sums (24 registers at o in part: 3 x 8, vector-major) over a band of
    output rows: rows = (input offset of the band's first row's run, input elements per
    output row, grad_y offset of its first pixel's 8 channels, grad_y elements per
    output row, rows); vec = the input offsets of the tile's 3 vectors in the run
    (the last repeated where the run has fewer left). A function of its own: numba's
    parallel-loop analysis fails on the tuples of registers."""
    x0, xrow, g0, grow, n_rows = rows
    v0, v1, v2 = vec
    nl = _lanes.count(part)
    p = _load8(part, o)
    q = _load8(part, o + U(8 * nl))
    r = _load8(part, o + U(16 * nl))
    for i in range(n_rows):
        xb = U(x0 + i * xrow)
        gb = U(g0 + i * grow)
        for _j in range(wo):
            p, q, r = _fma3x8(p, q, r, gf, gb, _lanes.load(xp, xb + v0),
                              _lanes.load(xp, xb + v1), _lanes.load(xp, xb + v2))
            xb += step
            gb += U(d_all)
    _store8(part, o, p)
    _store8(part, o + U(8 * nl), q)
    _store8(part, o + U(16 * nl), r)


@njit(parallel=True, cache=True)
def _grad_w_tiles(xp, ps, gf, gs, part, geo):
    """part (runs, KH, G, D/8, 3, 8, L) flat, fully written: the sums over run q's
    images (``per`` each) of the tile of kernel row a, vectors 3g .. 3g + 2 of the
    row's run of taps (``vecs`` of them; G = ceil(vecs / 3)) and output channels 8c ..
    8c + 7. xp (N, Hp, Wp, C) and gf (N, Ho, Wo, D) flat with shapes ps, gs; geo = (KH,
    s_h, s_w, r_h, per, band, vecs). One task per (run, kernel row, 8 output channels);
    per image and band of output rows, its tiles run over the band's pixels."""
    n_img, hp, wp, c_all = ps
    _, ho, wo, d_all = gs
    kh, sh, sw, rh, per, band, vecs = geo
    nl = _lanes.count(part)
    groups = (vecs + VECTORS - 1) // VECTORS
    nch = d_all // CHANNELS
    n_run = (n_img + per - 1) // per
    tile = VECTORS * CHANNELS * nl
    step = U(sw * c_all)
    for task in prange(n_run * kh * nch):
        q = task // (kh * nch)
        a = task // nch % kh
        c = task % nch
        base = q * kh * groups * nch * tile
        for m in range(groups):
            o = base + ((a * groups + m) * nch + c) * tile
            for t in range(tile):
                part[o + t] = 0.0
        for n in range(q * per, min(n_img, (q + 1) * per)):
            for i0 in range(0, ho, band):
                rows = (n * hp * wp * c_all + (i0 * sh + a * rh) * wp * c_all,
                        sh * wp * c_all, (n * ho + i0) * wo * d_all + c * CHANNELS,
                        wo * d_all, min(ho, i0 + band) - i0)
                for m in range(groups):
                    v0 = m * VECTORS
                    vec = (U(v0 * nl), U(min(v0 + 1, vecs - 1) * nl),
                           U(min(v0 + 2, vecs - 1) * nl))
                    o = U(base + ((a * groups + m) * nch + c) * tile)
                    _tile_band(part, o, xp, gf, rows, vec, wo, step, d_all)


@njit(parallel=True, cache=True)
def _sum_tiles(part, runs, dims, out, steps):
    """out[a, b, c, d] (flat; element steps ``steps`` for a, b, c, d) = the sum over the
    runs, in order and in float64, of the tile sums of ``_grad_w_tiles`` (dims = (KH,
    KW, C, D, L)), rounded once to out's dtype. One task per kernel row and vector of
    its taps; a vector's L taps are L contiguous values of a tile (summed as one run
    of lanes), their places in out worked out once per task (serial, with divisions per
    value, 64 -> 64 channels 3x3 took 82 us on one run and 128 -> 128 653 us on three,
    against 30 and 165 us here, 2 threads)."""
    kh, kw, c_all, d_all, nl = dims
    sa, sb, sc, sd = steps
    vecs = kw * c_all // nl
    groups = (vecs + VECTORS - 1) // VECTORS
    nch = d_all // CHANNELS
    tile = VECTORS * CHANNELS * nl
    per_run = kh * groups * nch * tile
    for task in prange(kh * vecs):
        a, v = task // vecs, task % vecs
        m, vi = v // VECTORS, v % VECTORS
        places = np.empty(nl, np.int64)     # out's offset of each lane's tap (b, c)
        for lane in range(nl):
            b, c = divmod(v * nl + lane, c_all)
            places[lane] = a * sa + b * sb + c * sc
        acc = np.empty(nl)
        for d in range(d_all):
            src = (((a * groups + m) * nch + d // CHANNELS) * tile
                   + (vi * CHANNELS + d % CHANNELS) * nl)
            acc[:] = 0.0
            for q in range(runs):
                base = q * per_run + src
                for lane in range(nl):
                    acc[lane] += np.float64(part[base + lane])
            for lane in range(nl):
                out[places[lane] + d * sd] = acc[lane]


def weight_grad_tiles(x, gy_nhwc, a, grad_w, per: int, band: int) -> None:
    """grad_w (layout of ``a``) = the weight gradient of a ``tiles_apply`` problem for x
    (layout of ``a``) and grad_y (N, Ho, Wo, D) C-contiguous, in runs of ``per`` images
    and bands of ``band`` output rows. Wraps ``_grad_w_tiles`` (on
    ``padded.channels_last_input``) and ``_sum_tiles``."""
    dt = a.dtype
    nl = _lanes.per_register(dt.itemsize)
    vecs = a.kw * a.c_in // nl
    runs = -(-a.n // per)
    size = runs * a.kh * -(-vecs // VECTORS) * a.c_out * VECTORS * nl
    part = workspace("direct_grad_tiles.part", size, dt)
    xp = channels_last_input(x, a, "direct_grad.xp")
    guarded(_grad_w_tiles)(xp.reshape(-1), xp.shape, gy_nhwc.reshape(-1), gy_nhwc.shape,
                           part, (a.kh, a.stride[0], a.stride[1], a.dilation[0], per, band,
                                  vecs))
    into_weight(grad_w, a, lambda out, steps: guarded(_sum_tiles)(
        part, runs, (a.kh, a.kw, a.c_in, a.c_out, nl), out, steps))


def into_weight(grad_w, a, write) -> None:
    """grad_w (layout of ``a``, any strides) fully written by ``write(out, steps)``: out
    grad_w's data flat (a C-contiguous stand-in where grad_w is not), steps the element
    steps of its (a, b, c, d) = (kernel row, column, input and output channel) axes."""
    target = grad_w if grad_w.flags.c_contiguous else np.empty(grad_w.shape, grad_w.dtype)
    steps = a.dims.weight_to_canonical_view(target).strides     # (d, c, r, q) in bytes
    size = target.itemsize
    write(target.reshape(-1), (steps[2] // size, steps[3] // size, steps[1] // size,
                               steps[0] // size))
    if target is not grad_w:
        grad_w[...] = target
