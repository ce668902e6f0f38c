"""conv2d, conv3d, max_pool2d and avg_pool2d on dask arrays.

Each function validates its arguments at once (errors name the op, the rule and the
values, as the in-memory functions do), builds the graph of ``_graph.window_map`` and
returns a lazy dask array: nothing is computed until the caller asks. Every block is
computed by the in-memory fastconv function with the caller's arguments, so the result
equals the in-memory result on the whole array.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import dask.array as da
import numpy as np

from .. import _args, autotune
from .. import conv as _conv
from .. import conv_nd as _conv_nd
from .. import pool as _pool
from .._args.conv_nd import conv_nd_arrays
from ..algos import conv3d as _algos3d
from ._geometry import Axis
from ._graph import AXES, window_map


def check_dask_array(op: str, name: str, x) -> da.Array:
    """A dask array of float32/float64 with known chunk sizes."""
    if not isinstance(x, da.Array):
        raise TypeError(f"{op}: {name} must be a dask.array.Array, got {type(x).__name__} "
                        "(dask.array.from_array wraps an in-memory array)")
    if x.dtype not in _args.DTYPES:
        raise TypeError(f"{op}: {name} has dtype {x.dtype}; accepted dtypes are float32 and "
                        "float64")
    if any(math.isnan(s) for s in x.shape):
        raise ValueError(f"{op}: {name} has unknown chunk sizes (shape {x.shape}); call "
                         "x.compute_chunk_sizes() first")
    return x


# --------------------------------------------------------------------------- conv2d
@dataclass(frozen=True)
class _Conv:
    """Block op: conv2d with fixed arguments (weight and bias come per call). ``algo``
    is the caller's request and ``choice`` the algorithm planned for the whole array, so
    each block runs that algorithm under the policy's fallbacks for ``algo``."""

    stride: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    dilation: tuple[int, int]
    groups: int
    layout: str
    algo: str
    choice: str

    def __call__(self, xs, origin, w, bias):
        op = "conv2d"
        xs, w, bias, args = _conv.conv_args(op, xs, w, bias, self.stride, self.padding,
                                            self.dilation, self.groups, self.layout,
                                            algo=self.algo)
        out = np.empty(args.y_layout_shape, args.dtype)
        return _conv.forward_into(xs, w, bias, args, out, self.algo, self.choice)


def conv2d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, *, layout="NCHW",
           algo="auto"):
    """2-D cross-correlation of a dask array, as :func:`fastconv.conv2d`.

    Parameters
    ----------
    x : dask array, (N, C_in, H, W) for layout "NCHW" or (N, H, W, C_in) for "NHWC"
        (3-D: one unbatched image; 2-D: one gray (H, W) image, where a 2-D (kh, kw)
        weight gives a 2-D result, as in memory). Chunked over the batch, and over H
        and W if images are large; chunks over the channels are merged into one (a conv
        output channel needs every input channel of its group).
    w : numpy array, (C_out, C_in/groups, kh, kw) "OIHW" for NCHW, (kh, kw,
        C_in/groups, C_out) "HWIO" for NHWC. Stored once in the graph.
    bias : numpy array (C_out,) or None.
    stride, padding, dilation, groups, layout, algo : as :func:`fastconv.conv2d`.
        ``algo="auto"`` is planned once for the whole problem, so every block runs the
        algorithm the in-memory call would run, under the same fallbacks (an FFT
        result that fails its error bound is recomputed exactly, as in memory).

    Returns
    -------
    y : lazy dask array (N, C_out, H_out, W_out) or (N, H_out, W_out, C_out) with the
        batch chunks of ``x``, one channel chunk, and height and width chunks that
        follow those of ``x`` (an input chunk starting at row B gives an output chunk
        starting at row ceil((B + p_top) / stride)). H_out, W_out as for
        :func:`fastconv.conv2d`.

    Notes
    -----
    A block whose output rows are [i0, i1) reads input rows [i0*s - p_top,
    (i1-1)*s - p_top + r*(kh-1)] (clipped to the image; "the halo"), gathered from the
    chunks they lie in. Equals ``fastconv.conv2d(x.compute(), ...)``: bit for bit with
    "naive"; to rounding with "im2col" and "fft", whose GEMM and transform sizes follow
    the block (BLAS sums in a size-dependent order).
    """
    op = "conv2d"
    if check_dask_array(op, "input", x).ndim == 2:
        axis = _args.plane_axis(_args.check_layout(op, layout))
        w, flat = _conv._plane_weight(op, w, layout)
        y = conv2d(da.expand_dims(x, axis), w, bias, stride, padding, dilation, groups,
                   layout=layout, algo=algo)
        return da.squeeze(y, axis) if flat else y
    x, w, bias, args = _conv.conv_args(op, x, w, bias, stride, padding, dilation, groups,
                                       layout, check_input=check_dask_array, algo=algo)
    block_op = _Conv(args.stride, args.padding, args.dilation, args.groups, layout, algo,
                     autotune.forward_choice(args, algo))
    c_ax = AXES[layout][0]
    x = x.rechunk({c_ax: -1})
    axes = (Axis(args.h, args.kh, args.stride[0], args.dilation[0], args.padding[0]),
            Axis(args.w, args.kw, args.stride[1], args.dilation[1], args.padding[1]))
    (y,) = window_map(x, block_op, axes, layout=layout, dtypes=(args.dtype,),
                      out_channels=(args.c_out,), extra=(w, bias), name="fastconv-conv2d")
    return y[0] if args.unbatched else y


# --------------------------------------------------------------------------- conv3d
@dataclass(frozen=True)
class _Conv3d:
    """Block op: fastconv.conv3d with fixed arguments and the algorithm planned for the
    whole array (weight and bias come per call)."""

    stride: tuple[int, int, int]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, int, int]
    groups: int
    layout: str
    algo: str

    def __call__(self, xs, origin, w, bias):
        return _conv_nd.conv3d(xs, w, bias, self.stride, self.padding, self.dilation,
                               self.groups, layout=self.layout, algo=self.algo)


def conv3d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, *, layout="NCDHW",
           algo="auto"):
    """3-D cross-correlation of a dask array, as :func:`fastconv.conv3d`.

    Parameters
    ----------
    x : dask array, (N, C_in, D, H, W) for layout "NCDHW" or (N, D, H, W, C_in) for
        "NDHWC" (4-D: one unbatched volume). Chunked over the batch and over depth,
        height and width for large volumes; channel chunks are merged into one.
    w : numpy array, OIDHW for NCDHW, DHWIO for NDHWC. Stored once in the graph.
    bias : numpy array (C_out,) or None.
    stride, padding, dilation, groups, layout, algo : as :func:`fastconv.conv3d`;
        ``algo="auto"`` is planned once for the whole problem, so every block runs the
        algorithm the in-memory call would run.

    Returns
    -------
    y : lazy dask array of :func:`fastconv.conv3d`'s output shape, with the batch chunks
        of ``x``, one channel chunk, and depth, height and width chunks that follow those
        of ``x`` (as :func:`conv2d`'s: each block reads its halo from the neighbouring
        chunks). Equals ``fastconv.conv3d(x.compute(), ...)``: bit for bit with "naive",
        to rounding with "im2col" and "fft" (their GEMM and transform sizes follow the
        block).

    Examples
    --------
    >>> import dask.array as da, numpy as np, fastconv, fastconv.dask
    >>> vol = np.random.default_rng(0).random((1, 2, 12, 12, 12))
    >>> w = np.ones((3, 2, 3, 3, 3))
    >>> lazy = fastconv.dask.conv3d(da.from_array(vol, chunks=(1, 2, 5, 6, 7)), w,
    ...                             padding=1)
    >>> lazy.chunks[2:]
    ((6, 5, 1), (7, 5), (8, 4))
    >>> bool(np.allclose(lazy.compute(), fastconv.conv3d(vol, w, padding=1)))
    True
    """
    op = "conv3d"
    _conv_nd._check_algo(op, algo)
    x, w, bias, a = conv_nd_arrays(op, x, w, bias, stride, padding, dilation, groups,
                                   layout, rank=3, check_input=_dask_input)
    choice = _algos3d.plan_for(a).algorithm if algo == "auto" else algo
    block_op = _Conv3d(a.stride, a.padding, a.dilation, a.groups, a.layout, choice)
    x = x.rechunk({AXES[a.layout][0]: -1})
    axes = tuple(Axis(*geo) for geo in zip(a.size, a.kernel, a.stride, a.dilation,
                                           a.padding, strict=True))
    (y,) = window_map(x, block_op, axes, layout=a.layout, dtypes=(a.dtype,),
                      out_channels=(a.c_out,), extra=(w, bias), name="fastconv-conv3d")
    return y[0] if a.unbatched else y


def _dask_input(op, name, x, half=False):
    return check_dask_array(op, name, x)


# -------------------------------------------------------------------------- pooling
def pool_axes(op: str, x, kernel_size, stride, padding, dilation, ceil_mode, layout):
    """Validate pooling arguments against the shape of ``x`` (as the in-memory pooling
    does, :func:`fastconv._args.pool_args`); the (height, width) :class:`Axis`."""
    a = _args.pool_args(op, x.shape, kernel_size, stride, padding, dilation, ceil_mode, layout)
    return tuple(Axis(n, k, s, r, (p, p), a.ceil_mode) for n, k, s, r, p in zip(
        (a.h, a.w), a.kernel, a.stride, a.dilation, a.padding, strict=True))


@dataclass(frozen=True)
class _MaxPool:
    """Block op: fastconv.max_pool2d; indices are moved from the slice to the image."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    ceil_mode: bool
    layout: str
    return_indices: bool
    width: int  # of the whole image, for the flat indices h*W + w

    def __call__(self, xs, origin):
        out = _pool.max_pool2d(xs, self.kernel_size, self.stride, self.padding,
                               self.dilation, self.ceil_mode, layout=self.layout,
                               return_indices=self.return_indices)
        if not self.return_indices:
            return out
        y, idx = out
        local_w = xs.shape[AXES[self.layout][2]]
        rows, cols = np.divmod(idx, local_w)
        return y, (rows + origin[0]) * self.width + (cols + origin[1])


@dataclass(frozen=True)
class _AvgPool:
    """Block op: fastconv.avg_pool2d with fixed arguments."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    ceil_mode: bool
    count_include_pad: bool
    layout: str

    def __call__(self, xs, origin):
        return _pool.avg_pool2d(xs, self.kernel_size, self.stride, self.padding,
                                self.ceil_mode, self.count_include_pad, layout=self.layout)


def _pool_input(op, x, layout):
    """(x, plane): a 2-D (H, W) gray image gets its one channel axis (``plane``, where the
    result drops it again, as in memory); any other input is returned as it is, plane
    None."""
    x = check_dask_array(op, "input", x)
    if x.ndim != 2:
        return x, None
    plane = _args.plane_axis(_args.check_layout(op, layout))
    return da.expand_dims(x, plane), plane


def _pooling(op, x, block_op, axes, dtypes, layout, plane):
    unbatched = x.ndim == 3
    if unbatched:
        x = x[None]
    outs = window_map(x, block_op, axes, layout=layout, dtypes=dtypes, name=f"fastconv-{op}")
    outs = [y[0] for y in outs] if unbatched else outs
    if plane is not None:
        outs = [da.squeeze(y, plane) for y in outs]
    return outs[0] if len(outs) == 1 else tuple(outs)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *,
               layout="NCHW", return_indices=False):
    """Max pooling of a dask array, as :func:`fastconv.max_pool2d`.

    Parameters
    ----------
    x : dask array, (N, C, H, W) for "NCHW" or (N, H, W, C) for "NHWC" (3-D: unbatched,
        2-D: one gray (H, W) image, giving 2-D results), chunked over any axis; channel
        chunks are kept (pooling is per channel).
    kernel_size, stride (None: kernel_size), padding, dilation, ceil_mode, layout,
    return_indices : as :func:`fastconv.max_pool2d`.

    Returns
    -------
    y : lazy dask array (N, C, H_out, W_out) (or NHWC), chunks as for
        :func:`conv2d` but keeping the channel chunks; with ``return_indices`` also the
        int64 flat indices h*W + w into the whole input plane (torch's convention).
    """
    op = "max_pool2d"
    x, plane = _pool_input(op, x, layout)
    axes = pool_axes(op, x, kernel_size, stride, padding, dilation, ceil_mode, layout)
    h, w = axes
    block_op = _MaxPool((h.k, w.k), (h.s, w.s), (h.pad[0], w.pad[0]), (h.r, w.r),
                        h.ceil_mode, layout, bool(return_indices), w.n)
    dtypes = (x.dtype, np.dtype(np.int64)) if return_indices else (x.dtype,)
    return _pooling(op, x, block_op, axes, dtypes, layout, plane)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, *, layout="NCHW"):
    """Average pooling of a dask array, as :func:`fastconv.avg_pool2d`.

    Parameters and Returns as :func:`max_pool2d` (no dilation, no indices);
    ``count_include_pad`` as :func:`fastconv.avg_pool2d`. Divisors, including those of
    windows that hang over the edge in ``ceil_mode``, are those of the whole image.
    """
    op = "avg_pool2d"
    x, plane = _pool_input(op, x, layout)
    axes = pool_axes(op, x, kernel_size, stride, padding, 1, ceil_mode, layout)
    count_include_pad = _args.check_flag(op, "count_include_pad", count_include_pad)
    h, w = axes
    block_op = _AvgPool((h.k, w.k), (h.s, w.s), (h.pad[0], w.pad[0]), h.ceil_mode,
                        count_include_pad, layout)
    return _pooling(op, x, block_op, axes, (x.dtype,), layout, plane)
