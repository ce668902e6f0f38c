"""A dilated NCHW layer's backward with its phases as one batch, when they are all the
same problem.

A 3x3 stride-1 layer with dilation (dh, dw) is dh*dw undilated problems, one per phase
(``tiling.phases``; ``dilated.backward_phases``). When every phase has the same padding
and size (the usual dilated layer: padding = dilation, even sides), they are one problem
on a batch of dh*dw*N images: grad_y's and x's phases are gathered into it in one
parallel pass each (``_phase_copy``), the Winograd backward runs once (its weight
gradient sums over the batch, i.e. over the phases), and grad_x is scattered back in one
parallel pass. Phase by phase, numpy copies each phase on one thread and the backward
runs dh*dw times. The forward does the same (``forward_batched``): x's phases gathered,
one undilated run, y's phases scattered back; on strided views of the phases, one run
per phase, it took 1.4x as long (the dilation-2 bench layer, 2-core AMD EPYC with
AVX-512).

Examples
--------
>>> import numpy as np
>>> from fastconv import conv2d_backward
>>> rng = np.random.default_rng(0)
>>> x = rng.standard_normal((2, 3, 8, 8))            # (N, C_in, H, W)
>>> w = rng.standard_normal((4, 3, 3, 3))            # (C_out, C_in, 3, 3)
>>> uniform_phases((8, 8), (8, 8), (2, 2), (2, 2)) is not None  # padding 2, dilation 2
True
>>> uniform_phases((8, 8), (6, 6), (1, 1), (2, 2)) is None      # padding 1: p' 1 and 0
True
>>> gy = rng.standard_normal((2, 4, 8, 8))           # grad_y (N, C_out, 8, 8)
>>> wino = conv2d_backward(gy, x, w, padding=2, dilation=2, algo="winograd")
>>> exact = conv2d_backward(gy, x, w, padding=2, dilation=2, algo="naive")
>>> all(np.allclose(a, b) for a, b in zip(wino, exact))
True
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ... import config
from ..._runtime import guarded
from .._common import view, workspace
from .tiling import phases


def _buffer(slot: str, shape, dtype) -> np.ndarray:
    """This thread's reused scratch array of ``shape`` (``_common.workspace``: no page
    faults on each call)."""
    return view(workspace(slot, int(np.prod(shape)), dtype), shape)


def uniform_phases(size, out, pads, dilation):
    """For an NCHW layer of input sides ``size`` (H, W), output sides ``out``, padding
    before ``pads`` and ``dilation``: (p'_h, p'_w, order) when every phase is the same
    undilated problem (sides multiples of the dilation, one padding p' per axis), where
    order[rho_h, rho_w] is the batch block (sigma_h*dw + sigma_w) of output phase
    (rho_h, rho_w); else None."""
    dh, dw = dilation
    if any(s % d or o % d for s, o, d in zip(size, out, dilation, strict=True)):
        return None
    axes = [phases(o, p, d) for o, p, d in zip(out, pads, dilation, strict=True)]
    if any(len(ax) != d or len({p for _, _, p, _ in ax}) != 1
           for ax, d in zip(axes, dilation, strict=True)):
        return None
    order = np.empty((dh, dw), np.int64)
    for rho_h, sig_h, _, _ in axes[0]:
        for rho_w, sig_w, _, _ in axes[1]:
            order[rho_h, rho_w] = sig_h * dw + sig_w
    return axes[0][0][2], axes[1][0][2], order


def batches(args) -> bool:
    """Whether the Winograd backward of ``args`` runs its phases as one batch: a dilated
    NCHW layer whose phases are the same problem (``uniform_phases``; the backward also
    requires the phase problems untrimmed, which these always are)."""
    return args.dilation != (1, 1) and not args.dims.channels_last and uniform_phases(
        (args.h, args.w), (args.h_out, args.w_out),
        (args.padding[0][0], args.padding[1][0]), args.dilation) is not None


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _phase_copy(plain, batch, order, to_batch):
    """Between plain (N, C, H, W) and its phases batch (dh*dw*N, C, H/dh, W/dw):
    batch[order[rho_h, rho_w]*N + n, c, i, j] is plain[n, c, dh*i + rho_h, dw*j + rho_w],
    copied into ``batch`` when ``to_batch``, else into ``plain``. One task per plane of
    ``plain``, each of its rows read or written once; at dw = 2 both column phases in one
    loop of constant steps, which LLVM vectorises (16 images of 64 x 56 x 56 float32,
    2 threads: gathered 1.29 -> 0.97 ms, scattered 1.08 -> 0.76; numpy's plain copy
    of the array 0.87)."""
    n_img, c_all, h, _ = plain.shape
    dh, dw = order.shape
    ws = batch.shape[3]
    for task in prange(n_img * c_all):
        n = task // c_all
        c = task % c_all
        for r in range(h):
            line = plain[n, c, r]
            if dw == 2:
                even = batch[order[r % dh, 0] * n_img + n, c, r // dh]
                odd = batch[order[r % dh, 1] * n_img + n, c, r // dh]
                if to_batch:
                    for j in range(ws):
                        even[j] = line[2 * j]
                        odd[j] = line[2 * j + 1]
                else:
                    for j in range(ws):
                        line[2 * j] = even[j]
                        line[2 * j + 1] = odd[j]
                continue
            for rw in range(dw):
                part = batch[order[r % dh, rw] * n_img + n, c, r // dh]
                if to_batch:
                    for j in range(ws):
                        part[j] = line[j * dw + rw]
                else:
                    for j in range(ws):
                        line[j * dw + rw] = part[j]


def forward_batched(x, u, y, bias, pads, groups, m, dilation, run) -> bool | None:
    """The forward of a dilated NCHW layer as one batch of its phases when they are all
    the same problem (``uniform_phases``): x's phases gathered into a batch of dh*dw*N
    images, ``run(x_batch, u, y_batch, bias, pads', groups, m)`` once (undilated), y's
    phases scattered back. Returns whether every output is finite, or None (nothing
    done) when the phases differ."""
    dh, dw = dilation
    n, c, h, wd = x.shape
    uniform = uniform_phases((h, wd), y.shape[2:], pads, dilation)
    if uniform is None:
        return None
    pt, pl, order = uniform
    # the backward's buffers of x's and grad_y's phases (the same sizes; a backward never
    # runs a dilated forward inside it)
    xb = _buffer("winograd.phases_x", (dh * dw * n, c, h // dh, wd // dw), x.dtype)
    yb = _buffer("winograd.phases_gy", (dh * dw * n, y.shape[1], y.shape[2] // dh,
                                        y.shape[3] // dw), y.dtype)
    guarded(_phase_copy)(x, xb, np.arange(dh * dw).reshape(dh, dw), True)
    finite = run(xb, u, yb, bias, (pt, pl), groups, m)
    guarded(_phase_copy)(y, yb, order, False)   # output phase rho from its input phase's block
    return finite


def backward_batched(gy, x, w, args, gx, gw, problems, run):
    """``dilated.backward_phases`` as one batch of the phase ``problems``
    (``dilated.phase_problems``) when they are all the same, untrimmed problem: gy's
    phases and x's gathered, ``run(gy_batch, x_batch, w, batch_args, gx_batch, gw)``
    once (the weight gradient sums over the batch, i.e. over the phases), gx scattered
    back. Returns (ok_x, ok_w), or None (nothing done) when the phases differ."""
    dh, dw = args.dilation
    n, c, h, wd = args.x_shape
    uniform = uniform_phases((h, wd), (args.h_out, args.w_out),
                             (args.padding[0][0], args.padding[1][0]), args.dilation)
    first = problems[0][-1]
    if uniform is None or len(problems) != dh * dw or first.x_shape != (n, c, h // dh, wd // dw) \
            or any(p[-1] != first for p in problems):
        return None
    order = uniform[2]
    sub = first.with_batch(dh * dw * n)
    gyb = _buffer("winograd.phases_gy", sub.y_shape, gy.dtype)
    guarded(_phase_copy)(gy, gyb, order, True)   # output phase rho where its input phase is
    xb = None
    if gw is not None:
        xb = _buffer("winograd.phases_x", sub.x_shape, x.dtype)
        guarded(_phase_copy)(x, xb, np.arange(dh * dw).reshape(dh, dw), True)
    gxb = None if gx is None else _buffer("winograd.phases_gx", sub.x_shape, gx.dtype)
    ok_x, ok_w = run(gyb, xb, w, sub, gxb, gw)
    if gx is not None:
        guarded(_phase_copy)(gx, gxb, np.arange(dh * dw).reshape(dh, dw), False)
    return ok_x, ok_w
