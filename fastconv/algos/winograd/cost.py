"""Winograd's registry entry and cost model (3x3 kernels, stride 1)."""

from __future__ import annotations

import dataclasses
import math

from ... import _lanes, _small_gemm
from ...costs import Estimate, Profile, gemm_seconds, io_bytes
from ..im2col import cost as im2col_cost
from ..im2col import direct_grad
from ..registry import Algorithm, register
from . import drivers, nchw_fused, nhwc_tiles, phase_batch, tiling

#: The layouts whose forward and grad_x have transforms of their own (NHWC: ``nhwc``);
#: in NHWC the weight gradient runs fused (``grad_w_nhwc``) where it takes the layer,
#: else in the Winograd domain on NCHW copies for wide layers only
#: (``drivers.grad_w_supported``; im2col's otherwise).
LAYOUTS = ("NCHW", "NHWC")
#: Winograd's transforms move each element several times (a padded row copy, the column
#: pass, the strided row pass): measured at about 1/1.6 of the unfold's copy bandwidth.
WINOGRAD_TRANSFORM_PASSES = 1.6
#: Fixed cost of one chunk of one group (three kernel launches, the split GEMMs): a
#: depthwise layer (128 groups, 16 x 56 x 56) took 32 ms, about 80 us per group.
WINOGRAD_GROUP_US = 60.0
#: NCHW layers split over the threads (``tiling.per_thread``) start Python threads and
#: one serial kernel per chunk and channel plane: a fixed cost per call and a cost per
#: (image, channel) plane, in and out, per thread. Measured, 2 threads, 64 -> 64 at 7x7
#: and 32 -> 32 at 14x14, batch 1 to 64: 0.13-0.19 ms more than the rest of the model at
#: batch 1, about 70 ns more per plane beyond (at batch 32: 0.88-0.95 and 0.97-1.01 ms
#: measured, 0.50 and 0.73 modelled without these terms; the direct lanes kernel 0.66 and
#: 0.60 ms).
WINOGRAD_SPLIT_US = 150.0
WINOGRAD_PLANE_NS = 140.0
#: NHWC layers that run fused (``nhwc_tiles.fused_applies``) transform their tiles in
#: cache at about the copy bandwidth, and multiply them in registers at the GEMM peak.
#: Fitted at 1.35 passes on 32 -> 32 at 32x32 (batch 64) and 64 -> 64 at 56x56 (batch
#: 16): 3.4 and 7.4 ms measured, 3.4 and 7.6 modelled; 32 -> 32 at 14x14 (batch 32)
#: 0.41 against 0.45, 64 -> 64 at 7x7 0.46 against 0.33. The transforms of whole
#: vectors in registers then took 0.7-0.8x their time (``nhwc_tiles``): 1.0.
WINOGRAD_FUSED_PASSES = 1.0
#: NCHW layers run through the same kernels (``nchw_fused``), staging each task's input
#: rows channels last and its output rows back: about this many more passes over x and
#: y at the copy bandwidth. Measured against the NHWC kernel, 2 threads: on an Intel
#: Xeon, 64 -> 64 at 56x56 (batch 16) 6.0 against 3.7 ms, 32 -> 32 at 32x32 (batch 64)
#: 2.8 against 1.65, 64 -> 64 at 16x16 1.9 against 1.25 (2.4-3.6 passes); on an AMD
#: EPYC 8.9 against 6.8, 3.8 against 2.8, 2.9 against 2.6 (1.2-2.2 passes), 16 -> 16 at
#: 28x28 (batch 32) 0.49 against 0.37 (1.0). With 2 the model ranks the fused kernel
#: and the direct lanes kernel as measured on the AMD machine for 18 of 20 NCHW layers
#: of 16-64 channels, 7x7 to 56x56, batch 2-128 (the other two: 2 and 4 images, under
#: 0.2 ms, where the fused call's fixed costs are not modelled).
NCHW_STAGE_PASSES = 2.0
#: The fused weight gradient on NCHW stages x and grad_y channels last and writes no
#: rows back: one pass over them.
GRAD_W_STAGE_PASSES = 1.0


def cost(a, p: Profile, m: int | None = None, fused: bool = True) -> Estimate:
    """Model time of the forward; with ``m``, of F(m x m, 3x3) whatever the setting;
    without ``fused``, of the chunked path whatever the layer (the weight gradient's
    transforms and GEMMs cost as much as that forward)."""
    item = a.dtype.itemsize
    m = tiling.tile_size() if m is None else m
    t = tiling.transformed(m)
    if fused and drivers.on_nhwc_copies(a):
        # NHWC's chunked transforms on copies of x and y (read and written once each)
        nhwc, ws, detail = cost(dataclasses.replace(a, layout="NHWC"), p, m)
        io = io_bytes(a)
        return Estimate(nhwc + 2 * io / (p.copy_gbs * 1e9), ws + io,
                        f"{detail}, on channels-last copies")
    if fused and a.dims.channels_last and a.dilation == (1, 1) and nhwc_tiles.fused_applies(
            (a.n, a.h, a.w, a.c_in), (a.n, a.h_out, a.w_out, a.c_out), item, a.groups, m,
            None):
        return _fused_cost(a, p, t)
    fused = fused and a.layout == "NCHW" and nchw_fused.applies(
        (a.n, a.c_in, a.h, a.w), (a.n, a.c_out, a.h_out, a.w_out), item, a.groups, m)
    # tile rows and columns over the phases of a dilated layer (one phase otherwise)
    th = sum(-(-count // m) for *_, count in tiling.phases(a.h_out, a.padding[0][0],
                                                             a.dilation[0]))
    tw = sum(-(-count // m) for *_, count in tiling.phases(a.w_out, a.padding[1][0],
                                                             a.dilation[1]))
    batched = phase_batch.batches(a)
    phased = "" if a.dilation == (1, 1) else \
        f", {a.dilation[0] * a.dilation[1]} phases {'as one batch' if batched else 'in place'}"
    if fused:   # NCHW (a dilated layer's phases gathered first where they are alike)
        return _fused_cost(a, p, t, NCHW_STAGE_PASSES + 2 * int(batched), a.n * th * tw,
                           phased)
    cg, dg = a.c_in // a.groups, a.c_out // a.groups
    tiles = a.n * th * tw
    chunks = max(tiling.chunks(a, m), a.dilation[0] * a.dilation[1])
    cols = math.ceil(tiles / chunks)
    # NCHW layers split over the threads read their GEMM operands from the cache their
    # transforms just wrote (``tiling.per_thread``): no traffic at the copy bandwidth,
    # and the chunks' fixed costs overlap
    split = not a.dims.channels_last and tiling.per_thread(cg, dg)
    threads = tiling.split_rows(a.n * th, tw, cg, dg, item, m)[0] if split else 1
    in_cache = dataclasses.replace(p, copy_gbs=math.inf) if split else p
    if a.dims.channels_last:    # a chunk's tiles as rows (``nhwc``)
        gemm = gemm_seconds(in_cache, cols, cg, dg, t * a.groups * chunks, item)
    else:
        gemm = gemm_seconds(in_cache, dg, cg, cols, t * a.groups * chunks, item)
    if a.dims.channels_last and _small_gemm.takes(t, cols, cg, dg, item):
        # in SIMD registers (``_blas.split_matmul``): the peak rate whatever the shape
        # (cifar's 32 -> 32 NHWC: 1.2 ms measured, 2.2 modelled, 4.4 at OpenBLAS's rate)
        peak = dataclasses.replace(p, gemm_half_m=0.0, gemm_half_k=0.0, gemm_half_n=0.0)
        gemm = gemm_seconds(peak, cols, cg, dg, t * a.groups * chunks, item)
    moved = t * a.groups * (_vector_channels(a, cg) + _vector_channels(a, dg)) * tiles * item
    transforms = WINOGRAD_TRANSFORM_PASSES * moved / (p.copy_gbs * 1e9)
    # passes copying x and y: to NCHW and back for other layouts; a dilated NCHW layer's
    # phases gathered into one batch and scattered back when they are the same problem
    # (``drivers._run``)
    copies = int(a.layout not in LAYOUTS) + int(batched)
    transforms += copies * 2 * io_bytes(a) / (p.copy_gbs * 1e9)
    secs = (p.call_us + chunks * a.groups * WINOGRAD_GROUP_US / threads) * 1e-6 + gemm \
        + transforms
    if split:
        planes = a.n * (a.c_in + a.c_out)
        secs += WINOGRAD_SPLIT_US * 1e-6 + planes * WINOGRAD_PLANE_NS * 1e-9 / threads
    groups = f" x{a.groups} groups" if a.groups > 1 else ""
    where = f" over {threads} threads, in cache" if split else ""
    detail = (f"F({m}x{m}, 3x3), {chunks} chunks{where}, {t} GEMMs {dg}x{cg}x{cols}{groups} "
              f"{1e3 * gemm:.3g} ms, transforms {1e3 * transforms:.3g} ms{phased}")
    return Estimate(secs, tiling.workspace_bytes(a), detail)


def _vector_channels(a, per_group: int) -> int:
    """The channels a group's transforms move per tile for ``per_group`` channels (in
    or out): those in NCHW; in NHWC, whose transforms run a tile's channels as SIMD
    vectors (``nhwc``), at least a register's lanes (2 x 128 x 128, 8 -> 1-8 channels:
    0.56-1.4 ms measured, 0.29-0.48 modelled by the channels alone, 2-4x the NCHW
    kernels' time)."""
    if not a.dims.channels_last:
        return per_group
    return max(per_group, _lanes.per_register(a.dtype.itemsize))


def _fused_cost(a, p: Profile, t: int, stage_passes: float = 0.0,
                tiles: int | None = None, phased: str = "") -> Estimate:
    """Model time of the fused forward (``nhwc_tiles.fused_forward``; NCHW's,
    ``nchw_fused.forward``, with ``stage_passes`` over x and y for its staging copies):
    its products at the GEMM peak, its transforms at ``WINOGRAD_FUSED_PASSES``; its
    workspace, each thread's block of transformed tiles and products. ``tiles``: those
    of a dilated layer's phases (default: the layer's), ``phased`` how they run."""
    item = a.dtype.itemsize
    if tiles is None:
        tiles = nhwc_tiles.tile_count((a.n, a.h_out, a.w_out, a.c_out))
    gemm = 2.0 * t * tiles * a.c_in * a.c_out / (p.gemm_gflops * 1e9 * (4 / item))
    transforms = WINOGRAD_FUSED_PASSES * t * (a.c_in + a.c_out) * tiles * item \
        / (p.copy_gbs * 1e9)
    transforms += stage_passes * io_bytes(a) / (p.copy_gbs * 1e9)
    block = nhwc_tiles.block_tiles(a.c_in, a.c_out, item)
    staged = ", staged channels last" if stage_passes else ""
    detail = (f"F(4x4, 3x3) fused{staged}, {-(-tiles // block)} blocks of {block} tiles, "
              f"products in registers {1e3 * gemm:.3g} ms, transforms {1e3 * transforms:.3g} ms"
              f"{phased}")
    workspace = p.threads * block * t * (a.c_in + a.c_out) * item
    if stage_passes:
        workspace += p.threads * nchw_fused.staging_bytes(a.c_in, a.c_out, a.w_out, item)
    return Estimate(p.call_us * 1e-6 + gemm + transforms, workspace, detail)


def backward_cost(a, p: Profile) -> Estimate:
    """Model time of the backward: Winograd's grad_x (the forward's transform of grad_y)
    and grad_w (the adjoint of the forward's F(m x m, 3x3), priced as that forward)
    where it computes them, im2col's share for the rest (its direct weight gradient, or
    about one forward, for grad_w; two forwards for grad_x). 32 -> 32 3x3 at 32x32
    (batch 64), NHWC, 2 threads: Winograd 6.5-6.7 ms, im2col 8.4-10.5; modelled 16.1
    and 14.4 with grad_w priced as a forward."""
    call = p.call_us * 1e-6
    cols, cws, _ = im2col_cost.cost(a, p)
    by_x, by_w = drivers.grad_x_supported(a), drivers.grad_w_supported(a)
    # what im2col still does: about one forward for grad_w (its direct kernel's time
    # where that runs it), two for grad_x (the fold)
    secs = call + (0 if by_x else 2) * (cols - call)
    if not by_w:
        secs += (direct_grad.grad_w_cost(a, p).seconds
                 if direct_grad.direct_backward_chosen(a, False) else cols) - call
    ws, parts = cws, []
    if by_x:
        # grad_x's own problem: its GEMMs differ from the forward's where the channels
        # do (a 1 -> 16 layer's grad_x multiplies (1 x 16) @ (16 x tiles), not an outer
        # product; the small ResNet's stem at 28x28, batch 32, both gradients: 0.94-1.0
        # ms with Winograd's grad_x, 0.33-0.50 with im2col's)
        wino, wws, _ = cost(a.grad_x_problem, p)
        secs += wino - call
        ws = max(ws, wws)
        parts.append("grad_x")
    if by_w and drivers.grad_w_fused(a):   # fused, priced as the NHWC fused forward
        # (NCHW: one more pass over x and grad_y, staged channels last)
        wino, wws, _ = _fused_cost(a, p, tiling.transformed(4),
                                   GRAD_W_STAGE_PASSES if a.layout == "NCHW" else 0.0)
        secs += wino - call
        ws = max(ws, wws)
        parts.append("grad_w")
    elif by_w:   # its transforms and GEMMs in chunks, as the unfused forward's
        wino, wws, _ = cost(a, p, fused=False)
        secs += wino - call
        if a.layout != "NCHW":  # grad_w's copies of grad_y and x to NCHW
            secs += 2 * io_bytes(a) / (p.copy_gbs * 1e9)
        ws = max(ws, wws)
        parts.append("grad_w")
    how = f"Winograd {' and '.join(parts)}" if parts else "as im2col"
    if parts and phase_batch.batches(a):
        how += f" (its {a.dilation[0] * a.dilation[1]} phases as one batch)"
    rest = "" if len(parts) == 2 else ", the rest with im2col"
    return Estimate(secs, ws, f"{how}{rest}")


def why_not(a) -> str | None:
    if drivers.supports(a):
        return None
    return (f"needs a 3x3 kernel with stride 1; got kernel {a.kh}x{a.kw}, stride "
            f"{a.stride}")


def grads(a) -> tuple[bool, bool]:
    return drivers.grad_x_supported(a), drivers.grad_w_supported(a)


ALGORITHM = register(Algorithm(
    "winograd", "F(m x m, 3x3) minimal filtering: 2.25x-4x fewer multiplications",
    drivers.forward, drivers.backward, cost, backward_cost, why_not=why_not, grads=grads,
    layouts=LAYOUTS))
