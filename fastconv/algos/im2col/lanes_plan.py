"""Where the direct lanes kernel (``direct_lanes``) runs and what it costs: which layers
it applies to (``lanes_applies``), its model time (``lanes_cost``), whether it pads the
input first (``_prepadded``) and whether im2col's forward chooses it
(``lanes_chosen``).

>>> import numpy as np
>>> from fastconv._args import conv_args_from_shapes
>>> a = conv_args_from_shapes("conv2d", (64, 6, 12, 12), (16, 6, 5, 5))   # LeNet's second
>>> lanes_applies(a), lanes_chosen(a)
(True, True)
"""

from __future__ import annotations

import functools
import math

from ... import _lanes
from ...costs import DEFAULT_PROFILE, Estimate, Profile
from .._common import interior_columns
from .image_last_direct import direct_cost, direct_forward_applies
from .padded import padded_size

#: Multiply-adds per second per thread of ``_conv_rows`` on whole groups of 8 pixels
#: (float32; half for float64), for the cost model, each inner tap loop counted as
#: ``LOOP_TAPS`` more taps (its start costs as much). Measured on one core of the 2-core
#: machine (48 KB of L1 data cache), CPU time: 45-57 GMAC/s in NHWC (one inner loop per
#: kernel row), 36-57 in NCHW (KW loops over the channels per kernel row: 6 -> 16 3x3 36,
#: 16 -> 16 48, 32 -> 32 57), where a block's weight (taps x one register) fits in
#: ``L1_WEIGHT_BYTES`` (LeNet's 6 -> 16 5x5: 9.6 KB; 64 -> 64 3x3: 36 KB); 35 beyond.
#: The same with 256-bit as with 512-bit registers. The groups now run all their taps as
#: one loop (``direct_lanes``); the model keeps the loop term it was fitted with:
#: counting one loop start per group instead flipped a measured choice (6 -> 16 5x5
#: with padding 2, NCHW, batch 64: the image-last kernel 0.47 ms, lanes 0.67).
LANES_GMACS = 55.0
LANES_GMACS_LARGE = 35.0
LOOP_TAPS = 3
L1_WEIGHT_BYTES = 40 * 1024
#: Pixels accumulated at once (the kernel's 8 registers).
PIXELS = 8
#: The kernel runs layers of at most this many output channels (wider layers make
#: wide GEMMs, which BLAS runs faster) ...
MAX_CHANNELS = 64
#: ... of at least 3/4 of the lanes of their blocks of output channels in use
#: (``_lane_use``; LeNet's 1 -> 6 would compute 16 channels for 6) ...
MIN_LANE_USE = 0.75
#: ... and of at least this many taps in an inner loop (``_run``): shorter loops spend
#: as much on the loop as on the multiply-adds (3-tap loops ran at 18 GMAC/s).
MIN_RUN = 6
#: ... and at most this many taps C_in*KH*KW (more: the GEMM is wide enough for BLAS).
MAX_TAPS = 600
#: 3x3 stride-1 undilated layers of at least ``WINOGRAD_PAIRS`` channel pairs
#: C_in*C_out on output maps of more than ``WINOGRAD_MAP`` pixels are left to the other
#: paths (``lanes_chosen``): Winograd's wider GEMMs run them faster than its cost model
#: says. Measured, 2 threads, lanes / Winograd: 32 -> 32 at 32x32 (batch 64) 1.3 (NHWC)
#: to 1.8 (NCHW), at 28x28 1.5; at 14x14 0.65-0.95; 16 -> 16 at 28x28 0.65-0.9.
WINOGRAD_PAIRS = 1024
WINOGRAD_MAP = 256


def _lane_use(args) -> float:
    """Output channels over the lanes computed for them (whole blocks)."""
    count = _lanes.per_register(args.dtype.itemsize)
    return args.c_out / (-(-args.c_out // count) * count)


def _run(args, channels_last: bool | None = None) -> int:
    """Taps of the inner loop (``_tap_order`` on a C-contiguous input of ``args``'
    layout, or channels last when ``channels_last``)."""
    if (args.dims.channels_last if channels_last is None else channels_last) \
            and args.dilation[1] == 1:
        return args.c_in * args.kw
    return max(args.c_in, args.kw)


def _outer(args, channels_last: bool | None = None) -> int:
    """Inner loops per kernel row (as ``_run``)."""
    if _run(args, channels_last) == args.c_in * args.kw:
        return 1
    return args.kw if args.c_in >= args.kw else args.c_in


def lanes_applies(args) -> bool:
    """Whether the forward of ``args`` (either layout) can run ``forward_lanes``: one
    group, a kernel larger than 1x1 (or a strided 1x1 kernel), at most
    ``MAX_CHANNELS`` output channels using at least ``MIN_LANE_USE`` of their lanes,
    inner loops of at least ``MIN_RUN`` taps (``_run``; or one NHWC input channel,
    ``_single_channel_last``) and at most ``MAX_TAPS`` taps C_in*KH*KW. Any stride,
    padding and dilation. A strided 1x1 layer (a ResNet's shortcut) then reads its
    pixels in place, where the pointwise path copies them and multiplies (pixels, C) @
    (C, D) on one BLAS thread: alternating, 2 threads, 16 -> 32 at 28x28 with stride 2
    (batch 32) NHWC 0.061 ms against 0.21 (torch 0.064); 32 -> 64 at 14x14 0.076
    against 0.116 (torch 0.059); 32 -> 64 at 32x32 (batch 64) 0.41 against 0.64 (torch
    0.32). NCHW, best of 5, against the pointwise path / torch: 16 -> 32 at 28x28 0.057
    / 0.12-0.13 / 0.17; 32 -> 64 at 14x14 0.048-0.051 / 0.10 / 0.11; 32 -> 64 at 32x32
    (batch 64) 0.45-0.51 / 0.72 / 0.83; 256 -> 64 at 14x14 (batch 16) 0.15 / 0.43 /
    0.29. Any number of images: on one
    image, 2 threads, against the layers' other paths (Winograd, the unfold and GEMM),
    NCHW 16 -> 16 3x3 at 28x28 0.121 -> 0.083 ms, 16 -> 32 with stride 2 0.119 ->
    0.072; NHWC 16 -> 32 with stride 2 0.131 -> 0.091, LeNet's 6 -> 16 5x5 at 14x14
    0.094 -> 0.073."""
    if args.groups != 1:
        return False
    if args.kh * args.kw == 1 and args.stride == (1, 1):
        return False
    return (args.c_out <= MAX_CHANNELS
            and _lane_use(args) >= MIN_LANE_USE
            and (_run(args) >= MIN_RUN or _single_channel_last(args))
            and args.c_in * args.kh * args.kw <= MAX_TAPS and args.w_out > 0)


def _single_channel_last(args) -> bool:
    """A one-channel NHWC layer of at least ``MIN_RUN`` taps (a gray image's first
    layer): its runs are a kernel row, but the register tiles loop over all the
    kernel's taps at once. Alternating, 2 threads, lanes against the fused unfold and
    GEMM: 1 -> 16 3x3 at 28x28 (batch 32) 0.060 against 0.148 ms, with padding 1 0.099
    / 0.173, 5x5 with padding 2 0.141 / 0.331, 1 -> 32 3x3 at 32x32 0.184 / 0.280, 1 ->
    16 3x3 stride 2 at 64x64 (batch 16) 0.060 / 0.122. NCHW's one-channel layers are
    left out: 1 -> 32 3x3 at 32x32 took 0.69 ms against 0.22, stride 2 at 64x64 0.19 /
    0.12."""
    return (args.c_in == 1 and args.dims.channels_last
            and args.kh * args.kw >= MIN_RUN)


@functools.lru_cache(maxsize=256)
def _prepadded(a) -> bool:
    """Whether ``forward_lanes`` pads the input first, channels last in either layout
    (``padded.padded_channels_last``: NCHW layers then run NHWC's longer tap loops):
    where some output pixels reach into the padding (those run one at a time, at half
    the rate) and the model time with the copy (``_lanes_time``) is the lower. One
    thread, CPU time, unpadded -> an NCHW copy: 64 -> 64 3x3 at 7x7 (batch 32) 1.28-1.65
    -> 1.19-1.30 ms; LeNet's 6 -> 16 5x5 with padding 2 at 14x14 (batch 64) 0.86-0.93 ->
    0.69-0.71; 32 -> 32 3x3 at 14x14 (2 of 14 pixels in the padding) not padded
    1.01-1.10 against 1.20-1.22. Two threads, an NCHW copy -> channels last: 64 -> 64
    at 7x7 0.71-0.75 -> 0.52-0.65 ms, the stem (3 -> 64 7x7) 7.5-7.9 -> 7.1-7.7 ms."""
    j_lo, j_hi = interior_columns(a)
    return j_hi - j_lo < a.w_out and \
        _lanes_time(a, DEFAULT_PROFILE, True)[0] < _lanes_time(a, DEFAULT_PROFILE, False)[0]


def band_rows(a, h: int, pt: int, interior) -> int:
    """Output rows whose pixels the direct lanes kernel runs as one sequence (groups of
    8 across the rows, none left short where a row is not a multiple of 8 pixels) when
    every output pixel's kernel lies inside the input it reads (of height h, padded by
    pt on top as the kernel reads it; ``interior``: the output columns whose kernel
    lies inside its columns), else 0 (one task per row): the fewest rows holding a
    multiple of ``group_pixels``. LeNet's 6 -> 16 5x5 at 14x14 (10x10 out, batch 64), 2
    threads, alternating with torch: NHWC 0.45-0.48 ms by rows, 0.21-0.31 in bands of 4
    (torch 0.21-0.24); NCHW 0.53 -> 0.21-0.34; 13x13 NHWC 0.42 -> 0.17-0.28."""
    last = (a.h_out - 1) * a.stride[0] + (a.kh - 1) * a.dilation[0] - pt
    if tuple(interior) != (0, a.w_out) or pt != 0 or last >= h:
        return 0
    run = group_pixels(a)
    return min(a.h_out, run // math.gcd(a.w_out, run))


def group_pixels(a) -> int:
    """The pixels a band of rows of the direct lanes kernel holds a multiple of: 16
    where two groups of 8 pixels can share each load of the weight
    (``lanes_tiles._group16``: the output channels fit one vector, the host has 32
    vector registers, and whole groups lie along rows, the same offsets apart), else 8.
    LeNet's 6 -> 16 5x5 at 12x12 (8x8 out, batch 64), 2 threads: NHWC 77 -> 72 us,
    NCHW 81 -> 77 (the kernel alone, best of 7)."""
    one_block = a.c_out <= _lanes.per_register(a.dtype.itemsize)
    return 2 * PIXELS if one_block and _lanes.WIDE and a.w_out % PIXELS == 0 else PIXELS


def _run_slots(pixels: int) -> int:
    """Pixel slots of a run of pixels in groups of 8: a last group of at most 4 as 5."""
    full, rest = divmod(pixels, PIXELS)
    return full * PIXELS + (0 if rest == 0 else 5 if rest <= PIXELS // 2 else PIXELS)


def _lanes_time(a, p: Profile, padded: bool) -> tuple[float, float, int]:
    """(seconds, multiply-adds, bytes of a padded input copy) of ``lanes_cost``'s model,
    the input padded first or not."""
    d_pad = a.c_out / _lane_use(a)
    j_lo, j_hi = (0, a.w_out) if padded else interior_columns(a)
    slots = _run_slots(j_hi - j_lo) + 2 * (a.w_out - (j_hi - j_lo))
    band = band_rows(a, padded_size(a)[0], 0, (0, a.w_out)) if padded else \
        band_rows(a, a.h, a.padding[0][0], (j_lo, j_hi))
    if band:                                   # bands of rows: groups across the rows
        bands, last = divmod(a.h_out, band)
        slots = (bands * _run_slots(band * a.w_out) + _run_slots(last * a.w_out)) / a.h_out
    taps = a.c_in * a.kh * a.kw
    loops = a.kh * _outer(a, True if padded else None)
    macs = a.n * a.h_out * slots * d_pad * taps
    work = macs * (taps + LOOP_TAPS * loops) / taps
    block_bytes = a.c_in * a.kh * a.kw * _lanes.LANE_BYTES
    gmacs = LANES_GMACS if block_bytes <= L1_WEIGHT_BYTES else LANES_GMACS_LARGE
    seconds = p.call_us * 1e-6 + work / (gmacs * 1e9 * p.threads * (4 / a.dtype.itemsize))
    if not padded:
        return seconds, macs, 0
    hp, wp = padded_size(a)
    copy = a.n * a.c_in * hp * wp * a.dtype.itemsize
    rows = a.n * hp * (1 if a.dims.channels_last else wp)   # NCHW: a gather per pixel
    return seconds + copy / (p.copy_gbs * 1e9) + rows * p.copy_row_ns * 1e-9, macs, copy


def lanes_cost(a, p: Profile) -> Estimate:
    """Model time of ``forward_lanes``: the multiply-adds computed (output channels in
    whole blocks of lanes, each row's interior as groups of 8 pixels, a last group of at
    most 4 as 5 (measured 0.6 of a group's time), pixels reaching into the padding as 2
    (4 chains of multiply-adds instead of 8: measured 1.2 to 1.7); all in whole groups
    where the rows run in bands, ``band_rows``), each kernel row's
    inner tap loops (``_outer``) as ``LOOP_TAPS`` taps more, at ``LANES_GMACS`` per
    thread (``LANES_GMACS_LARGE`` for a block's weight beyond ``L1_WEIGHT_BYTES``; half
    for float64), plus the call's fixed cost and, with a padded copy of the input
    (``_prepadded``: every pixel in groups), the copy at the profile's rates."""
    padded = _prepadded(a)
    seconds, macs, copy = _lanes_time(a, p, padded)
    return Estimate(seconds, copy,
                    f"direct lanes kernel (no GEMM{', a padded input' if padded else ''}), "
                    f"{macs / 1e6:.3g}M multiply-adds {1e3 * seconds:.3g} ms")


def left_to_winograd(a) -> bool:
    """Whether ``a`` is a layer Winograd runs faster (``WINOGRAD_PAIRS``)."""
    return ((a.kh, a.kw) == (3, 3) and a.stride == (1, 1) and a.dilation == (1, 1)
            and a.c_in * a.c_out >= WINOGRAD_PAIRS and a.h_out * a.w_out > WINOGRAD_MAP)


@functools.lru_cache(maxsize=256)
def lanes_chosen(args) -> bool:
    """Whether im2col's forward runs ``forward_lanes``: where it applies
    (``lanes_applies``), is not left to Winograd (``WINOGRAD_PAIRS``) and, where the
    direct image-last kernel applies too, its model time (``lanes_cost``) is not above
    that kernel's (``direct_cost``; both scale with the profile's threads and add its
    call cost, so the profile does not change the choice: cached per problem).
    Measured, batch 64, 2 threads, NHWC: 6 -> 16
    5x5 at 12x12 0.18 vs 0.41 ms (image-last); 6 -> 16 5x5 padding 2 at 14x14 (4 of 14
    pixels a row in the padding) 0.88 vs 0.56 ms; 6 -> 12 5x5 at 12x12 (12 of 16
    lanes) 0.22 vs 0.19 ms. NCHW, alternating: 6 -> 16 5x5 at 12x12 0.155 vs 0.18 ms;
    batch 32, padding 1: 16 -> 16 3x3 at 28x28 0.85 vs 1.19 ms, 32 -> 32 3x3 at 14x14
    0.83 vs 1.02 ms (NHWC 0.62 vs 1.07 ms)."""
    if not lanes_applies(args) or left_to_winograd(args):
        return False
    if not direct_forward_applies(args):
        return True
    return (lanes_cost(args, DEFAULT_PROFILE).seconds
            <= direct_cost(args, DEFAULT_PROFILE).seconds)
