"""im2col + GEMM: unfold receptive fields into a column buffer, then one BLAS GEMM.

NCHW: for each image, cols[(c*KH + a)*KW + b, i*Wo + j] = x[n, c, s_h*i + r_h*a - p_top,
s_w*j + r_w*b - p_left] (zero outside), so y[n] = W (D, C*KH*KW) @ cols (per group).
NHWC: one row per output pixel, cols[p, g, (a*KW + b)*Cg + c], so y (pixels, D) =
cols @ W (KH*KW*Cg, D) (per group); the channel copies are contiguous.

The batch is processed in tiles (a run of whole images, or a band of output rows of one
image) sized by ``config.IM2COL_CHUNK_BYTES`` so each unfolded tile is still in cache when
its GEMM reads it; the column buffer never exceeds ``config.WORKSPACE_BYTES`` (a single
output row of one image is the smallest tile).

Modules: ``tiling`` (the tiles and their workspace), ``unfold`` (the im2col / col2im
kernels of each layout), ``image_last`` and ``image_last_grad`` (tiles of several small
images with the image index innermost: NCHW forward, and the backward without a column
matrix), ``drivers`` (``forward``, ``backward``).
"""

from .cost import ALGORITHM  # registers the entry
from .drivers import backward, forward
from .image_last import image_last_tile
from .tiling import (
    IMAGE_LAST_MAX_WIDTH,
    IMAGE_LAST_MIN_IMAGES,
    Tiling,
    gemm_shapes,
    is_pointwise,
    tiling,
)
from .unfold import _col2im_nchw, _col2im_nhwc, _im2col_nchw, _im2col_nhwc

__all__ = ["ALGORITHM", "IMAGE_LAST_MAX_WIDTH", "IMAGE_LAST_MIN_IMAGES", "Tiling", "_col2im_nchw",
           "_col2im_nhwc", "_im2col_nchw", "_im2col_nhwc", "backward", "forward", "gemm_shapes",
           "image_last_tile", "is_pointwise", "tiling"]
