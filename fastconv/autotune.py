"""The one policy: which convolution algorithm runs, and what happens when it cannot.

Every caller (``conv2d``, ``conv2d_backward``, the autograd layer through them,
``fastconv.dask``, the benchmark) goes through this module, so ``algo="auto"`` means the
same everywhere:

* **The plan.** ``plan`` prices every algorithm that supports the problem with its
  registry entry's cost model (``fastconv.algos.registry``; rates from the machine
  profile of ``fastconv.costs``) and picks the cheapest; ``measure=True`` times the
  candidates instead. Plans are cached per problem in a bounded dictionary.
* **The backward plan.** ``backward_choice``: the backward cost models, except that
  im2col's image-last path (which the model does not price) takes batches of small
  images unless the plan picked Winograd for a wide layer.
* **The fallbacks** (``run_forward``, ``run_backward``). An algorithm marked
  ``finite_input_only`` (FFT) never sees NaN or Inf; for ``algo="auto"`` a result the
  entry does not trust (the FFT's error bound, ``fastconv.numerics``) is recomputed by
  the fallback and the result closer to sampled float64 outputs is kept; an
  algorithm that reports a non-finite result (Winograd) or does not compute a gradient
  leaves that work to ``registry.FALLBACK`` (im2col, exact for every problem).

Examples
--------
>>> import fastconv
>>> fastconv.plan((1, 1, 512, 512), (1, 1, 31, 31)).why.split(":")[0]
'fft'
"""

from __future__ import annotations

import dataclasses
import threading
import types
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from . import _args, config, numerics
from ._args.memo import forget_per_problem
from ._timing import median_time
from .algos import im2col, registry
from .algos.im2col import shared
from .algos.registry import ALGORITHMS, applicable  # noqa: F401
from .algos.winograd import drivers as winograd_drivers
from .costs import (  # noqa: F401  (the profile is part of the policy's public face)
    DEFAULT_PROFILE,
    Profile,
    clear_profiles,
    fmt_seconds,
    load_profile,
    profile_path,
    save_profile,
)


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


def _why(est: dict, backward: bool, how: str, detail: str, tail: str) -> str:
    """The plan's sentence: the cheapest algorithm, how its time was found, the others."""
    best = min(est, key=est.__getitem__)
    others = ", ".join(f"{k} {fmt_seconds(v)}" for k, v in
                       sorted(est.items(), key=lambda kv: kv[1]) if k != best)
    return (f"{best}: {how} {fmt_seconds(est[best])}{' (backward)' if backward else ''}"
            f"{detail}; {others}{tail}")


def _model_plan(a, p: Profile, backward: bool = False) -> Plan:
    est, ws, details = {}, {}, {}
    for algo in applicable(a):
        entry = registry.get(algo)
        model = entry.backward_cost if backward else entry.cost
        est[algo], ws[algo], details[algo] = model(a, p)
    best = min(est, key=est.__getitem__)
    why = _why(est, backward, "estimated", f" ({details[best]})",
               f"; cost model with the {p.source} profile")
    return Plan(best, a.flops, ws[best], types.MappingProxyType(est),
                types.MappingProxyType(ws), False, why)


def _measure_plan(a, p: Profile, backward: bool = False, budget: float = 1.0) -> Plan:
    """Time every algorithm (its forward, or its backward) on random data of the
    problem's shape (seeded). An algorithm whose model time exceeds ``budget`` runs on
    fewer images and is scaled up."""
    model = _model_plan(a, p, backward)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(a.x_layout_shape).astype(a.dtype)
    w = rng.standard_normal(a.w_layout_shape).astype(a.dtype)
    est, notes = {}, []
    for algo in applicable(a):
        n = a.n
        if model.estimates[algo] > budget and a.n > 1:
            n = max(1, int(a.n * budget / model.estimates[algo]))
        sub = a.with_batch(n)
        y_shape = sub.y_layout_shape
        out = np.empty(y_shape, a.dtype)
        if backward:
            grads = (np.empty((n,) + x.shape[1:], a.dtype), np.empty(w.shape, a.dtype))
            gy = rng.standard_normal(y_shape).astype(a.dtype)

            def run(algo=algo, xb=x[:n], sub=sub, gy=gy, grads=grads):
                run_backward(gy, xb, w, sub, *grads, algo=algo)
        else:
            def run(algo=algo, xb=x[:n], sub=sub, out=out):
                run_forward(xb, w, None, sub, out, algo=algo)
        secs = median_time(run, repeats=3, max_time=2 * budget)
        est[algo] = secs * a.n / n
        if n < a.n:
            notes.append(f"{algo} timed on {n} of {a.n} images and scaled")
    best = min(est, key=est.__getitem__)
    why = _why(est, backward, "measured", "", f" ({'; '.join(notes)})" if notes else "")
    return Plan(best, a.flops, model.workspaces[best], types.MappingProxyType(est),
                model.workspaces, True, why)


_cache_lock = threading.Lock()
_plans: OrderedDict = OrderedDict()


def clear_cache() -> None:
    """Forget cached plans, the entries they chose, the algorithms' choices kept per
    problem (``_args.memo.per_problem``) and loaded profiles."""
    with _cache_lock:
        _plans.clear()
        _entries.clear()
    forget_per_problem()
    clear_profiles()


def cache_info() -> dict:
    """Size and bound of the plan cache."""
    with _cache_lock:
        return {"size": len(_plans), "maxsize": config.PLAN_CACHE_SIZE}


def plan_for(a, measure: bool = False, backward: bool = False) -> Plan:
    """The (cached) plan for a canonical ConvArgs: for conv2d, or for conv2d_backward
    (that of its ``memory_twin``: the problem that runs)."""
    a = a.memory_twin
    prof = load_profile()
    key = (a, bool(measure), bool(backward), prof, registry.generation())
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


def plan_dtype(op: str, dtype) -> np.dtype:
    """A planner's ``dtype`` argument as a numpy dtype (float32 or float64; TypeError
    naming the op otherwise)."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{op}: dtype={dtype!r} is not a dtype; accepted dtypes are "
                        "float32 and float64") from None
    if dt not in _args.DTYPES:
        raise TypeError(f"{op}: dtype={dt} is not supported; accepted dtypes are float32 "
                        "and float64")
    return dt


def _problem(op, x_shape, w_shape, stride, padding, dilation, groups, layout, dtype):
    a = _args.conv_args_from_shapes(op, x_shape, w_shape, stride, padding, dilation, groups,
                                    layout, plan_dtype(op, dtype))
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
        other costs: the direct one has depthwise kernels there for stride 1 only).

    Returns
    -------
    Plan with ``algorithm``, ``flops``, ``workspace_bytes``, ``estimates`` (seconds per
    algorithm), ``workspaces``, ``measured`` and ``why``.

    Notes
    -----
    The cost model (each algorithm's ``cost`` in ``fastconv.algos.registry``) uses the
    machine profile written by ``fastconv calibrate`` (GEMM rate and its fall-off for
    skinny shapes, the unfold's copy bandwidth, FFT throughput, the direct and depthwise
    loop rates, fixed call costs) and otherwise ``DEFAULT_PROFILE``, measured the same
    way on a 2-core AVX-512 machine. Checked against measurements with ``fastconv bench`` on the
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
    """The algorithm that ``algo="auto"`` runs for this problem (one of
    ``fastconv.ALGORITHMS``): ``plan(...).algorithm``.

    Parameters are those of :func:`plan`.

    Notes
    -----
    Without ``measure`` the choice comes from a cost model with rates calibrated on the
    machine (``fastconv calibrate``; a default profile measured on a 2-core AVX-512
    machine otherwise): each algorithm's entry in ``fastconv.algos.registry`` prices
    the problem (im2col as unfold traffic plus a GEMM whose rate falls off for skinny
    shapes, FFT as transform and frequency-domain channel-sum work, Winograd as its
    transforms plus (m+2)^2 smaller GEMMs, the direct algorithm at its loop rate). With
    ``measure=True`` the candidates are timed, as scipy's ``choose_conv_method`` does.
    The choice is cached per problem.

    Examples
    --------
    >>> import fastconv
    >>> fastconv.choose_algorithm((16, 64, 56, 56), (64, 64, 3, 3), padding=1)
    'winograd'
    """
    a = _problem("choose_algorithm", x_shape, w_shape, stride, padding, dilation, groups,
                 layout, dtype)
    return plan_for(a, measure, backward).algorithm


# ----------------------------------------------------------------------- backward
#: conv2d_backward's "auto" prefers Winograd (when its plan picks it) to im2col's
#: image-last path only from this many channels per group in and out: measured
#: (float32, 3x3, padding 1, 2 threads) Winograd / image-last 2.4 at 64 x 16 x 8 x 8 and
#: 1.4 at 64 x 16 x 28 x 28, 1.0 at 64 x 32 x 16 x 16 and 32 x 64 x 8 x 8, 0.71 at
#: 64 x 32 x 32 x 32. On fewer images than the image-last path takes, the same bound
#: keeps narrower layers on im2col (its direct kernels; the cost model prices Winograd's
#: grad_x of few channels too low there): 2 images, 2 threads, both gradients, Winograd
#: / im2col: NCHW 3 -> 32 3x3 at 32x32 0.54 / 0.27 ms, 8 -> 16 at 28x28 0.48 / 0.30,
#: 16 -> 16 0.35 / 0.33; NHWC 3 -> 32 0.34 / 0.31, 16 -> 16 0.28 / 0.28.
WINOGRAD_OVER_IMAGE_LAST_CHANNELS = 32
#: ... and narrower layers whose Winograd weight gradient runs fused
#: (``winograd.drivers.grad_w_fused``: 16 channels a side and more) from this many output
#: pixels: NCHW, 2 threads, both gradients, Winograd / image-last (min of 15 alternating
#: rounds, AMD EPYC): 16 -> 16 at 28x28 (batch 32) 0.74, at 16x16 0.72, at 20x20 0.78,
#: at 24x24 0.86, at 56x56 (batch 8) 0.74, 16 -> 32 at 16x16 0.63; at 14x14 1.18 (its
#: tiles' last columns wasted), at 8x8 (batch 64) 1.00.
WINOGRAD_FUSED_OVER_IMAGE_LAST_PIXELS = 16 * 16


def forward_choice(a, algo: str = "auto") -> str:
    """The algorithm conv2d runs for ``algo`` on problem ``a`` (before fallbacks)."""
    return plan_for(a).algorithm if algo == "auto" else algo


def backward_choice(a, algo: str = "auto", need_x: bool = True) -> str:
    """The algorithm conv2d_backward runs for ``algo`` on problem ``a``: for "auto" the
    backward plan, except that im2col's image-last path (no column matrix; the cost
    model does not price it) takes batches of small images, and im2col batches of fewer
    images than that path takes, unless the plan picked Winograd for a layer of at
    least ``WINOGRAD_OVER_IMAGE_LAST_CHANNELS`` channels, or, on as many images as the
    image-last path takes, for a layer of a fused weight gradient and at least
    ``WINOGRAD_FUSED_OVER_IMAGE_LAST_PIXELS`` output pixels."""
    if algo != "auto":
        return algo
    a = a.memory_twin                    # the problem that runs (``plan_for``)
    planned = plan_for(a, backward=True).algorithm
    if planned == "winograd" and _winograd_kept(a):
        return planned
    if im2col.image_last_tile(a, need_x) or (planned == "winograd"
                                             and a.n < im2col.IMAGE_LAST_MIN_IMAGES):
        return "im2col"
    return planned


def _winograd_kept(a) -> bool:
    """Whether a layer whose backward plan picked Winograd keeps it over im2col's
    image-last path and its few-images rule (``backward_choice``): asked of Winograd's
    problems only (3x3, stride 1; ``grad_w_fused`` assumes one)."""
    if min(a.c_in, a.c_out) // a.groups >= WINOGRAD_OVER_IMAGE_LAST_CHANNELS:
        return True
    return (a.n >= im2col.IMAGE_LAST_MIN_IMAGES
            and a.h_out * a.w_out >= WINOGRAD_FUSED_OVER_IMAGE_LAST_PIXELS
            and winograd_drivers.grad_w_fused(a))


# ---------------------------------------------------------------------- execution
#: (problem, algo, direction, need_x) -> (profile, registry generation, entry, the
#: gradients the entry computes): what ``run_forward`` and ``run_backward`` resolve on
#: every call of a layer, kept while the profile and the registry stay the same (a
#: training step asks the same few problems again and again; the plan cache's lookup,
#: the profile check and the backward's image-last rule took about 30 Python calls a
#: layer's backward).
_entries: dict = {}


def _entry(a, algo: str, backward: bool, need_x: bool, choice: str | None):
    """(registry entry, (by_x, by_w)) for ``run_forward`` / ``run_backward``: the pinned
    ``choice``, else ``forward_choice`` / ``backward_choice``'s algorithm, cached in
    ``_entries``; (by_x, by_w) the entry's ``grads(a)`` (both True forward)."""
    if choice is not None:
        entry = registry.get(choice)
        return entry, (entry.grads(a) if backward else (True, True))
    key = (a, algo, backward, need_x)
    prof, gen = load_profile(), registry.generation()
    hit = _entries.get(key)
    if hit is not None and hit[0] is prof and hit[1] == gen:
        return hit[2], hit[3]
    entry = registry.get(backward_choice(a, algo, need_x) if backward
                         else forward_choice(a, algo))
    grads = entry.grads(a) if backward else (True, True)
    with _cache_lock:
        if len(_entries) >= max(config.PLAN_CACHE_SIZE, 1):
            _entries.clear()
        _entries[key] = (prof, gen, entry, grads)
    return entry, grads


def _twin(a, activations, weights):
    """(``a.memory_twin``, its views of ``activations`` and of ``weights`` (None kept)):
    the same memory in the twin's layout (transposed views, written through)."""
    dims = a.dims
    return (a.memory_twin,
            tuple(None if v is None else dims.to_canonical_view(v) for v in activations),
            tuple(None if v is None else dims.weight_to_canonical_view(v) for v in weights))


def run_forward(x, w, bias, a, out, *, algo: str = "auto", choice: str | None = None) -> str:
    """Run conv2d's forward for problem ``a`` into ``out`` (x 4-D; arrays in the
    caller's layout) and return the algorithm whose result ``out`` holds.

    ``algo`` is the caller's request; for "auto", ``choice`` pins the planned algorithm
    (fastconv.dask plans once for the whole array), else the plan decides. The
    fallbacks of the module docstring apply in both cases."""
    auto = algo == "auto"
    if a.memory_twin is not a:
        a, (x, out), (w,) = _twin(a, (x, out), (w,))
    entry = _entry(a, algo, False, True, choice)[0]
    if entry.finite_input_only and not numerics.all_finite(x, w, bias):
        entry = registry.get(registry.FALLBACK)
    ok = entry.forward(x, w, a, out, bias)
    if ok is False:
        entry = registry.get(registry.FALLBACK)
        entry.forward(x, w, a, out, bias)
    elif auto and entry.trusted is not None and not entry.trusted(x, w, bias, a, out):
        untrusted = out.copy()      # recompute, then keep the more accurate of the two
        registry.get(registry.FALLBACK).forward(x, w, a, out, bias)
        if numerics.closer_result(x, w, bias, a, untrusted, out):
            out[...] = untrusted
        else:
            entry = registry.get(registry.FALLBACK)
    return entry.name


def run_backward(grad_y, x, w, a, grad_x, grad_w, *, algo: str = "auto",
             choice: str | None = None) -> str:
    """Fill ``grad_x`` and ``grad_w`` (None: not wanted) for problem ``a`` and return
    the algorithm chosen. Gradients the chosen algorithm does not compute, or flags as
    non-finite, are computed by ``registry.FALLBACK``."""
    if a.memory_twin is not a:
        a, (grad_y, x, grad_x), (w, grad_w) = _twin(a, (grad_y, x, grad_x), (w, grad_w))
    entry, (by_x, by_w) = _entry(a, algo, True, grad_x is not None, choice)
    if entry.finite_input_only and not numerics.all_finite(grad_y, x, w):
        entry = registry.get(registry.FALLBACK)  # FFT would spread a NaN/Inf over planes
        by_x, by_w = entry.grads(a)
    mine_x = grad_x if by_x else None
    mine_w = grad_w if by_w else None
    ok_x = ok_w = True
    if mine_x is not None or mine_w is not None:
        ok_x, ok_w = entry.backward(grad_y, x, w, a, mine_x, mine_w) or (True, True)
    rest_x = grad_x if grad_x is not None and (mine_x is None or not ok_x) else None
    rest_w = grad_w if grad_w is not None and (mine_w is None or not ok_w) else None
    if rest_x is not None or rest_w is not None:
        registry.get(registry.FALLBACK).backward(grad_y, x, w, a, rest_x, rest_w)
    return entry.name


def run_forward_and_weight_grad(x, w, grad_y, a, out, grad_w, *, algo: str = "auto",
                                x_sums=None) -> None:
    """``out`` = conv2d's forward of ``x`` and ``grad_w`` = its weight gradient for the
    output gradient ``grad_y`` (``conv_transpose2d_backward``'s grad_x and grad_w), and
    ``x_sums`` (None or (C_in,) float64) = x summed over all but its channel axis (the
    transposed op's bias gradient). Where both would run im2col's per-image GEMMs, each
    image is unfolded once for the two products and summed while in cache
    (``im2col.shared``); otherwise ``run_forward`` and ``run_backward``."""
    if a.memory_twin is not a:
        a, (x, grad_y, out), (w, grad_w) = _twin(a, (x, grad_y, out), (w, grad_w))
    if (forward_choice(a, algo) == "im2col" and backward_choice(a, algo, False) == "im2col"
            and not im2col.image_last_tile(a, False) and shared.applies(a)):
        shared.forward_and_weight_grad(x, w, grad_y, a, out, grad_w, x_sums)
        return
    run_forward(x, w, None, a, out, algo=algo)
    run_backward(grad_y, x, w, a, None, grad_w, algo=algo)
    if x_sums is not None:
        axes = tuple(i for i in range(4) if i != a.dims.channel_axis)
        x_sums[...] = x.sum(axis=axes, dtype=np.float64)
