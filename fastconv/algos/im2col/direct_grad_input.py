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
without taps is zero.

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

from ...costs import Estimate, Profile
from .direct_lanes import forward_lanes
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
    eh, ew = (a.kh - 1) * a.dilation[0], (a.kw - 1) * a.dilation[1]
    whole = replace(a, c_in=a.c_out, h=a.h_out, w=a.w_out, c_out=a.c_in, stride=(1, 1),
                    padding=((eh - pt, eh - a.padding[0][1]), (ew - pl, ew - a.padding[1][1])),
                    h_out=a.h, w_out=a.w, layout="NHWC", unbatched=False)
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
    the direct forward of grad_y (N, Ho, Wo, D) with the phase's sub-kernel."""
    w_hwio = a.dims.weight_to_canonical_view(w).transpose(2, 3, 1, 0)   # (KH, KW, C, D)
    # NCHW: the phases write the channels-last view of grad_x in place (``forward_lanes``
    # takes any positive output strides), so no NHWC copy is transposed afterwards
    out = grad_x if a.dims.channels_last else grad_x.transpose(0, 2, 3, 1)
    for ph, pw, g, rows, cols in input_phases(a):
        target = out[:, ph::a.stride[0], pw::a.stride[1], :]
        if not rows or not cols:
            target[...] = 0
            continue
        sub = w_hwio[_taps_slice(rows), _taps_slice(cols)].transpose(0, 1, 3, 2)  # (kh', kw', D, C)
        forward_lanes(gy_nhwc, sub, g, target, None)


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
