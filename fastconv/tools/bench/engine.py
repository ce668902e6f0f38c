"""The engine internals the benchmark reads, in one place.

The benchmark needs a few answers that the engine's public API does not give: which
algorithms can run a layer, what ``algo="auto"`` ran, the GEMMs im2col issues, and the
CPU's name. Every call into the engine's private modules for them is here, so that a
change inside the engine is followed in this one module. ``a`` below is the engine's
checked record of a layer (``Shape.args()``).
"""

from __future__ import annotations

import numpy as np


def applies(algo: str, a, transposed: bool = False) -> bool:
    """Whether the benchmark times ``algo`` on layer ``a``: "auto" always; an explicit
    algorithm when it can run the layer (Winograd: 3x3 kernels, stride 1), and for a
    transposed layer (``a`` the conv2d problem beneath) when it computes grad_x there."""
    from fastconv.algos import registry

    if algo not in registry.ALGORITHMS:
        return True
    return algo in registry.applicable(a) and (not transposed or registry.get(algo).grads(a)[0])


def auto_choice(a, backward: bool, transposed: bool = False) -> str:
    """The algorithm ``algo="auto"`` runs on layer ``a``: ``conv2d``'s plan, or with
    ``backward`` the one ``conv2d_backward`` runs when it computes grad_x. A transposed
    layer's forward is conv2d's grad_x of ``a`` (``conv_transpose2d``'s plan): that one."""
    from fastconv import autotune

    if backward or transposed:
        return autotune.backward_choice(a, "auto", True)
    return autotune.forward_choice(a, "auto")


def im2col_gemm(shape, dtype=np.float32, layout: str = "NCHW"
                ) -> tuple[int, int, int, int]:
    """(M, K, N, count): the GEMMs im2col issues for ``shape`` (a ``Shape``): ``count``
    products (M x K) @ (K x N). NCHW: weights @ columns per image, band and group (per
    tile and group for image-last tiles); NHWC: columns (tile pixels) @ weights per tile
    and group."""
    from fastconv.algos import im2col

    return im2col.gemm_shapes(shape.args(dtype, layout=layout))


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` reports."""
    from ..calibrate import cpu_name as name

    return name()
