"""Winograd convolution: 3x3 stride-1 layers with 2.25x or 4x fewer multiplications.

An m x m block of outputs of a 3x3 correlation reads an (m+2) x (m+2) block d of the
input. Winograd's minimal filtering algorithm F(m x m, 3x3) computes it as

    Y = A^T [ (G g G^T) * (B^T d B) ] A            (* elementwise, (m+2) x (m+2))

with (m+2)^2 multiplications instead of 9 m^2. F(2x2, 3x3) (16 for 4 outputs):

    B^T = [[1, 0, -1,  0],   G = [[1,    0,   0],    A^T = [[1, 1,  1,  0],
           [0, 1,  1,  0],        [1/2,  1/2, 1/2],         [0, 1, -1, -1]]
           [0, -1, 1,  0],        [1/2, -1/2, 1/2],
           [0, 1,  0, -1]]        [0,    0,   1]]

F(4x4, 3x3) (36 for 16 outputs) uses the 6x6 B^T, 6x3 G and 4x6 A^T written out at
``f4._input_transform4``, ``f4._g6`` and ``f4._output_transform4`` (interpolation points
0, +-1, +-2 and infinity). ``config.WINOGRAD_TILE`` picks m (4 by default).

Summed over input channels, the elementwise products of every tile become (m+2)^2
independent GEMMs, M[e] (C_out, tiles) = U[e] (C_out, C_in) @ V[e] (C_in, tiles), where
U = G g G^T is the transformed kernel and V = B^T d B the transformed input tiles.
Accuracy: F(2x2, 3x3)'s transforms only add and halve, so float32 results are as accurate
as im2col's; F(4x4, 3x3) multiplies by up to 8 and 1/24 and loses a few more bits
(tests/test_winograd.py bounds both against float64).

Applies to 3x3 kernels with stride 1 (``supports``), any padding, dilation (one
undilated problem per phase of the input, ``drivers._run``), groups (one set of GEMMs per
group) and both layouts, each with transforms of its own (NCHW: ``f2``, ``f4``; NHWC:
``nhwc``, channels innermost; the weight gradient runs on NCHW copies). Tiles are
processed in chunks of tile rows sized by ``config.WINOGRAD_CHUNK_BYTES`` (never above
``config.WORKSPACE_BYTES``), so the transformed tiles of a chunk are still in cache when
its GEMMs read them; narrow NCHW layers split their tile rows over the threads, each
thread with chunks of its own (``tiling.per_thread``, ``tiling.split_rows``). The
backward pass computes grad_x as the same transform of grad_y with the flipped,
transposed kernel (padding 2 - p), and grad_w as the adjoint of the same F(m x m, 3x3)
in the Winograd domain (``grad_w``, ``grad_w4``); a dilated layer's as undilated
problems, one per phase (``dilated``). Neither pass falls back to another
algorithm: they report non-finite results to the caller (``drivers``).

Modules: ``tasks`` (the transforms' task helpers), ``f2`` and ``f4`` (the F(2x2, 3x3) and
F(4x4, 3x3) transforms), ``tiling`` (tile size, chunks, transformed-tile planes, phases),
``kernel`` (the kernel transform of both sizes), ``grad_w`` (the weight-gradient
adjoint; ``grad_w4``: its F(4x4, 3x3) output-gradient transform), ``nhwc`` (the NHWC
transforms and run), ``dilated`` (the backward of dilated layers by phases),
``drivers`` (``forward``, ``backward``).
"""

from .cost import ALGORITHM  # registers the entry
from .dilated import phase_problems
from .drivers import (
    backward,
    forward,
    grad_w_supported,
    grad_x_supported,
    supports,
)
from .kernel import transform_kernel
from .tiling import (
    PLANE_PAD,
    chunk_rows,
    chunks,
    phases,
    tile_grid,
    tile_size,
    transformed,
    workspace_bytes,
)

__all__ = ["ALGORITHM", "PLANE_PAD", "backward", "chunk_rows", "chunks",
           "forward", "grad_w_supported", "grad_x_supported", "phase_problems", "phases",
           "supports", "tile_grid", "tile_size", "transform_kernel", "transformed",
           "workspace_bytes"]
