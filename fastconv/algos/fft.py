"""FFT convolution on scipy.fft real transforms.

Cross-correlation of x with the dilated kernel k (size keff = r*(K-1)+1) is, per axis,
z[m] = sum_u k[u] x[m + u] = IFFT(FFT(x) * conj(FFT(k)))[m mod F] whenever the transform
length F >= H + keff - 1 (no wrap-around). Only the outputs asked for must be free of
wrap-around, so the forward uses the shortest such F (``forward_transform_shape``; F = H
suffices for a 'valid' correlation). The output is y[i] = z[s*i - p_lo] for
-(keff-1) <= s*i - p_lo <= H-1 and 0 outside (the zero padding), so stride, padding and
dilation need no padded copy. The channel sum (and groups) is done in the frequency
domain: one forward transform per input channel and per kernel channel, one inverse
transform per output channel.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft
from numba import njit, prange

from .. import config
from .._runtime import parallel_guard
from ._common import U

_P_TILE = 256  # frequencies per accumulator tile in the channel sum


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _freq_channel_sum(xf, wf, yf):
    """yf[n, g, d, p] = sum_c xf[n, g, c, p] * conj(wf[g, d, c, p]) (complex, per
    frequency p).

    xf (N, G, Cg, P), wf (G, Dg, Cg, P), yf (N, G, Dg, P); one task per (n, g, d, tile).
    wf holds the kernel spectrum itself: the conjugate (correlation, not convolution)
    is taken here rather than in a separate pass."""
    n_img, groups, cg, n_freq = xf.shape
    dg = wf.shape[1]
    n_tiles = (n_freq + _P_TILE - 1) // _P_TILE
    for task in prange(n_img * groups * dg * n_tiles):
        t = task % n_tiles
        rest = task // n_tiles
        d = rest % dg
        rest //= dg
        g = rest % groups
        n = rest // groups
        p0 = t * _P_TILE
        p1 = min(p0 + _P_TILE, n_freq)
        acc = yf[n, g, d, p0:p1]
        width = U(p1 - p0)
        for p in range(width):
            acc[p] = 0
        for c in range(cg):
            xs = xf[n, g, c, p0:p1]
            ws = wf[g, d, c, p0:p1]
            for p in range(width):
                acc[p] += xs[p] * ws[p].conjugate()


def _axis_take(n_out: int, stride: int, pad_lo: int, size: int, keff: int, length: int):
    """Where output index i sits in the circular correlation of length ``length``
    (position s*i - p_lo, mod length): a slice when no index wraps, else an index array;
    plus whether every output overlaps the input (False: some must be set to zero)."""
    m = np.arange(n_out) * stride - pad_lo
    inside = (m >= -(keff - 1)) & (m <= size - 1)
    if m[0] >= 0 and m[-1] < length:
        return slice(int(m[0]), int(m[-1]) + 1, stride), inside
    return np.mod(m, length), inside


def transform_shape(args) -> tuple[int, int]:
    keff_h = args.dilation[0] * (args.kh - 1) + 1
    keff_w = args.dilation[1] * (args.kw - 1) + 1
    return (sfft.next_fast_len(args.h + keff_h - 1, real=True),
            sfft.next_fast_len(args.w + keff_w - 1, real=True))


def _axis_length(size: int, n_out: int, stride: int, pad_lo: int, keff: int) -> int:
    """Shortest circular length that gives every needed output of one axis exactly.

    Output i reads z[m] with m = s*i - p_lo, and z[m] sums taps x[m + u], u < keff. No tap
    of an output that overlaps the input may wrap onto real data: m + keff <= F for the
    last such m (at most size - 1), and for m < 0 the wrapped taps F + m + u must land
    in the zero tail, F >= size - m (m >= -(keff - 1) for outputs that are not zeroed)."""
    m_last = min((n_out - 1) * stride - pad_lo, size - 1)
    return max(size, m_last + keff, size + min(pad_lo, keff - 1))


def forward_transform_shape(args) -> tuple[int, int]:
    """(fh, fw) used by ``forward``: the shortest fast lengths that avoid wrap-around on
    the outputs asked for (a 'valid' correlation needs only the input size, where the
    full linear correlation of ``transform_shape`` needs H + keff - 1)."""
    keff_h = args.dilation[0] * (args.kh - 1) + 1
    keff_w = args.dilation[1] * (args.kw - 1) + 1
    lh = _axis_length(args.h, args.h_out, args.stride[0], args.padding[0][0], keff_h)
    lw = _axis_length(args.w, args.w_out, args.stride[1], args.padding[1][0], keff_w)
    return sfft.next_fast_len(lh, real=True), sfft.next_fast_len(lw, real=True)


def image_bytes(args, shape: tuple[int, int] | None = None) -> int:
    """Frequency-domain workspace per image (input and output spectra) for transforms of
    ``shape`` (default ``transform_shape(args)``)."""
    fh, fw = transform_shape(args) if shape is None else shape
    complex_item = 2 * args.dtype.itemsize
    return (args.c_in + args.c_out) * fh * (fw // 2 + 1) * complex_item


def forward(x: np.ndarray, w: np.ndarray, args, out: np.ndarray, bias=None) -> None:
    """FFT convolution into ``out`` (caller's layout), plus ``bias`` when given.
    Wraps ``_freq_channel_sum``."""
    if args.n == 0:
        return
    if args.layout == "NHWC":
        x = x.transpose(0, 3, 1, 2)
        w = w.transpose(3, 2, 0, 1)
        y_all = out.transpose(0, 3, 1, 2)
    else:
        y_all = out
    fh, fw = forward_transform_shape(args)
    rh, rw = args.dilation
    keff_h, keff_w = rh * (args.kh - 1) + 1, rw * (args.kw - 1) + 1
    g, cg, dg = args.groups, args.c_in // args.groups, args.c_out // args.groups
    workers = config.FFT_WORKERS

    # Kernel spectrum (G, Dg, Cg, P) of the dilated kernel. Only keff_h of the fh rows
    # are non-zero, so the row transforms run on those rows alone.
    wd = np.zeros((args.c_out, cg, keff_h, keff_w), args.dtype)
    wd[:, :, ::rh, ::rw] = w
    wf = sfft.fft(sfft.rfft(wd, n=fw, axis=-1, workers=workers), n=fh, axis=-2,
                  workers=workers, overwrite_x=True)
    n_freq = wf.shape[-2] * wf.shape[-1]
    wf = wf.reshape(g, dg, cg, n_freq)

    rows, rows_in = _axis_take(args.h_out, args.stride[0], args.padding[0][0], args.h,
                               keff_h, fh)
    cols, cols_in = _axis_take(args.w_out, args.stride[1], args.padding[1][0], args.w,
                               keff_w, fw)
    outside = None if rows_in.all() and cols_in.all() else ~np.outer(rows_in, cols_in)
    bias_b = None if bias is None else bias[:, None, None]

    per_image = max(image_bytes(args, (fh, fw)), 1)
    batch = max(1, min(args.n, config.WORKSPACE_BYTES // per_image))
    for n0 in range(0, args.n, batch):
        nb = min(batch, args.n - n0)
        xf = sfft.rfft2(x[n0:n0 + nb], s=(fh, fw), workers=workers)
        xf = xf.reshape(nb, g, cg, n_freq)
        yf = np.empty((nb, g, dg, n_freq), xf.dtype)
        with parallel_guard():
            _freq_channel_sum(xf, wf, yf)
        z = sfft.irfft2(yf.reshape(nb, args.c_out, fh, fw // 2 + 1), s=(fh, fw),
                        workers=workers, overwrite_x=True)
        z = z[:, :, rows] if isinstance(rows, slice) else z.take(rows, axis=2)
        y = z[:, :, :, cols] if isinstance(cols, slice) else z.take(cols, axis=3)
        if outside is not None:
            y = np.array(y)
            y[:, :, outside] = 0  # windows lying wholly in the padding give exactly zero
        if bias_b is None:
            y_all[n0:n0 + nb] = y
        else:
            np.add(y, bias_b, out=y_all[n0:n0 + nb])
