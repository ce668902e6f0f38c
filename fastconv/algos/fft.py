"""FFT convolution on scipy.fft real transforms.

Cross-correlation of x with the dilated kernel k (size keff = r*(K-1)+1) is, per axis,
z[m] = sum_u k[u] x[m + u] = IFFT(FFT(x) * conj(FFT(k)))[m mod F] whenever the transform
length F >= H + keff - 1 (no wrap-around). The output is y[i] = z[s*i - p_lo] for
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

_P_TILE = 256  # frequencies per accumulator tile in the channel sum


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _freq_channel_sum(xf, wf, yf):
    """yf[n, g, d, p] = sum_c xf[n, g, c, p] * wf[g, d, c, p] (complex, per frequency p).

    xf (N, G, Cg, P), wf (G, Dg, Cg, P), yf (N, G, Dg, P); one task per (n, g, d, tile)."""
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
        acc[:] = 0
        for c in range(cg):
            xs = xf[n, g, c, p0:p1]
            ws = wf[g, d, c, p0:p1]
            for p in range(p1 - p0):
                acc[p] += xs[p] * ws[p]


def _axis_index(n_out: int, stride: int, pad_lo: int, size: int, keff: int, length: int):
    """Positions in the circular correlation of length ``length`` for each output index,
    and the mask of outputs that overlap the input at all."""
    m = np.arange(n_out) * stride - pad_lo
    inside = (m >= -(keff - 1)) & (m <= size - 1)
    return np.mod(m, length), inside


def transform_shape(args) -> tuple[int, int]:
    keff_h = args.dilation[0] * (args.kh - 1) + 1
    keff_w = args.dilation[1] * (args.kw - 1) + 1
    return (sfft.next_fast_len(args.h + keff_h - 1, real=True),
            sfft.next_fast_len(args.w + keff_w - 1, real=True))


def image_bytes(args) -> int:
    """Frequency-domain workspace per image (input and output spectra)."""
    fh, fw = transform_shape(args)
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
    fh, fw = transform_shape(args)
    rh, rw = args.dilation
    keff_h, keff_w = rh * (args.kh - 1) + 1, rw * (args.kw - 1) + 1
    g, cg, dg = args.groups, args.c_in // args.groups, args.c_out // args.groups
    workers = config.FFT_WORKERS

    # Dilated kernel, then its conjugate spectrum: (G, Dg, Cg, P).
    wd = np.zeros((args.c_out, cg, keff_h, keff_w), args.dtype)
    wd[:, :, ::rh, ::rw] = w
    wf = np.conj(sfft.rfft2(wd, s=(fh, fw), workers=workers))
    n_freq = wf.shape[-2] * wf.shape[-1]
    wf = np.ascontiguousarray(wf.reshape(g, dg, cg, n_freq))

    rows, rows_in = _axis_index(args.h_out, args.stride[0], args.padding[0][0], args.h, keff_h, fh)
    cols, cols_in = _axis_index(args.w_out, args.stride[1], args.padding[1][0], args.w, keff_w, fw)
    mask = np.outer(rows_in, cols_in)

    per_image = max(image_bytes(args), 1)
    batch = max(1, min(args.n, config.WORKSPACE_BYTES // per_image))
    for n0 in range(0, args.n, batch):
        nb = min(batch, args.n - n0)
        xf = sfft.rfft2(x[n0:n0 + nb], s=(fh, fw), workers=workers)
        xf = np.ascontiguousarray(xf.reshape(nb, g, cg, n_freq))
        yf = np.empty((nb, g, dg, n_freq), xf.dtype)
        with parallel_guard():
            _freq_channel_sum(xf, wf, yf)
        z = sfft.irfft2(yf.reshape(nb, args.c_out, fh, fw // 2 + 1), s=(fh, fw),
                        workers=workers)
        y = z[:, :, rows[:, None], cols[None, :]]
        y[:, :, ~mask] = 0  # windows lying wholly in the padding give exactly zero
        if bias is not None:
            y += bias[:, None, None]
        y_all[n0:n0 + nb] = y
