"""The direct image-last forward: small stride-1 layers on many small images without a
GEMM (LeNet's 6 -> 16 channels 5x5 on 12x12 images).

On tiles of many small images the GEMM forward (``image_last.forward_image_last``)
hands each tile from numba's threads to OpenBLAS's and back; on a layer this small the
handover costs as much as the arithmetic. A stride-1 convolution is the input gradient
of another one, so the image-last backward's kernel ``_grad_x_image_last`` computes it
directly, in numba's threads only:

    y[d, i, j] = sum_{c, a, b} w[d, c, a, b] x[c, i + a*r_h - p_top, j + b*r_w - p_left]

is the input gradient, for an "output" x (C, H, W), of the convolution with weight
w'[c, d, a, b] = w[d, c, KH-1-a, KW-1-b] (input and output channels swapped, the kernel
flipped), stride 1, dilation r and leading padding (KH-1)*r_h - p_top,
(KW-1)*r_w - p_left: output row i reads input rows i + a*r_h - p_top, and the
gradient's row i gathers from exactly those rows. Per tile of B images: x is put
image-last (C, H, W, B), the kernel fills y image-last (D, Ho, Wo, B) with runs of
(valid columns) * B values, and y is copied back to NCHW (bias added). The kernels are
the backward's, already compiled for the backward of the same layer.

>>> import numpy as np
>>> from fastconv import conv2d
>>> x = np.ones((8, 2, 6, 6), np.float32)
>>> w = np.ones((4, 2, 3, 3), np.float32)
>>> y = conv2d(x, w, padding=1, algo="im2col")
>>> float(y[0, 0, 0, 0]), float(y[0, 0, 2, 2])   # a corner: 2 channels x 4 taps
(8.0, 18.0)
"""

from __future__ import annotations

import numpy as np

from ..._runtime import parallel_guard
from ...costs import Estimate, Profile
from .._common import view, workspace
from .image_last import _COPIES, _from_last_any
from .image_last_grad import _grad_x_image_last
from .tiling import tiling

#: Multiply-adds per second per thread of the image-last kernels (about 30 GMAC/s on
#: one core of the 2-core AVX-512 machine, ``image_last.image_last_tile``).
DIRECT_GMACS = 30.0
#: The direct forward runs layers of at most this many output channels (wider layers
#: make wide GEMMs, which BLAS runs faster).
DIRECT_MAX_CHANNELS = 64


def direct_forward_applies(args) -> bool:
    """Whether the NCHW forward of ``args`` runs ``forward_direct``: tiles of several
    small images (``Tiling.image_last``), one group, stride 1, at least 2 input
    channels (single-channel layers have no channel sum; the direct algorithm's
    depthwise kernel runs them), at most ``DIRECT_MAX_CHANNELS`` output channels, and
    leading padding within the kernel's reach ((KH-1)*r_h, (KW-1)*r_w), which the
    flipped kernel's padding needs."""
    return (not args.dims.channels_last and args.groups == 1 and args.stride == (1, 1)
            and 2 <= args.c_in and args.c_out <= DIRECT_MAX_CHANNELS
            and args.kh * args.kw > 1
            and args.padding[0][0] <= (args.kh - 1) * args.dilation[0]
            and args.padding[1][0] <= (args.kw - 1) * args.dilation[1]
            and tiling(args).image_last)


def forward_direct(x, w, args, out, bias) -> None:
    """The forward of a ``direct_forward_applies`` problem into ``out`` (N, D, Ho, Wo),
    bias (D,) added when given, in tiles of ``tiling(args).images`` images. x is
    C-contiguous. Wraps ``_grad_x_image_last`` and the image-last copies."""
    _, to_last, from_last = _COPIES["NCHW"]
    if not out.flags.c_contiguous:
        from_last = _from_last_any
    w_adj = np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
    rh, rw = args.dilation
    pads = ((args.kh - 1) * rh - args.padding[0][0], (args.kw - 1) * rw - args.padding[1][0])
    images = tiling(args).images
    x_img = (args.c_in, args.h, args.w)
    y_img = (args.c_out, args.h_out, args.w_out)
    x_size, y_size = int(np.prod(x_img)), int(np.prod(y_img))
    xt_buf = workspace("im2col.chwn", x_size * images, args.dtype)
    yt_buf = workspace("im2col.direct.y", y_size * images, args.dtype)
    for n0 in range(0, args.n, images):
        nb = min(images, args.n - n0)
        xt = view(xt_buf[:x_size * nb], x_img + (nb,))
        yt = view(yt_buf[:y_size * nb], y_img + (nb,))
        with parallel_guard():
            to_last(x, n0, xt, args.dims)
            _grad_x_image_last(xt, w_adj, yt, 1, 1, pads[0], pads[1], rh, rw)
            from_last(yt, out, n0, args.dims)
    if bias is not None:
        out += np.asarray(bias).reshape(-1, 1, 1)


def direct_cost(a, p: Profile) -> Estimate:
    """Model time of ``forward_direct``: the multiply-adds at ``DIRECT_GMACS`` per
    thread (float64 at half the rate), plus the copies to and from image-last order at
    the copy bandwidth (read and written) and the call's fixed cost."""
    macs = a.n * a.c_out * a.h_out * a.w_out * a.c_in * a.kh * a.kw
    rate = DIRECT_GMACS * 1e9 * p.threads * (4 / a.dtype.itemsize)
    copies = 2 * (a.n * (a.c_in * a.h * a.w + a.c_out * a.h_out * a.w_out)
                  * a.dtype.itemsize) / (p.copy_gbs * 1e9)
    secs = p.call_us * 1e-6 + macs / rate + copies
    images = tiling(a).images
    workspace = (a.c_in * a.h * a.w + a.c_out * a.h_out * a.w_out) * images * a.dtype.itemsize
    return Estimate(secs, workspace, f"direct image-last kernel (no GEMM), {macs / 1e6:.3g}M "
                             f"multiply-adds {1e3 * macs / rate:.3g} ms")
