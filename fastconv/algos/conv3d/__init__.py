"""conv3d's algorithms and their cost models: "naive", "im2col", "fft" and "winograd"
(kernels (kd, 3, 3) at stride and dilation 1 only, :mod:`.winograd`).

Each algorithm works on channels-first arrays (NCDHW / OIDHW; ``fastconv.conv3d`` makes
the copies for NDHWC) with a :class:`fastconv._args.conv_nd.ConvNdArgs` record. The
cost models reuse ``fastconv.costs``' machine profile and primitives; "auto" takes the
cheapest estimate among the algorithms that apply (:func:`plan_for`).

>>> from fastconv._args.conv_nd import conv_nd_args_from_shapes
>>> a = conv_nd_args_from_shapes("conv3d", (4, 16, 32, 32, 32), (32, 16, 3, 3, 3),
...                              rank=3, padding=1)
>>> plan_for(a).algorithm
'winograd'
>>> a = conv_nd_args_from_shapes("conv3d", (4, 16, 32, 32, 32), (32, 16, 2, 2, 2),
...                              rank=3)
>>> why_not("winograd", a)[:50]
'needs a (kd, 3, 3) kernel with stride 1 and dilati'
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass

from ...costs import BACKWARD_FACTOR, Estimate, Profile, fmt_seconds, gemm_seconds, load_profile
from . import fft, im2col, naive, window, winograd


@dataclass(frozen=True)
class Algorithm3d:
    name: str
    forward: object
    backward: object
    cost: object
    backward_factor: float
    applies: object = None      # problem -> bool; None: every problem
    rule: str = ""              # what ``applies`` asks of a problem, for errors
    adds_bias: bool = False     # forward(x, w, a, out, bias) adds the bias itself


def _naive_cost(a, p: Profile) -> Estimate:
    """FLOPs at the direct-loop rate, one task per (image, output channel)."""
    busy = min(max(a.n * a.c_out, 1), p.threads)
    rate = p.direct_gflops * 1e9 * (4 / a.dtype.itemsize) * busy
    return Estimate(p.call_us * 1e-6 + a.flops / rate, 0,
                    f"direct loops at {rate / 1e9:.3g} GFLOP/s")


def _im2col_cost(a, p: Profile) -> Estimate:
    """The unfold (column bytes at the copy bandwidth, a fixed cost per copied run) and
    one GEMM per chunk of output positions and group, (C_out/G) x (C_in/G*K) x (chunk),
    plus a fixed cost per chunk. At stride 1 (:mod:`.window`) the positions are the
    padded grid's and each chunk copies one run per column row; otherwise the gather
    copies one run per output row."""
    item = a.dtype.itemsize
    kk = math.prod(a.kernel)
    dg, cgk = a.c_out // a.groups, a.c_in // a.groups * kk
    if window.applies(a):
        vox = window.grid_positions(a)
        span = window.chunk_positions(a, vox)
        chunks = a.n * math.ceil(vox / span)
        runs = chunks * a.c_in * kk
    else:
        vox = math.prod(a.out)
        span = im2col.chunk_positions(a)
        chunks = a.n * math.ceil(vox / span)
        runs = a.n * a.c_in * kk * a.out[0] * a.out[1]
    col_bytes = a.n * a.c_in * kk * vox * item
    unfold = col_bytes / (p.copy_gbs * 1e9) + runs * p.copy_row_ns * 1e-9
    gemm = gemm_seconds(p, dg, cgk, span, chunks * a.groups, item)
    secs = (p.call_us + chunks * p.tile_us) * 1e-6 + unfold + gemm
    return Estimate(secs, a.c_in * kk * span * item,
                    f"{chunks} chunks, GEMM {dg}x{cgk}x{span} {1e3 * gemm:.3g} ms, unfold "
                    f"{col_bytes / 1e6:.3g} MB {1e3 * unfold:.3g} ms")


def _fft_cost(a, p: Profile) -> Estimate:
    """Transforms of every input, output and kernel volume (points * log2(points) each)
    and the channel sum's complex multiply-adds."""
    shape = fft._lengths(a)
    points = math.prod(shape)
    half = points // shape[-1] * (shape[-1] // 2 + 1)
    per_volume = points * math.log2(max(points, 2)) * p.fft_ns * 1e-9 + p.fft_plane_us * 1e-6
    cg = a.c_in // a.groups
    transforms = (a.n * (a.c_in + a.c_out) + a.c_out * cg) * per_volume
    macs = a.n * a.c_out * cg * half
    channel_sum = macs / (p.fft_gmacs * 1e9) * (a.dtype.itemsize / 4)
    item = 2 * a.dtype.itemsize
    workspace = (a.n * (a.c_in + a.c_out) + a.c_out * cg) * half * item
    secs = (p.call_us + p.fft_call_us) * 1e-6 + transforms + channel_sum
    return Estimate(secs, workspace,
                    f"{'x'.join(map(str, shape))} transforms {1e3 * transforms:.3g} ms, "
                    f"channel sum {1e3 * channel_sum:.3g} ms")


def _winograd_cost(a, p: Profile) -> Estimate:
    """:func:`.winograd.seconds`: batched GEMMs, transforms, a fixed cost per depth."""
    secs, detail = winograd.seconds(a, p)
    return Estimate(secs, winograd.workspace_bytes(a), detail)


ALGORITHMS = {
    "naive": Algorithm3d("naive", naive.forward, naive.backward, _naive_cost, 2.0),
    "im2col": Algorithm3d("im2col", im2col.forward, im2col.backward, _im2col_cost,
                          BACKWARD_FACTOR),
    "fft": Algorithm3d("fft", fft.forward, fft.backward, _fft_cost, BACKWARD_FACTOR),
    "winograd": Algorithm3d("winograd", winograd.forward, winograd.backward,
                            _winograd_cost, BACKWARD_FACTOR, winograd.applies,
                            "needs a (kd, 3, 3) kernel with stride 1 and dilation 1",
                            adds_bias=True),
}


def why_not(name: str, a) -> str | None:
    """Why algorithm ``name`` cannot run problem ``a`` (None: it can)."""
    entry = ALGORITHMS[name]
    if entry.applies is None or entry.applies(a):
        return None
    return (f"{entry.rule}; got kernel {tuple(a.kernel)}, stride {tuple(a.stride)}, "
            f"dilation {tuple(a.dilation)}")


@dataclass(frozen=True)
class Plan3d:
    """How ``conv3d(..., algo="auto")`` (or its backward) runs a problem, and why:
    the chosen algorithm, 2 * multiply-adds, its workspace, modelled seconds and
    workspaces per algorithm and a sentence."""

    algorithm: str
    flops: int
    workspace_bytes: int
    estimates: types.MappingProxyType
    workspaces: types.MappingProxyType
    why: str


def estimate(name: str, a, p: Profile, backward: bool = False) -> Estimate:
    """The modelled cost of algorithm ``name`` on problem ``a`` (its backward when
    ``backward``: the forward's seconds times the algorithm's backward factor; im2col at
    stride 1 prices its two gradients' GEMMs, :func:`.window.backward_seconds`, and
    winograd its own, :func:`.winograd.backward_seconds`)."""
    entry = ALGORITHMS[name]
    est = entry.cost(a, p)
    if not backward:
        return est
    call = p.call_us * 1e-6
    if name == "im2col" and window.applies(a):
        secs = call + window.backward_seconds(a)
        return Estimate(secs, est.workspace,
                        f"gradients {1e3 * (secs - call):.3g} ms; forward: {est.detail}")
    if name == "winograd":
        secs, detail = winograd.backward_seconds(a, p)
        return Estimate(secs, est.workspace, detail)
    return Estimate(call + entry.backward_factor * (est.seconds - call), est.workspace,
                    f"{entry.backward_factor:g}x forward: {est.detail}")


def plan_for(a, backward: bool = False) -> Plan3d:
    """The cheapest algorithm by the cost model for a ConvNdArgs ``a``, among those that
    apply (:func:`why_not`)."""
    prof = load_profile()
    ests = {name: estimate(name, a, prof, backward) for name in ALGORITHMS
            if why_not(name, a) is None}
    best = min(ests, key=lambda k: ests[k].seconds)
    others = ", ".join(f"{k} {fmt_seconds(e.seconds)}" for k, e in
                       sorted(ests.items(), key=lambda kv: kv[1].seconds) if k != best)
    why = (f"{best}: modelled {fmt_seconds(ests[best].seconds)}"
           f"{' (backward)' if backward else ''} ({ests[best].detail}); {others}")
    return Plan3d(best, a.flops, ests[best].workspace,
                  types.MappingProxyType({k: e.seconds for k, e in ests.items()}),
                  types.MappingProxyType({k: e.workspace for k, e in ests.items()}), why)
