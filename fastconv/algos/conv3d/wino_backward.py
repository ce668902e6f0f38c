"""conv3d's gradients in the Winograd domain (F(4x4, 3x3) over the (h, w) planes).

The forward y = A^T [sum over k, c of U[k, c] * V(depth i + k - p_d, c)] A is linear in
U = G w G^T and in V = B^T x B, so its adjoints give both gradients from the transformed
output-gradient tiles P = A gy A^T (:func:`.wino_kernels.grad_planes`, formed once for
both):

- weight: dU[:, o, (k, c)] = sum over output depths i and tiles of P[:, i, o, tile]
  * V[:, c, (i + k - p_d, tile)], grad_w = G^T dU G (:func:`.wino_kernels.kernel_adjoint`).
  With V channel-major, (36, G, C/G, slots, tiles) over the padded depths (zero slots in
  the padding), the rows of V that tap depth k reads for all output depths are one
  contiguous run per channel, so each (entry, group, k) is a product (C_out/G) x
  (D_out tiles) x (C_in/G), of rows read in place (``wino_kernels.weight_products``,
  faster than OpenBLAS on these thin products);
- input: dV[:, c, z] = sum over k of U[:, :, (k, c)]^T P[:, z + p_d - k] with P
  depth-major, (36, G, depths, C_out/G, tiles), so the (i, o) rows an input depth reads
  are one block: one batched GEMM (C_in/G) x (kd C_out/G) x (tiles) per input depth;
  grad_x[c, z] = B dV B^T added tile by tile onto the plane
  (:func:`.wino_kernels.input_adjoint`), for any padding.

A 3x3x3 layer does 27 / 6.75 = 4x fewer multiplications than the direct gradients.

The (image, output depth) pairs are split over the threads in even runs as the
forward's (each thread with its own workspaces and one BLAS thread), in blocks of output
depths whose transforms fit the workspace budget (:func:`block_depths`). The weight
gradients are summed in thread order; an input depth whose output depths fall in two
blocks gets the two parts' sum.

>>> import numpy as np
>>> from fastconv._args.conv_nd import conv_nd_args_from_shapes
>>> a = conv_nd_args_from_shapes("conv3d", (1, 1, 2, 5, 5), (1, 1, 1, 3, 3), rank=3)
>>> gx, gw = np.empty(a.x_shape), np.empty(a.w_shape)
>>> u = np.zeros((1, 36, 1, 1))
>>> gradients(np.ones((1, 1, 2, 3, 3)), np.ones(a.x_shape), u, a, None, gw)
(True, True)
>>> gw[0, 0, 0]
array([[18., 18., 18.],
       [18., 18., 18.],
       [18., 18., 18.]])
"""

from __future__ import annotations

import numpy as np

from ... import _blas, config
from .wino_kernels import (
    ENTRIES,
    entry_planes,
    grad_planes,
    input_adjoint,
    input_planes,
    kernel_adjoint,
    split_threads,
    tiles,
    weight_products,
)


def _columns_for_input_gradient(u, a):
    """ut (G, 36, C_in/G, kd C_out/G), ut[g, e, c, (kd - 1 - k) * dg + o] =
    u[g, e, o, k * cg + c]: the input gradient's (k, o) columns in the order of P's rows
    (i, o), i = z + p_d - k ascending."""
    groups, cg, dg, kd = a.groups, a.c_in // a.groups, a.c_out // a.groups, a.kernel[0]
    return np.ascontiguousarray(u.reshape(groups, ENTRIES, dg, kd, cg).transpose(
        0, 1, 4, 3, 2)[:, :, :, ::-1]).reshape(groups, ENTRIES, cg, kd * dg)


def gradients(gy, x, u, a, grad_x, grad_w) -> tuple[bool, bool]:
    """The input gradient into ``grad_x`` and the weight gradient into ``grad_w``
    (canonical arrays; None: not wanted) of canonical ``gy`` and ``x``, ``u`` the
    forward's transformed kernel (G, 36, C_out/G, kd C_in/G; read only for grad_x, may
    be None without it); ``a`` a problem
    ``winograd.applies`` accepts. Returns (grad_x finite, grad_w finite)."""
    threads = split_threads(a)
    pairs = a.n * a.out[0]
    ut = None if grad_x is None else _columns_for_input_gradient(u, a)
    bounds = [pairs * k // threads for k in range(threads + 1)]
    parts = [None] * threads

    def part(k):
        parts[k] = _pairs(gy, x, ut, a, bounds[k], bounds[k + 1], grad_x, grad_w is not None)

    _blas.on_threads(part, threads)   # one thread: part(0) here, on one BLAS thread
    ok_x = ok_w = True
    if grad_x is not None:
        ok_x = _finish_input_gradient(a, grad_x, [p[1] for p in parts]) and not any(
            p[2] for p in parts)
    if grad_w is not None:
        du = parts[0][0]
        for p in parts[1:]:      # in thread order: the same sum every run
            du += p[0]
        dg = a.c_out // a.groups
        for g in range(a.groups):
            kernel_adjoint(du[g], grad_w[g * dg:(g + 1) * dg])
        ok_w = bool(np.isfinite(grad_w).all())
    return ok_x, ok_w


def _finish_input_gradient(a, grad_x, partials) -> bool:
    """Input depths split between blocks: the sum of their parts (in thread and block
    order); depths no output reads: zero. Returns whether the sums are finite."""
    sums = {}
    for plist in partials:
        for b, z, plane in plist:
            if (b, z) in sums:
                sums[b, z] += plane
            else:
                sums[b, z] = plane
    for (b, z), plane in sums.items():
        grad_x[b, :, z] = plane
    kd, pd, od = a.kernel[0], a.padding[0][0], a.out[0]
    for z in range(a.size[0]):
        if not any(0 <= z + pd - k < od for k in range(kd)):
            grad_x[:, :, z] = 0
    return all(np.isfinite(p).all() for p in sums.values())


def _pairs(gy, x, ut, a, lo, hi, grad_x, want_w):
    """Over the (image, output depth) pairs ``lo`` .. ``hi`` - 1: (dU (G, 36, C_out/G,
    kd C_in/G) summed or None, [(image, input depth, (C_in, H, W) part)] of the input
    depths whose output depths reach past this run, how many input-gradient values were
    not finite)."""
    d_in, od = a.size[0], a.out[0]
    kd, pd = a.kernel[0], a.padding[0][0]
    (pt, _), (pl, _) = a.padding[1:]
    th, tw = tiles(a)
    nt = th * tw
    groups, cg, dg = a.groups, a.c_in // a.groups, a.c_out // a.groups
    block = block_depths(a)
    slots = block + kd - 1
    pg, pflat = entry_planes("conv3d-wino-pg", (groups, block, dg, nt), a.dtype, flat=True)
    if want_w:
        vc, vflat = entry_planes("conv3d-wino-vc", (groups, cg, slots, nt), a.dtype,
                                 flat=True)
    du = np.zeros((groups, ENTRIES, dg, kd * cg), a.dtype) if want_w else None
    dv = entry_planes("conv3d-wino-dv", (cg, nt), a.dtype)
    partials, bad = [], 0
    for b in range(lo // od, -(-hi // od)):
        for j0 in range(max(lo - b * od, 0), min(hi - b * od, od), block):
            j1 = min(hi - b * od, od, j0 + block)
            for i in range(j0, j1):
                for g in range(groups):
                    grad_planes(gy[b, g * dg:(g + 1) * dg, i], pg[:, g, i - j0], th, tw)
            if want_w:
                for s in range(j1 - j0 + kd - 1):    # slot s: input depth j0 + s - p_d
                    z = j0 + s - pd
                    for g in range(groups):
                        if 0 <= z < d_in:
                            input_planes(x[b, g * cg:(g + 1) * cg, z], vc[:, g, :, s], th,
                                         tw, pt, pl)
                        else:
                            vc[:, g, :, s] = 0
                for g in range(groups):
                    weight_products(pflat, g * block * dg * nt, dg, nt, dg * nt,
                                    vflat, g * cg * slots * nt, cg, slots * nt, nt,
                                    j1 - j0, du[g])
            if grad_x is None:
                continue
            for z in range(max(0, j0 - pd), min(d_in, j1 - pd + kd - 1)):
                # output depths i = z + p_d - k that read input depth z: all, and those here
                i_lo, i_hi = max(0, z + pd - kd + 1), min(od, z + pd + 1)
                here = range(max(i_lo, j0), min(i_hi, j1))
                whole = i_lo >= j0 and i_hi <= j1
                target = grad_x[b, :, z] if whole else np.empty(grad_x.shape[1:2] +
                                                                grad_x.shape[3:], a.dtype)
                kk = kd - 1 - (z + pd - here.start)     # ut's column block of here.start
                cols = slice(kk * dg, (kk + len(here)) * dg)
                for g in range(groups):
                    rows = pg[:, g, here.start - j0:here.stop - j0].reshape(ENTRIES, -1, nt)
                    np.matmul(ut[g][:, :, cols], rows, out=dv)
                    bad += input_adjoint(dv, target[g * cg:(g + 1) * cg], th, tw, pt, pl)
                if not whole:
                    partials.append((b, z, target))
    return du, partials, bad


def block_depths(a) -> int:
    """Output depths whose transforms are held at once: all of an image's where the
    workspaces fit half of ``config.WORKSPACE_CACHE_BYTES``, else as many as do (at
    least 1; each block transforms the kd - 1 input depths it shares with the next
    again)."""
    th, tw = tiles(a)
    plane = ENTRIES * th * tw * a.dtype.itemsize
    spare = config.WORKSPACE_CACHE_BYTES // 2 - plane * a.c_in * (a.kernel[0] - 1)
    return max(1, min(a.out[0], spare // (plane * (a.c_in + a.c_out))))
