"""The input gradient of small stride-1 NHWC layers image by image, each grad_y pixel's
products added straight onto the input rows they belong to.

grad_x[n, r, q, c] sums grad_y[n, i, j, d] * w[a, b, c, d] over the pixels (i, j) and
taps (a, b) with r = i + a - p_top, q = j + b - p_left. For one grad_y pixel and kernel
row a, the KW*C taps (b, c) land on one contiguous run of an input row (stride 1, no
dilation). One task per image adds them onto a zeroed plane of the thread's own, grad_x
with its padding (every tap lands inside it: no clipping), then copies the input's rows
and columns out. Register tiles of 8 grad_y pixels by 2 registers of taps (16
accumulators: 8 broadcasts of grad_y and 2 loads of the weight for 16 multiply-adds) sum
over the D channels; each register is then added onto its run. The weight is packed by
kernel row, each row's KW*C taps padded with zeros to a whole pair of registers, and a
register's lanes past the run are zeroed by a mask before the add (where a non-finite
grad_y would otherwise reach the elements beside the run). A tile's pixels lie one under
the other (bands of 8 rows taken column by column), so that consecutive adds go to
different rows. Needs AVX-512's 32 vector registers (``_lanes.WIDE``: 16 sums, 2 weight
registers and a broadcast).

Before, each image's column gradient (Ho*Wo, KH*KW*C) came from a GEMM and was then
folded onto the input, its runs of KW*C values added mostly one at a time. LeNet's
second layer (6 -> 16, 5x5, 14x14 input, batch 64), 2 threads, the new and old code in
alternating processes, best of 9 x 100 calls: 0.204-0.206 ms against 0.296-0.298 (the
fold alone took about 0.12 ms of it).

>>> import numpy as np
>>> from fastconv import conv2d_backward
>>> gy = np.ones((4, 10, 10, 16), np.float32)                     # NHWC
>>> w = np.ones((5, 5, 6, 16), np.float32)                        # HWIO
>>> gx, _, _ = conv2d_backward(gy, np.ones((4, 14, 14, 6), np.float32), w,
...                            layout="NHWC")
>>> float(gx[0, 0, 0, 0]), float(gx[0, 7, 7, 0])    # 16 channels x 1 / 25 taps
(16.0, 400.0)
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from numba import njit, prange

from ... import _lanes
from ..._runtime import parallel_guard
from ...costs import Estimate, Profile
from .._common import U, workspace

#: The layers it runs on, the scope it has been measured on (kept from the per-image GEMM
#: it replaced, whose column gradient had to stay in the core's L2 and whose tiles took
#: at least 6 rows and 4 registers of columns): an image's taps times output pixels
#: (KH*KW*C * Ho*Wo) at most this many bytes, ...
MAX_TAP_BYTES = 256 * 1024
#: ... at least this many output pixels, and at least 4 registers of taps KH*KW*C.
MIN_PIXELS = 6
#: grad_y pixels a register tile takes at once (two registers of taps each).
GROUP = 8
#: Multiply-adds (the layer's own, KH*KW*C*D per output pixel) per second per thread,
#: float32 (half for float64), for the cost model: LeNet's second layer, batch 64, 2
#: threads, NHWC (15.4 million in 0.205 ms).
GMACS = 37.0


def cost(a, p: Profile) -> Estimate:
    """Model time of ``input_grad_images``: the layer's multiply-adds at ``GMACS`` per
    thread, plus the call's fixed cost."""
    macs = a.n * a.h_out * a.w_out * a.kh * a.kw * a.c_in * a.c_out
    rate = GMACS * 1e9 * p.threads * (4 / a.dtype.itemsize)
    return Estimate(p.call_us * 1e-6 + macs / rate, 0,
                    "per-image products added onto the input's rows in cache")


def applies(a) -> bool:
    """Whether ``input_grad_images`` takes the input gradient of ``a``: NHWC, one
    group, stride 1, no dilation, an image's taps times pixels within
    ``MAX_TAP_BYTES``, at least ``MIN_PIXELS`` output pixels and 4 registers of taps
    KH*KW*C, on a host with 32 vector registers."""
    if not _lanes.WIDE or not a.dims.channels_last or a.groups != 1 \
            or a.stride != (1, 1) or a.dilation != (1, 1) or a.n == 0:
        return False
    taps, pixels = a.kh * a.kw * a.c_in, a.h_out * a.w_out
    return (pixels >= MIN_PIXELS
            and taps >= 4 * _lanes.per_register(a.dtype.itemsize)
            and taps * pixels * a.dtype.itemsize <= MAX_TAP_BYTES)


@njit(inline="always")
def _pixel(gyf, g, d, wa, wb, pa, pb):
    """One pixel's two accumulators plus grad_y[g + d] (broadcast) times wa and wb."""
    s = gyf[g + U(d)]
    return _lanes.fma(pa, s, wa), _lanes.fma(pb, s, wb)


@njit(inline="always")
def _eight(gyf, gs, d_all, wp, w0, nl):
    """The 8 grad_y pixels at flat offsets gs (D channels each) times the packed
    weight's two registers at w0 and w0 + D*nl, summed over the D channels: 8 pairs of
    vectors."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = _lanes.zeros(wp)
    b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = _lanes.zeros(wp)
    g0, g1, g2, g3, g4, g5, g6, g7 = gs
    ud = U(d_all)
    for d in range(d_all):
        wa = _lanes.load(wp, w0 + U(d) * nl)
        wb = _lanes.load(wp, w0 + (ud + U(d)) * nl)
        a0, b0 = _pixel(gyf, g0, d, wa, wb, a0, b0)
        a1, b1 = _pixel(gyf, g1, d, wa, wb, a1, b1)
        a2, b2 = _pixel(gyf, g2, d, wa, wb, a2, b2)
        a3, b3 = _pixel(gyf, g3, d, wa, wb, a3, b3)
        a4, b4 = _pixel(gyf, g4, d, wa, wb, a4, b4)
        a5, b5 = _pixel(gyf, g5, d, wa, wb, a5, b5)
        a6, b6 = _pixel(gyf, g6, d, wa, wb, a6, b6)
        a7, b7 = _pixel(gyf, g7, d, wa, wb, a7, b7)
    return ((a0, b0), (a1, b1), (a2, b2), (a3, b3), (a4, b4), (a5, b5), (a6, b6),
            (a7, b7))


@njit(inline="always")
def _one(gyf, g, d_all, wp, w0, nl):
    """``_eight`` for the one pixel at g."""
    pa = pb = _lanes.zeros(wp)
    ud = U(d_all)
    for d in range(d_all):
        pa, pb = _pixel(gyf, g, d, _lanes.load(wp, w0 + U(d) * nl),
                        _lanes.load(wp, w0 + (ud + U(d)) * nl), pa, pb)
    return pa, pb


@njit(inline="always")
def _add_pixel(buf, pair, table, k, ka, t0, mask_a, mask_b, row):
    """Add the two registers of taps (from tap t0 of kernel row ka) of the grad_y pixel
    in row k of ``_pixel_table`` onto their run of the padded plane buf (row: its row
    Wp*C), each register's lanes outside the run (padded taps) zeroed by its mask
    first (no branch: a branch here on the lanes to keep made the whole kernel take
    1.7x as long)."""
    nl = U(_lanes.count(buf))
    dst = U(table[k, 1] + ka * row + t0)
    _lanes.store(buf, dst, _lanes.load(buf, dst) + _lanes.where_positive(pair[0], mask_a))
    dst += nl
    _lanes.store(buf, dst, _lanes.load(buf, dst) + _lanes.where_positive(pair[1], mask_b))


@njit(inline="always")
def _mask(masks, lanes, nl):
    """The row of ``_masks`` that keeps the first ``lanes`` lanes (clipped to 0..nl)."""
    return _lanes.load(masks, U(min(max(lanes, 0), nl) * nl))


@njit(inline="always")
def _gy(table, k, g):
    """The flat offset in grad_y of the pixel in row k of ``_pixel_table``, its image
    starting at g."""
    return U(g + table[k, 0])


@njit(cache=True)
def _image(gyf, wp, gxf, buf, masks, table, geo, n):
    """grad_x of image n (``_grad_x_nhwc``): the products added onto the zeroed padded
    plane buf, whose rows and columns in the input are then copied out."""
    _, ho, wo, d_all, h, wd, c_all, kh, kw, pt, pl, regs, row = geo
    nl = _lanes.count(wp)
    m = ho * wo
    run = kw * c_all
    zero = buf.dtype.type(0)
    for q in range(buf.size):
        buf[q] = zero
    g = n * m * d_all
    for k in range(0, m - GROUP + 1, GROUP):
        gs = (_gy(table, k, g), _gy(table, k + 1, g), _gy(table, k + 2, g),
              _gy(table, k + 3, g), _gy(table, k + 4, g), _gy(table, k + 5, g),
              _gy(table, k + 6, g), _gy(table, k + 7, g))
        for ka in range(kh):
            for v in range(0, regs, 2):
                t0 = v * nl
                ma, mb = _mask(masks, run - t0, nl), _mask(masks, run - t0 - nl, nl)
                t = _eight(gyf, gs, d_all, wp, U((ka * regs + v) * d_all * nl), U(nl))
                # literal indices: a loop over the tuple would spill the accumulators
                _add_pixel(buf, t[0], table, k, ka, t0, ma, mb, row)
                _add_pixel(buf, t[1], table, k + 1, ka, t0, ma, mb, row)
                _add_pixel(buf, t[2], table, k + 2, ka, t0, ma, mb, row)
                _add_pixel(buf, t[3], table, k + 3, ka, t0, ma, mb, row)
                _add_pixel(buf, t[4], table, k + 4, ka, t0, ma, mb, row)
                _add_pixel(buf, t[5], table, k + 5, ka, t0, ma, mb, row)
                _add_pixel(buf, t[6], table, k + 6, ka, t0, ma, mb, row)
                _add_pixel(buf, t[7], table, k + 7, ka, t0, ma, mb, row)
    for k in range(m - m % GROUP, m):
        for ka in range(kh):
            for v in range(0, regs, 2):
                t0 = v * nl
                pair = _one(gyf, _gy(table, k, g), d_all, wp,
                            U((ka * regs + v) * d_all * nl), U(nl))
                _add_pixel(buf, pair, table, k, ka, t0, _mask(masks, run - t0, nl),
                           _mask(masks, run - t0 - nl, nl), row)
    base = n * h * wd * c_all
    for r in range(h):
        src = (r + pt) * row + pl * c_all
        dst = base + r * wd * c_all
        for q in range(wd * c_all):
            gxf[dst + q] = buf[src + q]


@njit(parallel=True, cache=True)
def _grad_x_nhwc(gyf, wp, gxf, bufs, masks, table, geo):
    """gxf (N, H, W, C) flat, fully written: the input gradient of grad_y gyf (N, Ho,
    Wo, D) flat and the packed weight wp (``_packed_weight``), one image a task, each
    thread's padded plane a row of bufs; masks from ``_masks``, table from
    ``_pixel_table``; geo = (N, Ho, Wo, D, H, W, C, KH, KW, p_top, p_left, registers
    of a kernel row's taps (even), the padded plane's row Wp*C)."""
    for n in prange(geo[0]):
        _image(gyf, wp, gxf, bufs[numba.get_thread_id()], masks, table, geo, n)


def _packed_weight(w, a) -> tuple[np.ndarray, int]:
    """(wp, R): the HWIO weight w as (KH, R, D, L) C-contiguous, wp[a, v, d, k] = w[a, b,
    c, d] for the tap t = v*L + k = b*C + c of kernel row a (zero for t >= KW*C), L lanes
    a register and R registers a kernel row, rounded up to even."""
    nl = _lanes.per_register(a.dtype.itemsize)
    run = a.kw * a.c_in
    regs = -(-run // nl)
    regs += regs % 2
    rows = np.zeros((a.kh, regs * nl, a.c_out), a.dtype)
    rows[:, :run] = np.asarray(w, a.dtype).reshape(a.kh, run, a.c_out)
    return np.ascontiguousarray(rows.reshape(a.kh, regs, nl, a.c_out).transpose(0, 1, 3, 2)), \
        regs


def _padded_plane(a) -> tuple[int, int]:
    """(elements of an image's padded grad_x plane, Hp*Wp*C plus two registers of
    slack for the lanes past a run's end (a pair of registers starts before the run's
    end); its row Wp*C), Hp = Ho + KH - 1, Wp = Wo + KW - 1: every tap of every grad_y
    pixel lands in it."""
    row = (a.w_out + a.kw - 1) * a.c_in
    return (a.h_out + a.kh - 1) * row + 2 * _lanes.per_register(a.dtype.itemsize), row


@functools.lru_cache(maxsize=64)
def _pixel_table(a) -> np.ndarray:
    """(Ho*Wo, 2) int64, read-only: the grad_y pixels (i, j) in the order the kernel
    takes them, a row each: its offset in its image's grad_y, (i*Wo + j) * D, and where
    its taps of kernel row 0 start in the padded plane (``_padded_plane``), (i*Wp + j)
    * C. The order: bands of ``GROUP`` rows column by column (a tile's pixels one under
    the other: their runs lie on different rows, where pixels side by side would add
    onto overlapping runs one after another, each add waiting for the store before
    it), then the rows left over as one more band."""
    rows = np.arange(a.h_out * a.w_out).reshape(a.h_out, a.w_out)
    banded = a.h_out - a.h_out % GROUP
    order = np.concatenate([rows[:banded].reshape(-1, GROUP, a.w_out).transpose(0, 2, 1)
                            .reshape(-1), rows[banded:].T.reshape(-1)])
    i, j = np.divmod(order, a.w_out)
    table = np.stack([order * a.c_out, (i * (a.w_out + a.kw - 1) + j) * a.c_in],
                     axis=1).astype(np.int64)
    table.flags.writeable = False
    return table


@functools.lru_cache(maxsize=4)
def _masks(dtype) -> np.ndarray:
    """Row k (0 <= k <= L) of one register, flat: positive in the lanes below k, -1
    from k on (``_lanes.where_positive``); read-only."""
    nl = _lanes.per_register(np.dtype(dtype).itemsize)
    masks = np.where(np.arange(nl) < np.arange(nl + 1)[:, None], 1, -1).astype(dtype)
    masks.flags.writeable = False
    return masks.reshape(-1)


def input_grad_images(gy, w, a, grad_x) -> None:
    """grad_x (N, H, W, C), C-contiguous = the input gradient of an ``applies`` problem
    for grad_y gy (N, Ho, Wo, D) and the HWIO weight w (any strides)."""
    gy = np.ascontiguousarray(gy, a.dtype)
    wp, regs = _packed_weight(w, a)
    (pt, _), (pl, _) = a.padding
    size, row = _padded_plane(a)
    threads = numba.get_num_threads()
    bufs = workspace("grad_x_images.planes", threads * size, a.dtype)
    geo = (a.n, a.h_out, a.w_out, a.c_out, a.h, a.w, a.c_in, a.kh, a.kw, pt, pl, regs,
           row)
    with parallel_guard():
        _grad_x_nhwc(gy.reshape(-1), wp.reshape(-1), grad_x.reshape(-1),
                     bufs.reshape(threads, size), _masks(np.dtype(a.dtype)),
                     _pixel_table(a), geo)
