"""Pointwise layers (1x1 kernel, stride 1, no padding): the forward, and the backward
as two plain GEMMs.

The input of such a layer already is its column matrix, so nothing is unfolded or
folded: per group g,

* NCHW, x (N, G, Cg, HW), grad_y (N, G, Dg, HW), W (G, Dg, Cg):
  grad_x[n] = W^T @ grad_y[n] and grad_W^T = sum_n x[n] @ grad_y[n]^T;
* NHWC, x (P, G, Cg), grad_y (P, G, Dg) with P = N*H*W pixels, W (G, Cg, Dg):
  grad_x = grad_y @ W^T and grad_W = x^T @ grad_y (one product over all pixels).

Examples
--------
>>> import numpy as np
>>> from fastconv import conv2d_backward
>>> x = np.ones((2, 4, 3, 3), np.float32)          # (N, C_in, H, W)
>>> w = np.ones((5, 4, 1, 1), np.float32)          # (C_out, C_in, 1, 1)
>>> gy = np.ones((2, 5, 3, 3), np.float32)         # (N, C_out, H, W)
>>> gx, gw, gb = conv2d_backward(gy, x, w, algo="im2col")
>>> float(gx[0, 0, 0, 0]), float(gw[0, 0, 0, 0]), gx.shape, gw.shape
(5.0, 18.0, (2, 4, 3, 3), (5, 4, 1, 1))
"""

from __future__ import annotations

import contextlib

import numpy as np

from ... import _blas
from ...costs import Estimate, Profile, gemm_seconds
from .._common import view
from . import pointwise_kernels as kernels
from .tiling import gemm_sizes


def backward_pointwise(gy, x, w, args, grad_x, grad_w) -> None:
    """grad_x and grad_w (either may be None: not computed) of a pointwise layer
    (``tiling.is_pointwise``), in the caller's layout, with two GEMMs and no column
    matrix. grad_x and grad_w are C-contiguous and fully written."""
    g, dg, cg = gemm_sizes(args)
    gy = np.ascontiguousarray(gy)
    x = np.ascontiguousarray(x) if grad_w is not None else x
    if args.dims.channels_last:
        _nhwc(gy, x, w, args, grad_x, grad_w, g, dg, cg)
    else:
        _nchw(gy, x, w, args, grad_x, grad_w, g, dg, cg)


def forward_pointwise(x, wmat, args, out, bias_g) -> None:
    """out = the pointwise layer of x plus bias_g when given, x and out C-contiguous.
    NHWC: wmat (G, Cg, Dg) and bias_g (G, Dg); x already is the column matrix, one GEMM
    (N*H*W, Cg) @ (Cg, Dg) per group. NCHW: wmat (G, Dg, Cg) C-contiguous and bias_g
    (G, Dg, 1); images split over numba's threads
    (``pointwise_kernels``) unless the products are small (``_blas.is_small``: one
    batched matmul on one BLAS thread) or the kernels do not apply
    (``pointwise_kernels.threads_for``: numpy's matmul)."""
    if args.dims.channels_last:
        _forward_nhwc(x, wmat, args, out, bias_g)
        return
    g, dg, cg = wmat.shape
    n, hw = args.n, args.h * args.w
    y = view(out, (n, g, dg, hw))
    xv = view(x, (n, g, cg, hw))
    small = _blas.is_small(dg, cg, hw, n * g)
    threads = 0 if small else kernels.threads_for(n, x, wmat)
    if threads:
        kernels.forward(wmat, xv, y, None if bias_g is None else bias_g[..., 0], threads)
        return
    if g == 1:  # one product per image, split over the threads
        _blas.split_matmul(wmat[0], xv[:, 0], y[:, 0])
    else:
        _blas.matmul(wmat, xv, out=y)
    if bias_g is not None:
        y += bias_g


def _forward_nhwc(x, wmat, args, out, bias_g) -> None:
    g, cg, dg = wmat.shape
    pixels = args.n * args.h * args.w
    xv = view(x, (pixels, g, cg))
    y = view(out, (pixels, g, dg))
    if g == 1:
        _blas.matmul(xv[:, 0], wmat[0], out=y[:, 0])
    else:
        _blas.matmul(xv.transpose(1, 0, 2), wmat, out=y.transpose(1, 0, 2))
    if bias_g is not None:
        y += bias_g


def _nchw(gy, x, w, args, grad_x, grad_w, g, dg, cg) -> None:
    """The images split over the threads (one BLAS thread each): each thread writes
    grad_x of its images and sums their grad_W products in its own (G, Cg, Dg) buffer
    while grad_y's image is in cache; the buffers are added at the end. numba's threads
    run it (``pointwise_kernels``) where the kernels apply, else Python threads; a small
    problem (``_blas.is_small``) or a single image runs in the calling thread."""
    import numba

    n, hw = args.n, args.h * args.w
    gyv = view(gy, (n, g, dg, hw))
    wmat = np.ascontiguousarray(w).reshape(g, dg, cg)
    wt = wmat.transpose(0, 2, 1)
    gx = None if grad_x is None else view(grad_x, (n, g, cg, hw))
    xv = None if grad_w is None else view(x, (n, g, cg, hw))
    gyt = gyv.transpose(0, 1, 3, 2)
    small = _blas.is_small(dg, cg, hw, n * g * ((gx is not None) + (xv is not None)))
    threads = 0 if small else kernels.threads_for(n, gy, x, wmat)
    if threads:
        gwt = kernels.backward(wmat, gyv, xv, gx, threads)
        if grad_w is not None:
            view(grad_w, (g, dg, cg))[...] = gwt.transpose(0, 2, 1)
        return
    threads = 1 if small else min(numba.get_num_threads(), n)
    bounds = [n * t // threads for t in range(threads + 1)]
    sums = [None] * threads

    def part(k: int) -> None:
        lo, hi = bounds[k], bounds[k + 1]
        if gx is not None:
            _blas.thread_matmul(wt, gyv[lo:hi], out=gx[lo:hi])
        if xv is not None:
            sums[k] = _weight_sum(xv, gyt, lo, hi)

    if threads > 1:
        _blas.on_threads(part, threads)
    else:
        with _blas.one_blas_thread() if small else contextlib.nullcontext():
            part(0)
    if grad_w is not None:
        gw = view(grad_w, (g, dg, cg)).transpose(0, 2, 1)
        gw[...] = sums[0]
        for s in sums[1:]:
            gw += s


def _weight_sum(xv, gyt, lo: int, hi: int) -> np.ndarray:
    """grad_W transposed, (G, Cg, Dg): the sum over images lo .. hi - 1 of
    xv[i] @ gyt[i], one product per image, each added while it is in cache. (This
    orientation, with the short grad_y^T the transposed operand, ran at 58 GMAC/s per
    thread against 47 for grad_y @ x^T on the pointwise layer of the benchmark.)"""
    acc = np.matmul(xv[lo], gyt[lo])
    tmp = np.empty_like(acc)
    for i in range(lo + 1, hi):
        np.matmul(xv[i], gyt[i], out=tmp)
        acc += tmp
    return acc


def _nhwc(gy, x, w, args, grad_x, grad_w, g, dg, cg) -> None:
    p = args.n * args.h * args.w
    gyv = view(gy, (p, g, dg))
    wmat = np.ascontiguousarray(w).reshape(cg, g, dg)  # HWIO (1, 1, Cg, D)
    gx = None if grad_x is None else view(grad_x, (p, g, cg))
    gw = None if grad_w is None else view(grad_w, (cg, g, dg))
    xv = None if grad_w is None else view(x, (p, g, cg))
    for gi in range(g):  # row-strided operands go to BLAS as they are
        if gx is not None:  # W^T copied (Dg x Cg, small): rows the register tiles read
            _blas.matmul(gyv[:, gi], np.ascontiguousarray(wmat[:, gi].T), out=gx[:, gi])
        if gw is not None:
            _blas.matmul(xv[:, gi].T, gyv[:, gi], out=gw[:, gi])


def backward_cost_pointwise(a, p: Profile) -> Estimate:
    """Model time of ``backward_pointwise``: per image and group a (Cg x Dg x HW)
    product for grad_x and a (Cg x HW x Dg) one for grad_w (NHWC: per group, one over
    all N*HW pixels each, the pixels as grad_x's rows); the workspace is a grad_w sum
    and a product buffer per thread."""
    g, dg, cg = gemm_sizes(a)
    hw, item = a.h * a.w, a.dtype.itemsize
    if a.dims.channels_last:    # over all pixels at once, the pixels as grad_x's rows
        gx = gemm_seconds(p, a.n * hw, dg, cg, g, item)
        gw = gemm_seconds(p, cg, a.n * hw, dg, g, item)
    else:
        gx = gemm_seconds(p, cg, dg, hw, a.n * g, item)
        gw = gemm_seconds(p, cg, hw, dg, a.n * g, item)
    return Estimate(p.call_us * 1e-6 + gx + gw, 2 * p.threads * g * dg * cg * item,
                    f"pointwise: GEMMs {cg}x{dg}x{hw} and {cg}x{hw}x{dg} x{a.n * g}")
