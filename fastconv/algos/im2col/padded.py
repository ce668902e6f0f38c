"""The zero-padded channels-last copy of an input that the direct kernels read
(``direct_grad``'s weight gradient, ``direct_lanes``' narrow maps): every row and column
the kernel reads, so that its loops need no bounds checks, from either layout in one
pass.

>>> import numpy as np
>>> from fastconv._args import conv_args_from_shapes
>>> a = conv_args_from_shapes("t", (1, 2, 2, 3), (4, 2, 3, 3), padding=1)   # NCHW
>>> xp = padded_channels_last(np.ones((1, 2, 2, 3), np.float32), a, "doc")
>>> xp.shape, float(xp[0, 0, 0, 0]), float(xp[0, 1, 1, 1])                  # (N, Hp, Wp, C)
((1, 4, 5, 2), 0.0, 1.0)
"""

from __future__ import annotations

import threading

import numpy as np
from numba import njit, prange

from ... import _pool
from ..._runtime import guarded
from .._common import U, workspace

_shared = threading.local()


class shared_copies:
    """Within the block (this thread), ``padded_channels_last`` returns the copy in
    ``store`` of the same array and geometry when there is one, instead of making it
    again; with ``keep``, the copies it makes are arrays of their own (``_pool``), put
    in ``store`` with their source (held, so that no other array takes its address).
    The autograd Conv2d op keeps its forward's copies (``keep``) and hands them to its
    backward: the weight gradient reads the same padded input, with the values x had
    at the forward. (A class rather than a generator: every conv layer of a training
    step enters it twice.)"""

    __slots__ = ("_scope", "_prev")

    def __init__(self, store: dict, keep: bool):
        self._scope = (store, keep)

    def __enter__(self):
        self._prev = getattr(_shared, "scope", None)
        _shared.scope = self._scope

    def __exit__(self, *exc):
        _shared.scope = self._prev
        return False


def padded_size(a) -> tuple[int, int]:
    """Rows and columns of the padded input the kernel reads."""
    return ((a.h_out - 1) * a.stride[0] + (a.kh - 1) * a.dilation[0] + 1,
            (a.w_out - 1) * a.stride[1] + (a.kw - 1) * a.dilation[1] + 1)


#: Channels first with at most this many channels, ``_pad_images`` copies a channel's
#: row at a time (contiguous reads), else a pixel's channels at a time: 2 threads, NCHW
#: (8, 3, 224, 224) padded by 3 (the stem) 0.44 -> 0.28 ms, LeNet's (64, 6, 14, 14)
#: 0.049 -> 0.037; (32, 16, 28, 28) by 1 0.105 against 0.145 (the pixel's channels
#: kept). One channel is one run in either layout: LeNet's (64, 1, 28, 28) 0.082 ->
#: 0.022.
FEW_CHANNELS = 8


@njit(parallel=True, cache=True)
def _pad_images(xf, xs, xp, ps, pt, pl):
    """xp (N, Hp, Wp, C) flat, fully written: xp[n, R, Q, c] = x[n, R - pt, Q - pl, c],
    zero outside x; x given flat with the shape and element strides of its (N, H, W, C)
    view, xs = (N, H, W, C, s_n, s_h, s_w, s_c): one kernel for both layouts."""
    _, h, wd, c_all, sn, sh, sw, sc = xs
    n_img, hp, wp, _ = ps
    zero = xp.dtype.type(0)
    row = U(wp * c_all)
    q_lo, q_hi = min(pl, wp), min(pl + wd, wp)
    for task in prange(n_img * hp):
        n = task // hp
        r = task % hp - pt
        dst = U(task) * row
        if r < 0 or r >= h:
            for t in range(row):
                xp[dst + t] = zero
            continue
        for t in range(U(q_lo * c_all)):
            xp[dst + t] = zero
        for t in range(U(q_hi * c_all), row):
            xp[dst + t] = zero
        src = U(n * sn + r * sh)
        if sw == c_all and (sc == 1 or c_all == 1):     # channels last: one run
            d = dst + U(q_lo * c_all)
            for t in range(U((q_hi - q_lo) * c_all)):
                xp[d + t] = xf[src + t]
            continue
        if sw == 1 and c_all <= FEW_CHANNELS:   # channels first: each channel's row
            for c in range(U(c_all)):
                s = src + c * U(sc)
                d = dst + U(q_lo * c_all) + c
                for q in range(U(q_hi - q_lo)):
                    xp[d + q * U(c_all)] = xf[s + q]
            continue
        for q in range(U(q_hi - q_lo)):
            s = src + q * U(sw)
            d = dst + (U(q_lo) + q) * U(c_all)
            for c in range(U(c_all)):
                xp[d + c] = xf[s + c * U(sc)]


def _flat_nhwc(x, a):
    """x (layout of ``a``, C-contiguous) as (flat array, (N, H, W, C) shape and element
    strides of its channels-last view)."""
    v = a.dims.to_canonical_view(x).transpose(0, 2, 3, 1)
    st, size = v.strides, x.itemsize
    return x.reshape(-1), (*v.shape, st[0] // size, st[1] // size, st[2] // size,
                           st[3] // size)


def channels_last_input(x, a, slot: str) -> np.ndarray:
    """x for a kernel that reads it zero-padded and channels last: x itself as (N, H,
    W, C) where it already is that (no padding, ``a``'s dtype, C-contiguous and channels
    last, or one channel; the kernel reads its rows H*W*C and W*C elements apart: take
    them from the returned shape), else ``padded_channels_last``'s copy in ``slot``."""
    if a.padding == ((0, 0), (0, 0)) and x.dtype == a.dtype and x.flags.c_contiguous \
            and (a.dims.channels_last or a.c_in == 1):
        return x.reshape(a.n, a.h, a.w, a.c_in)
    return padded_channels_last(x, a, slot)


def padded_channels_last(x, a, slot: str) -> np.ndarray:
    """x (layout of ``a``, any strides) zero-padded by ``a.padding`` as (N, Hp, Wp, C)
    in ``a.dtype`` (``padded_size``; rows and columns beyond the reads left out), in the
    calling thread's workspace ``slot`` (valid until its next use), or shared with a
    layer's forward and backward (``shared_copies``); read-only for the caller."""
    hp, wp = padded_size(a)
    (pt, _), (pl, _) = a.padding
    store, keep = getattr(_shared, "scope", None) or (None, False)
    if store is not None:
        key = (x.__array_interface__["data"][0], x.shape, x.strides, x.dtype.str,
               a.dims.name, a.dtype.str, hp, wp, pt, pl)
        if key in store:
            return store[key][1]
    if keep:
        xp = _pool.empty((a.n * hp * wp * a.c_in,), a.dtype)
    else:
        xp = workspace(slot, a.n * hp * wp * a.c_in, a.dtype)
    guarded(_pad_images)(*_flat_nhwc(np.ascontiguousarray(x, a.dtype), a), xp,
                         (a.n, hp, wp, a.c_in), pt, pl)
    xp = xp.reshape(a.n, hp, wp, a.c_in)
    if keep:
        store[key] = (x, xp)
    return xp
