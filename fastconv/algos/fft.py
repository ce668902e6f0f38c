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

import math

import numpy as np
import scipy.fft as sfft
from numba import njit, prange

from .. import config, numerics
from .._args.memo import per_problem
from .._runtime import parallel_guard
from ..costs import Estimate, Profile, backward_from_forward
from ._common import U
from .registry import Algorithm, register

_P_TILE = 256  # frequencies per accumulator tile in the channel sum


@njit(inline="always")
def _tiles(n_freq):
    """Tiles of _P_TILE frequencies covering n_freq."""
    return (n_freq + _P_TILE - 1) // _P_TILE


@njit(inline="always")
def _task_indices(task, n_mid, n_inner, n_freq):
    """(outer, middle, inner, p0, p1) of a frequency-domain sum's task: tasks run over
    (outer, middle < n_mid, inner < n_inner, tile), the tile fastest, and the tile covers
    frequencies [p0, p1)."""
    n_tiles = _tiles(n_freq)
    t = task % n_tiles
    rest = task // n_tiles
    inner = rest % n_inner
    rest //= n_inner
    p0 = t * _P_TILE
    return rest // n_mid, rest % n_mid, inner, p0, min(p0 + _P_TILE, n_freq)


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _freq_channel_sum(xf, wf, yf, conjugate):
    """yf[n, g, d, p] = sum_c xf[n, g, c, p] * wf[g, d, c, p] (complex, per frequency p),
    or with conj(wf[g, d, c, p]) when ``conjugate`` (the forward's correlation: wf holds
    the kernel spectrum itself, and the conjugate is taken here rather than in a separate
    pass; the flag is tested once per channel, outside the loop over frequencies).

    xf (N, G, Cg, P), wf (G, Dg, Cg, P), yf (N, G, Dg, P); one task per (n, g, d, tile)."""
    n_img, groups, cg, n_freq = xf.shape
    dg = wf.shape[1]
    for task in prange(n_img * groups * dg * _tiles(n_freq)):
        n, g, d, p0, p1 = _task_indices(task, groups, dg, n_freq)
        acc = yf[n, g, d, p0:p1]
        width = U(p1 - p0)
        for p in range(width):
            acc[p] = 0
        for c in range(cg):
            xs = xf[n, g, c, p0:p1]
            ws = wf[g, d, c, p0:p1]
            if conjugate:
                for p in range(width):
                    acc[p] += xs[p] * ws[p].conjugate()
            else:
                for p in range(width):
                    acc[p] += xs[p] * ws[p]


def _freq_correlate_sum(xf, wf, yf) -> None:
    """The forward's channel sum, yf = sum_c xf * conj(wf) (``_freq_channel_sum``)."""
    _freq_channel_sum(xf, wf, yf, True)


def _axis_take(n_out: int, stride: int, pad_lo: int, size: int, keff: int, length: int):
    """Where output index i sits in the circular correlation of length ``length``
    (position s*i - p_lo, mod length): a slice when no index wraps, else an index array;
    plus whether every output overlaps the input (False: some must be set to zero)."""
    m = np.arange(n_out) * stride - pad_lo
    inside = (m >= -(keff - 1)) & (m <= size - 1)
    if m[0] >= 0 and m[-1] < length:
        return slice(int(m[0]), int(m[-1]) + 1, stride), inside
    return np.mod(m, length), inside


def extent(args) -> tuple[int, int]:
    """(keff_h, keff_w): the dilated kernel's rows and columns, r*(k-1)+1 per axis."""
    return (args.dilation[0] * (args.kh - 1) + 1, args.dilation[1] * (args.kw - 1) + 1)


def transform_shape(args) -> tuple[int, int]:
    keff_h, keff_w = extent(args)
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


def fft_workers(planes: int, points: int) -> int:
    """Threads for scipy.fft, forward and backward: one for less than about a million
    points in all (a single 512x512 plane ran no faster in the median with two here,
    only less steadily: the second thread's wake-up costs about what it saves; the
    backward of a one-channel 256 x 256 layer, five transforms of 288 x 288, took 3.1-5.1
    ms with two against 1.8-2.0 with one and its other savings, Intel Xeon, 2 cores),
    else ``config.FFT_WORKERS``."""
    return 1 if planes * points < (1 << 20) else config.FFT_WORKERS


def forward_transform_shape(args) -> tuple[int, int]:
    """(fh, fw) used by ``forward``: the shortest fast lengths that avoid wrap-around on
    the outputs asked for (a 'valid' correlation needs only the input size, where the
    full linear correlation of ``transform_shape`` needs H + keff - 1)."""
    keff_h, keff_w = extent(args)
    lh = _axis_length(args.h, args.h_out, args.stride[0], args.padding[0][0], keff_h)
    lw = _axis_length(args.w, args.w_out, args.stride[1], args.padding[1][0], keff_w)
    return sfft.next_fast_len(lh, real=True), sfft.next_fast_len(lw, real=True)


def image_bytes(args, shape: tuple[int, int] | None = None) -> int:
    """Frequency-domain workspace per image (input and output spectra) for transforms of
    ``shape`` (default ``transform_shape(args)``)."""
    fh, fw = transform_shape(args) if shape is None else shape
    complex_item = 2 * args.dtype.itemsize
    return (args.c_in + args.c_out) * fh * (fw // 2 + 1) * complex_item


def _kernel_spectrum(w: np.ndarray, args, shape: tuple[int, int], workers: int):
    """rfft2 of the dilated kernel w (C_out, Cg, kh, kw) zero-padded to ``shape`` (fh,
    fw): (C_out, Cg, fh, fw // 2 + 1). Only keff_h of the fh rows are non-zero, so the
    row transforms run on those rows alone (a whole rfft2 of the padded kernel took 0.38
    ms of a one-channel 256 x 256 backward, 16 x 16 kernel, on one worker)."""
    fh, fw = shape
    rh, rw = args.dilation
    keff_h, keff_w = extent(args)
    wd = np.zeros((args.c_out, args.c_in // args.groups, keff_h, keff_w), args.dtype)
    wd[:, :, ::rh, ::rw] = w
    return sfft.fft(sfft.rfft(wd, n=fw, axis=-1, workers=workers), n=fh, axis=-2,
                    workers=workers, overwrite_x=True)


@per_problem
def _forward_geometry(args):
    """((fh, fw), rows, cols, outside, bytes per image) of ``forward``: the transform
    shape (``forward_transform_shape``), where the outputs' rows and columns sit in the
    circular correlation (``_axis_take``: slices or read-only index arrays), the
    read-only mask of outputs whose window lies wholly in the padding (None when there
    are none) and the spectra's bytes per image. Worked out once per problem: they took
    40-50 us of a one-channel 256 x 256 forward of about 0.6 ms."""
    fh, fw = forward_transform_shape(args)
    keff_h, keff_w = extent(args)
    rows, rows_in = _axis_take(args.h_out, args.stride[0], args.padding[0][0], args.h,
                               keff_h, fh)
    cols, cols_in = _axis_take(args.w_out, args.stride[1], args.padding[1][0], args.w,
                               keff_w, fw)
    outside = None if rows_in.all() and cols_in.all() else ~np.outer(rows_in, cols_in)
    for kept in (rows, cols, outside):     # shared by every call of the problem
        if isinstance(kept, np.ndarray):
            kept.flags.writeable = False
    return (fh, fw), rows, cols, outside, max(image_bytes(args, (fh, fw)), 1)


def forward(x: np.ndarray, w: np.ndarray, args, out: np.ndarray, bias=None) -> None:
    """FFT convolution into ``out`` (caller's layout), plus ``bias`` when given.
    Wraps ``_freq_correlate_sum``; any layout through its NCHW / OIHW views (no copies).
    Returns None: the caller decides whether to trust the result (fastconv.numerics)."""
    if args.n == 0:
        return
    dims = args.dims
    x = dims.to_canonical_view(x)
    w = dims.weight_to_canonical_view(w)
    y_all = dims.to_canonical_view(out)
    (fh, fw), rows, cols, outside, per_image = _forward_geometry(args)
    g, cg, dg = args.groups, args.c_in // args.groups, args.c_out // args.groups
    workers = fft_workers(args.n * (args.c_in + args.c_out), fh * fw)

    wf = _kernel_spectrum(w, args, (fh, fw), workers)
    n_freq = wf.shape[-2] * wf.shape[-1]
    wf = wf.reshape(g, dg, cg, n_freq)
    bias_b = None if bias is None else bias[:, None, None]

    batch = max(1, min(args.n, config.WORKSPACE_BYTES // per_image))
    for n0 in range(0, args.n, batch):
        nb = min(batch, args.n - n0)
        xf = sfft.rfft2(x[n0:n0 + nb], s=(fh, fw), workers=workers)
        xf = xf.reshape(nb, g, cg, n_freq)
        yf = np.empty((nb, g, dg, n_freq), xf.dtype)
        with parallel_guard():
            _freq_correlate_sum(xf, wf, yf)
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


# ----------------------------------------------------------------------------- backward
# Per axis, with the dilated kernel k (length keff) and z[m] = sum_u k[u] x[m + u], the
# forward reads y[i] = z[s*i - p_lo]. Scatter grad_y into G[t] at t = s*i - p_lo + keff - 1
# (a zero array of length H + keff - 1; outputs whose window lies wholly in the padding
# touch nothing and are dropped). Then
#   grad_x[h] = sum_u k[u] G[h + keff - 1 - u]   = IFFT(FFT(G) * FFT(k))[h + keff - 1]
#   grad_k[u] = sum_t G[t] x[t + u - (keff - 1)] = IFFT(conj(FFT(G)) * FFT(x))[u - keff + 1]
# and grad_w = grad_k[::r]. A transform length F >= H + keff - 1 (the forward's) keeps both
# free of wrap-around at the positions read.


@njit(parallel=True, cache=True)
def _freq_batch_sum(gf, xf, acc):
    """acc[g, d, c, p] += sum_n conj(gf[n, g, d, p]) * xf[n, g, c, p] (per frequency p).
    Without fastmath: compiled with it, the kernel a process compiled and the one
    numba's cache loads in another rounded grad_w differently in the last bits (a
    spawned worker disagreed with its parent on an empty cache, tests/test_concurrency).

    gf (N, G, Dg, P), xf (N, G, Cg, P), acc (G, Dg, Cg, P); one task per (g, d, c, tile),
    each owning its slice of acc."""
    n_img, groups, dg, n_freq = gf.shape
    cg = xf.shape[2]
    for task in prange(groups * dg * cg * _tiles(n_freq)):
        g, d, c, p0, p1 = _task_indices(task, dg, cg, n_freq)
        a = acc[g, d, c, p0:p1]
        for n in range(n_img):
            gs = gf[n, g, d, p0:p1]
            xs = xf[n, g, c, p0:p1]
            for p in range(p1 - p0):
                a[p] += gs[p].conjugate() * xs[p]


def _scatter_slices(n_out: int, stride: int, pad_lo: int, size: int, keff: int):
    """(positions, outputs) as slices: the positions t = s*i - p_lo + keff - 1 in G of
    the outputs i that touch the input (0 <= t < size + keff - 1), and those outputs, a
    run of consecutive i (t grows with i). Slices, not index arrays: numpy's scatter
    through index arrays took 0.25 ms of a one-channel 256 x 256 backward.

    >>> _scatter_slices(5, 2, 3, 4, 3)     # t = -1, 1, 3, 5, 7; G holds 0..5
    (slice(1, 6, 2), slice(1, 4, None))
    """
    first = max(0, -(-(pad_lo - keff + 1) // stride))    # the least i with t >= 0
    last = min(n_out, -(-(size + pad_lo) // stride))       # ... with t >= size + keff - 1
    if last <= first:
        return slice(0, 0), slice(0, 0)
    t0 = first * stride - pad_lo + keff - 1
    return slice(t0, t0 + (last - first - 1) * stride + 1, stride), slice(first, last)


def backward(grad_y: np.ndarray, x: np.ndarray, w: np.ndarray, args, grad_x, grad_w) -> None:
    """FFT gradients into ``grad_x`` / ``grad_w`` (caller's layout, fully written); either
    may be None (not computed). Wraps ``_freq_channel_sum`` (grad_x: sum over output
    channels) and ``_freq_batch_sum`` (grad_w: sum over images); any layout through its
    NCHW / OIHW views. Returns None."""
    need_x, need_w = grad_x is not None, grad_w is not None
    dims = args.dims
    x = dims.to_canonical_view(x)
    w = dims.weight_to_canonical_view(w)
    grad_y = dims.to_canonical_view(grad_y)
    gx_all = dims.to_canonical_view(grad_x) if need_x else None
    gw_all = dims.weight_to_canonical_view(grad_w) if need_w else None
    fh, fw = transform_shape(args)
    rh, rw = args.dilation
    keff_h, keff_w = extent(args)
    g, cg, dg = args.groups, args.c_in // args.groups, args.c_out // args.groups
    workers = fft_workers(args.n * (args.c_in + args.c_out), fh * fw)

    # Kernel spectrum (not conjugated), channel axes swapped for the sum over d: (G, Cg, Dg, P)
    kf = _kernel_spectrum(w, args, (fh, fw), workers)
    n_freq = kf.shape[-2] * kf.shape[-1]
    kf = np.ascontiguousarray(kf.reshape(g, dg, cg, n_freq).transpose(0, 2, 1, 3))

    t_rows, keep_rows = _scatter_slices(args.h_out, args.stride[0], args.padding[0][0],
                                        args.h, keff_h)
    t_cols, keep_cols = _scatter_slices(args.w_out, args.stride[1], args.padding[1][0],
                                        args.w, keff_w)
    gy_kept = grad_y[:, :, keep_rows, keep_cols]
    acc = np.zeros((g, dg, cg, n_freq), kf.dtype)

    # Per image the backward holds the spectra of grad_y, x and grad_x and two real arrays
    # of about the same size: under 3x the forward's (C_in + C_out) spectra.
    per_image = max(3 * image_bytes(args), 1)
    batch = max(1, min(args.n, config.WORKSPACE_BYTES // per_image))
    for n0 in range(0, args.n, batch):
        nb = min(batch, args.n - n0)
        big_g = np.zeros((nb, args.c_out, args.h + keff_h - 1, args.w + keff_w - 1),
                         args.dtype)
        big_g[:, :, t_rows, t_cols] = gy_kept[n0:n0 + nb]
        gf = sfft.rfft2(big_g, s=(fh, fw), workers=workers)
        gf = np.ascontiguousarray(gf.reshape(nb, g, dg, n_freq))
        if need_w:
            xf = sfft.rfft2(x[n0:n0 + nb], s=(fh, fw), workers=workers)
            xf = np.ascontiguousarray(xf.reshape(nb, g, cg, n_freq))
            with parallel_guard():
                _freq_batch_sum(gf, xf, acc)
        if need_x:
            gxf = np.empty((nb, g, cg, n_freq), gf.dtype)
            with parallel_guard():
                _freq_channel_sum(gf, kf, gxf, False)
            z = sfft.irfft2(gxf.reshape(nb, args.c_in, fh, fw // 2 + 1), s=(fh, fw),
                            workers=workers)
            gx_all[n0:n0 + nb] = z[:, :, keff_h - 1:keff_h - 1 + args.h,
                                   keff_w - 1:keff_w - 1 + args.w]
    if not need_w:
        return
    # grad_k needs keff of the fh rows of the inverse: the column transforms first (as
    # irfft2 runs them), then the row transforms of those rows alone
    rows = np.mod(np.arange(0, keff_h, rh) - (keff_h - 1), fh)
    cols = np.mod(np.arange(0, keff_w, rw) - (keff_w - 1), fw)
    zc = sfft.ifft(acc.reshape(args.c_out, cg, fh, fw // 2 + 1), axis=-2, workers=workers,
                   overwrite_x=True)
    zk = sfft.irfft(zc[:, :, rows], n=fw, axis=-1, workers=workers, overwrite_x=True)
    gw_all[...] = zk[:, :, :, cols]


# ------------------------------------------------------------------------ registry
#: Time per point * log2(points) of a transform length with factors 3 or 5 over that of a
#: power of two (scipy's transforms inside FFT convolutions; fitted on 591 layers, both
#: layouts, on the 2-core AMD machine: 1.28x, lengths 18-270 against 16-256).
MIXED_RADIX_COST = 1.28


def _radix_cost(length: int) -> float:
    """1 for a power-of-two length, else ``MIXED_RADIX_COST``."""
    return 1.0 if length & (length - 1) == 0 else MIXED_RADIX_COST


def cost(a, p: Profile) -> Estimate:
    """Model time of the forward: transforms of every input and output plane
    (``points * log2(points)`` each, plus a fixed cost per plane), the pruned kernel
    transforms, and ``N*G*Dg*Cg*points/2`` complex multiply-adds for the channel sum."""
    fh, fw = forward_transform_shape(a)
    points = fh * fw
    per_plane = points * math.log2(max(points, 2)) * p.fft_ns * 1e-9
    per_plane *= (_radix_cost(fh) + _radix_cost(fw)) / 2
    if a.dtype.itemsize == 8:
        per_plane *= 1.4
    per_plane += p.fft_plane_us * 1e-6
    keff_h = extent(a)[0]
    cg, dg = a.c_in // a.groups, a.c_out // a.groups
    kernel_planes = a.c_out * cg * (0.5 + 0.5 * keff_h / fh)  # pruned row transforms
    transforms = (a.n * (a.c_in + a.c_out) + kernel_planes) * per_plane
    macs = a.n * a.groups * dg * cg * fh * (fw // 2 + 1)
    channel_sum = macs / (p.fft_gmacs * 1e9) * (a.dtype.itemsize / 4)
    out_bytes = a.n * a.c_out * a.h_out * a.w_out * a.dtype.itemsize
    copy = 2 * out_bytes / (p.copy_gbs * 1e9)
    per_image = image_bytes(a, (fh, fw))
    batch = max(1, min(a.n, config.WORKSPACE_BYTES // max(per_image, 1)))
    workspace = batch * per_image + a.c_out * cg * fh * (fw // 2 + 1) * 2 * a.dtype.itemsize
    secs = (p.call_us + p.fft_call_us) * 1e-6 + transforms + channel_sum + copy
    detail = (f"{fh}x{fw} transforms {1e3 * transforms:.3g} ms, channel sum "
              f"{1e3 * channel_sum:.3g} ms")
    return Estimate(secs, workspace, detail)


def backward_cost(a, p: Profile) -> Estimate:
    return backward_from_forward(cost(a, p), p)


def trusted(x, w, bias, args, out) -> bool:
    """Whether the FFT result ``out`` meets ``numerics.FFT_TOLERANCE`` (the a-priori
    error bound, else a float64 recompute of sampled outputs)."""
    dims = args.dims
    xn, wn, yn = dims.to_canonical_view(x), dims.weight_to_canonical_view(w), \
        dims.to_canonical_view(out)
    if bias is not None:
        yn = yn - bias[:, None, None]
    fh, fw = transform_shape(args)
    bound = numerics.fft_error_bound(xn, wn, fh * fw)
    return numerics.fft_result_trusted(yn, bound, xn, wn, args)


ALGORITHM = register(Algorithm(
    "fft", "real 2-D transforms (scipy.fft), channel sum in the frequency domain",
    forward, backward, cost, backward_cost, finite_input_only=True, trusted=trusted))
