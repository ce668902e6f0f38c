"""The NCHW forward through the NHWC register tiles: each band of output rows stages the
input rows it reads channels last, multiplies them in place, and writes its rows back.

The indirect forward (``indirect_nhwc``) reads a pixel's taps of one kernel row as one
contiguous run of KW*C input values, which NCHW holds one plane apart. Here a task takes
a band of ``BAND_ROWS`` output rows of one image, copies the input rows they read into
a channels-last buffer of its own, the zero padding included on every side (a vector of
columns of 8 channels at a time, transposed in registers: ``staging.stage_in``), runs
the same tiles of 6 pixels x 4 registers of output channels over it, the band's pixels
taken 6 at a time across its rows (``indirect_nhwc.interior_rows``: every pixel reads inside
the buffer, so no edge column is unfolded, and every kernel row runs, on zeros past the
image; row by row, a row of 28 pixels computed 30), and writes the band's output
rows, channels last in a second buffer, back to the output planes
(``staging.stage_out``). Both buffers stay in the core's cache; the input is read from
memory once, as by the NHWC forward.

Measured on the 2-core Intel Xeon, float32, 2 threads, in one process alternating with
the fused panels it replaces (``fused``; best of 20 calls, 4-6 rounds): x (16, 64, 56,
56) -> 128 3x3 stride 2, padding 1 7.29-7.61 -> 6.29-6.43 ms (torch 5.8-6.0 in the same
runs); 32 -> 128 3x3 stride 1 at 28 x 28 (batch 16, ``algo="im2col"``) 3.95 -> 3.21;
(64, 32, 32, 32) -> 128, (32, 64, 28, 28) -> 128 and (32, 64, 14, 14) -> 128 at stride
2, 5x5 and few-channel layers within 2% either way. Of that stride-2 layer's 6.3 ms the
staging took about 1.1 (0.7 in, 0.4 out).

Examples
--------
>>> import numpy as np
>>> from fastconv import conv2d
>>> x = np.ones((2, 8, 16, 20), np.float32)            # NCHW
>>> w = np.ones((128, 8, 3, 3), np.float32)            # OIHW
>>> y = conv2d(x, w, stride=2, padding=1, algo="im2col")
>>> float(y[0, 0, 0, 0]), float(y[0, 5, 0, 3]), float(y[1, 127, 4, 4])  # corner, edge, inside
(32.0, 48.0, 72.0)
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ... import _lanes, _pool, config
from ..._runtime import parallel_guard
from ..._small_gemm import TILE_ROWS
from ...costs import Estimate, Profile, gemm_seconds
from .._common import read_only, workspace
from ..staging import raveled, stage_in, stage_out
from .indirect_nhwc import add_bias, interior_rows, weight_fits
from .tiling import tiling, unfold_params

#: Output rows of one image a task takes.
BAND_ROWS = 8
#: The fewest input channels: fewer are staged one value at a time, and (3 -> 128 7x7,
#: stride 2, 224 x 224) ran 1.2-1.3x the fused panels' time.
MIN_CHANNELS = 8


def applies(args) -> bool:
    """Whether ``forward`` runs the forward of ``args``: NCHW with what the NHWC indirect
    forward needs (``indirect_nhwc.weight_fits``: one group, undilated kernel columns,
    8+ registers of output channels, a weight that fits L2, a kernel larger than 1x1),
    at least ``MIN_CHANNELS`` input channels, at least ``TILE_ROWS`` output columns,
    and tiles that are not image-last (``tiling``: many small images, which the GEMM
    runs image-last)."""
    return (not args.dims.channels_last and args.c_in >= MIN_CHANNELS
            and args.w_out >= TILE_ROWS and weight_fits(args) and not tiling(args).image_last)


def cost(a, p: Profile) -> Estimate:
    """Model time of ``forward``: the register tiles' GEMM, (pixels of a band, KH*KW*C,
    D) per band at ``gemm_seconds``' rate, and the staging, a pass over the input rows
    each band reads and one over its output, at the profile's copy bandwidth."""
    band = min(BAND_ROWS, a.h_out)
    bands = a.n * -(-a.h_out // band)
    item = a.dtype.itemsize
    kkc = a.kh * a.kw * a.c_in
    gemm = bands * gemm_seconds(p, band * a.w_out, kkc, a.c_out, 1, item)
    read = bands * _staged_rows(a, band) * _staged_columns(a) * a.c_in
    staged = (read + a.n * a.c_out * a.h_out * a.w_out) * item / (p.copy_gbs * 1e9)
    workspace = p.threads * sum(_buffer_sizes(a, band)) * item
    return Estimate(p.call_us * 1e-6 + gemm + staged, workspace,
                    f"{bands} bands of output rows staged channels last "
                    f"({1e3 * staged:.3g} ms) and multiplied in register tiles (indirect), "
                    f"GEMM {band * a.w_out}x{kkc}x{a.c_out} {1e3 * gemm:.3g} ms")


def _on_lines(size: int, dtype) -> int:
    """``size`` elements rounded up to whole cache lines: each thread's buffer then
    starts on one (the workspace does), so the output tiles' registers are stored
    whole (a register split over two lines costs two)."""
    per_line = 64 // np.dtype(dtype).itemsize
    return -(-size // per_line) * per_line


def _buffer_sizes(args, band: int) -> tuple[int, int]:
    """Elements of a thread's two staging buffers, its band's input rows and its output
    rows, each in whole cache lines."""
    return (_on_lines(_staged_rows(args, band) * _staged_columns(args) * args.c_in,
                      args.dtype),
            _on_lines(band * args.w_out * args.c_out, args.dtype))


def _staged_columns(args) -> int:
    """Columns of the staged input rows: those the output row's taps reach, padding
    included."""
    return (args.w_out - 1) * args.stride[1] + (args.kw - 1) * args.dilation[1] + 1


def _staged_rows(args, band: int) -> int:
    """Input rows a band of ``band`` output rows reads."""
    return (band - 1) * args.stride[0] + (args.kh - 1) * args.dilation[0] + 1


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _forward_staged(x, xf, wf, y, yf, bias, xbufs, ybufs, band, cols, params):
    """y (N, D, Ho, Wo) = conv(x (N, C, H, W), w) (+ bias (D,), when it holds D values),
    wf the HWIO weight flat (KH*KW*C, D): one task per band of ``band`` output rows of
    an image. xbufs (T, rows * cols * C), ybufs (T, band * Wo * D): the staged input and
    output rows, per thread; xf, yf: x and y raveled where C-contiguous, else empty
    (``staging``). params: ``unfold_params``' geometry (s_h, s_w, p_top, p_left, r_h,
    r_w, KH, KW)."""
    n_img, c_all, _, _ = x.shape
    _, d_all, ho, wo = y.shape
    sh, sw, pt, pl, rh, _, kh, kw = params
    width = 4 * _lanes.count(wf)
    run = kw * c_all
    line = rh * cols * c_all
    per = (ho + band - 1) // band
    for task in prange(n_img * per):
        n, i0 = task // per, task % per * band
        rows = min(band, ho - i0)
        top = i0 * sh - pt
        xs = xbufs[numba.get_thread_id()]
        ys = ybufs[numba.get_thread_id()]
        staged = (rows - 1) * sh + (kh - 1) * rh + 1
        stage_in(x, xf, n, top, -pl, staged, (0, cols, cols), xs, 0)
        # the staged band as one image of rows x cols, zero padded on every side: every
        # kernel row of every pixel reads inside it
        interior_rows(xs, wf, ys, (0, rows), (0, wo), (rows, wo, staged, cols, sh, 0),
                      (c_all, d_all, run, sw, 0, line), width, (0, kh))
        add_bias(ys, 0, rows * wo * d_all, bias)
        stage_out(ys, 0, (0, wo, wo), y, yf, n, i0, rows)


def forward(x, w, args, out, bias) -> None:
    """The forward of an ``applies`` problem on numba's threads: x (N, C, H, W) and out
    (N, D, Ho, Wo) (any strides), w (D, C, KH, KW), bias (D,) or None."""
    dt = out.dtype
    threads = numba.get_num_threads()
    band = min(BAND_ROWS, args.h_out)
    x_size, y_size = _buffer_sizes(args, band)
    xbufs = workspace("im2col.indirect_nchw.x", threads * x_size, dt).reshape(threads, x_size)
    ybufs = workspace("im2col.indirect_nchw.y", threads * y_size, dt).reshape(threads, y_size)
    wf = _pool.aligned(w.transpose(2, 3, 1, 0).astype(dt, copy=False)).reshape(-1)
    b = np.zeros(0, dt) if bias is None else np.ascontiguousarray(bias, dt)
    x = read_only(x)                 # one compiled kernel for read-only and writable x
    with parallel_guard():
        _forward_staged(x, raveled(x), wf, out, raveled(out), b, xbufs, ybufs, band,
                        _staged_columns(args), unfold_params(args)[1:])
