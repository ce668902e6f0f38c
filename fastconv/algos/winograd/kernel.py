"""The transformed kernel U = G w G^T (``_KERNELS[m][0]``; NHWC's in its own order,
``transform_kernel_io``), and the kernel whose correlation with grad_y gives grad_x."""

from __future__ import annotations

import numpy as np

from ... import _pool
from ..._runtime import guarded
from .._common import serial_twin
from .f4 import _kernel_transform4_io
from .tiling import _KERNELS, transformed

#: Kernels (C_in/groups x C_out) up to which the transform runs on the calling thread:
#: a training step calls it in every Winograd layer's forward and backward, where the
#: threads' wake-up outweighs the work. One call, float32, NHWC, after 50 us of other
#: work: 16 x 16 kernels 22.6 us on the threads, 6.1 on one; 32 x 32 16.2 and 21.5.
SERIAL_KERNELS = 512
_SERIAL = {m: serial_twin(kernels[0]) for m, kernels in _KERNELS.items()}
_SERIAL_IO = serial_twin(_kernel_transform4_io)


def _transform(kernel, serial, kernels: int):
    """The parallel ``kernel`` under its guard, or its ``serial`` twin for at most
    ``SERIAL_KERNELS`` kernels."""
    return serial if kernels <= SERIAL_KERNELS else guarded(kernel)


def transform_kernel(w_oihw: np.ndarray, groups: int, m: int) -> np.ndarray:
    """(C_out, Cg, 3, 3) -> (G, (m+2)^2, Dg, Cg), contiguous."""
    c_out, cg = w_oihw.shape[:2]
    u = _pool.aligned_empty((groups, transformed(m), c_out // groups, cg), w_oihw.dtype)
    _transform(_KERNELS[m][0], _SERIAL[m], c_out * cg)(np.ascontiguousarray(w_oihw), u)
    return u


def _grad_x_kernel(w_oihw: np.ndarray, groups: int) -> np.ndarray:
    """The kernel whose correlation with grad_y gives grad_x: (C_in, Dg, 3, 3) with
    k[g*Cg + c, d, a, b] = w[g*Dg + d, c, 2 - a, 2 - b]."""
    c_out, cg = w_oihw.shape[:2]
    dg = c_out // groups
    k = w_oihw.reshape(groups, dg, cg, 3, 3)[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(k).reshape(groups * cg, dg, 3, 3)


def transform_kernel_io(w_io: np.ndarray, groups: int, m: int) -> np.ndarray:
    """(3, 3, Cg, C_out) HWIO (any strides) -> (G, (m+2)^2, Cg, Dg), contiguous: the
    transformed kernel in the order NHWC's products read it (``transform_kernel``'s
    values, each (Cg, Dg) plane transposed). F(4x4, 3x3) transforms into that order
    directly; F(2x2, 3x3) transposes ``transform_kernel``'s planes."""
    cg, c_out = w_io.shape[2:]
    if m != 4:
        oihw = w_io.transpose(3, 2, 0, 1)
        return np.ascontiguousarray(transform_kernel(oihw, groups, m).transpose(0, 1, 3, 2))
    dg = c_out // groups
    ut = _pool.aligned_empty((groups, transformed(m), cg, dg), w_io.dtype)
    # (G, 3, 3, Cg, Dg): each group's kernels as a view (grad_x's kernel, a transposed
    # view of the weight, stays one)
    wv = w_io.reshape(3, 3, cg, groups, dg).transpose(3, 0, 1, 2, 4)
    _transform(_kernel_transform4_io, _SERIAL_IO, c_out * cg)(wv, ut)
    return ut


def grad_x_kernel_io(w_io: np.ndarray, groups: int) -> np.ndarray:
    """``_grad_x_kernel`` in HWIO: (3, 3, Dg, C_in) with k[a, b, d, g*Cg + c] =
    w[2 - a, 2 - b, c, g*Dg + d] for w (3, 3, Cg, C_out); a view of w for one group."""
    cg, c_out = w_io.shape[2:]
    flipped = w_io[::-1, ::-1]
    if groups == 1:
        return flipped.transpose(0, 1, 3, 2)
    dg = c_out // groups
    k = flipped.reshape(3, 3, cg, groups, dg).transpose(0, 1, 4, 3, 2)
    return np.ascontiguousarray(k).reshape(3, 3, dg, groups * cg)


def layer_kernel(w: np.ndarray, args, m: int, *, grad_x: bool = False,
                 io: bool = False) -> np.ndarray:
    """The transformed kernel a layer's run reads, w in the layer's layout (OIHW or
    HWIO): the forward's, or with ``grad_x`` that of the correlation giving grad_x; in
    NHWC's order (``transform_kernel_io``) for NHWC or with ``io`` (the fused tile
    kernels' order, which NCHW layers run through too), ``transform_kernel``'s for NCHW
    otherwise."""
    if args.dims.channels_last or io:
        w_io = w if args.dims.channels_last else \
            args.dims.weight_to_canonical_view(w).transpose(2, 3, 1, 0)
        return transform_kernel_io(grad_x_kernel_io(w_io, args.groups) if grad_x else w_io,
                                   args.groups, m)
    w_oihw = args.dims.weight_to_canonical_view(w)
    return transform_kernel(_grad_x_kernel(w_oihw, args.groups) if grad_x else w_oihw,
                            args.groups, m)
