"""conv3d by Winograd F(4x4, 3x3) over the (h, w) planes (kernels (kd, 3, 3), stride 1,
dilation 1).

A (kd, 3, 3) correlation is, for each output depth i, the sum over kernel depths k and
input channels c of 3x3 correlations of the input planes at depth i + k - p_d. Each input
plane is transformed once (:func:`.wino_kernels.input_planes`: 36 values per 6x6 tile,
th x tw tiles of 4x4 outputs per plane) into V (36, G, depths, C/G, tiles), depth-major,
so the (k, c) rows that output depth i reads are one contiguous block of V (V holds every
input depth where that fits, else a window of them that slides, :func:`depth_slots`);
per output depth (and group) one batched GEMM over the 36 entries, (C_out/G) x (kd C/G) x
(tiles), with the transformed kernel U (G, 36, C_out/G, kd C/G), then the output
transform of that depth's planes. At the volume edges the GEMM takes only the kernel
depths that read inside the input (no padded planes are stored). A 3x3x3 layer does
27 / 6.75 = 4x fewer multiplications than the direct sum.

The (image, output depth) pairs are split over the threads in even runs, each thread
with its own V and one BLAS thread (the GEMMs are small), transforming an input depth
when its first output depth needs it, so the rows each GEMM reads were just written.

Both gradients are the forward's adjoints in the Winograd domain, from one transform of
grad_y (:mod:`.wino_backward`).

As 2-D Winograd, a NaN or Inf entering a tile's transform can reach every output of the
tile: :func:`forward` returns whether every output is finite, and the caller recomputes
otherwise.

>>> import numpy as np
>>> from fastconv._args.conv_nd import conv_nd_args_from_shapes
>>> a = conv_nd_args_from_shapes("conv3d", (1, 1, 2, 5, 5), (1, 1, 1, 3, 3), rank=3)
>>> y = np.empty(a.y_shape)
>>> forward(np.ones(a.x_shape), np.ones(a.w_shape), a, y)
True
>>> y[0, 0, 0]
array([[9., 9., 9.],
       [9., 9., 9.],
       [9., 9., 9.]])
"""

from __future__ import annotations

import numpy as np

from ... import _blas, config
from ...costs import gemm_seconds, load_profile
from . import window, wino_backward
from .wino_kernels import (
    ENTRIES,
    entry_planes,
    input_planes,
    kernel_transform,
    output_planes,
    split_threads,
    tiles,
)

#: The transforms' time per transformed plane (36 entries per tile) in passes at the
#: copy bandwidth: the 32^3 layer's took about 2.3 us per input plane and 1.8 us per
#: output plane of 64 tiles (9 KiB transformed) on one core of the development machine.
TRANSFORM_PASSES = 6.0

#: Fixed cost of one output depth of one image and group: a batched GEMM call and two
#: transform calls from Python.
DEPTH_US = 12.0


def applies(a) -> bool:
    """Whether the path serves problem ``a``: kernel (kd, 3, 3), every stride and
    dilation 1."""
    return (tuple(a.kernel[1:]) == (3, 3) and all(s == 1 for s in a.stride)
            and all(r == 1 for r in a.dilation))


def transform_kernel(w, a) -> np.ndarray:
    """U (G, 36, C_out/G, kd C_in/G) of the canonical kernel ``w``."""
    dg, cg = a.c_out // a.groups, a.c_in // a.groups
    u = np.empty((a.groups, ENTRIES, dg, a.kernel[0] * cg), a.dtype)
    for g in range(a.groups):
        kernel_transform(np.ascontiguousarray(w[g * dg:(g + 1) * dg]), u[g])
    return u


def forward(x, w, a, out, bias=None) -> bool:
    """conv3d of canonical arrays into canonical ``out``, plus ``bias`` (C_out,) when
    given (added by the output transform: no pass of its own); ``a`` one :func:`applies`
    accepts. Returns whether every output is finite."""
    u = transform_kernel(w, a)
    bias = np.zeros(a.c_out, a.dtype) if bias is None else bias.astype(a.dtype, copy=False)
    pairs = a.n * a.out[0]
    threads = split_threads(a)
    bounds = [pairs * k // threads for k in range(threads + 1)]
    bad = [0] * threads

    def part(k):
        bad[k] = _run(x, u, a, out, bias, bounds[k], bounds[k + 1])

    _blas.on_threads(part, threads)   # one thread: part(0) here, on one BLAS thread
    return not any(bad)


def depth_slots(a) -> int:
    """Input depths the forward's V holds at once: all of them where that fits half of
    ``config.WORKSPACE_CACHE_BYTES``, else as many as do (at least kd): the window
    slides, its last depths copied to the front."""
    th, tw = tiles(a)
    slab = ENTRIES * a.c_in * th * tw * a.dtype.itemsize
    fits = config.WORKSPACE_CACHE_BYTES // 2 // slab
    return max(a.kernel[0], min(a.size[0], fits))


def _run(x, u, a, out, bias, lo, hi) -> int:
    """Output depths ``lo`` .. ``hi`` - 1 of the (image, output depth) pairs; returns how
    many outputs are not finite."""
    d_in, od = a.size[0], a.out[0]
    kd, pd = a.kernel[0], a.padding[0][0]
    (pt, _), (pl, _) = a.padding[1:]
    th, tw = tiles(a)
    nt = th * tw
    cg, dg = a.c_in // a.groups, a.c_out // a.groups
    slots = depth_slots(a)
    v = entry_planes("conv3d-wino-v", (a.groups, slots, cg, nt), a.dtype)
    m = entry_planes("conv3d-wino-m", (dg, nt), a.dtype)
    bad = 0
    for b in range(lo // od, -(-hi // od)):
        i0, i1 = max(lo - b * od, 0), min(hi - b * od, od)
        base = ready = max(0, i0 - pd)      # depth in slot 0; the next to transform
        for i in range(i0, i1):
            z0 = i - pd
            k0, k1 = max(0, -z0), min(kd, d_in - z0)
            if k1 <= k0:                    # reads only padding
                out[b, :, i] = bias.reshape(-1, 1, 1)
                continue
            if z0 + k1 > base + slots:      # slide: keep depths z0 + k0 .. ready - 1
                keep = max(0, ready - (z0 + k0))
                v[:, :, :keep] = v[:, :, ready - keep - base:ready - base].copy()
                base = z0 + k0
                ready = max(ready, base)
            for z in range(ready, z0 + k1):
                for g in range(a.groups):
                    input_planes(x[b, g * cg:(g + 1) * cg, z], v[:, g, z - base], th, tw,
                                 pt, pl)
            ready = max(ready, z0 + k1)
            for g in range(a.groups):
                rows = v[:, g, z0 + k0 - base:z0 + k1 - base].reshape(ENTRIES, -1, nt)
                np.matmul(u[g][:, :, k0 * cg:k1 * cg], rows, out=m)
                bad += output_planes(m, out[b, g * dg:(g + 1) * dg, i], th, tw,
                                     bias[g * dg:(g + 1) * dg])
    return bad


def backward(gy, x, w, a, grad_x, grad_w) -> None:
    """Input gradient into ``grad_x`` and weight gradient into ``grad_w`` (None: not
    wanted), both by :func:`.wino_backward.gradients`; a gradient that is not finite
    there is recomputed by the windowed path (the formula's NaN and Inf)."""
    u = None if grad_x is None else transform_kernel(w, a)  # only grad_x reads it
    ok_x, ok_w = wino_backward.gradients(gy, x, u, a, grad_x, grad_w)
    if not (ok_x and ok_w):
        window.backward(gy, x, w, a, None if ok_x else grad_x, None if ok_w else grad_w)


def seconds(a, p=None) -> tuple[float, str]:
    """Modelled seconds of :func:`forward` on ``a`` and a sentence: the batched GEMMs,
    the transforms (every input plane once, every output plane once) and a fixed cost
    per output depth, as the other algorithms' models on one thread's rates."""
    p = load_profile() if p is None else p
    item = a.dtype.itemsize
    th, tw = tiles(a)
    nt = th * tw
    cg, dg = a.c_in // a.groups, a.c_out // a.groups
    calls = a.n * a.out[0] * a.groups
    gemm = gemm_seconds(p, dg, a.kernel[0] * cg, nt, ENTRIES * calls, item)
    planes = a.n * (a.c_in * a.size[0] + a.c_out * a.out[0])
    moved = planes * ENTRIES * nt * item
    transforms = TRANSFORM_PASSES * moved / (p.copy_gbs * 1e9)
    fixed = calls * DEPTH_US * 1e-6
    secs = p.call_us * 1e-6 + gemm + transforms + fixed
    detail = (f"F(4x4, 3x3) planes, {ENTRIES * calls} GEMMs {dg}x{a.kernel[0] * cg}x{nt} "
              f"{1e3 * gemm:.3g} ms, transforms {1e3 * transforms:.3g} ms")
    return secs, detail


#: Multiply-adds per second (float32, one core) of ``wino_kernels.weight_products`` on
#: long rows, and the tiles per plane at which it runs at half that (its innermost loop
#: runs over one plane's tiles): 30, 15.5 and 6.7 GMAC/s at 64, 16 and 4 tiles.
WEIGHT_PRODUCTS_GMACS = 40.0
WEIGHT_PRODUCTS_HALF_TILES = 20.0


def backward_seconds(a, p=None) -> tuple[float, str]:
    """Modelled seconds of :func:`backward` (one thread's rates, as :func:`seconds`):
    the weight gradient's products (``WEIGHT_PRODUCTS_GMACS``) and the input
    gradient's GEMMs, the transforms of grad_y (once for both), of the input's padded
    depths and the input gradient's adjoint transform, a fixed cost per output depth."""
    p = load_profile() if p is None else p
    item = a.dtype.itemsize
    th, tw = tiles(a)
    nt = th * tw
    cg, dg = a.c_in // a.groups, a.c_out // a.groups
    kd, od = a.kernel[0], a.out[0]
    macs = ENTRIES * a.n * od * nt * a.c_out * cg * kd
    rate = WEIGHT_PRODUCTS_GMACS * 1e9 * nt / (nt + WEIGHT_PRODUCTS_HALF_TILES)
    grad_w = macs / rate * (item / 4)
    grad_x = gemm_seconds(p, cg, dg, nt, ENTRIES * a.n * a.size[0] * a.groups * kd, item)
    planes = a.n * (a.c_in * (od + kd - 1) + a.c_out * od + a.c_in * a.size[0])
    transforms = TRANSFORM_PASSES * planes * ENTRIES * nt * item / (p.copy_gbs * 1e9)
    fixed = a.n * a.groups * (od + kd + a.size[0] * kd) * DEPTH_US * 1e-6
    secs = p.call_us * 1e-6 + grad_w + grad_x + transforms + fixed
    return secs, (f"grad_x Winograd GEMMs {1e3 * grad_x:.3g} ms, grad_w Winograd "
                  f"products {1e3 * grad_w:.3g} ms, transforms {1e3 * transforms:.3g} ms")


def workspace_bytes(a) -> int:
    """Bytes of one thread's V (``depth_slots`` input depths) and product workspaces."""
    th, tw = tiles(a)
    cg, dg = a.c_in // a.groups, a.c_out // a.groups
    return ENTRIES * th * tw * (a.groups * depth_slots(a) * cg + dg) * a.dtype.itemsize

