"""Choosing the convolution algorithm for a shape.

A first rule (no calibration yet): FFT for large kernels at stride 1, the direct
algorithm for depthwise convolution, im2col for everything else.
"""

from __future__ import annotations

from . import config


def choose_algorithm_for(args) -> str:
    """The algorithm ``algo="auto"`` runs for a canonical ConvArgs."""
    depthwise = args.groups == args.c_in and args.groups > 1
    if depthwise:
        return "naive"
    if args.stride == (1, 1) and args.kh * args.kw >= config.FFT_MIN_KERNEL_AREA:
        return "fft"
    return "im2col"
