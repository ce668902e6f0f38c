"""im2col's drivers: ``forward`` and ``backward``, one tile loop per layout.

Each layout's tile loop is picked from one table keyed by layout name (``_FORWARD``,
``_BACKWARD``); the unfold and fold kernels are the layout's pair in ``unfold``.
"""

from __future__ import annotations

import numpy as np

from ... import _blas, _pool
from ..._args.memo import per_problem
from ..._runtime import parallel_guard
from .._common import view
from . import indirect_nchw, row_lanes, strided_pointwise
from .direct_grad import backward_direct, direct_backward_chosen
from .direct_lanes import forward_lanes
from .fused import forward_fused, fused_tiling
from .fused_nhwc import forward_fused_nhwc, fused_nhwc_tiling
from .image_last import backward_image_last, forward_image_last, image_last_tile
from .image_last_direct import direct_forward_applies, forward_direct
from .indirect_nhwc import forward_indirect, indirect_applies
from .lanes_plan import lanes_chosen
from .panels import panel_tiling
from .pointwise import backward_pointwise, forward_pointwise
from .shared import applies as shared_applies
from .shared import by_phases, input_gradient_by_phases
from .split import (
    backward_split,
    backward_tile,
    forward_split,
    split_backward,
    split_tiles,
)
from .tiling import column_buffer, gemm_sizes, is_pointwise, tiles, tiling, unfold_params
from .unfold import _col2im_nhwc, _im2col_nhwc, unfold_nchw


def _weights_nchw(w, args) -> np.ndarray:
    """OIHW (D, Cg, KH, KW) -> (G, Dg, Cg*KH*KW)."""
    g, dg, cgkk = gemm_sizes(args)
    return np.ascontiguousarray(w).reshape(g, dg, cgkk)


def _weights_nhwc(w, args) -> np.ndarray:
    """HWIO (KH, KW, Cg, D) -> (G, KH*KW*Cg, Dg), its data on a cache line (the fused
    panels' register tiles load its rows a vector at a time)."""
    g, dg, cgkk = gemm_sizes(args)
    return _pool.aligned(w.reshape(cgkk, g, dg).transpose(1, 0, 2))


def forward(x: np.ndarray, w: np.ndarray, args, out: np.ndarray, bias=None) -> None:
    """im2col convolution into ``out`` (caller's layout), plus ``bias`` when given.

    Wraps the unfold kernels ``unfold_nchw`` / ``_im2col_nhwc`` (NCHW tiles of many
    small images: ``image_last.forward_image_last``) and numpy's BLAS matmul; small
    stride-1 layers on many small images (``image_last_direct.direct_forward_applies``)
    run the direct image-last kernel without a GEMM
    (``image_last_direct.forward_direct``), small layers of either layout the direct
    lanes kernel where its model time is lower (``direct_lanes.forward_lanes``: no
    layout copy either), an image network's NCHW input layer the row lanes kernel
    (``row_lanes``). Always exact: returns None."""
    if args.n == 0:
        return
    if row_lanes.applies(args):
        row_lanes.forward(x, w, args, out, bias)
        return
    if lanes_chosen(args):
        forward_lanes(x, w, args, out, bias)
        return
    if direct_forward_applies(args):
        forward_direct(np.ascontiguousarray(x), w, args, out, bias)
        return
    _FORWARD[args.layout](np.ascontiguousarray(x), w, args, out, bias)


def _forward_nchw(x, w, args, out, bias) -> None:
    """NCHW. A tile of whole images (or a band of output rows of one image): cols
    (B, C*KH*KW, pixels) from ``unfold_nchw`` and a GEMM per image and group,
    W (G, Dg, Cg*KH*KW) @ cols, written straight into ``out`` (one batched matmul call).
    A tile of many images with short output rows (``Tiling.image_last``) runs
    ``forward_image_last``; several large tiles per thread run split over the threads
    (``split.forward_split``), strided ones in fused panels (``fused.forward_fused``;
    read-only inputs, which would compile kernels of their own, stay split). Layers of
    8+ registers of output channels whose weight fits L2 run the NHWC register tiles on
    rows staged channels last (``indirect_nchw``). 1x1 layers run as GEMMs of their
    input (``pointwise``, ``strided_pointwise``)."""
    g, dg, cgkk = gemm_sizes(args)
    ckk = g * cgkk
    wmat = _weights_nchw(w, args)
    bias_g = None if bias is None else bias.reshape(g, dg, 1)
    if _forward_1x1(x, wmat, args, out, bias_g):
        return
    t = tiling(args)
    if t.image_last:
        forward_image_last(x, wmat, args, out, bias, t)
        return
    if indirect_nchw.applies(args):
        indirect_nchw.forward(x, w, args, out, bias)
        return
    fused = fused_tiling(args)
    if fused is not None and _fusable(x, wmat, out):
        forward_fused(x, wmat, args, out, bias, fused.band)
        return
    if split_tiles(args):
        forward_split(x, wmat, args, out, bias_g, panel_tiling(args))
        return
    conv = unfold_params(args)
    buf = column_buffer(args, t)
    for n0, nb, i0, band in tiles(args, t):
        length = band * args.w_out
        cols = view(buf[:nb * ckk * length], (nb, ckk, length))
        unfold_nchw(x, cols, n0, i0, conv)
        y = view(out[n0:n0 + nb, :, i0:i0 + band, :], (nb, g, dg, length))
        _blas.matmul(wmat, view(cols, (nb, g, cgkk, length)), out=y)
        if bias_g is not None:
            y += bias_g


def _forward_1x1(x, wmat, args, out, bias_g) -> bool:
    """The forward of a 1x1 layer without padding, either layout, with the layout's
    weight matrix and bias: as GEMMs of its input (``pointwise``; a strided one's pixels
    copied first, ``strided_pointwise``). False, with nothing done, for other layers."""
    if is_pointwise(args):
        forward_pointwise(x, wmat, args, out, bias_g)
        return True
    if strided_pointwise.applies(args):
        strided_pointwise.forward(x, wmat, args, out, bias_g)
        return True
    return False


def _fusable(x, wmat, out) -> bool:
    """Whether the one-kernel forwards (fused, indirect) may run on these arrays:
    writable x and weights (read-only ones would compile kernels of their own) and a
    C-contiguous output."""
    return x.flags.writeable and wmat.flags.writeable \
        and out.flags.c_contiguous


def _forward_nhwc(x, w, args, out, bias) -> None:
    """NHWC: per tile, cols (B*band*Wo, G, KH*KW*Cg) and W (G, KH*KW*Cg, Dg); the GEMM
    writes (pixels, G, Dg), which is the output tile itself. A pointwise layer's input
    already is the column matrix (``pointwise``): no unfold (a strided one's pixels are
    copied first, ``strided_pointwise``).
    Layers of 8+ registers of output channels whose weight fits L2 read the input in
    place in register tiles (``indirect_nhwc.forward_indirect``: no column matrix).
    With several threads the others run in fused panels
    (``fused_nhwc.forward_fused_nhwc``; read-only inputs, which would compile kernels
    of their own, run the tile loop)."""
    g, dg, cgkk = gemm_sizes(args)
    wmat = _weights_nhwc(w, args)
    bias_g = None if bias is None else bias.reshape(g, dg)
    if _forward_1x1(x, wmat, args, out, bias_g):
        return
    if indirect_applies(args) and _fusable(x, wmat, out):
        forward_indirect(x, wmat, args, out, bias)
        return
    fused = fused_nhwc_tiling(args)
    if fused is not None and _fusable(x, wmat, out):
        forward_fused_nhwc(x, wmat, args, out, bias, fused.band)
        return
    t = tiling(args)
    conv = unfold_params(args)
    buf = column_buffer(args, t)
    for n0, nb, i0, band in tiles(args, t):
        length = band * args.w_out
        cols = view(buf[:nb * length * g * cgkk], (nb * length, g, cgkk))
        with parallel_guard():
            _im2col_nhwc(x, cols, n0, i0, *conv, band)
        y = view(out[n0:n0 + nb, i0:i0 + band, :, :], (nb * length, g, dg))
        _blas.matmul(cols.transpose(1, 0, 2), wmat, out=y.transpose(1, 0, 2))
        if bias_g is not None:
            y += bias_g


def backward(grad_y: np.ndarray, x: np.ndarray, w: np.ndarray, args, grad_x, grad_w) -> None:
    """im2col gradients into ``grad_x`` / ``grad_w`` (caller's layout, C-contiguous, fully
    written); either may be None, and is then not computed. Always exact: returns None.

    Tiles of several small images (``image_last_tile``) run the image-last backward
    (``image_last.backward_image_last``: no column matrix). Otherwise each tile of the
    forward (``tiling``) is unfolded, used for grad_w, then overwritten by its column
    gradient and folded. Wraps ``_im2col_*``, ``_col2im_*`` and numpy's BLAS matmul.
    Pointwise layers skip the unfold and the fold (``pointwise.backward_pointwise``;
    strided ones on a copy of the pixels read, ``strided_pointwise``); the
    input gradient alone at a stride that divides the kernel folds by phases
    (``shared.input_gradient_by_phases``). Small layers run the direct backward
    (``direct_grad.backward_direct``: grad_w, and grad_x of stride-1 layers, without a
    GEMM)."""
    route = _backward_route(args, grad_x is not None)
    if route == "pointwise":
        backward_pointwise(grad_y, x, w, args, grad_x, grad_w)
    elif route == "strided":
        strided_pointwise.backward(grad_y, x, w, args, grad_x, grad_w)
    elif route == "direct":
        backward_direct(grad_y, x, w, args, grad_x, grad_w,
                        lambda gx: _backward_gemms(grad_y, x, w, args, gx, None))
    else:
        _backward_gemms(grad_y, x, w, args, grad_x, grad_w)


@per_problem
def _backward_route(args, with_grad_x: bool) -> str:
    """Which of ``backward``'s paths runs ``args``: "pointwise", "strided" (a strided
    1x1 layer), "direct" (``direct_backward_chosen``) or "gemms"."""
    if is_pointwise(args):
        return "pointwise"
    if strided_pointwise.applies(args):
        return "strided"
    if direct_backward_chosen(args, with_grad_x):
        return "direct"
    return "gemms"


def _backward_gemms(grad_y, x, w, args, grad_x, grad_w) -> None:
    """``backward`` of a layer that is neither pointwise nor direct."""
    images = image_last_tile(args, grad_x is not None)
    if images:
        backward_image_last(grad_y, x, w, args, grad_x, grad_w, images)
        return
    if grad_x is not None and grad_w is None and by_phases(args) and shared_applies(args):
        input_gradient_by_phases(np.ascontiguousarray(grad_y), w, args, grad_x)
        return
    x = np.ascontiguousarray(x) if grad_w is not None else x   # read for grad_w only
    _BACKWARD[args.layout](np.ascontiguousarray(grad_y), x, w, args, grad_x, grad_w)


def _backward_nchw(gy, x, w, args, grad_x, grad_w) -> None:
    """NCHW tiles: grad_W (G, Dg, Cg*KH*KW), summed transposed (``split.backward_tile``),
    and the column gradient W^T @ gy_tile folded (``split.backward_tile``) into
    grad_x, zeroed first. Several large whole-image tiles per thread run split over the
    threads (``split.backward_split``), each thread zeroing its own images' gradient."""
    t = tiling(args)
    g, dg, cgkk = gemm_sizes(args)
    conv = unfold_params(args)
    wmat = _weights_nchw(w, args)
    if split_backward(args):
        backward_split(gy, x, wmat, args, grad_x,
                       None if grad_w is None else view(grad_w, (g, dg, cgkk)))
        return
    if grad_x is not None:
        grad_x[...] = 0
    gw_t = None if grad_w is None else np.zeros((g, cgkk, dg), args.dtype)
    buf = column_buffer(args, t)
    for tile in tiles(args, t):
        backward_tile(gy, x, wmat, grad_x, gw_t, buf, tile, conv, parallel=True)
    if grad_w is not None:
        view(grad_w, (g, dg, cgkk))[...] = gw_t.transpose(0, 2, 1)


def _backward_nhwc(gy, x, w, args, grad_x, grad_w) -> None:
    """NHWC tiles: grad_W (G, KH*KW*Cg, Dg) += cols^T @ gy_tile, and the column gradient
    gy_tile @ W^T folded by ``_col2im_nhwc`` into grad_x, zeroed first."""
    t = tiling(args)
    g, dg, cgkk = gemm_sizes(args)
    conv = unfold_params(args)
    wmat = _weights_nhwc(w, args)
    gw = None if grad_w is None else np.zeros((g, cgkk, dg), args.dtype)
    if grad_x is not None:
        grad_x[...] = 0
    # W^T per group with its rows contiguous: gy @ W^T may then run in register tiles
    wt = None if grad_x is None else _pool.aligned(wmat.transpose(0, 2, 1))
    buf = column_buffer(args, t)
    for n0, nb, i0, band in tiles(args, t):
        length = band * args.w_out
        cols = view(buf[:nb * length * g * cgkk], (nb * length, g, cgkk))
        gyt = view(gy[n0:n0 + nb, i0:i0 + band, :, :], (nb * length, g, dg))
        if gw is not None:
            with parallel_guard():
                _im2col_nhwc(x, cols, n0, i0, *conv, band)
            gw += _blas.matmul(cols.transpose(1, 2, 0), gyt.transpose(1, 0, 2))
        if grad_x is not None:
            if g == 1:              # 2-D operands (the register tiles take no batches)
                _blas.matmul(gyt[:, 0], wt[0], out=cols[:, 0])
            else:
                _blas.matmul(gyt.transpose(1, 0, 2), wt, out=cols.transpose(1, 0, 2))
            with parallel_guard():
                _col2im_nhwc(cols, grad_x, n0, i0, *conv, band)
    if gw is not None:
        grad_w[...] = gw.transpose(1, 0, 2).reshape(grad_w.shape)


#: The tile loops per layout.
_FORWARD = {"NCHW": _forward_nchw, "NHWC": _forward_nhwc}
_BACKWARD = {"NCHW": _backward_nchw, "NHWC": _backward_nhwc}
