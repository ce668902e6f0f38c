"""Choosing the convolution algorithm for a shape: cost model, calibration, plans.

``plan`` estimates the time of every algorithm with a cost model whose rates come from a
machine profile, and picks the cheapest; ``measure=True`` times the candidates instead.
``calibrate`` measures the profile (``fastconv calibrate``) and stores it as JSON in
``config.CACHE_DIR``; without one, ``DEFAULT_PROFILE`` is used. Plans are cached per
problem in a bounded dictionary.

The model, per algorithm (seconds; rates from the profile):

* im2col: per tile, the unfold (column bytes / copy bandwidth + a fixed cost per copied
  row segment) and one GEMM per group, (C_out/G) x (C_in/G*KH*KW) x (tile pixels), at
  ``peak * min(f(M), f(K), f(N))`` with ``f(x) = x / (x + half_x)`` (skinny GEMMs are
  slow);
  tiles of several images add a scatter pass over their output. 1x1 stride-1 layers are
  one batched GEMM.
* fft: forward transforms of every input plane, inverse transforms of every output
  plane (``points * log2(points)`` each), the pruned kernel transforms, and
  ``N*G*Dg*Cg*points/2`` complex multiply-adds for the channel sum.
* winograd (3x3, stride 1 only): (m+2)^2 GEMMs per chunk and group,
  Dg x Cg x (tiles of the chunk), plus the input and output transforms at a fraction of
  the copy bandwidth (``WINOGRAD_TRANSFORM_PASSES``).
* naive: FLOPs at the direct-loop rate (depthwise layers: multiply-adds at the
  depthwise kernel's rate); both run one task per (image, output channel), so fewer
  tasks than threads leave threads idle.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import time
import types
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from . import _args, config

ALGORITHMS = ("naive", "im2col", "fft", "winograd")
PROFILE_FILE = "profile.json"
PROFILE_VERSION = 1


# ------------------------------------------------------------------------- profile
@dataclass(frozen=True)
class Profile:
    """Machine rates for the cost model (float32; float64 is derived from them)."""

    gemm_gflops: float       # SGEMM rate on a large, square-ish tile
    gemm_half_m: float       # f(M) = M / (M + half_m): the GEMM's efficiency in each dim
    gemm_half_k: float
    gemm_half_n: float
    copy_gbs: float          # unfold bandwidth (bytes of columns written per second / 1e9)
    copy_row_ns: float       # extra cost per copied row segment of the unfold
    fft_ns: float            # real 2-D transform: ns per point * log2(points)
    fft_plane_us: float      # fixed cost per transformed plane
    fft_call_us: float       # fixed cost of one FFT convolution beyond a conv2d call
    fft_gmacs: float         # channel-sum complex multiply-adds per second / 1e9
    direct_gflops: float     # the direct ("naive") kernel, per thread
    depthwise_gmacs: float   # the depthwise kernel, multiply-adds per second / 1e9, per thread
    call_us: float           # fixed cost of one conv2d call (validation, dispatch)
    tile_us: float           # fixed cost of one more im2col tile (launches, GEMM call)
    threads: int             # numba threads the profile was measured with
    source: str = "default"  # "default" or "calibrated <when> on <cpu>"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


#: Rates measured with ``fastconv calibrate`` on a 2-core AVX-512 machine (AMD EPYC,
#: OpenBLAS SkylakeX kernel), rounded: a sound default where nothing was calibrated.
DEFAULT_PROFILE = Profile(
    gemm_gflops=198.0, gemm_half_m=17.0, gemm_half_k=30.0, gemm_half_n=3.0,
    copy_gbs=27.0, copy_row_ns=6.2, fft_ns=0.10, fft_plane_us=0.1, fft_call_us=295.0,
    fft_gmacs=2.1, direct_gflops=2.6, depthwise_gmacs=11.8, call_us=24.0, tile_us=4.0,
    threads=2,
)


def profile_path(path: str | None = None) -> str:
    """Where the calibration profile lives: ``path`` or ``config.CACHE_DIR/profile.json``."""
    return path or os.path.join(config.CACHE_DIR, PROFILE_FILE)


_profile_lock = threading.Lock()
_profile_cache: dict = {}


def load_profile(path: str | None = None) -> Profile:
    """The calibrated profile at ``path`` (default: the cache directory), or
    ``DEFAULT_PROFILE`` when there is none, it is unreadable or it was measured with a
    different thread count (a RuntimeWarning says so for the last two)."""
    import numba

    path = profile_path(path)
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        return DEFAULT_PROFILE
    key = (path, stamp, numba.get_num_threads())
    with _profile_lock:
        if key in _profile_cache:
            return _profile_cache[key]
    try:
        with open(path) as f:
            data = json.load(f)
        if data.get("version") != PROFILE_VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {PROFILE_VERSION}")
        names = {f.name for f in dataclasses.fields(Profile)}
        prof = Profile(**{k: v for k, v in data["profile"].items() if k in names})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warnings.warn(f"fastconv: ignoring calibration profile {path}: {exc}; using the "
                      "default profile (run `fastconv calibrate` to rebuild it)",
                      RuntimeWarning, stacklevel=2)
        prof = DEFAULT_PROFILE
    else:
        if prof.threads != numba.get_num_threads():
            warnings.warn(f"fastconv: calibration profile {path} was measured with "
                          f"{prof.threads} threads, this process runs "
                          f"{numba.get_num_threads()}; using the default profile",
                          RuntimeWarning, stacklevel=2)
            prof = DEFAULT_PROFILE
    with _profile_lock:
        _profile_cache[key] = prof
    return prof


def save_profile(profile: Profile, path: str | None = None) -> str:
    """Write ``profile`` as JSON (atomically) and return the path."""
    path = profile_path(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"version": PROFILE_VERSION, "profile": profile.as_dict()}, f, indent=2)
    os.replace(tmp, path)
    clear_cache()
    return path


# ----------------------------------------------------------------------- cost model
def _efficiency(x: float, half: float) -> float:
    return x / (x + half)


def gemm_seconds(p: Profile, m: int, k: int, n: int, batch: int = 1,
                 itemsize: int = 4) -> float:
    """Model time of ``batch`` GEMMs (m x k) @ (k x n): the arithmetic at the peak rate
    scaled by the efficiency of the skinniest dimension, min(f(m), f(k), f(n)) (a
    product of the three undercounts GEMMs skinny in two dimensions by about 2x here),
    plus reading and writing the operands once at the copy bandwidth (what bounds a
    GEMM with m or k of 1 or 2)."""
    if m * k * n == 0:
        return 0.0
    eff = min(_efficiency(m, p.gemm_half_m), _efficiency(k, p.gemm_half_k),
              _efficiency(n, p.gemm_half_n))
    arithmetic = 2.0 * m * k * n / (p.gemm_gflops * 1e9 * (4 / itemsize) * eff)
    memory = (m * k + k * n + m * n) * itemsize / (p.copy_gbs * 1e9)
    return batch * (arithmetic + memory)


def _im2col_cost(a, p: Profile) -> tuple[float, int, str]:
    from .algos import im2col

    item = a.dtype.itemsize
    g, dg, cg = a.groups, a.c_out // a.groups, a.c_in // a.groups
    cgkk = cg * a.kh * a.kw
    if im2col.is_pointwise(a):
        secs = gemm_seconds(p, dg, cg, a.h * a.w, a.n * g, item)
        return secs + p.call_us * 1e-6, 0, f"batched GEMM {dg}x{cg}x{a.h * a.w} x{a.n * g}"
    t = im2col.tiling(a)
    n_tiles = math.ceil(a.n / t.images) * math.ceil(a.h_out / t.band)
    pixels = a.n * a.h_out * a.w_out / n_tiles  # output pixels per tile (average)
    ckk = a.c_in * a.kh * a.kw
    col_bytes = a.n * ckk * a.h_out * a.w_out * item
    # contiguous runs the unfold copies. NCHW: an output row of one image, or (several
    # images, image index innermost) an output row of the whole tile. NHWC: per output
    # pixel, a kernel row's KW*C values (one group, no column dilation), else each tap's
    # Cg channels per group.
    if a.layout == "NCHW":
        segments = ckk * a.h_out * (n_tiles if t.image_last else a.n)
    else:
        per_row = 1 if (g == 1 and a.dilation[1] == 1) else a.kw * g
        segments = a.n * a.h_out * a.w_out * a.kh * per_row
    unfold = col_bytes / (p.copy_gbs * 1e9) + segments * p.copy_row_ns * 1e-9
    # one GEMM per tile and group (image-last tiles), else one per image, band and group
    gemms = n_tiles if t.image_last else n_tiles * t.images
    width = int(a.n * a.h_out * a.w_out / gemms)
    if a.layout == "NCHW":
        gemm = gemm_seconds(p, dg, cgkk, width, gemms * g, item)
    else:
        gemm = n_tiles * gemm_seconds(p, int(pixels), cgkk, dg, g, item)
    workspace = t.col_bytes
    scatter = 0.0
    if t.image_last:
        # input to image-last order, GEMM result back to NCHW (strided reads)
        in_bytes = a.n * a.c_in * a.h * a.w * item
        out_bytes = a.n * a.c_out * a.h_out * a.w_out * item
        scatter = 4 * (in_bytes + out_bytes) / (p.copy_gbs * 1e9)
        workspace += (a.c_out * a.h_out * a.w_out + a.c_in * a.h * a.w) * t.images * item
    secs = (p.call_us + n_tiles * p.tile_us) * 1e-6 + unfold + gemm + scatter
    detail = (f"{n_tiles} tiles, GEMM {dg}x{cgkk}x{width}"
              f"{f' x{g} groups' if g > 1 else ''} {1e3 * gemm:.3g} ms, unfold "
              f"{col_bytes / 1e6:.3g} MB {1e3 * unfold:.3g} ms")
    return secs, workspace, detail


def _fft_cost(a, p: Profile) -> tuple[float, int, str]:
    from .algos import fft

    fh, fw = fft.forward_transform_shape(a)
    points = fh * fw
    per_plane = points * math.log2(max(points, 2)) * p.fft_ns * 1e-9
    if a.dtype.itemsize == 8:
        per_plane *= 1.4
    per_plane += p.fft_plane_us * 1e-6
    keff_h = a.dilation[0] * (a.kh - 1) + 1
    cg, dg = a.c_in // a.groups, a.c_out // a.groups
    kernel_planes = a.c_out * cg * (0.5 + 0.5 * keff_h / fh)  # pruned row transforms
    transforms = (a.n * (a.c_in + a.c_out) + kernel_planes) * per_plane
    macs = a.n * a.groups * dg * cg * fh * (fw // 2 + 1)
    channel_sum = macs / (p.fft_gmacs * 1e9) * (a.dtype.itemsize / 4)
    out_bytes = a.n * a.c_out * a.h_out * a.w_out * a.dtype.itemsize
    copy = 2 * out_bytes / (p.copy_gbs * 1e9)
    per_image = fft.image_bytes(a, (fh, fw))
    batch = max(1, min(a.n, config.WORKSPACE_BYTES // max(per_image, 1)))
    workspace = batch * per_image + a.c_out * cg * fh * (fw // 2 + 1) * 2 * a.dtype.itemsize
    secs = (p.call_us + p.fft_call_us) * 1e-6 + transforms + channel_sum + copy
    detail = (f"{fh}x{fw} transforms {1e3 * transforms:.3g} ms, channel sum "
              f"{1e3 * channel_sum:.3g} ms")
    return secs, workspace, detail


def _naive_cost(a, p: Profile) -> tuple[float, int, str]:
    from .algos import naive

    item = a.dtype.itemsize
    busy = min(max(a.n * a.c_out, 1), p.threads)  # one task per (image, output channel)
    if naive.is_depthwise(a):
        unit = a.stride == (1, 1)
        width = a.w_out + a.dilation[1] * (a.kw - 1) if unit else a.w_out
        macs = a.n * a.c_out * a.h_out * width * a.kh * a.kw
        rate = p.depthwise_gmacs * 1e9 * (4 / item) * busy * (1.0 if unit else 0.5)
        io = (a.n * (a.c_in * a.h * a.w + a.c_out * a.h_out * a.w_out)) * item
        secs = p.call_us * 1e-6 + macs / rate + io / (p.copy_gbs * 1e9)
        scratch = p.threads * (a.h_out + a.kh) * width * 2 * item if unit else 0
        return secs, scratch, f"depthwise kernel, {macs / 1e6:.3g} M multiply-adds"
    rate = p.direct_gflops * 1e9 * (4 / item) * busy
    secs = p.call_us * 1e-6 + a.flops / rate
    temp = a.n * a.c_out * a.h_out * a.w_out * item if a.layout == "NHWC" else 0
    return secs, temp, f"direct loops at {rate / 1e9:.3g} GFLOP/s"


#: Winograd's transforms move each element several times (a padded row copy, the column
#: pass, the strided row pass): measured at about 1/1.6 of the unfold's copy bandwidth.
WINOGRAD_TRANSFORM_PASSES = 1.6
#: Fixed cost of one chunk of one group (three kernel launches, the split GEMMs): a
#: depthwise layer (128 groups, 16 x 56 x 56) took 32 ms, about 80 us per group.
WINOGRAD_GROUP_US = 60.0


def _winograd_cost(a, p: Profile, m: int | None = None) -> tuple[float, int, str]:
    """Model time of the forward; with ``m``, of F(m x m, 3x3) whatever the setting (the
    weight gradient's transforms and GEMMs cost as much as that forward)."""
    from .algos import winograd

    item = a.dtype.itemsize
    m = winograd.tile_size() if m is None else m
    t = winograd.transformed(m)
    # tile rows and columns over the phases of a dilated layer (one phase otherwise)
    th = sum(-(-count // m) for *_, count in winograd.phases(a.h_out, a.padding[0][0],
                                                             a.dilation[0]))
    tw = sum(-(-count // m) for *_, count in winograd.phases(a.w_out, a.padding[1][0],
                                                             a.dilation[1]))
    cg, dg = a.c_in // a.groups, a.c_out // a.groups
    tiles = a.n * th * tw
    chunks = max(winograd.chunks(a, m), a.dilation[0] * a.dilation[1])
    cols = math.ceil(tiles / chunks)
    gemm = gemm_seconds(p, dg, cg, cols, t * a.groups * chunks, item)
    moved = t * (a.c_in + a.c_out) * tiles * item
    transforms = WINOGRAD_TRANSFORM_PASSES * moved / (p.copy_gbs * 1e9)
    copies = (a.layout == "NHWC") + (a.dilation != (1, 1))  # NHWC; phases of dilation
    io_bytes = a.n * (a.c_in * a.h * a.w + a.c_out * a.h_out * a.w_out) * item
    transforms += copies * 2 * io_bytes / (p.copy_gbs * 1e9)
    secs = (p.call_us + chunks * a.groups * WINOGRAD_GROUP_US) * 1e-6 + gemm + transforms
    groups = f" x{a.groups} groups" if a.groups > 1 else ""
    detail = (f"F({m}x{m}, 3x3), {chunks} chunks, {t} GEMMs {dg}x{cg}x{cols}{groups} "
              f"{1e3 * gemm:.3g} ms, transforms {1e3 * transforms:.3g} ms")
    return secs, winograd.workspace_bytes(a), detail


_COSTS = {"naive": _naive_cost, "im2col": _im2col_cost, "fft": _fft_cost,
          "winograd": _winograd_cost}


def applicable(a) -> tuple[str, ...]:
    """The algorithms that can run problem ``a`` (Winograd: 3x3 kernels, stride 1)."""
    from .algos import winograd

    return tuple(algo for algo in ALGORITHMS if algo != "winograd" or winograd.supports(a))

#: conv2d_backward's im2col and FFT paths do about three times their forward's work (the
#: weight and input gradients each cost a forward-sized product, plus folds/transforms).
BACKWARD_FACTOR = 3.0


def _backward_cost(algo: str, a, p: Profile) -> tuple[float, int, str]:
    """Model time of conv2d_backward. Its direct algorithm is the formula as loops for
    every layer (no depthwise kernel): twice the forward's FLOPs at the direct rate."""
    if algo == "naive":
        busy = min(max(a.n * a.c_out, 1), p.threads)
        rate = p.direct_gflops * 1e9 * (4 / a.dtype.itemsize) * busy
        return p.call_us * 1e-6 + 2 * a.flops / rate, 0, "direct loops, 2x forward FLOPs"
    call = p.call_us * 1e-6
    if algo == "winograd":
        from .algos import winograd

        cols, cws, _ = _im2col_cost(a, p)
        by_x, by_w = winograd.grad_x_supported(a), winograd.grad_w_supported(a)
        # what im2col still does: about one forward for grad_w, two for grad_x (the fold)
        secs = call + ((0 if by_w else 1) + (0 if by_x else 2)) * (cols - call)
        ws, parts = cws, []
        if by_x:
            wino, wws, _ = _winograd_cost(a, p)
            secs += wino - call
            ws = max(ws, wws)
            parts.append("grad_x")
        if by_w:
            wino, wws, _ = _winograd_cost(a, p, winograd.GRAD_W_TILE)
            secs += wino - call
            ws = max(ws, wws)
            parts.append("grad_w")
        how = f"Winograd {' and '.join(parts)}" if parts else "as im2col"
        return secs, ws, f"{how}, the rest with im2col"
    secs, ws, detail = _COSTS[algo](a, p)
    return call + BACKWARD_FACTOR * (secs - call), ws, f"{BACKWARD_FACTOR:g}x forward: {detail}"


# -------------------------------------------------------------------------- plans
@dataclass(frozen=True)
class Plan:
    """How ``conv2d(..., algo="auto")`` runs a problem, and why.

    algorithm: the chosen algorithm; flops: 2 * multiply-adds (bias excluded);
    workspace_bytes: scratch memory the chosen algorithm uses beyond input and output;
    estimates: seconds per algorithm (measured when ``measured``, else modelled);
    workspaces: scratch bytes per algorithm; why: a sentence for humans.
    """

    algorithm: str
    flops: int
    workspace_bytes: int
    estimates: types.MappingProxyType
    workspaces: types.MappingProxyType
    measured: bool
    why: str

    def as_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["estimates"] = dict(self.estimates)
        d["workspaces"] = dict(self.workspaces)
        return d


def _fmt_seconds(s: float) -> str:
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def _model_plan(a, p: Profile, backward: bool = False) -> Plan:
    est, ws, details = {}, {}, {}
    for algo in applicable(a):
        if backward:
            est[algo], ws[algo], details[algo] = _backward_cost(algo, a, p)
        else:
            est[algo], ws[algo], details[algo] = _COSTS[algo](a, p)
    best = min(est, key=est.__getitem__)
    others = ", ".join(f"{k} {_fmt_seconds(v)}" for k, v in sorted(est.items(),
                                                                   key=lambda kv: kv[1])
                       if k != best)
    why = (f"{best}: estimated {_fmt_seconds(est[best])}{' (backward)' if backward else ''} "
           f"({details[best]}); {others}; cost model with the {p.source} profile")
    return Plan(best, a.flops, ws[best], types.MappingProxyType(est),
                types.MappingProxyType(ws), False, why)


def _measure_plan(a, p: Profile, backward: bool = False, budget: float = 1.0) -> Plan:
    """Time every algorithm (its forward, or its backward) on random data of the
    problem's shape (seeded). An algorithm whose model time exceeds ``budget`` runs on
    fewer images and is scaled up."""
    from . import conv
    from ._timing import median_time

    model = _model_plan(a, p, backward)
    rng = np.random.default_rng(0)
    x_shape = a.x_shape if a.layout == "NCHW" else (a.n, a.h, a.w, a.c_in)
    w_shape = a.w_shape if a.layout == "NCHW" else (a.kh, a.kw, a.c_in // a.groups, a.c_out)
    x = rng.standard_normal(x_shape).astype(a.dtype)
    w = rng.standard_normal(w_shape).astype(a.dtype)
    est, notes = {}, []
    for algo in applicable(a):
        n = a.n
        if model.estimates[algo] > budget and a.n > 1:
            n = max(1, int(a.n * budget / model.estimates[algo]))
        sub = a.with_batch(n)
        y_shape = (n, a.c_out, a.h_out, a.w_out) if a.layout == "NCHW" else (
            n, a.h_out, a.w_out, a.c_out)
        out = np.empty(y_shape, a.dtype)
        if backward:
            grads = (np.empty((n,) + x.shape[1:], a.dtype), np.empty(w.shape, a.dtype))
            gy = rng.standard_normal(y_shape).astype(a.dtype)

            def run(fn=conv._BACKWARD[algo], xb=x[:n], sub=sub, gy=gy, grads=grads):
                fn(gy, xb, w, sub, *grads)
        else:
            def run(fn=conv._FORWARD[algo], xb=x[:n], sub=sub, out=out):
                fn(xb, w, sub, out)
        secs = median_time(run, repeats=3, max_time=2 * budget)
        est[algo] = secs * a.n / n
        if n < a.n:
            notes.append(f"{algo} timed on {n} of {a.n} images and scaled")
    best = min(est, key=est.__getitem__)
    others = ", ".join(f"{k} {_fmt_seconds(v)}" for k, v in sorted(est.items(),
                                                                   key=lambda kv: kv[1])
                       if k != best)
    why = (f"{best}: measured {_fmt_seconds(est[best])}{' (backward)' if backward else ''}; "
           f"{others}"
           + (f" ({'; '.join(notes)})" if notes else ""))
    return Plan(best, a.flops, model.workspaces[best], types.MappingProxyType(est),
                model.workspaces, True, why)


_cache_lock = threading.Lock()
_plans: OrderedDict = OrderedDict()


def clear_cache() -> None:
    """Forget cached plans and loaded profiles."""
    with _cache_lock:
        _plans.clear()
    with _profile_lock:
        _profile_cache.clear()


def cache_info() -> dict:
    """Size and bound of the plan cache."""
    with _cache_lock:
        return {"size": len(_plans), "maxsize": config.PLAN_CACHE_SIZE}


def plan_for(a, measure: bool = False, backward: bool = False) -> Plan:
    """The (cached) plan for a canonical ConvArgs: for conv2d, or for conv2d_backward."""
    prof = load_profile()
    key = (a, bool(measure), bool(backward), prof)
    with _cache_lock:
        hit = _plans.get(key)
        if hit is not None:
            _plans.move_to_end(key)
            return hit
    if measure:
        result = _measure_plan(a, prof, backward)
    else:
        result = _model_plan(a, prof, backward)
    with _cache_lock:
        _plans[key] = result
        while len(_plans) > max(config.PLAN_CACHE_SIZE, 1):
            _plans.popitem(last=False)
    return result


def choose_algorithm_for(a, backward: bool = False) -> str:
    """The algorithm ``algo="auto"`` runs for a canonical ConvArgs (in conv2d, or in
    conv2d_backward when ``backward``)."""
    return plan_for(a, backward=backward).algorithm


def _problem(op, x_shape, w_shape, stride, padding, dilation, groups, layout, dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{op}: dtype={dtype!r} is not a dtype; accepted dtypes are "
                        "float32 and float64") from None
    if dt not in _args.DTYPES:
        raise TypeError(f"{op}: dtype={dt} is not supported; accepted dtypes are float32 "
                        "and float64")
    a = _args.conv_args_from_shapes(op, x_shape, w_shape, stride, padding, dilation, groups,
                                    layout, dt)
    if a.n == 0:
        raise ValueError(f"{op}: the batch is empty (N=0); there is nothing to plan")
    return a


def plan(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1, *, layout="NCHW",
         dtype=np.float32, measure=False, backward=False) -> Plan:
    """How ``conv2d(x, w, ..., algo="auto")`` would run this problem.

    Parameters
    ----------
    x_shape : (N, C_in, H, W) for layout "NCHW", (N, H, W, C_in) for "NHWC"; a 3-D
        (unbatched) shape counts as N=1.
    w_shape : (C_out, C_in/groups, kh, kw) "OIHW" for NCHW, (kh, kw, C_in/groups, C_out)
        "HWIO" for NHWC.
    stride, padding, dilation, groups : as in ``conv2d``.
    layout : "NCHW" or "NHWC".
    dtype : float32 or float64.
    measure : time every algorithm on random data of this shape (seconds to minutes
        for large layers; the direct algorithm is timed on fewer images and scaled)
        instead of using the cost model.
    backward : plan ``conv2d_backward`` instead of ``conv2d`` (its algorithms have
        other costs: the direct one has no depthwise kernel there).

    Returns
    -------
    Plan with ``algorithm``, ``flops``, ``workspace_bytes``, ``estimates`` (seconds per
    algorithm), ``workspaces``, ``measured`` and ``why``.

    Notes
    -----
    The cost model (module docstring of ``fastconv.autotune``) uses the machine profile
    written by ``fastconv calibrate`` (GEMM rate and its fall-off for skinny shapes, the
    unfold's copy bandwidth, FFT throughput, the direct and depthwise loop rates, fixed
    call costs) and otherwise ``DEFAULT_PROFILE``, measured the same way on a 2-core
    AVX-512 machine. Checked against measurements with ``fastconv bench`` on the
    default suite and the kernel-size sweep (see the README's Benchmarks section).
    Plans are cached per problem (``config.PLAN_CACHE_SIZE`` entries).

    Examples
    --------
    >>> import fastconv
    >>> fastconv.plan((1, 1, 512, 512), (1, 1, 31, 31)).algorithm
    'fft'
    """
    a = _problem("plan", x_shape, w_shape, stride, padding, dilation, groups, layout, dtype)
    return plan_for(a, measure, backward)


def choose_algorithm(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1, *,
                     layout="NCHW", dtype=np.float32, measure=False, backward=False) -> str:
    """The algorithm ("naive", "im2col" or "fft") that ``algo="auto"`` runs for this
    problem: ``plan(...).algorithm``.

    Parameters are those of :func:`plan`.

    Notes
    -----
    Without ``measure`` the choice comes from a cost model with rates calibrated on the
    machine (``fastconv calibrate``; a default profile measured on a 2-core AVX-512
    machine otherwise): im2col as unfold traffic plus a GEMM whose rate falls off for
    skinny shapes, FFT as transform and frequency-domain channel-sum work, the direct
    algorithm at its loop rate (its depthwise kernel for depthwise layers). With
    ``measure=True`` the candidates are timed, as scipy's ``choose_conv_method`` does.
    The choice is cached per problem.

    Examples
    --------
    >>> import fastconv
    >>> fastconv.choose_algorithm((16, 64, 56, 56), (64, 64, 3, 3), padding=1)
    'im2col'
    """
    a = _problem("choose_algorithm", x_shape, w_shape, stride, padding, dilation, groups,
                 layout, dtype)
    return plan_for(a, measure, backward).algorithm


# --------------------------------------------------------------------- calibration
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _probes(rng) -> dict:
    """name -> callable for every calibration measurement (all float32)."""
    import scipy.fft as sfft

    from . import conv
    from ._args import conv_args_from_shapes
    from .algos import fft, im2col, naive

    f32 = np.float32
    probes = {}

    def gemm(m, k, n):
        a = rng.standard_normal((m, k)).astype(f32)
        b = rng.standard_normal((k, n)).astype(f32)
        c = np.empty((m, n), f32)

        def run():
            for _ in range(gemm_reps(m, k, n)):  # a burst, so one wake-up is amortised
                np.matmul(a, b, out=c)
        return run

    for name, shape in GEMM_PROBES.items():
        probes[name] = gemm(*shape)

    def unfold(n, c, hw):
        x = rng.standard_normal((n, c, hw, hw)).astype(f32)
        cols = np.empty((n, c * 9, hw * hw), f32)
        return lambda: im2col._im2col_nchw(x, cols, 0, 0, hw, 1, 1, 1, 1, 1, 1, 3, 3)

    for name, shape in UNFOLD_PROBES.items():
        probes[name] = unfold(*shape)
    for name, shape in FFT_PROBES.items():
        planes = rng.standard_normal(shape).astype(f32)
        probes[name] = lambda planes=planes: sfft.rfft2(planes, workers=config.FFT_WORKERS)
    xf = (rng.standard_normal((2, 1, 16, 4096)) + 1j).astype(np.complex64)
    wf = (rng.standard_normal((1, 16, 16, 4096)) + 1j).astype(np.complex64)
    yf = np.empty((2, 1, 16, 4096), np.complex64)
    probes["channel_sum"] = lambda: fft._freq_correlate_sum(xf, wf, yf)

    def algo(mod, xs, ws, chunk=None, **kw):
        a = conv_args_from_shapes("calibrate", xs, ws, **kw)
        x = rng.standard_normal(a.x_shape).astype(f32)
        w = rng.standard_normal(a.w_shape).astype(f32)
        y = np.empty(a.y_shape, f32)
        if chunk is None:
            return lambda: mod.forward(x, w, a, y)

        def run():
            saved = config.IM2COL_CHUNK_BYTES
            config.IM2COL_CHUNK_BYTES = chunk
            try:
                mod.forward(x, w, a, y)
            finally:
                config.IM2COL_CHUNK_BYTES = saved
        return run

    probes["fft_conv"] = algo(fft, *FFT_CONV_PROBE)
    probes["direct"] = algo(naive, *DIRECT_PROBE, padding=1)
    probes["depthwise"] = algo(naive, *DEPTHWISE_PROBE)
    (n, c, h, w), wshape = TILE_PROBE
    image = c * 9 * h * w * 4
    probes["tiles_one"] = algo(im2col, *TILE_PROBE, chunk=n * image, padding=1)
    probes["tiles_many"] = algo(im2col, *TILE_PROBE, chunk=image, padding=1)
    xs, ws = np.zeros((1, 1, 4, 4), f32), np.zeros((1, 1, 2, 2), f32)

    def calls():
        for _ in range(CALLS):
            conv.conv2d(xs, ws, algo="im2col")
    probes["call"] = calls
    return probes


GEMM_PROBES = {"gemm": (256, 1152, 1024), "gemm_m": (8, 1152, 1024),
               "gemm_k": (256, 16, 1024), "gemm_n": (256, 1152, 32)}


def gemm_reps(m: int, k: int, n: int) -> int:
    """Calls per GEMM probe: about 0.2 GFLOP each."""
    return max(1, int(2e8 // (2 * m * k * n)))
UNFOLD_PROBES = {"unfold_long": (1, 64, 56), "unfold_short": (16, 64, 7)}
FFT_PROBES = {"fft_big": (16, 256, 256), "fft_small": (2048, 8, 8)}
FFT_CONV_PROBE = ((1, 1, 64, 64), (1, 1, 5, 5))
DIRECT_PROBE = ((2, 16, 32, 32), (16, 16, 3, 3))
DEPTHWISE_PROBE = ((1, 1, 256, 256), (1, 1, 9, 9))   # one task: one thread's rate
TILE_PROBE = ((8, 8, 24, 24), (8, 8, 3, 3))
CALLS = 20


def calibrate(path: str | None = None, *, save: bool = True, budget: float = 4.0,
              progress=None) -> Profile:
    """Measure this machine's rates for the cost model and store them.

    Probes: SGEMM on a large tile and on tiles skinny in M, K and N; the im2col unfold on
    long and on short rows; real 2-D FFTs of large and of tiny planes, the FFT channel
    sum and a small FFT convolution; the direct kernel and (on one thread) the depthwise
    kernel; im2col with 1 and with 8 tiles; a burst of tiny conv2d calls. They run in
    interleaved rounds for about ``budget`` seconds (at least 3 rounds) and each keeps
    its fastest run, the one least disturbed by other processes on a shared machine.
    ``progress(str)`` is called per round. Returns the profile; writes it to ``path``
    (default ``config.CACHE_DIR/profile.json``) when ``save``.
    """
    import numba

    from ._args import conv_args_from_shapes

    probes = _probes(np.random.default_rng(0))
    for fn in probes.values():  # compile and warm up
        fn()
    best = dict.fromkeys(probes, math.inf)
    start = time.perf_counter()
    rounds = 0
    while rounds < 3 or (time.perf_counter() - start < budget and rounds < 200):
        rounds += 1
        if progress:
            progress(f"round {rounds}")
        for name, fn in probes.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)

    def rate(name):
        m, k, n = GEMM_PROBES[name]
        return 2.0 * m * k * n * gemm_reps(m, k, n) / best[name]

    half = {}
    for i, d in enumerate("mkn"):
        # the skinny dimension alone explains the drop: f(x) = r_skinny / r_big
        e = min(max(rate(f"gemm_{d}") / rate("gemm"), 0.05), 0.98)
        half[d] = GEMM_PROBES[f"gemm_{d}"][i] * (1 / e - 1)
    peak = rate("gemm") / min(_efficiency(v, half[d]) for d, v in
                              zip("mkn", GEMM_PROBES["gemm"], strict=True))

    def unfold_bytes_rows(name):
        n, c, hw = UNFOLD_PROBES[name]
        return c * 9 * n * hw * hw * 4, c * 9 * n * hw

    b1, _ = unfold_bytes_rows("unfold_long")
    b2, s2 = unfold_bytes_rows("unfold_short")
    inv_bw = best["unfold_long"] / b1   # long rows: the bandwidth
    row = max((best["unfold_short"] - b2 * inv_bw) / s2, 0.0)  # short rows: cost per row

    def plane_work(name):
        count, h, w = FFT_PROBES[name]
        return count, count * h * w * math.log2(h * w)

    n_big, work_big = plane_work("fft_big")
    n_small, work_small = plane_work("fft_small")
    fft_ns = best["fft_big"] / work_big * 1e9
    plane_us = max((best["fft_small"] - work_small * fft_ns * 1e-9) / n_small, 0.0) * 1e6
    fft_gmacs = 2 * 16 * 16 * 4096 / best["channel_sum"] / 1e9
    (n, c, h, w), (d, _, kh, kw) = DIRECT_PROBE
    threads = numba.get_num_threads()
    direct = 2 * n * d * h * w * c * kh * kw / best["direct"] / 1e9 / threads
    (n, c, h, w), (d, _, kh, kw) = DEPTHWISE_PROBE
    macs = n * d * (h - kh + 1) * w * kh * kw
    depthwise = macs / best["depthwise"] / 1e9
    call_us = best["call"] / CALLS * 1e6
    tile_us = max((best["tiles_many"] - best["tiles_one"]) / (TILE_PROBE[0][0] - 1), 0) * 1e6

    prof = Profile(
        gemm_gflops=round(peak / 1e9, 2), gemm_half_m=round(half["m"], 3),
        gemm_half_k=round(half["k"], 3), gemm_half_n=round(half["n"], 3),
        copy_gbs=round(1e-9 / inv_bw, 2), copy_row_ns=round(row * 1e9, 3),
        fft_ns=round(fft_ns, 4), fft_plane_us=round(plane_us, 3), fft_call_us=0.0,
        fft_gmacs=round(fft_gmacs, 3), direct_gflops=round(direct, 3),
        depthwise_gmacs=round(depthwise, 3), call_us=round(call_us, 2),
        tile_us=round(tile_us, 2), threads=threads,
        source=f"calibrated {time.strftime('%Y-%m-%d %H:%M')} on {_cpu_name()}",
    )
    # what the small FFT convolution took beyond the modelled transforms and channel sum
    a = conv_args_from_shapes("calibrate", *FFT_CONV_PROBE)
    fft_call_us = max(best["fft_conv"] - _fft_cost(a, prof)[0], 0.0) * 1e6
    prof = dataclasses.replace(prof, fft_call_us=round(fft_call_us, 2))
    if save:
        save_profile(prof, path)
    return prof
