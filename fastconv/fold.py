"""Sliding blocks: :func:`unfold` (im2col) and :func:`fold` (col2im), as
torch.nn.functional.unfold / fold.

Both run on im2col's own NCHW kernels (``fastconv.algos.im2col.unfold``), whose column
matrix of a tile of whole images is exactly torch's layout: cols (N, C*kh*kw, L), row
``c*kh*kw + i*kw + j`` (channel c, kernel tap (i, j)), column ``l = row * w_blocks + col``
of the block grid, zero where a tap falls in the padding. ``fold`` is the adjoint of
``unfold``: it adds every column entry onto the pixel it was copied from, so overlapping
blocks sum.
"""

from __future__ import annotations

import numpy as np

from ._args import check_array
from ._args.padfold import fold_args, unfold_args
from ._runtime import parallel_guard
from .algos.im2col.unfold import _col2im_nchw, _im2col_nchw

__all__ = ["unfold", "fold"]


def unfold(input, kernel_size, dilation=1, padding=0, stride=1) -> np.ndarray:
    """Extract sliding blocks: (N, C, H, W) -> (N, C*kh*kw, L).

    Parameters
    ----------
    input : (N, C, H, W) or unbatched (C, H, W) float32/float64 array.
    kernel_size, dilation, padding, stride : int or (h, w) pair each; ``padding`` zeros
        on both sides of each axis.

    Returns
    -------
    cols : (N, C*kh*kw, L) ((C*kh*kw, L) unbatched), L = h_blocks * w_blocks with
        ``h_blocks = (H + 2*p_h - d_h*(kh - 1) - 1) // s_h + 1`` (w alike);
        ``cols[n, c*kh*kw + i*kw + j, r*w_blocks + q] =
        x[n, c, r*s_h + i*d_h - p_h, q*s_w + j*d_w - p_w]`` (0 in the padding).

    >>> x = np.arange(9.0).reshape(1, 1, 3, 3)
    >>> unfold(x, 2)[0]
    array([[0., 1., 3., 4.],
           [1., 2., 4., 5.],
           [3., 4., 6., 7.],
           [4., 5., 7., 8.]])
    """
    x = check_array("unfold", "input", input)
    args = unfold_args("unfold", x.shape, kernel_size, dilation, padding, stride)
    return _run(_im2col_nchw, x.reshape(args.image_shape),
                np.empty(args.cols_shape, x.dtype), args)


def fold(input, output_size, kernel_size, dilation=1, padding=0, stride=1) -> np.ndarray:
    """Sum sliding blocks back into images: (N, C*kh*kw, L) -> (N, C, H, W), the adjoint
    of :func:`unfold` (overlapping entries add up; entries in the padding are dropped).

    Parameters
    ----------
    input : (N, C*kh*kw, L) or unbatched (C*kh*kw, L) float32/float64 array; L must be
        the block count of ``output_size`` (as in :func:`unfold`).
    output_size : (H, W) (or an int for both) of the images.
    kernel_size, dilation, padding, stride : as :func:`unfold`.

    Returns
    -------
    (N, C, H, W) ((C, H, W) unbatched) array of the input's dtype.

    >>> fold(np.ones((1, 4, 4)), (3, 3), 2)[0, 0]
    array([[1., 2., 1.],
           [2., 4., 2.],
           [1., 2., 1.]])
    """
    cols = check_array("fold", "input", input)
    args = fold_args("fold", cols.shape, output_size, kernel_size, dilation, padding, stride)
    return _run(_col2im_nchw, cols.reshape(args.cols_shape),
                np.zeros(args.image_shape, cols.dtype), args)


def _run(kernel, src: np.ndarray, out: np.ndarray, args) -> np.ndarray:
    """``kernel(src, out, ...)`` over the whole batch (one tile: image 0, block row 0);
    ``out`` without its batch axis when the caller's array had none."""
    if src.size and out.size:
        with parallel_guard():
            kernel(np.ascontiguousarray(src), out, 0, 0, *args.kernel_params())
    return out[0] if args.unbatched else out
