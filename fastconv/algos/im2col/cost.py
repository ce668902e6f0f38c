"""im2col's registry entry and cost model."""

from __future__ import annotations

from ...costs import Estimate, Profile, backward_from_forward, gemm_seconds
from .._common import interior_columns
from ..registry import Algorithm, register
from . import indirect_nchw, row_lanes, strided_pointwise
from .direct_grad import direct_backward_chosen, direct_backward_cost
from .drivers import backward, forward
from .fused import fused_tiling
from .fused_nhwc import fused_nhwc_tiling, panel_count
from .image_last_direct import direct_cost, direct_forward_applies
from .indirect_nhwc import indirect_applies
from .lanes_plan import lanes_chosen, lanes_cost
from .panels import panel_tiling
from .pointwise import backward_cost_pointwise
from .split import split_tiles
from .tiling import is_pointwise, tile_count, tiling

#: Bytes of a cache line: the least an unfold's run of a few values costs in traffic.
CACHE_LINE = 64


def cost(a, p: Profile) -> Estimate:
    """Model time of the forward: an image network's NCHW input layer runs the row lanes
    kernel (``row_lanes.cost``), small layers the direct lanes kernel
    (``lanes_plan.lanes_cost``), small stride-1 layers on tiles of many images the
    direct image-last kernel (``image_last_direct.direct_cost``), NCHW layers the
    register tiles take on staged rows (``indirect_nchw.cost``), the others the GEMM
    path (:func:`_gemm_cost`), as ``drivers.forward`` picks them."""
    if row_lanes.applies(a):
        return row_lanes.cost(a, p)
    if lanes_chosen(a):
        return lanes_cost(a, p)
    if direct_forward_applies(a):
        return direct_cost(a, p)
    if indirect_nchw.applies(a):
        return indirect_nchw.cost(a, p)
    return _gemm_cost(a, p)


def _gemm_cost(a, p: Profile, fuse: bool = True) -> Estimate:
    """The GEMM path's forward: per tile, the unfold (column bytes / copy bandwidth + a
    fixed cost per copied row segment) and one GEMM per group, (C_out/G) x (C_in/G*KH*KW)
    x (tile pixels), at ``gemm_seconds``'s rate (skinny GEMMs are slow); tiles of
    several images add a scatter pass over their output. 1x1 layers are one batched
    GEMM (strided ones after a copy of the pixels read). With ``fuse``, layers
    that run fused (``fused.fused_tiling``, ``fused_nhwc.fused_nhwc_tiling``) are priced
    in their panels, without the per-tile cost (one kernel call runs them all), and
    those that read the input in place (``indirect_nhwc.indirect_applies``) without the
    unfold but for their edge columns."""
    item = a.dtype.itemsize
    g, dg, cg = a.groups, a.c_out // a.groups, a.c_in // a.groups
    cgkk = cg * a.kh * a.kw
    if is_pointwise(a) or strided_pointwise.applies(a):
        hw = a.h_out * a.w_out
        if a.dims.channels_last:    # one product over all pixels (rows) a group
            secs = gemm_seconds(p, a.n * hw, cg, dg, g, item)
        else:                       # one a group and image, the pixels as columns
            secs = gemm_seconds(p, dg, cg, hw, a.n * g, item)
        secs += p.call_us * 1e-6
        if not is_pointwise(a):
            secs += strided_pointwise.copy_seconds(a, p)
        return Estimate(secs, 0, f"batched GEMM {dg}x{cg}x{hw} x{a.n * g}")
    fused = None
    if fuse:
        fused = fused_nhwc_tiling(a) if a.dims.channels_last else fused_tiling(a)
    t = tiling(a) if fused is None else fused
    if fused is not None and a.dims.channels_last:
        n_tiles = panel_count(a, fused)     # bands of the batch's rows
    else:
        n_tiles = tile_count(a, t)
    pixels = a.n * a.h_out * a.w_out / n_tiles  # output pixels per tile (average)
    ckk = a.c_in * a.kh * a.kw
    col_bytes = a.n * ckk * a.h_out * a.w_out * item
    # contiguous runs the unfold copies. NCHW: an output row of one image, or (several
    # images, image index innermost) an output row of the whole tile. NHWC: per output
    # pixel, a kernel row's KW*C values (one group, no column dilation), else each tap's
    # Cg channels per group, pixel by pixel.
    if not a.dims.channels_last:
        segments = ckk * a.h_out * (n_tiles if t.image_last else a.n)
    else:
        per_row = 1 if (g == 1 and a.dilation[1] == 1) else a.kw * g
        segments = a.n * a.h_out * a.w_out * a.kh * per_row
    if a.dims.channels_last and per_row == 1:
        # the runs of a kernel row go in one tight loop: each moves at least a cache
        # line (one thread, 3x3: runs of 12-48 bytes 2.7-3.0 ns, of 192 bytes 10 ns)
        unfold = segments * max(col_bytes / segments, CACHE_LINE) / (p.copy_gbs * 1e9)
    else:
        unfold = col_bytes / (p.copy_gbs * 1e9) + segments * p.copy_row_ns * 1e-9
    # one GEMM per tile and group (image-last tiles), else one per image, band and group
    gemms = n_tiles if t.image_last else n_tiles * t.images
    width = int(a.n * a.h_out * a.w_out / gemms)
    if not a.dims.channels_last:
        gemm = gemm_seconds(p, dg, cgkk, width, gemms * g, item)
    else:
        gemm = n_tiles * gemm_seconds(p, int(pixels), cgkk, dg, g, item)
    workspace = t.col_bytes * (p.threads if fused is not None else 1)
    scatter = 0.0
    if t.image_last:
        # input to image-last order, GEMM result back to NCHW (strided reads)
        in_bytes = a.n * a.c_in * a.h * a.w * item
        out_bytes = a.n * a.c_out * a.h_out * a.w_out * item
        scatter = 4 * (in_bytes + out_bytes) / (p.copy_gbs * 1e9)
        workspace += (a.c_out * a.h_out * a.w_out + a.c_in * a.h * a.w) * t.images * item
    indirect = fuse and indirect_applies(a)
    if indirect:     # no column matrix: only the edge columns' pixels are unfolded
        j_lo, j_hi = interior_columns(a)
        unfold *= 1 - (j_hi - j_lo) / a.w_out
    secs = (p.call_us + (0 if fused else n_tiles) * p.tile_us) * 1e-6 + unfold + gemm + scatter
    split = " split over the threads" if split_tiles(a) else ""
    if fused is not None:
        split = (f" of {t.col_bytes / 1e6:.2g} MB (L2-sized), each unfolded and multiplied"
                 " by one numba thread (fused)")
    if indirect:
        split = (" (bands of output rows) multiplied in register tiles read in place from"
                 " the input (indirect: only the edge columns unfolded)")
    panel = panel_tiling(a) if split and fused is None and not indirect else None
    if panel is not None:   # the same work, in cache-sized tiles (not priced apart)
        split += (f" as {tile_count(a, panel)} panels of {panel.col_bytes / 1e6:.2g} MB"
                  " (L2-sized)")
    detail = (f"{n_tiles} tiles{split}, GEMM {dg}x{cgkk}x{width}"
              f"{f' x{g} groups' if g > 1 else ''} {1e3 * gemm:.3g} ms, unfold "
              f"{col_bytes / 1e6:.3g} MB {1e3 * unfold:.3g} ms")
    return Estimate(secs, workspace, detail)


def backward_cost(a, p: Profile) -> Estimate:
    """The backward of both gradients as ``drivers.backward`` runs it: the pointwise
    GEMMs, the direct backward (``direct_grad.direct_backward_cost``) or the GEMM path,
    priced from the GEMM path's forward."""
    if is_pointwise(a):
        return backward_cost_pointwise(a, p)
    if strided_pointwise.applies(a):
        return strided_pointwise.backward_cost(a, p)
    gemm = _gemm_cost(a, p, fuse=False)
    if direct_backward_chosen(a):
        return direct_backward_cost(a, p, gemm)
    return backward_from_forward(gemm, p)


ALGORITHM = register(Algorithm(
    "im2col", "unfold into columns (numba), then BLAS GEMMs, in cache-sized tiles",
    forward, backward, cost, backward_cost, devices=("cpu", "cuda")))
