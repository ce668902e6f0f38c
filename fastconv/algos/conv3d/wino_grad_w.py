"""conv3d's weight gradient in the Winograd domain (F(4x4, 3x3) over the (h, w) planes).

The forward y = A^T [sum over k, c of U[k, c] * V(depth i + k - p_d, c)] A is linear
in U = G w G^T, so its adjoint gives dU[:, o, (k, c)] = sum over output depths i and
tiles of P[:, o, (i, tile)] * V[:, c, (i + k - p_d, tile)], P = A gy A^T the
transformed output-gradient tiles (:func:`.wino_kernels.grad_planes`), and grad_w =
G^T dU G (:func:`.wino_kernels.kernel_adjoint`). With V channel-major per image, (36, G,
C/G, slots, tiles) over the padded depths (zero slots in the padding), the rows of
V that tap depth k reads for all output depths are one contiguous run per channel, so
each (entry, group, k) is a product (C_out/G) x (D_out tiles) x (C_in/G) per image, of
rows read in place (``wino_kernels.weight_products``, faster than OpenBLAS on these
thin products): 27 / 6.75 = 4x fewer multiplications than the direct weight gradient
of a 3x3x3 layer.

The (image, output depth) pairs are split over the threads in even runs as the
forward's (each thread with its own workspaces and one BLAS thread, its GEMMs over its
depths), the threads' sums added in thread order.

>>> import numpy as np
>>> from fastconv._args.conv_nd import conv_nd_args_from_shapes
>>> a = conv_nd_args_from_shapes("conv3d", (1, 1, 2, 5, 5), (1, 1, 1, 3, 3), rank=3)
>>> gw = np.empty(a.w_shape)
>>> weight_gradient(np.ones((1, 1, 2, 3, 3)), np.ones(a.x_shape), a, gw)
>>> gw[0, 0, 0]
array([[18., 18., 18.],
       [18., 18., 18.],
       [18., 18., 18.]])
"""

from __future__ import annotations

import numba
import numpy as np

from ... import _blas, config
from .wino_kernels import (
    ENTRIES,
    entry_planes,
    grad_planes,
    input_planes,
    kernel_adjoint,
    weight_products,
)


def _tiles(a):
    return -(-a.out[1] // 4), -(-a.out[2] // 4)


def split_threads(a, threads: int | None = None) -> int:
    """Threads the (image, output depth) pairs are split over: 1 when the GEMMs' total
    is small (``config.SMALL_GEMM_MACS``), else as many as numba uses, at most the
    pairs."""
    threads = numba.get_num_threads() if threads is None else threads
    th, tw = _tiles(a)
    macs = ENTRIES * a.n * a.out[0] * th * tw * a.c_out * (a.c_in // a.groups) * a.kernel[0]
    if macs <= config.SMALL_GEMM_MACS:
        return 1
    return max(1, min(threads, a.n * a.out[0]))


def weight_gradient(gy, x, a, grad_w) -> None:
    """The weight gradient of canonical ``gy`` and ``x`` into canonical ``grad_w``
    (O, C/G, kd, 3, 3); ``a`` a problem ``winograd.applies`` accepts."""
    threads = split_threads(a)
    pairs = a.n * a.out[0]
    bounds = [pairs * k // threads for k in range(threads + 1)]
    parts = [None] * threads

    def part(k):
        parts[k] = _pairs(gy, x, a, bounds[k], bounds[k + 1])

    if threads == 1:
        with _blas.one_blas_thread():
            part(0)
    else:
        _blas.on_threads(part, threads)
    du = parts[0]
    for p in parts[1:]:      # in thread order: the same sum every run
        du += p
    dg = a.c_out // a.groups
    for g in range(a.groups):
        kernel_adjoint(du[g], grad_w[g * dg:(g + 1) * dg])


def _pairs(gy, x, a, lo, hi) -> np.ndarray:
    """dU (G, 36, C_out/G, kd C_in/G) summed over the (image, output depth) pairs
    ``lo`` .. ``hi`` - 1."""
    d_in, od = a.size[0], a.out[0]
    kd, pd = a.kernel[0], a.padding[0][0]
    (pt, _), (pl, _) = a.padding[1:]
    th, tw = _tiles(a)
    nt = th * tw
    groups, cg, dg = a.groups, a.c_in // a.groups, a.c_out // a.groups
    block = block_depths(a)
    slots = block + kd - 1
    vc, vflat = entry_planes("conv3d-wino-vc", (groups, cg, slots, nt), a.dtype, flat=True)
    pg, pflat = entry_planes("conv3d-wino-pg", (groups, dg, block, nt), a.dtype, flat=True)
    du = np.zeros((groups, ENTRIES, dg, kd * cg), a.dtype)
    for b in range(lo // od, -(-hi // od)):
        for j0 in range(max(lo - b * od, 0), min(hi - b * od, od), block):
            j1 = min(hi - b * od, od, j0 + block)
            for s in range(j1 - j0 + kd - 1):    # slot s: input depth j0 + s - p_d
                z = j0 + s - pd
                for g in range(groups):
                    if 0 <= z < d_in:
                        input_planes(x[b, g * cg:(g + 1) * cg, z], vc[:, g, :, s], th, tw,
                                     pt, pl)
                    else:
                        vc[:, g, :, s] = 0
            for i in range(j0, j1):
                for g in range(groups):
                    grad_planes(gy[b, g * dg:(g + 1) * dg, i], pg[:, g, :, i - j0], th, tw)
            for g in range(groups):
                weight_products(pflat, g * dg * block * nt, dg, block * nt,
                                 vflat, g * cg * slots * nt, cg, slots * nt, nt,
                                 (j1 - j0) * nt, du[g])
    return du


def block_depths(a) -> int:
    """Output depths whose transforms are held at once: all of an image's where the
    two workspaces fit half of ``config.WORKSPACE_CACHE_BYTES``, else as many as do (at
    least 1; each block transforms the kd - 1 input depths it shares with the next
    again)."""
    th, tw = _tiles(a)
    plane = ENTRIES * th * tw * a.dtype.itemsize
    spare = config.WORKSPACE_CACHE_BYTES // 2 - plane * a.c_in * (a.kernel[0] - 1)
    return max(1, min(a.out[0], spare // (plane * (a.c_in + a.c_out))))
