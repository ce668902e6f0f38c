"""The backward of a dilated 3x3 stride-1 layer as undilated problems, one per phase.

With dilation (dh, dw), the outputs y[:, :, rho_h::dh, rho_w::dw] of a phase are an
undilated correlation of the input phase x[:, :, sigma_h::dh, sigma_w::dw] with padding
(p_top', p_left') before it (``tiling.phases``), and each input phase feeds exactly one
output phase. So grad_x[:, :, sigma_h::dh, sigma_w::dw] is the undilated grad_x of that
phase's problem, and grad_w is the sum over the phases of their undilated grad_w: the
Winograd backward (dilation 1) serves dilated layers too. Input rows and columns a phase
never reads are trimmed from its problem (their gradient is zero).

Examples
--------
>>> import numpy as np
>>> from fastconv import conv2d_backward
>>> rng = np.random.default_rng(0)
>>> x = rng.standard_normal((2, 3, 9, 9))               # (N, C_in, H, W)
>>> w = rng.standard_normal((4, 3, 3, 3))               # (C_out, C_in, 3, 3)
>>> gy = rng.standard_normal((2, 4, 9, 9))              # padding 2, dilation 2: 9x9 out
>>> wino = conv2d_backward(gy, x, w, padding=2, dilation=2, algo="winograd")
>>> exact = conv2d_backward(gy, x, w, padding=2, dilation=2, algo="naive")
>>> all(np.allclose(a, b) for a, b in zip(wino, exact))
True
"""

from __future__ import annotations

import numpy as np

from ..._args import conv_args_from_shapes
from .phase_batch import backward_batched
from .tiling import phases


def _axis(size: int, out: int, pad: int, d: int, k: int):
    """Per output phase of one axis: (rho, sigma, input rows of the phase problem,
    (pad before, pad after)), for the phases that read the input."""
    parts = []
    for rho, sigma, before, count in phases(out, pad, d):
        have = len(range(sigma, size, d))
        need = count + k - 1 - before        # input rows the phase reads, after padding
        rows = min(have, need)
        if rows > 0:  # else the phase's outputs read only padding: no gradient
            parts.append((rho, sigma, rows, (before, need - rows)))
    return parts


def phase_problems(args) -> list:
    """The undilated NCHW problems of a dilated stride-1 layer: (rho_h, sigma_h, rho_w,
    sigma_w, ConvArgs) per output phase (``tiling.phases``)."""
    (pt, _), (pl, _) = args.padding
    dh, dw = args.dilation
    w_shape = (args.c_out, args.c_in // args.groups, args.kh, args.kw)
    out = []
    for rho_h, sig_h, rows, pad_h in _axis(args.h, args.h_out, pt, dh, args.kh):
        for rho_w, sig_w, cols, pad_w in _axis(args.w, args.w_out, pl, dw, args.kw):
            sub = conv_args_from_shapes("conv2d_backward", (args.n, args.c_in, rows, cols),
                                        w_shape, 1, (pad_h, pad_w), 1, args.groups,
                                        "NCHW", args.dtype)
            out.append((rho_h, sig_h, rho_w, sig_w, sub))
    return out


def backward_phases(gy, x, w, args, gx, gw, run) -> tuple[bool, bool]:
    """The backward of a dilated layer, NCHW / OIHW arrays (gx, gw C-contiguous or None),
    by ``run(gy_phase, x_phase, w, sub_args, gx_phase, gw_phase)`` on each phase problem
    (contiguous copies); returns (ok_x, ok_w) over all phases. Phases that are all the
    same problem run as one batch (``phase_batch.backward_batched``)."""
    problems = phase_problems(args)
    batched = backward_batched(gy, x, w, args, gx, gw, problems, run)
    if batched is not None:
        return batched
    dh, dw = args.dilation
    ok_x = ok_w = True
    if gx is not None:
        gx[...] = 0
    if gw is not None:
        gw[...] = 0
        part = np.empty_like(gw)
    for rho_h, sig_h, rho_w, sig_w, sub in problems:
        gys = np.ascontiguousarray(gy[:, :, rho_h::dh, rho_w::dw])
        rows = slice(sig_h, sig_h + dh * (sub.h - 1) + 1, dh)
        cols = slice(sig_w, sig_w + dw * (sub.w - 1) + 1, dw)
        xs = None if gw is None else np.ascontiguousarray(x[:, :, rows, cols])
        gxs = None if gx is None else np.empty(sub.x_shape, gx.dtype)
        px, pw = run(gys, xs, w, sub, gxs, None if gw is None else part)
        if gx is not None:
            gx[:, :, rows, cols] = gxs
            ok_x = ok_x and px
        if gw is not None:
            gw += part
            ok_w = ok_w and pw
    return ok_x, ok_w
