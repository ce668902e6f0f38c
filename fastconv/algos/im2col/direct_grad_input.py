"""The input gradient of the direct backward (``direct_grad``) as direct forward
convolutions of grad_y (``direct_lanes.forward_lanes``), one per input phase.

The input pixels r = ph + s_h*u of row phase ph (0 <= ph < s_h) are reached by the kernel
rows a with ph + p_t - a*r_h divisible by s_h, from grad_y row u + e_a, e_a = (ph + p_t -
a*r_h) / s_h (likewise for columns). Taken by decreasing a, the e_a rise in equal steps,
so each phase is a correlation of grad_y with the sub-kernel

    w'[k, l, d, c] = w[a_k, b_l, c, d]      (a_0 > a_1 > ..., b_0 > b_1 > ...)

at stride 1, dilation e_{a_1} - e_{a_0}, padding -e_{a_0} at the top: a forward problem
whose output is grad_x[:, ph::s_h, pw::s_w, :] (written there in place). A stride-1
layer has one phase, the whole kernel flipped with its channel axes swapped and padding
(K-1)*r - p; a 3x3 stride-2 layer has four, of 1x1, 1x2, 2x1 and 2x2 taps. A phase
without taps is zero. Two or more phases with taps run in one parallel call
(``_phase_rows``): each image's phases one after another, each phase's rows as the
lanes kernel's row tasks (``direct_lanes._conv_tasks``).

>>> from fastconv._args import conv_args_from_shapes
>>> a = conv_args_from_shapes("t", (8, 14, 14, 16), (3, 3, 16, 32), stride=2, padding=1,
...                           layout="NHWC")
>>> for ph, pw, g, rows, cols in input_phases(a):
...     print(ph, pw, rows, cols, g.padding, (g.h_out, g.w_out))
0 0 (1,) (1,) ((0, 0), (0, 0)) (7, 7)
0 1 (1,) (2, 0) ((0, 0), (0, 1)) (7, 7)
1 0 (2, 0) (1,) ((0, 1), (0, 0)) (7, 7)
1 1 (2, 0) (2, 0) ((0, 1), (0, 1)) (7, 7)
"""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
from numba import get_num_threads, njit, prange

from ... import _lanes
from ..._args.memo import per_problem
from ..._runtime import guarded
from ...costs import Estimate, Profile
from .._common import read_only, view, workspace
from .direct_lanes import (
    CHUNKS_PER_THREAD,
    PAIR_PIXELS,
    _call_parts,
    _conv_tasks,
    forward_lanes,
    pack_weight,
)
from .image_last import contiguous_geometry
from .lanes_plan import lanes_applies, lanes_cost, left_to_winograd

#: The lanes kernel on the wide 3x3 layers the forward leaves to Winograd runs about this
#: many times its model time (``lanes_plan.WINOGRAD_PAIRS``: measured 1.3-1.8x
#: Winograd's time where the models say about 1). 32 -> 32 3x3 at 32x32 (batch 64),
#: both gradients, 2 threads, the weight gradient direct in both: grad_x by the direct
#: forward 8.4-8.6 ms, by Winograd 6.7-7.6; modelled 11.7 and 11.9 before this factor.
WIDE_MAP_FACTOR = 1.5


def _axis(phase, pad, k, s, r, n_in, n_g):
    """One axis of a phase: (kernel taps by decreasing index, the sub-kernel's
    dilation, its (low, high) padding, the phase's output length), the high padding
    such that that length comes out; n_in: the input length, n_g: grad_y's."""
    n_out = len(range(phase, n_in, s))
    taps = tuple(t for t in range(k - 1, -1, -1) if (phase + pad - t * r) % s == 0)
    if not taps:
        return (), 1, (0, 0), n_out
    e = [(phase + pad - t * r) // s for t in taps]
    dil = e[1] - e[0] if len(taps) > 1 else 1
    return taps, dil, (-e[0], n_out - n_g + e[0] + dil * (len(taps) - 1)), n_out


@functools.lru_cache(maxsize=256)
def input_phases(a):
    """The phases of grad_x for a problem ``a`` (one group): a tuple of (ph, pw, phase
    problem (channels last), row taps, column taps), phases without output left out; or
    None where the direct forward does not run them (the whole flipped problem fails
    ``lanes_applies``, or a padding is negative)."""
    if a.groups != 1:
        return None
    (pt, _), (pl, _) = a.padding
    whole = replace(a.grad_x_problem, layout="NHWC", unbatched=False)
    if not lanes_applies(whole):
        return None
    phases = []
    for ph in range(a.stride[0]):
        rows, dh, pads_h, hu = _axis(ph, pt, a.kh, a.stride[0], a.dilation[0], a.h, a.h_out)
        for pw in range(a.stride[1]):
            cols, dw, pads_w, wu = _axis(pw, pl, a.kw, a.stride[1], a.dilation[1], a.w,
                                         a.w_out)
            if hu == 0 or wu == 0:
                continue
            if min(pads_h + pads_w) < 0:
                return None
            g = replace(whole, kh=max(len(rows), 1), kw=max(len(cols), 1), dilation=(dh, dw),
                        padding=(pads_h, pads_w), h_out=hu, w_out=wu)
            phases.append((ph, pw, g, rows, cols))
    return tuple(phases)


def _taps_slice(taps) -> slice:
    """Kernel taps by decreasing index in equal steps (``_axis``) as a slice (a view of
    the weight, where a list of indices would copy it)."""
    step = taps[1] - taps[0] if len(taps) > 1 else -1
    stop = taps[-1] + step
    return slice(taps[0], None if stop < 0 else stop, step)


def input_grad_direct(gy_nhwc, w, a, grad_x) -> None:
    """grad_x (layout of ``a``, C-contiguous) of a layer with ``input_phases``: per phase,
    the direct forward of grad_y (N, Ho, Wo, D) with the phase's sub-kernel; two or more
    phases with taps in one parallel call (``_phases_at_once``)."""
    w_hwio = a.dims.weight_to_canonical_view(w).transpose(2, 3, 1, 0)   # (KH, KW, C, D)
    # NCHW: the phases write the channels-last view of grad_x in place (``forward_lanes``
    # takes any positive output strides), so no NHWC copy is transposed afterwards
    out = grad_x if a.dims.channels_last else grad_x.transpose(0, 2, 3, 1)
    with_taps, without = _phase_slices(a)
    for ph, pw in without:
        out[:, ph::a.stride[0], pw::a.stride[1], :] = 0
    if len(with_taps) == 1:
        ph, pw, g, rows, cols = with_taps[0]
        forward_lanes(gy_nhwc, w_hwio[rows, cols].transpose(0, 1, 3, 2), g,
                      out[:, ph::a.stride[0], pw::a.stride[1], :], None)
    elif with_taps:
        _phases_at_once(gy_nhwc, w_hwio, a, grad_x)


@per_problem
def _phase_slices(a):
    """``input_phases(a)`` as (phases with taps: (ph, pw, phase problem, the slices of
    the kernel's rows and columns it takes), phases without: (ph, pw))."""
    with_taps, without = [], []
    for ph, pw, g, rows, cols in input_phases(a):
        if rows and cols:
            with_taps.append((ph, pw, g, _taps_slice(rows), _taps_slice(cols)))
        else:
            without.append((ph, pw))
    return tuple(with_taps), tuple(without)


def _phases_at_once(gy_nhwc, w_hwio, a, grad_x) -> None:
    """The direct forwards of the phases with taps (``_phase_slices``) in one parallel
    call of the lanes kernel's row tasks (``_phase_rows``), each phase's weight (its
    taps of w_hwio (KH, KW, C, D)) packed side by side. One call where there were one
    per phase: each paid the call's fixed cost and the threads' wake-up (a 3x3 stride-2
    layer's 1-tap phase about half of its time) and read grad_y again."""
    dt = a.dtype
    gf = read_only(np.ascontiguousarray(gy_nhwc, dt).reshape(-1))
    xs, (spans, outs, geos, taps, toff, chunks), packing, bias, stream = _phase_call(
        a, get_num_threads())
    fw = workspace("direct_grad_input.w", int(spans[-1, 1]), dt)
    fb = workspace("direct_grad_input.bias", bias, dt)
    for rows, cols, w_lo, w_hi, shape, tap in packing:
        pack_weight(w_hwio[rows, cols].transpose(2, 3, 0, 1), None, tap,
                    view(fw[w_lo:w_hi], shape), fb)
    guarded(_phase_rows)(gf, xs, fw, fb, grad_x.reshape(-1), toff, chunks,
                         (spans, outs, geos, taps), PAIR_PIXELS, 0,
                         int(stream and _lanes.can_stream(grad_x, a.c_in)))


@per_problem
def _phase_call(a, threads: int):
    """``_phases_at_once``'s parts of a call that depend on the problem alone:
    ``_phase_plan``'s (grad_y's geometry, tables) for the phases with taps, and each
    phase's weight packing (its kernel rows and columns, its span of the packed buffer,
    the span's shape (blocks, taps, L), its tap order), the packed bias's length, and
    whether grad_x (C-contiguous) is channels last (streamed where ``can_stream``)."""
    with_taps, _ = _phase_slices(a)
    og = contiguous_geometry(a.dims.shape(a.n, a.c_in, a.h, a.w), a.dims)
    xs, tables = _phase_plan(a, tuple((ph, pw, g) for ph, pw, g, _, _ in with_taps), og,
                             threads)
    nl = _lanes.per_register(a.dtype.itemsize)
    blocks = -(-a.c_in // nl)
    packing = []
    for (_, _, _, rows, cols), span, tap in zip(with_taps, tables[0], tables[3], strict=True):
        w_lo, w_hi = int(span[0]), int(span[1])
        packing.append((rows, cols, w_lo, w_hi, (blocks, (w_hi - w_lo) // (blocks * nl), nl),
                        tuple(int(t) for t in tap)))
    return xs, tables, tuple(packing), blocks * nl, a.dims.channels_last


@functools.lru_cache(maxsize=64)
def _phase_plan(a, problems, og, threads):
    """(grad_y's geometry, ``_phase_rows``' tables) for the phases of ``a`` (their
    ``problems``, each a direct forward of grad_y (N, Ho, Wo, D) C-contiguous, its
    parts from ``direct_lanes._call_parts``) and grad_x of og (canonical shape and
    strides), one row per phase: spans (w_lo, w_hi, o_lo, t_lo, t_hi, j_lo, j_hi): its
    packed weight in the shared buffer, its first output element, its tap offsets in
    ``toff``, its output columns whose kernel lies inside grad_y; outs and geos:
    ``_conv_rows``' os and geo; taps: its tap order. chunks (p, first, last): phase p's
    row tasks of an image (cut in pieces where that leaves a thread fewer than
    ``CHUNKS_PER_THREAD``), the phases of an image one after another, while its grad_y
    is in cache. All read-only (shared by every call of the layer)."""
    nl = _lanes.per_register(a.dtype.itemsize)
    blocks = -(-a.c_in // nl)
    _, _, _, _, sn, sc, sh, sw = og
    spans, outs, geos, taps, offsets = [], [], [], [], []
    w_at = t_at = 0
    for ph, pw, g in problems:
        xs, order, toff, geo, interior, _, _ = _call_parts(g, False)
        size = blocks * g.kh * g.kw * g.c_in * nl
        spans.append((w_at, w_at + size, ph * sh + pw * sw, t_at, t_at + toff.size,
                      *interior))
        outs.append((g.n, g.c_out, g.h_out, g.w_out, sn, sc, a.stride[0] * sh,
                     a.stride[1] * sw))
        geos.append(geo)
        taps.append(order)
        offsets.append(toff)
        w_at, t_at = w_at + size, t_at + toff.size
    pieces = max(1, -(-CHUNKS_PER_THREAD * threads // (a.n * len(problems))))
    chunks = []
    for n in range(a.n):
        for p, (_, _, g) in enumerate(problems):
            cut = np.linspace(0, g.h_out, min(pieces, g.h_out) + 1).astype(int)
            chunks += [(p, n * g.h_out + lo, n * g.h_out + hi)
                       for lo, hi in zip(cut[:-1], cut[1:], strict=True) if hi > lo]
    tables = [np.array(t, np.int64) for t in (spans, outs, geos, taps)]
    tables += [np.concatenate(offsets), np.array(chunks, np.int64)]
    for t in tables:
        t.flags.writeable = False
    return xs, tuple(tables)


@njit(parallel=True, cache=True)
def _phase_rows(xf, xs, fw, fb, fo, toff, chunks, tables, pair_px, band, stream):
    """The row tasks of several direct forwards over one input (``_conv_tasks``' xf,
    xs, fb, pair_px, band (0: one task a row) and stream), one task per chunk
    (p, first, last): phase p's tasks first <= task < last, its packed weight, output,
    tap offsets and geometry where ``_phase_plan``'s tables = (spans, outs, geos, taps)
    put them in fw, fo and toff."""
    spans, outs, geos, taps = tables
    for c in prange(chunks.shape[0]):
        p, first, last = chunks[c, 0], chunks[c, 1], chunks[c, 2]
        sp, o, g, t = spans[p], outs[p], geos[p], taps[p]
        _conv_tasks(xf, xs, fw[sp[0]:sp[1]], fb, fo[sp[2]:],
                    (o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]),
                    (g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]),
                    (t[0], t[1], t[2], t[3], t[4]), toff[sp[3]:sp[4]], sp[5], sp[6],
                    pair_px, band, stream, first, last)


def input_grad_cost(a, p: Profile) -> Estimate | None:
    """Model time of ``input_grad_direct`` (None where it does not run): the phases'
    ``lanes_cost`` (the call's fixed cost once; each phase's output is written in its
    strided place, ``image_last.strided_flat``), ``WIDE_MAP_FACTOR`` times that for a
    phase the forward leaves to Winograd (``left_to_winograd``)."""
    phases = input_phases(a)
    if phases is None:
        return None
    call = p.call_us * 1e-6
    secs = call + sum((lanes_cost(g, p).seconds - call)
                      * (WIDE_MAP_FACTOR if left_to_winograd(g) else 1.0)
                      for _, _, g, *_ in phases)
    return Estimate(secs, 0, f"{len(phases)} direct forward{'s' if len(phases) > 1 else ''}"
                             " of grad_y")
