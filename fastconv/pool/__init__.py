"""Pooling: max, average and global average pooling and their gradients (torch's rules).

Window (i, j) of a plane covers rows s_h*i - p_h + r_h*a (a < kh) and columns
s_w*j - p_w + r_w*b (b < kw); padding is never read (max ignores it, average counts it
when ``count_include_pad``). Output size per axis (:func:`pool_output_size`):
floor((n + 2p - r*(k-1) - 1) / s) + 1, or the ceiling with ``ceil_mode``, where the last
window must then start inside the input or the left padding. Padding may be at most half
the kernel size.

Kernels work on NCHW planes (N*C, H, W) or on NHWC images (N, H, W, C); every parallel
loop owns what it writes: one task per (plane, output row block) or per (image, output
row) forward, and one per plane, per (image, channel block), per (plane, input row
block) or per (image, input row) backward, so overlapping windows (stride < kernel)
never race. The autograd op's 2x2, stride-2 layer keeps an int32 code per window (its
winning tap) instead of an int64 index (``ops.max_pool2d_codes``), and its gradient
runs per (image or plane, block of output rows), each owning its windows' input rows.

Modules: ``ops`` (the public functions), ``_layouts`` (the kernels of each layout, in
one table), ``_max_kernels``, ``_avg_kernels`` (average and global average) and
``_common`` (how tasks share out rows and channels). Arguments are checked by the
records of ``fastconv._args.pool``.
"""

from .._args.pool import pool_output_size  # noqa: F401
from .ops import (  # noqa: F401
    avg_pool2d,
    avg_pool2d_backward,
    global_avg_pool2d,
    global_avg_pool2d_backward,
    max_pool2d,
    max_pool2d_backward,
)
