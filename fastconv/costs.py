"""The machine profile and the cost primitives every algorithm's cost model uses.

A :class:`Profile` holds this machine's rates (SGEMM and its fall-off for skinny shapes,
the unfold's copy bandwidth, FFT throughput, the direct and depthwise loop rates, fixed
call costs). ``fastconv calibrate`` measures one and stores it as JSON in
``config.CACHE_DIR``; without one, :data:`DEFAULT_PROFILE` is used. Each algorithm's
entry in :mod:`fastconv.algos.registry` turns a problem and a profile into an
:class:`Estimate` with :func:`gemm_seconds` and these rates.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import threading
import time
import warnings
from dataclasses import dataclass
from typing import NamedTuple

from . import config
from ._args.memo import HashOnce

PROFILE_FILE = "profile.json"
PROFILE_VERSION = 1


class Estimate(NamedTuple):
    """A cost model's answer: seconds, scratch bytes beyond input and output, and a
    sentence saying where the time goes."""

    seconds: float
    workspace: int
    detail: str


# ------------------------------------------------------------------------- profile
@dataclass(frozen=True)
class Profile(HashOnce):
    """Machine rates for the cost model (float32; float64 is derived from them)."""

    gemm_gflops: float       # SGEMM rate on a large, square-ish tile
    gemm_half_m: float       # f(M) = M / (M + half_m): the GEMM's efficiency in each dim
    gemm_half_k: float
    gemm_half_n: float
    copy_gbs: float          # unfold bandwidth (bytes of columns written per second / 1e9)
    copy_row_ns: float       # extra cost per copied row segment of the unfold
    fft_ns: float            # real 2-D transform in an FFT convolution, power-of-two
                             # lengths: ns per point * log2(points)
    fft_plane_us: float      # fixed cost per transformed plane
    fft_call_us: float       # fixed cost of one FFT convolution beyond a conv2d call
    fft_gmacs: float         # channel-sum complex multiply-adds per second / 1e9
    direct_gflops: float     # the direct ("naive") kernel, per thread
    depthwise_gmacs: float   # the depthwise kernel, multiply-adds per second / 1e9, per thread
    call_us: float           # fixed cost of one conv2d call (validation, dispatch)
    tile_us: float           # fixed cost of one more im2col tile (launches, GEMM call)
    threads: int             # numba threads the profile was measured with
    source: str = "default"  # "default" or "calibrated <when> on <cpu>"
    __hash__ = HashOnce.__hash__

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


#: Rates measured with ``fastconv calibrate`` on a 2-core AVX-512 machine (AMD EPYC,
#: OpenBLAS SkylakeX kernel), rounded: a sound default where nothing was calibrated. The
#: unfold's and the FFT's rates (copy_*, fft_ns, fft_call_us, fft_gmacs) are fitted
#: instead to whole layers timed as a user calls them: 591 random layers (1-64 channels,
#: 16-256 pixels, kernels 1-31, both layouts), each algorithm's best call of two or three
#: runs; auto's choice within 10% of the fastest on 93.1% of them with these rates and
#: ``gemm_seconds``'s roofline, 83.4% before (the probes' 27 GB/s and 6.2 ns a row;
#: transforms at 0.10 ns, the bare probe's hot loop on two workers, against 0.15-0.22
#: inside convolutions; the GEMM's memory added to its arithmetic).
DEFAULT_PROFILE = Profile(
    gemm_gflops=198.0, gemm_half_m=17.0, gemm_half_k=30.0, gemm_half_n=3.0,
    copy_gbs=44.0, copy_row_ns=3.1, fft_ns=0.15, fft_plane_us=0.1, fft_call_us=60.0,
    fft_gmacs=1.6, direct_gflops=2.6, depthwise_gmacs=11.8, call_us=24.0, tile_us=4.0,
    threads=2,
)


def profile_path(path: str | None = None) -> str:
    """Where the calibration profile lives: ``path`` or ``config.CACHE_DIR/profile.json``."""
    return path or _default_path(config.CACHE_DIR)


@functools.lru_cache(maxsize=8)
def _default_path(cache_dir: str) -> str:
    return os.path.join(cache_dir, PROFILE_FILE)


_profile_lock = threading.Lock()
_profile_cache: dict = {}
#: path -> (when the file was last looked at, the profile then): within
#: ``RECHECK_SECONDS`` a load returns that profile without asking the file system or
#: numba's thread count.
_recent: dict = {}
#: How long a loaded profile is used before the file and the thread count are looked at
#: again (a profile written by another process, or a change of ``numba.set_num_threads``,
#: takes effect within this time; ``save_profile`` in this process at once). Every
#: conv2d call plans through here: the file's stat and the thread count took 20-25 us a
#: call inside a small ResNet's training step (18 calls a step), 2 us in a loop.
RECHECK_SECONDS = 1.0


def load_profile(path: str | None = None) -> Profile:
    """The calibrated profile at ``path`` (default: the cache directory), or
    ``DEFAULT_PROFILE`` when there is none, it is unreadable or it was measured with a
    different thread count (a RuntimeWarning says so for the last two); see
    ``RECHECK_SECONDS``."""
    path = profile_path(path)
    now = time.monotonic()
    seen = _recent.get(path)
    if seen is not None and now - seen[0] < RECHECK_SECONDS:
        return seen[1]
    import numba

    prof = _load_profile(path, numba.get_num_threads())
    _recent[path] = (now, prof)
    return prof


def _load_profile(path: str, threads: int) -> Profile:
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        return DEFAULT_PROFILE
    key = (path, stamp, threads)
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
                      RuntimeWarning, stacklevel=3)
        prof = DEFAULT_PROFILE
    else:
        if prof.threads != threads:
            warnings.warn(f"fastconv: calibration profile {path} was measured with "
                          f"{prof.threads} threads, this process runs {threads}; using "
                          "the default profile", RuntimeWarning, stacklevel=3)
            prof = DEFAULT_PROFILE
    with _profile_lock:
        _profile_cache[key] = prof
    return prof


def save_profile(profile: Profile, path: str | None = None) -> str:
    """Write ``profile`` as JSON (atomically) and return the path. Plans made with an
    earlier profile are not reused: the plan cache is keyed by the profile."""
    path = profile_path(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"version": PROFILE_VERSION, "profile": profile.as_dict()}, f, indent=2)
    os.replace(tmp, path)
    clear_profiles()
    return path


def clear_profiles() -> None:
    """Forget loaded profiles (the next load reads the file again)."""
    with _profile_lock:
        _profile_cache.clear()
        _recent.clear()


# ----------------------------------------------------------------------- cost model
def efficiency(x: float, half: float) -> float:
    return x / (x + half)


#: Products of many rows and at least ``TALL_MIN_N`` columns, but m >= ``TALL_RATIO``
#: n (the pixels as rows, as channels-last layers multiply), lose less to a short k and
#: more to a short n than the profile's halves say, which come from products with the
#: pixels as columns: (16384, 9) @ (9, 64) ran at 120-150 GFLOP/s, 45 modelled with the
#: profile's halves. These halves fit 108 such products (1024-16384 rows, k 3-576, n
#: 16-128; numpy's matmul and ``_blas.matmul``, 2-core AMD EPYC, OpenBLAS SkylakeX
#: kernel): measured / modelled 0.79-1.88 from the 10th to the 90th percentile, median
#: 1.02, against 0.34-1.25, median 0.82. Narrower products keep the profile's halves
#: (with 4 columns, 11-62 GFLOP/s, neither fits).
TALL_RATIO = 8
TALL_MIN_N = 16
TALL_HALF_K = 8.0
TALL_HALF_N = 6.0
#: Matrix-vector products run at about this share of the GEMM rate where their operands
#: are in cache: 27-35 GFLOP/s on one BLAS thread for batches of (1, 8-64) @ (8-64,
#: 392-784), 35 for one (1, 75) @ (75, 16384) on two (2-core AMD EPYC, 198 GFLOP/s
#: GEMMs).
GEMV_SHARE = 0.15


def io_bytes(a) -> int:
    """Bytes of a conv problem's input read and output written once (``a``: ConvArgs)."""
    return a.n * (a.c_in * a.h * a.w + a.c_out * a.h_out * a.w_out) * a.dtype.itemsize


def gemm_seconds(p: Profile, m: int, k: int, n: int, batch: int = 1,
                 itemsize: int = 4) -> float:
    """Model time of ``batch`` GEMMs (m x k) @ (k x n): the arithmetic at the peak rate
    scaled by the efficiency of the skinniest dimension, min(f(m), f(k), f(n)) (a
    product of the three undercounts GEMMs skinny in two dimensions by about 2x here;
    tall products with their own halves for k and n, ``TALL_HALF_K``), or, where that
    is longer, reading and writing the operands once at the copy bandwidth (what bounds
    a GEMM with m or k of 1 or 2, and all that an outer product, k = 1, costs; a
    matrix-vector product's arithmetic runs at ``GEMV_SHARE`` of the peak). The larger
    of the two, not their sum: the skinny rates come from GEMMs timed with their memory
    traffic in them (``fastconv calibrate``), and the sum priced im2col's GEMMs on 1-16
    output channels at 1.5-3x their measured time."""
    if m * k * n == 0:
        return 0.0
    memory = (m * k + k * n + m * n) * itemsize / (p.copy_gbs * 1e9)
    if k == 1:  # an outer product: one multiply an output (``_small_gemm.outer``)
        return batch * memory
    if min(m, n) == 1:
        # a matrix-vector product: the longer of its traffic and its arithmetic at
        # GEMV_SHARE of the peak, which bounds it in cache ((1, 75) @ (75, 16384):
        # 0.07 ms, 0.11 at the copy bandwidth, 0.22 at the rate of a GEMM of one row)
        return batch * max(memory, 2.0 * m * k * n / (
            p.gemm_gflops * 1e9 * (4 / itemsize) * GEMV_SHARE))
    tall = m >= TALL_RATIO * n and n >= TALL_MIN_N
    eff = min(efficiency(m, p.gemm_half_m),
              efficiency(k, TALL_HALF_K if tall else p.gemm_half_k),
              efficiency(n, TALL_HALF_N if tall else p.gemm_half_n))
    arithmetic = 2.0 * m * k * n / (p.gemm_gflops * 1e9 * (4 / itemsize) * eff)
    return batch * max(arithmetic, memory)


def fmt_seconds(s: float) -> str:
    """A duration for humans: milliseconds below a second."""
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


#: conv2d_backward's im2col and FFT paths do about three times their forward's work (the
#: weight and input gradients each cost a forward-sized product, plus folds/transforms).
BACKWARD_FACTOR = 3.0


def backward_from_forward(forward: Estimate, p: Profile) -> Estimate:
    """A backward pass priced at ``BACKWARD_FACTOR`` times its forward (call cost once)."""
    call = p.call_us * 1e-6
    return Estimate(call + BACKWARD_FACTOR * (forward.seconds - call), forward.workspace,
                    f"{BACKWARD_FACTOR:g}x forward: {forward.detail}")
