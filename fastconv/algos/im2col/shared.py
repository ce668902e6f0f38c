"""conv2d's forward and its weight gradient from one unfold of each image.

The forward is y = W @ cols(x) and the weight gradient grad_W = sum over images of
grad_y @ cols(x)^T: both read the same column matrix. A caller that needs both for the
same input (``conv_transpose2d_backward``: its grad_x is conv2d's forward of grad_y, its
grad_w conv2d's weight gradient with grad_y as the input) unfolds each image once here
and runs both GEMMs while the columns are still in the core's cache, instead of
unfolding every image twice. The batch is cut into runs of whole images (``RUNS``),
which the threads take one after another (``_blas.Runs``: one held back by another
process takes fewer), serial unfold and GEMMs on one BLAS thread; each run sums its
images' weight gradients, and the runs' sums are added in order at the end, so the bits
do not depend on which thread took which run.

At a stride s > 1 with kernel sides multiple of s (dilation 1: the decoder layer's 4x4
stride 2), the unfold gathers every s-th pixel, slowly. There each image is first split
into its s x s phases (padded pixel (s u + a0, s v + b0) to phase (a0, b0) at (u, v));
tap (s a1 + a0, s b1 + b0) of output (i, j) is then phase (a0, b0) at (i + a1, j + b1),
so on an output grid Wq = W_out + KW/s - 1 wide every column row is one contiguous run
of a phase (``phase_kernels.phase_columns``, one call per image). The grid's extra
columns are zeroed in the columns, computed, and dropped. The input gradient alone
(``input_gradient_by_phases``: conv_transpose2d's forward) folds the same way: the
column gradients W^T grad_y on the grid are added to the phases of the padded gradient
one kernel offset (a1, b1) at a time, a contiguous run per row, and the phases are
merged into grad_x, one channel at a time (``phase_kernels.fold_into_image``).

NCHW, whole-image tiles (``tiling``) that are not unfolded image-last; ``applies`` says
which problems.

Examples
--------
>>> import numpy as np
>>> from fastconv._args import conv_args_from_shapes
>>> a = conv_args_from_shapes("conv2d", (2, 1, 3, 3), (1, 1, 2, 2), dtype=np.float64)
>>> x, w = np.arange(18.0).reshape(2, 1, 3, 3), np.ones((1, 1, 2, 2))
>>> y, gw = np.empty((2, 1, 2, 2)), np.empty((1, 1, 2, 2))
>>> forward_and_weight_grad(x, w, np.ones((2, 1, 2, 2)), a, y, gw)
>>> y[0, 0]
array([[ 8., 12.],
       [20., 24.]])
>>> gw[0, 0]                # each tap: the sum of the pixels it meets, both images
array([[52., 60.],
       [76., 84.]])
"""

from __future__ import annotations

import numba
import numpy as np

from ... import _blas
from .._common import view, workspace
from .phase_kernels import channel_sums, copy_columns, fold_into_image, phase_columns
from .tiling import gemm_sizes, is_pointwise, tiling, unfold_params
from .unfold import _im2col_nchw_serial

#: ``forward_and_weight_grad`` cuts the batch into this many runs of images (fewer with
#: fewer images), which the threads take one at a time (a thread held back by another
#: process takes fewer) and whose weight gradients are summed apart and then added in
#: order, so the result does not depend on the thread count; unless those sums would
#: take more than ``RUN_SUMS_BYTES``: then one run a thread.
RUNS = 8
RUN_SUMS_BYTES = 8 << 20


def applies(args) -> bool:
    """Whether :func:`forward_and_weight_grad` (and ``input_gradient_by_phases``) serve
    problem ``args``: NCHW, a kernel that is not pointwise, one image's columns within a
    tile, no image-last tiles, and images to share out (a single image on several
    threads keeps the tile loops, whose unfold, fold and GEMMs use them all)."""
    if args.dims.channels_last or is_pointwise(args):
        return False
    if args.n < 2 and not (args.n == 1 and numba.get_num_threads() == 1):
        return False
    t = tiling(args)
    return t.band == args.h_out and not t.image_last


def forward_and_weight_grad(x, w, grad_y, args, out, grad_w, x_sums=None) -> None:
    """``out`` = conv2d(x, w) and ``grad_w`` = conv2d's weight gradient for input x
    and output gradient ``grad_y``, each image unfolded once (``applies(args)`` must
    hold).

    Parameters
    ----------
    x : (N, C_in, H, W) the convolution's input.
    w : (C_out, C_in/G, KH, KW).
    grad_y : (N, C_out, H_out, W_out) the gradient of the loss with respect to its
        output.
    out : (N, C_out, H_out, W_out), written.
    grad_w : shape of w, written.
    x_sums : None, or (C_in,) float64, written: x summed over images and pixels
        (conv_transpose2d's bias gradient), taken while each image is in cache.
    """
    g, dg, cgkk = gemm_sizes(args)
    phased = by_phases(args)
    wq = _grid_width(args) if phased else args.w_out
    length = args.h_out * wq
    (sh, sw), (pt, _), (pl, _) = args.stride, *args.padding
    hq = args.h_out + args.kh // sh          # phase rows (``phase_kernels.phase_columns``)
    whole = phased and sh * hq - pt >= args.h and sw * wq - pl >= args.w  # phases hold all x
    cols_shape = (args.c_in, args.kh // sh, sh, args.kw // sw, sw, args.h_out, wq)
    wmat = np.ascontiguousarray(w).reshape(g, dg, cgkk)
    x = np.ascontiguousarray(x)
    gy = np.ascontiguousarray(grad_y)
    conv = unfold_params(args)
    threads = max(1, min(numba.get_num_threads(), args.n))
    # runs of images taken by whichever thread is free, each summing its own weight
    # gradient (added in run order: the same bits whichever thread took which)
    acc_bytes = g * cgkk * dg * args.dtype.itemsize
    runs = _blas.Runs(args.n, RUNS if acc_bytes * RUNS <= RUN_SUMS_BYTES else threads)
    sums, x_parts = {}, {}

    def part(k: int) -> None:
        cols = view(workspace("im2col.cols", g * cgkk * length, args.dtype),
                    (1, g * cgkk, length))
        cols4 = view(cols, (g, cgkk, length))
        phases = view(workspace("im2col.phases", args.c_in * sh * sw * hq * wq, args.dtype),
                      (args.c_in, sh, sw, hq, wq)) if phased else None
        x_sum = np.empty(args.c_in)
        tmp = view(workspace("im2col.shared-tmp", g * cgkk * dg, args.dtype), (g, cgkk, dg))
        # grad_y and the output on the grid (its extra columns zero / dropped)
        gyq = _on_grid("im2col.shared-gy", args, g, dg, wq)
        yq = _on_grid("im2col.shared-y", args, g, dg, wq)
        while (run := runs.claim()) is not None:
            j, images = run
            acc = None     # the run's sum: its first image's product (a fresh array, kept)
            x_parts[j] = 0.0
            for n in images:
                if phased:      # x's sums as it splits x (all of it: ``whole``)
                    phase_columns(x[n], phases, view(cols, cols_shape), pt, pl, args.w_out,
                                  x_sum)
                else:
                    _im2col_nchw_serial(x, cols, n, 0, *conv)
                if x_sums is not None:
                    if not whole:
                        channel_sums(x[n], x_sum)
                    x_parts[j] = x_parts[j] + x_sum
                np.matmul(wmat, cols4, out=view(yq, (g, dg, length)))
                copy_columns(view(yq, (g * dg, args.h_out, wq)), out[n], args.w_out)
                copy_columns(gy[n], view(gyq, (g * dg, args.h_out, wq)), args.w_out)
                # grad_W^T = cols @ grad_y^T: 6.4 against 7.7 ms for grad_y @ cols^T (the
                # decoder layer's 16 images, one core)
                gyq_t = view(gyq, (g, dg, length)).transpose(0, 2, 1)
                if acc is None:
                    acc = np.matmul(cols4, gyq_t)
                else:
                    acc += np.matmul(cols4, gyq_t, out=tmp)
            sums[j] = acc

    _blas.on_threads(part, threads)
    total = sums[0]
    for j in range(1, len(sums)):       # in run order
        total += sums[j]
    view(grad_w, (g, dg, cgkk))[...] = total.transpose(0, 2, 1)
    if x_sums is not None:
        x_sums[...] = sum(x_parts[j] for j in range(len(x_parts)))


def input_gradient_by_phases(grad_y, w, args, grad_x) -> None:
    """grad_x (N, C_in, H, W) of conv2d problem ``args`` (``by_phases(args)``, NCHW,
    whole-image tiles) from grad_y (N, C_out, H_out, W_out): per image, the column
    gradients W^T grad_y on the grid folded onto the phases of the padded gradient
    (module docstring); each image to whichever thread is free. Writes all of grad_x."""
    g, dg, cgkk = gemm_sizes(args)
    (sh, sw), (kh, kw) = args.stride, (args.kh, args.kw)
    (pt, _), (pl, _) = args.padding
    wq = _grid_width(args)
    length = args.h_out * wq
    wt = np.ascontiguousarray(np.ascontiguousarray(w).reshape(g, dg, cgkk).transpose(0, 2, 1))
    gy = np.ascontiguousarray(grad_y)
    c = args.c_in
    threads = max(1, min(numba.get_num_threads(), args.n))
    runs = _blas.Runs(args.n, args.n)    # one image a run, to whichever thread is free

    def part(k: int) -> None:
        cols = workspace("im2col.cols", g * cgkk * length, args.dtype).reshape(g, cgkk, length)
        gyq = _on_grid("im2col.shared-gy", args, g, dg, wq)
        while (run := runs.claim()) is not None:
            n = run[1].start
            copy_columns(gy[n], view(gyq, (g * dg, args.h_out, wq)), args.w_out)
            np.matmul(wt, gyq.reshape(g, dg, length), out=cols)
            fold_into_image(cols.reshape(c, kh // sh, sh, kw // sw, sw, length), grad_x[n],
                            pt, pl, wq)

    _blas.on_threads(part, threads)


def _on_grid(slot: str, args, g: int, dg: int, wq: int) -> np.ndarray:
    """A (G, C_out/G, H_out, wq) workspace of this thread for grad_y or the output on the
    grid of width ``wq`` >= W_out, its extra columns zero (each image fills the rest)."""
    q = view(workspace(slot, g * dg * args.h_out * wq, args.dtype), (g, dg, args.h_out, wq))
    q[..., args.w_out:] = 0
    return q


def by_phases(args) -> bool:
    """Whether the unfold goes by phases (module docstring): a stride above 1, kernel
    sides multiples of the stride, no dilation."""
    (sh, sw), (kh, kw) = args.stride, (args.kh, args.kw)
    return (max(sh, sw) > 1 and args.dilation == (1, 1) and kh % sh == 0
            and kw % sw == 0)


def _grid_width(args) -> int:
    return args.w_out + args.kw // args.stride[1] - 1
