"""Calibration: measure this machine's rates for the cost model (``fastconv calibrate``).

The probes time the pieces the algorithms' cost models price (``fastconv.algos.registry``
entries; the rates of ``fastconv.costs.Profile``) and store the profile that
``fastconv.autotune`` plans with.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numba
import numpy as np
import scipy.fft as sfft

from .. import config
from .._args import conv_args_from_shapes
from ..algos import fft, im2col, naive
from ..conv import conv2d
from ..costs import DEFAULT_PROFILE, Profile, efficiency, save_profile


def cpu_name() -> str:
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
    probes["fft_conv_big"] = algo(fft, *FFT_CONV_BIG_PROBE)
    probes["direct"] = algo(naive, *DIRECT_PROBE, padding=1)
    probes["depthwise"] = algo(naive, *DEPTHWISE_PROBE)
    (n, c, h, w), wshape = TILE_PROBE
    image = c * 9 * h * w * 4
    probes["tiles_one"] = algo(im2col, *TILE_PROBE, chunk=n * image, padding=1)
    probes["tiles_many"] = algo(im2col, *TILE_PROBE, chunk=image, padding=1)
    xs, ws = np.zeros((1, 1, 4, 4), f32), np.zeros((1, 1, 2, 2), f32)

    def calls():
        for _ in range(CALLS):
            conv2d(xs, ws, algo="im2col")
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
#: An FFT convolution of several channels: its transforms, not the fixed cost, dominate
#: (128 x 128 transforms on one worker).
FFT_CONV_BIG_PROBE = ((2, 8, 128, 128), (8, 8, 5, 5))
DIRECT_PROBE = ((2, 16, 32, 32), (16, 16, 3, 3))
#: One task (one thread's rate) whose rows run in SIMD registers, as the single-channel
#: layers that the depthwise rate decides for (the direct loops against the FFT): a 16x16
#: kernel, among those ``naive.LANES_DEPTHWISE_SPEEDUP`` was measured on.
DEPTHWISE_PROBE = ((1, 1, 256, 256), (1, 1, 16, 16))
TILE_PROBE = ((8, 8, 24, 24), (8, 8, 3, 3))
CALLS = 20


def calibrate(path: str | None = None, *, save: bool = True, budget: float = 4.0,
              progress=None) -> Profile:
    """Measure this machine's rates for the cost model and store them.

    Probes: SGEMM on a large tile and on tiles skinny in M, K and N; the im2col unfold on
    long and on short rows; real 2-D FFTs of large and of tiny planes, the FFT channel
    sum, a small FFT convolution and one of several channels; the direct kernel and (on
    one thread) the depthwise kernel; im2col with 1 and with 8 tiles; a burst of tiny
    conv2d calls. They run in interleaved rounds for about ``budget`` seconds (at least 3
    rounds) and each keeps its fastest run, the one least disturbed by other processes
    on a shared machine.
    ``progress(str)`` is called per round. Returns the profile; writes it to ``path``
    (default ``config.CACHE_DIR/profile.json``) when ``save``.
    """
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
    peak = rate("gemm") / min(efficiency(v, half[d]) for d, v in
                              zip("mkn", GEMM_PROBES["gemm"], strict=True))

    def unfold_bytes_rows(name):
        n, c, hw = UNFOLD_PROBES[name]
        return c * 9 * n * hw * hw * 4, c * 9 * n * hw

    inv_bw, row = _unfold_rates(unfold_bytes_rows("unfold_long"), best["unfold_long"],
                                unfold_bytes_rows("unfold_short"), best["unfold_short"])

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
    call_us = best["call"] / CALLS * 1e6
    tile_us = max((best["tiles_many"] - best["tiles_one"]) / (TILE_PROBE[0][0] - 1), 0) * 1e6

    prof = Profile(
        gemm_gflops=round(peak / 1e9, 2), gemm_half_m=round(half["m"], 3),
        gemm_half_k=round(half["k"], 3), gemm_half_n=round(half["n"], 3),
        copy_gbs=round(1e-9 / inv_bw, 2), copy_row_ns=round(row * 1e9, 3),
        fft_ns=round(fft_ns, 4), fft_plane_us=round(plane_us, 3), fft_call_us=0.0,
        fft_gmacs=round(fft_gmacs, 3), direct_gflops=round(direct, 3),
        depthwise_gmacs=DEFAULT_PROFILE.depthwise_gmacs, call_us=round(call_us, 2),
        tile_us=round(tile_us, 2), threads=threads,
        source=f"calibrated {time.strftime('%Y-%m-%d %H:%M')} on {cpu_name()}",
    )
    fft_ns, fft_call_us = _fft_conv_rates(prof, best["fft_conv"], best["fft_conv_big"])
    prof = dataclasses.replace(prof, fft_ns=round(fft_ns, 4), fft_call_us=round(fft_call_us, 2),
                               depthwise_gmacs=round(_depthwise_rate(prof, best["depthwise"]), 3))
    if save:
        save_profile(prof, path)
    return prof


def _unfold_rates(long, t_long, short, t_short) -> tuple[float, float]:
    """(seconds per byte, seconds per copied row) of the unfold from its two probes,
    ``long`` and ``short`` each (column bytes, row segments): both probes pay both
    costs, so the two equations are solved together (the long rows' time taken as
    bandwidth alone priced long-row unfolds at 2-3x their time)."""
    (b1, s1), (b2, s2) = long, short
    det = b1 * s2 - b2 * s1
    inv_bw = (t_long * s2 - t_short * s1) / det if det else 0.0
    row = (b1 * t_short - b2 * t_long) / det if det else 0.0
    if inv_bw <= 0 or row < 0:  # noise swamped one term: the long time all bandwidth
        inv_bw = t_long / b1
        row = max((t_short - b2 * inv_bw) / s2, 0.0)
    return inv_bw, row


def _depthwise_rate(prof: Profile, t: float) -> float:
    """The profile's depthwise rate (``depthwise_gmacs``) that makes ``naive.cost`` of the
    probe match its time ``t``. The probe's rows run in SIMD registers, which the model
    prices at ``naive.LANES_DEPTHWISE_SPEEDUP`` times the profile's rate (and over rows
    padded to whole registers): the probe's raw multiply-add rate would count that
    speed-up twice (a 9x9 probe's raw rate, 22 GMAC/s on the 2-core Intel Xeon, made
    the 256 x 256 single-channel layers' direct loops look 1.6-1.8x faster than they ran,
    and auto took them over the FFT up to 26x26 kernels where they won up to 18x18).
    ``prof``'s rate stands where noise leaves no positive solution."""
    fixed, at_unit_rate = _model_parts(naive.cost, DEPTHWISE_PROBE, prof, "depthwise_gmacs",
                                       math.inf)
    return at_unit_rate / (t - fixed) if t > fixed else prof.depthwise_gmacs


def _model_parts(cost, shapes, prof: Profile, field: str, without: float
                 ) -> tuple[float, float]:
    """(fixed, at_one): ``cost`` of the probe of ``shapes`` split by one field of
    ``prof``, its time with ``field`` at ``without`` (its term gone: 0 for a time per
    unit, inf for a rate) and what the term adds at 1; the model is then fixed + at_one
    * value (a time per unit) or fixed + at_one / value (a rate)."""
    a = conv_args_from_shapes("calibrate", *shapes)
    fixed = cost(a, dataclasses.replace(prof, **{field: without})).seconds
    return fixed, cost(a, dataclasses.replace(prof, **{field: 1.0})).seconds - fixed


def _fft_conv_rates(prof: Profile, t_small: float, t_big: float) -> tuple[float, float]:
    """(fft_ns, fft_call_us) that make ``fft.cost`` match the two FFT convolution
    probes: the small one (the fixed cost dominates) and the one of several channels
    (the transforms dominate). Transforms inside a convolution took 1.5-2.2x the bare
    transform probe's time per point here (fresh spectra; one worker below a million
    points, where the probe runs two), so the rate comes from whole convolutions; the
    bare probe's rate (``prof.fft_ns``) stands where noise leaves no positive
    solution."""
    no_call = dataclasses.replace(prof, fft_call_us=0.0)
    base_s, unit_s = _model_parts(fft.cost, FFT_CONV_PROBE, no_call, "fft_ns", 0.0)
    base_b, unit_b = _model_parts(fft.cost, FFT_CONV_BIG_PROBE, no_call, "fft_ns", 0.0)
    fft_ns = ((t_big - base_b) - (t_small - base_s)) / (unit_b - unit_s)
    if fft_ns <= 0:
        fft_ns = prof.fft_ns
    fixed = max(t_small - base_s - fft_ns * unit_s, 0.0)
    return fft_ns, fixed * 1e6
