"""F(4x4, 3x3)'s weight gradient on NCHW through the fused tile kernels of
``grad_w_nhwc``: each task stages the rows its tiles read channels last, as the NCHW
fused forward does (``nchw_fused``), and runs the NHWC transforms and register sums on
them.

For each tile row a block of tiles touches, the task copies the columns its tiles read of
the row's 6 input rows (zero padding included) and of its 4 grad_y rows (zero past the
output's edge) into channels-last buffers of its own (``staging.stage_in``), transforms
its tiles from there (``nhwc_tiles.tile_in4``, ``grad_w_nhwc.tile_gy4``) and adds their 36
products into its sum (``grad_w_nhwc.block_sums``); the tasks' sums become grad_w as in
NHWC. x and grad_y may be any strided views (then staged one value at a time).

Where the NHWC kernel splits the input channels over the threads (few tiles for the
channels: ``grad_w_nhwc.channel_groups``) and there are at most ``COPY_MAX_CHANNELS`` of
them, the layer runs on channels-last copies of x and grad_y in the NHWC kernel instead
(``_on_copies``): the staging then costs more than the two copies, and the runs' sums
(36 C D values each) are not added after the kernel. The weight gradient alone, 2
threads, alternating, NCHW, batch 32 (AMD EPYC), five runs each: 64 -> 64 at 7x7 (the
small ResNet's last stage) 1.12-1.19 -> 0.62-0.75 ms, at 8x8 1.09-1.17 -> 0.68-0.73 in
four (0.68 either way in one), at 5x5 and 6x6 (one run) 1.1-1.2 -> 0.54-0.64, at 4x4
0.42 -> 0.40; at 128 channels the two ran alike or the copies slower (128 at 8x8, batch
64: 5.2 and 5.4 ms; at 4x4 2.0 and 2.3), so those stay staged.

>>> import numpy as np
>>> ones = np.ones((2, 48, 4, 4), np.float32)          # NCHW, two images
>>> grad_w = np.empty((32, 16, 3, 3), np.float32)      # OIHW, 16 -> 32 channels
>>> fused_grad_w(ones[:, :32], ones[:, :16], grad_w, (1, 1))     # padding 1
True
>>> grad_w[5, 7].tolist()                              # 2 images x the taps' overlaps
[[18.0, 24.0, 18.0], [24.0, 32.0, 24.0], [18.0, 24.0, 18.0]]
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ... import config
from ..._runtime import guarded
from .._common import U, view, workspace
from .._nhwc import write_nhwc
from ..staging import raveled, stage_in
from . import grad_w_nhwc
from .grad_w_nhwc import (
    _KRON,
    FINISH_COLUMNS,
    _finish,
    _taps,
    block_sums,
    task_buffers,
    tile_gy4,
)
from .nchw_fused import _slots
from .nhwc_tiles import block_tiles, tile_in4

#: Input channels up to which ``fused_grad_w`` runs on channels-last copies where the
#: NHWC kernel's channel groups apply (module docstring).
COPY_MAX_CHANNELS = 64


@njit(parallel=True, cache=True, fastmath=config.FASTMATH)
def _grad_w(x, xf, gy, gf, sums, pads, block, slots, kron, out, flags):
    """sums[k] (36 C D) = the Winograd-domain weight gradient of the k-th run of whole
    blocks of ``block`` consecutive tiles of the batch, for x (N, C, H, W) and grad_y
    (N, D, Ho, Wo) (xf, gf: raveled where C-contiguous, else empty), padding pads =
    (top, left); each tile row a block touches staged channels last (at most ``slots``
    of them; module docstring). With one run the task also writes out (9, C D) = kron
    @ its sum (``grad_w_nhwc._taps``; flags[0]: whether one is NaN or +-Inf)."""
    n_img, c_all, _, _ = x.shape
    _, d_all, ho, wo = gy.shape
    th, tw = (ho + 3) // 4, (wo + 3) // 4
    total = n_img * th * tw
    blocks = (total + block - 1) // block
    tasks = sums.shape[0]
    ucg, udg = U(c_all), U(d_all)
    pt, pl = pads
    in_cols, out_cols = 4 * tw + 2, 4 * tw
    in_shape = (1, slots * 6, in_cols, c_all)
    in_grid = (slots * 6, in_cols, 0, 0, 1, 1)
    g_shape = (1, slots * 4, out_cols, d_all)
    for task in prange(tasks):
        fa = sums[task]
        fa[:] = 0
        xs = np.empty(slots * 6 * in_cols * c_all, x.dtype)
        gs = np.empty(slots * 4 * out_cols * d_all, x.dtype)
        v, p, d, tmp, tv = task_buffers(x, block, c_all, d_all)
        for b in range(task * blocks // tasks, (task + 1) * blocks // tasks):
            k0 = b * block
            count = min(total, k0 + block) - k0
            r_first = k0 // tw
            for s in range((k0 + count - 1) // tw - r_first + 1):
                r = r_first + s
                j_lo, j_hi = max(0, k0 - r * tw), min(tw, k0 + count - r * tw)
                stage_in(x, xf, r // th, r % th * 4 - pt, -pl, 6,
                         (4 * j_lo, 4 * j_hi + 2, in_cols), xs, s * 6 * in_cols * c_all)
                stage_in(gy, gf, r // th, r % th * 4, 0, 4, (4 * j_lo, 4 * j_hi, out_cols),
                         gs, s * 4 * out_cols * d_all)
            for t in range(count):
                kk = k0 + t
                s = kk // tw - r_first
                tile_in4(xs, in_shape, 0, c_all, 0, s * 6, kk % tw * 4, in_grid, d, tmp,
                         v, U(t) * ucg, U(block) * ucg)
                tile_gy4(gs, g_shape, 0, s * 4, kk % tw * 4, tv, p, U(t) * udg,
                         U(block) * udg)
            block_sums(v, p, fa, count, block, c_all, d_all)
        if tasks == 1:
            q_all = c_all * d_all
            flags[0] = _taps(sums, 0, 1, q_all, 0, q_all, kron, out, 0)


def fused_grad_w(grad_y, x, grad_w, pads) -> bool:
    """grad_w (D, C, 3, 3) = the weight gradient of the NCHW F(4x4, 3x3) layer with input
    x (N, C, H, W), output gradient grad_y (N, D, Ho, Wo) (any strides) and padding pads
    = (top, left), for channels ``grad_w_nhwc.applies`` accepts. Returns whether every
    value is finite."""
    c_all, d_all = x.shape[1], grad_y.shape[1]
    tw = -(-grad_y.shape[3] // 4)
    tiles = grad_y.shape[0] * -(-grad_y.shape[2] // 4) * tw
    threads = numba.get_num_threads()
    if c_all <= COPY_MAX_CHANNELS and \
            grad_w_nhwc.channel_groups(c_all, tiles, threads, x.itemsize) > 1:
        return _on_copies(grad_y, x, grad_w, pads)
    block = block_tiles(c_all, d_all, x.itemsize)
    runs = max(1, min(threads, -(-tiles // block)))
    sums = np.empty((runs, 36 * c_all * d_all), x.dtype)
    taps = np.empty((3, 3, c_all, d_all), grad_w.dtype)
    flat = taps.reshape(9, c_all * d_all)
    flags = np.zeros(max(runs, -(-c_all * d_all // FINISH_COLUMNS)), np.bool_)
    slots = _slots(block, tw)
    guarded(_grad_w)(x, raveled(x), grad_y, raveled(grad_y), sums, pads, block, slots,
                     _KRON, flat, flags)
    if runs > 1:
        guarded(_finish)(sums, _KRON, flat, flags)
    grad_w[...] = taps.transpose(3, 2, 0, 1)
    return not flags.any()


def _on_copies(grad_y, x, grad_w, pads) -> bool:
    """``fused_grad_w`` by ``grad_w_nhwc.fused_grad_w`` on channels-last copies of x
    and grad_y (``write_nhwc``, into this thread's workspace), its (3, 3, C, D) result
    written back as (D, C, 3, 3)."""
    n, c, h, w = x.shape
    d, ho, wo = grad_y.shape[1:]
    xn = view(workspace("grad_w_nchw.x", x.size, x.dtype), (n, h, w, c))
    gn = view(workspace("grad_w_nchw.gy", grad_y.size, x.dtype), (n, ho, wo, d))
    write_nhwc(x, xn)
    write_nhwc(grad_y, gn)
    taps = np.empty((3, 3, c, d), grad_w.dtype)
    ok = grad_w_nhwc.fused_grad_w(gn, xn, taps, pads)
    grad_w[...] = taps.transpose(3, 2, 0, 1)
    return ok
