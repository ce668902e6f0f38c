"""conv2d's forward and its weight gradient from one unfold of each image.

The forward is y = W @ cols(x) and the weight gradient grad_W = sum over images of
grad_y @ cols(x)^T: both read the same column matrix. A caller that needs both for the
same input (``conv_transpose2d_backward``: its grad_x is conv2d's forward of grad_y, its
grad_w conv2d's weight gradient with grad_y as the input) unfolds each image once here
and runs both GEMMs while the columns are still in the core's cache, instead of
unfolding every image twice. The images are split over the threads, one run of whole
images per thread, serial unfold and GEMMs on one BLAS thread; each thread sums its
images' weight gradients, and the threads' sums are added at the end.

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
from .split import _im2col_nchw_serial
from .tiling import gemm_sizes, is_pointwise, tiling, unfold_params


def applies(args) -> bool:
    """Whether :func:`forward_and_weight_grad` serves problem ``args``: NCHW, a kernel
    that is not pointwise, one image's columns within a tile, no image-last tiles."""
    if args.dims.channels_last or args.n == 0 or is_pointwise(args):
        return False
    t = tiling(args)
    return t.band == args.h_out and not t.image_last


def forward_and_weight_grad(x, w, grad_y, args, out, grad_w) -> None:
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
    """
    g, dg, cgkk = gemm_sizes(args)
    length = args.h_out * args.w_out
    wmat = np.ascontiguousarray(w).reshape(g, dg, cgkk)
    x = np.ascontiguousarray(x)
    gy = view(np.ascontiguousarray(grad_y), (args.n, g, dg, length))
    y = view(out, (args.n, g, dg, length))
    conv = unfold_params(args)
    threads = max(1, min(numba.get_num_threads(), args.n))
    sums = [None] * threads

    def part(k: int) -> None:
        cols = view(workspace("im2col.cols", g * cgkk * length, args.dtype),
                    (1, g * cgkk, length))
        cols4 = view(cols, (g, cgkk, length))
        tmp = np.empty((g, cgkk, dg), args.dtype)
        acc = np.zeros((g, cgkk, dg), args.dtype)
        for n in range(args.n * k // threads, args.n * (k + 1) // threads):
            _im2col_nchw_serial(x, cols, n, 0, *conv)
            np.matmul(wmat, cols4, out=y[n])
            # grad_W^T = cols @ grad_y^T: 6.4 against 7.7 ms for grad_y @ cols^T (the
            # decoder layer's 16 images, one core)
            np.matmul(cols4, gy[n].transpose(0, 2, 1), out=tmp)
            acc += tmp
        sums[k] = acc

    _blas.on_threads(part, threads)
    view(grad_w, (g, dg, cgkk))[...] = sum(sums[1:], sums[0]).transpose(0, 2, 1)
