"""Winograd's drivers: applicability, the chunked F(m x m, 3x3) run (``_run_nchw``;
``nhwc.run_nhwc`` for NHWC; ``_run`` for either layout and dilated layers), ``forward``
and ``backward``.

Neither falls back to another algorithm: ``forward`` returns whether every output is
finite and ``backward`` which gradients are good; the caller recomputes the others (a
NaN or Inf entering a tile's transform can reach every output of that tile, and Inf - Inf
turns an infinity into NaN, unlike the direct formula).
"""

from __future__ import annotations

import functools

import numpy as np

from ... import _blas, _lanes
from ..._args.memo import per_problem
from ..._runtime import guarded
from .. import _nhwc
from .._common import workspace
from . import grad_w_nchw, grad_w_nhwc, nchw_fused, nhwc, phase_batch
from .dilated import backward_phases, phase_problems
from .grad_w import _grad_w_nchw
from .kernel import layer_kernel
from .tiling import (
    _KERNELS,
    _SERIAL,
    chunk_planes,
    per_thread,
    phases,
    problem,
    thread_runs,
    tile_size,
)


def supports(args) -> bool:
    """Whether the algorithm applies: a 3x3 kernel with stride 1 (any dilation: see
    ``_run``)."""
    return (args.kh, args.kw) == (3, 3) and args.stride == (1, 1)


@per_problem
def grad_x_supported(args) -> bool:
    """grad_x is a correlation with padding 2 - p: every padding must be at most 2 (for
    a dilated layer, every padding of its undilated phase problems,
    ``dilated.phase_problems``)."""
    if not supports(args):
        return False
    if args.dilation != (1, 1):
        return all(grad_x_supported(sub) for *_, sub in phase_problems(args))
    return all(0 <= p <= 2 for pair in args.padding for p in pair)


#: In NHWC the Winograd-domain weight gradient needs NCHW copies of x and grad_y; it runs
#: there only for layers of at least this many channels per group (input and output)
#: and output pixels per image, else im2col computes it (GEMMs on NHWC columns). One
#: core, weight gradient alone, Winograd / im2col time: 16 -> 16 at 28x28 (batch 32)
#: 5.3, 64 -> 64 at 7x7 2.2, 32 -> 32 at 32x32 (batch 64) 1.5, 64 -> 64 at 14x14 1.5,
#: 64 -> 64 at 56x56 (batch 16) 1.2, 128 -> 128 at 8x8 (batch 64) 1.24, 64 -> 64 at
#: 16x16 0.87, 128 -> 128 at 28x28 (batch 16) 0.79, 256 -> 256 at 14x14 0.72. With
#: 256-bit registers (AVX2: 2-core AMD EPYC, 2 threads, best of 5, two runs) the direct
#: weight gradient's rate halves and the bounds come down: 32 -> 32 at 32x32 (batch 64)
#: 0.70, 64 -> 64 at 16x16 0.43-0.54, 32 -> 32 at 14x14 (batch 32) 0.83-0.88, 64 -> 64
#: at 7x7 0.65-0.66, 64 -> 64 at 56x56 (batch 16) 0.37; 16 -> 16 at 28x28 0.89-1.01,
#: 128 -> 128 at 8x8 (batch 64) 0.97.
NHWC_GRAD_W_MIN_CHANNELS = 128 if _lanes.WIDE else 32
NHWC_GRAD_W_MIN_PIXELS = 14 * 14 if _lanes.WIDE else 7 * 7
#: ... or on maps of whole 4x4 tiles of at least ``NHWC_GRAD_W_TILED_MIN_PIXELS`` output
#: pixels, ``NHWC_GRAD_W_TILED_MIN_BATCH`` in the batch (a wide ResNet's last stage).
#: 2 threads, AMD EPYC with AVX-512, alternating, Winograd / im2col: 128 -> 128 at 8x8
#: (batch 32, 64, 128) 0.78, 0.80, 0.79, batch 8 1.17; at 7x7 (batch 32) 0.99, 256 ->
#: 256 1.14, 512 -> 512 (batch 16) 1.26 (tiles a third empty); 128 -> 128 at 4x4 (batch
#: 64) 3.5.
NHWC_GRAD_W_TILED_MIN_PIXELS = 8 * 8
NHWC_GRAD_W_TILED_MIN_BATCH = 32 * 8 * 8
#: In NCHW (no copies either way) with AVX-512, narrower layers leave the weight gradient
#: to im2col's direct kernel too, unless their maps have at least
#: ``NCHW_GRAD_W_MIN_PIXELS`` output pixels and ``NCHW_GRAD_W_MIN_CHANNELS`` channels.
#: Weight gradient alone, 2 threads, Winograd against im2col: 16 -> 16 at 28x28 (batch 32)
#: 1.62 / 0.52 ms, 32 -> 32 at 14x14 1.85 / 0.50, 64 -> 64 at 7x7 1.28 / 0.60, 64 -> 64
#: at 16x16 (batch 64) 4.86 / 4.56; 32 -> 32 at 32x32 (batch 64) 4.34 / 5.08, 64 -> 64 at
#: 56x56 (batch 16) 10.5 / 17.4, 128 -> 128 at 8x8 (batch 64) 4.16 / 6.83, 256 -> 256
#: at 14x14 (batch 16) 15.8 / 17.7.
NCHW_GRAD_W_MIN_CHANNELS = 32
NCHW_GRAD_W_MIN_PIXELS = 32 * 32


@per_problem
def grad_w_supported(args) -> bool:
    """The weight gradient runs in the Winograd domain (a dilated layer's as the sum over
    its undilated phase problems) for layers ``grad_w_fused`` takes, for layers of at
    least ``NHWC_GRAD_W_MIN_CHANNELS`` channels per group and ``NHWC_GRAD_W_MIN_PIXELS``
    output pixels (or smaller maps of whole tiles, ``NHWC_GRAD_W_TILED_MIN_PIXELS``),
    and in NCHW also for those of ``NCHW_GRAD_W_MIN_CHANNELS`` and
    ``NCHW_GRAD_W_MIN_PIXELS`` (any NCHW layer without AVX-512)."""
    if not supports(args):
        return False
    if _fused_layer(args):      # whatever the tile size: F(2x2, 3x3) takes NCHW copies
        return True
    channels = min(args.c_in, args.c_out) // args.groups
    pixels = args.h_out * args.w_out
    if not args.dims.channels_last:
        return (not _lanes.WIDE or channels >= NHWC_GRAD_W_MIN_CHANNELS
                or (channels >= NCHW_GRAD_W_MIN_CHANNELS and pixels >= NCHW_GRAD_W_MIN_PIXELS))
    whole_tiles = (args.h_out % 4 == 0 and args.w_out % 4 == 0
                   and pixels >= NHWC_GRAD_W_TILED_MIN_PIXELS
                   and args.n * pixels >= NHWC_GRAD_W_TILED_MIN_BATCH)
    return channels >= NHWC_GRAD_W_MIN_CHANNELS and (pixels >= NHWC_GRAD_W_MIN_PIXELS
                                                     or whole_tiles)


def grad_w_fused(args) -> bool:
    """Whether the weight gradient runs fused (``grad_w_nhwc``; ``grad_w_nchw`` on rows
    staged channels last): F(4x4, 3x3), undilated, one group, channels it takes. NHWC,
    on 16 -> 16 at 28x28, 32 -> 32 at 14x14 and 64 -> 64 at 7x7 (batch 32, float32, 2
    threads, AMD EPYC with AVX-512): 0.33, 0.33 and 0.33 ms against 0.61, 0.61 and 0.67
    for im2col's direct weight gradient (and its padded copy of x, 0.03-0.07 ms more);
    32 -> 32 at 32x32 (batch 64) 2.4 against 6.3. NCHW, the same layers: 0.66-0.81x the
    direct kernel's time (with its copies of x and grad_y channels last), 0.9x the
    chunked Winograd path's on 32 -> 32 at 32x32."""
    return tile_size() == 4 and _fused_layer(args)


def _fused_layer(args) -> bool:
    """``grad_w_fused`` but for the tile size (a check kept per problem may not read
    ``config.WINOGRAD_TILE``, which can change between calls)."""
    return (args.groups == 1 and args.dilation == (1, 1)
            and grad_w_nhwc.applies(args.c_in, args.c_out, args.dtype.itemsize))


def _run_nchw(x, u, y, bias, pads, groups, m) -> bool:
    """y (N, C_out, Ho, Wo) = F(m x m, 3x3) of x (N, C_in, H, W) (contiguous, or a
    dilated layer's phases: strided views), with the
    transformed kernel u (G, (m+2)^2, Dg, Cg) and padding (top, left), dilation 1.
    Returns whether every output is finite.

    Narrow layers (``tiling.per_thread``) split their tile rows into one even run per
    thread (``tiling.split_rows``); each thread goes through its run chunk by chunk,
    the transforms (single-threaded kernels) and the chunk's GEMMs (on one BLAS thread)
    one after the other, so a chunk's transformed tiles stay in its core's cache. Wider
    layers go through one run, each chunk's transforms and GEMMs split over the
    threads (``_blas.split_matmul``). Layers the fused kernels take
    (``nchw_fused.applies``) run there instead."""
    if nchw_fused.applies(x.shape, y.shape, x.itemsize, groups, m):
        # a dilated layer's phase (``_run_layer`` makes an undilated layer's kernel in
        # the fused kernels' order)
        return nchw_fused.forward(x, np.ascontiguousarray(u.transpose(0, 1, 3, 2)), y,
                                  bias, pads)
    th, tw, cg, dg, threads, rows = problem(x.shape, y.shape, groups, m, x.itemsize)
    split = per_thread(cg, dg)
    input_transform, output_transform = (_SERIAL[m] if split
                                         else map(guarded, _KERNELS[m][1:]))
    matmul = _blas.thread_matmul if split else _blas.split_matmul
    pt, pl = pads
    has_bias = bias is not None
    b = bias if has_bias else np.zeros(1, x.dtype)
    runs = thread_runs(x.shape[0] * th, threads)
    bad = [False] * threads

    def part(k):
        flags = np.zeros(dg * (rows // th + 2), np.bool_)  # a chunk: <= rows/th + 2 images
        lo, hi = runs[k]
        for r0, r1, cols, (v, v_planes), (prod, prod_planes) in chunk_planes(
                hi, rows, tw, cg, dg, m, x.dtype, lo):
            for g in range(groups):
                input_transform(x, v_planes, cg, cols, g * cg, r0, r1, th, tw, pt, pl)
                matmul(u[g], v, out=prod)
                output_transform(prod_planes, y, dg, cols, g * dg, r0, r1, th, tw, b,
                                 has_bias, flags)
                bad[k] = bad[k] or flags.any()

    if split:
        _blas.on_threads(part, threads)
    else:
        part(0)
    return not any(bad)


def forward(x: np.ndarray, w: np.ndarray, args, out: np.ndarray, bias=None) -> bool:
    """F(m x m, 3x3) convolution into ``out`` (caller's layout), plus ``bias`` when given.
    Each layout has its own transforms: NCHW wraps the kernel and input transforms,
    numpy's BLAS matmul (``_blas.split_matmul``) and the output transform of
    ``_KERNELS[m]``; NHWC runs ``nhwc.run_nhwc`` (channels innermost, no copies), with
    the same transformed kernel.

    Returns whether every output is finite. The output transform flags any non-finite
    output; on False the caller must recompute the call (e.g. with im2col) to get the
    direct formula's NaN/Inf pattern. ``args`` must be one ``supports`` accepts (conv2d
    checks that)."""
    if args.n == 0:
        return True
    return _run_layer(np.ascontiguousarray(x), w, args, out, bias,
                      (args.padding[0][0], args.padding[1][0]))


def _run_layer(x, w, args, y, bias, pads, grad_x: bool = False) -> bool:
    """``_run`` of layer ``args`` with its transformed kernel (grad_x's with ``grad_x``:
    x is then grad_y, y grad_x), made in the order the run reads it: an undilated NCHW
    layer that ``nchw_fused`` takes gets the fused kernels' order directly (a transpose
    of the NCHW order took as long as the transform, 0.06 ms for 64 x 64 kernels)."""
    m = tile_size()
    fused_nchw = (not args.dims.channels_last and args.dilation == (1, 1)
                  and nchw_fused.applies(x.shape, y.shape, x.itemsize, args.groups, m))
    copies = not fused_nchw and on_nhwc_copies(args.grad_x_problem if grad_x else args)
    u = layer_kernel(w, args, m, grad_x=grad_x, io=fused_nchw or copies)
    if fused_nchw:
        return nchw_fused.forward(x, u, y, bias, pads)
    if copies:
        return _run_on_copies(x, u, y, bias, pads, m)
    return _run(x, u, y, bias, pads, args.groups, m, args.dilation,
                args.dims.channels_last)


#: Output pixels per image up to which ``on_nhwc_copies`` takes a layer. Forward and
#: grad_x, NCHW chunks / copies (ms), 2 threads, alternating, best of 5 (Intel Xeon,
#: AVX-512): 256 -> 256 at 14x14 (batch 16) 14.9-15.1 / 11.7 and 16.6-16.7 / 11.0-11.3,
#: at 10x10 9.6 / 6.7 and 9.6 / 6.9, at 16x16 11.7 / 12.5 and 16.3 / 12.5; at 7x7 (batch
#: 32) 9.0 / 6.4 and 9.7 / 6.6; 128 -> 128 (batch 32) at 14x14 8.3 / 5.7 and 10.2 / 5.8,
#: at 16x16 8.7 / 7.2 and 9.0 / 6.7. Larger maps ran alike or slower on copies (batch
#: 16): 128 -> 128 at 20x20 5.2 / 5.5 and 5.7 / 5.3, at 28x28 8.8-10.0 / 9.7-11.2; at
#: 54x54 (batch 4) 7.5 / 9.4 and 8.7 / 10.3.
COPIES_MAX_PIXELS = 16 * 16


def on_nhwc_copies(args) -> bool:
    """Whether an NCHW layer's forward (and grad_x) runs on channels-last copies of its
    input and output through NHWC's chunked transforms (``nhwc.run_nhwc``): undilated,
    one group, too wide to split its tile rows over the threads (``tiling.per_thread``,
    and so outside the fused kernels), on maps of at most ``COPIES_MAX_PIXELS``. On
    small maps the NCHW transforms, a few tiles a plane, took more of the call than
    NHWC's, which run whole vectors of channels; the two copies
    (``_nhwc.swap_last2``) cost about 0.2-0.5 ms on these layers."""
    return (not args.dims.channels_last and args.dilation == (1, 1) and args.groups == 1
            and not per_thread(args.c_in, args.c_out)
            and args.h_out * args.w_out <= COPIES_MAX_PIXELS)


def _run_on_copies(x, u, y, bias, pads, m) -> bool:
    """``_run`` of an undilated one-group NCHW layer (u in NHWC's order) on
    channels-last copies of x and y (``on_nhwc_copies``)."""
    n, c, h, wd = x.shape
    _, d, ho, wo = y.shape
    xl = workspace("winograd.x_nhwc", x.size, x.dtype).reshape(n, h, wd, c)
    _nhwc.write_nhwc(x, xl)
    yl = workspace("winograd.y_nhwc", y.size, y.dtype).reshape(n, ho, wo, d)
    finite = nhwc.run_nhwc(xl, u, yl, bias, pads, 1, m)
    _nhwc.write_nchw(yl, y)
    return finite


def _run(x, u, y, bias, pads, groups, m, dilation, channels_last=False) -> bool:
    """F(m x m, 3x3) of x into y, both contiguous in one layout (``channels_last``:
    NHWC, ``nhwc.run_nhwc``; else NCHW, ``_run_nchw``; u from ``kernel.layer_kernel``),
    for any dilation (dh, dw).
    Dilated, the outputs y[.., rho_h::dh, rho_w::dw] of each phase are an undilated 3x3
    correlation of the input phase x[.., sigma_h::dh, sigma_w::dw] (``phases``): NHWC
    reads and writes them in place (its kernels' phase arguments); NCHW runs them as one
    batch when they are all the same problem (``phase_batch.forward_batched``), else
    each on strided views of x and y. Returns whether every output is finite."""
    run = nhwc.run_nhwc if channels_last else _run_nchw
    if dilation == (1, 1):
        return run(x, u, y, bias, pads, groups, m)
    if not channels_last:
        finite = phase_batch.forward_batched(x, u, y, bias, pads, groups, m, dilation, run)
        if finite is not None:
            return finite
    dh, dw = dilation
    ho, wo = (y.shape[1:3] if channels_last else y.shape[2:])
    finite = True
    for rho_h, sigma_h, pt, count_h in phases(ho, pads[0], dh):
        for rho_w, sigma_w, pl, count_w in phases(wo, pads[1], dw):
            if channels_last:
                finite &= run(x, u, y, bias, (pt, pl), groups, m,
                              ((rho_h, sigma_h, count_h), (rho_w, sigma_w, count_w), dilation))
                continue
            finite &= run(x[:, :, sigma_h::dh, sigma_w::dw], u, y[:, :, rho_h::dh, rho_w::dw],
                          bias, (pt, pl), groups, m)
    return finite


def backward(grad_y: np.ndarray, x: np.ndarray, w: np.ndarray, args, grad_x,
             grad_w, *, phase: bool = False) -> tuple[bool, bool]:
    """The gradients Winograd supports into ``grad_x`` / ``grad_w`` (caller's layout);
    pass None for one not wanted or not supported (``grad_x_supported``,
    ``grad_w_supported``).

    grad_x[n, c, i, j] = sum_{d,a,b} grad_y[n, d, i + p_top - a, j + p_left - b] w[d, c, a, b]
    is a 3x3 correlation of grad_y with the flipped kernel, channels transposed, padding
    (2 - p): the forward's transform applies. grad_w is the adjoint of F(m x m, 3x3) in the
    Winograd domain (``grad_w._grad_w_nchw``, the forward's tile size m). A dilated layer runs as
    undilated problems, one per phase (``dilated.backward_phases``); ``phase``: args is
    one of them, whose weight gradient runs here whatever its size (``grad_w_supported``
    decided for the whole layer).

    Returns (ok_x, ok_w): False for a gradient the caller must compute itself, because
    its result here was non-finite (recompute it, e.g. with im2col, for the direct
    formula's NaN/Inf pattern) or because it was passed although not supported (then left
    unwritten); True otherwise, and for None."""
    by_x = grad_x is not None and grad_x_supported(args)
    by_w = grad_w is not None and (phase or grad_w_supported(args))
    ok_x, ok_w = grad_x is None or by_x, grad_w is None or by_w
    if not (by_x or by_w):
        return ok_x, ok_w
    (pt, _), (pl, _) = args.padding
    m = tile_size()
    dims = args.dims
    if args.dilation != (1, 1):
        return _backward_dilated(_nhwc.nchw_copy(grad_y, dims), x, w, args,
                                 grad_x if by_x else None, grad_w if by_w else None, ok_x,
                                 ok_w)
    if by_w and grad_w_fused(args):
        if dims.channels_last:
            ok_w = grad_w_nhwc.fused_grad_w(np.ascontiguousarray(grad_y, args.dtype),
                                            np.ascontiguousarray(x, args.dtype), grad_w,
                                            (pt, pl))
        else:       # any strides: staged by the kernel
            ok_w = grad_w_nchw.fused_grad_w(np.asarray(grad_y, args.dtype),
                                            np.asarray(x, args.dtype), grad_w, (pt, pl))
    elif by_w:  # NCHW, or NHWC on copies (wide layers, ``grad_w_supported``)
        gw = _nhwc.oihw_target(grad_w, dims)
        _grad_w_nchw(_nhwc.nchw_copy(grad_y, dims), _nhwc.nchw_copy(x, dims), gw, (pt, pl),
                     args.groups, m)
        _nhwc.write_weight_back(gw, grad_w, dims)
        ok_w = bool(np.isfinite(gw).all())
    if by_x:
        ok_x = _run_layer(np.ascontiguousarray(grad_y), w, args, grad_x, None,
                          (2 - pt, 2 - pl), grad_x=True)
    return ok_x, ok_w


def _backward_dilated(gy, x, w, args, grad_x, grad_w, ok_x, ok_w) -> tuple[bool, bool]:
    """``backward`` of a dilated layer (gy NCHW; grad_x, grad_w in the caller's layout,
    None when not computed here): ``dilated.backward_phases`` on NCHW / OIHW arrays."""
    dims = args.dims
    gx = None if grad_x is None else _nhwc.nchw_target(grad_x, dims)
    gw = None if grad_w is None else _nhwc.oihw_target(grad_w, dims)
    xc = None if grad_w is None else _nhwc.nchw_copy(x, dims)
    px, pw = backward_phases(gy, xc, np.ascontiguousarray(dims.weight_to_canonical_view(w)),
                             args, gx, gw, functools.partial(backward, phase=True))
    if gx is not None:
        _nhwc.write_back(gx, grad_x, dims)
        ok_x = px
    if gw is not None:
        _nhwc.write_weight_back(gw, grad_w, dims)
        ok_w = pw
    return ok_x, ok_w
