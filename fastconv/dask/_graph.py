"""The dask graph of a sliding-window op: one task per output block.

Each task gathers the input rows and columns its output block needs (``Axis.span``)
from the chunks they lie in, runs the in-memory op on that slice and keeps the wanted
output rows and columns. Batch (and, for pooling, channel) blocks map one to one.
Arrays the op needs on every block (weights, bias) sit once in the graph as data nodes
that the tasks refer to, so a distributed scheduler ships them once per worker rather
than once per task.
"""

from __future__ import annotations

import itertools
import operator

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from dask.task_spec import DataNode, List, Task, TaskRef

from ..layout import LAYOUTS
from ._geometry import Axis, chunk_pieces

#: (channel axis, height axis, width axis) of a 4-D array in each layout.
AXES = {name: (lay.channel_axis, *lay.spatial_axes) for name, lay in LAYOUTS.items()}


def _cut(block: np.ndarray, h_ax: int, w_ax: int, rows, cols) -> np.ndarray:
    index = [slice(None)] * block.ndim
    index[h_ax] = slice(*rows)
    index[w_ax] = slice(*cols)
    return block[tuple(index)]


def _run_block(op, pieces, rows, cols, axes_hw, keep, origin, *extra):
    """Assemble the input slice from chunk pieces, run ``op`` and trim its output.

    pieces: chunks as a nested list [row of chunks][column of chunks]; rows/cols: the
    (start, stop) taken from each chunk row/column; keep: ((j0, length_h), (k0, length_w))
    local output rows and columns to keep; origin: (a, c) global position of the slice.
    """
    h_ax, w_ax = axes_hw
    bands = []
    for row, r in zip(pieces, rows, strict=True):
        parts = [_cut(p, h_ax, w_ax, r, c) for p, c in zip(row, cols, strict=True)]
        bands.append(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=w_ax))
    xs = bands[0] if len(bands) == 1 else np.concatenate(bands, axis=h_ax)
    result = op(xs, origin, *extra)
    (j0, nh), (k0, nw) = keep

    def trim(y):
        if y.shape[h_ax] == nh and y.shape[w_ax] == nw:
            return y
        return np.ascontiguousarray(_cut(y, h_ax, w_ax, (j0, j0 + nh), (k0, k0 + nw)))

    return tuple(trim(y) for y in result) if isinstance(result, tuple) else trim(result)


def window_map(x, op, axes: tuple[Axis, Axis], *, layout: str, dtypes, out_channels=None,
               extra=(), name: str = "fastconv") -> list:
    """Apply a sliding-window op to a 4-D dask array, block by output block.

    Parameters
    ----------
    x : dask array (N, C, H, W) for layout "NCHW" or (N, H, W, C) for "NHWC".
    op : picklable callable ``op(xs, origin, *extra)`` returning one array per entry of
        ``dtypes`` (a tuple when there are several) in the layout of ``xs``; ``xs`` is a
        slice of ``x`` (all of its batch and channel block) starting at the global
        position ``origin = (row, column)``.
    axes : the height and width :class:`Axis`.
    dtypes : dtype of each output.
    out_channels : output chunks along the channel axis; None keeps the input's channel
        chunks (per-channel ops). When given, ``x`` must have a single channel chunk.
    extra : numpy arrays (or None) passed to every call, stored once in the graph.

    Returns
    -------
    list of dask arrays, one per dtype, chunked like ``x`` over the batch, with
    ``out_channels`` over the channels and ``Axis.output_chunks`` over height and width.
    """
    c_ax, h_ax, w_ax = AXES[layout]
    if out_channels is not None and len(x.chunks[c_ax]) != 1:
        raise ValueError("window_map: x must have one channel chunk when out_channels is set")
    out_h = axes[0].output_chunks(x.chunks[h_ax])
    out_w = axes[1].output_chunks(x.chunks[w_ax])
    chan = tuple(out_channels) if out_channels is not None else x.chunks[c_ax]
    token = tokenize(x.name, op, axes, layout, [tokenize(e) for e in extra])
    block_name = f"{name}-{token}"

    dsk, extra_args = {}, []
    for e in extra:
        if e is None:
            extra_args.append(None)
        else:
            key = f"{name}-const-{tokenize(e)}"
            dsk[key] = DataNode(key, e)
            extra_args.append(TaskRef(key))

    h_plans = _plans(axes[0], out_h, x.chunks[h_ax])
    w_plans = _plans(axes[1], out_w, x.chunks[w_ax])
    for bi, ci, (hi, hp), (wi, wp) in itertools.product(
            range(len(x.chunks[0])), range(len(chan)), enumerate(h_plans), enumerate(w_plans)):
        in_c = ci if out_channels is None else 0
        refs = List(*(List(*(TaskRef(_key(x.name, layout, bi, in_c, h_idx, w_idx))
                             for w_idx, _, _ in wp["pieces"]))
                      for h_idx, _, _ in hp["pieces"]))
        key = _key(block_name, layout, bi, ci, hi, wi)
        dsk[key] = Task(key, _run_block, op, refs,
                        [(lo, hi_) for _, lo, hi_ in hp["pieces"]],
                        [(lo, hi_) for _, lo, hi_ in wp["pieces"]],
                        (h_ax, w_ax), (hp["keep"], wp["keep"]), (hp["start"], wp["start"]),
                        *extra_args)

    chunks = [None] * 4
    chunks[0], chunks[c_ax], chunks[h_ax], chunks[w_ax] = x.chunks[0], chan, out_h, out_w
    graph = HighLevelGraph.from_collections(block_name, dsk, dependencies=[x])
    if len(dtypes) == 1:
        return [_array(graph, block_name, chunks, dtypes[0])]
    # Several outputs: the block tasks return tuples; one small layer per output picks
    # its element.
    outs = []
    for k, dtype in enumerate(dtypes):
        out_name = f"{name}-out{k}-{token}"
        layer = {(out_name,) + key[1:]: Task((out_name,) + key[1:], operator.getitem,
                                               TaskRef(key), k)
                 for key in dsk if isinstance(key, tuple)}
        g = HighLevelGraph({**graph.layers, out_name: layer},
                           {**graph.dependencies, out_name: {block_name}})
        outs.append(_array(g, out_name, chunks, dtype))
    return outs


def _plans(axis: Axis, out_chunks, in_chunks):
    """Per output block along one axis: input pieces, first input row, rows to keep."""
    plans, i0 = [], 0
    for size in out_chunks:
        a, b, j0 = axis.span(i0, i0 + size)
        plans.append({"pieces": chunk_pieces(in_chunks, a, b), "start": a,
                      "keep": (j0, size)})
        i0 += size
    return plans


def _key(name, layout, n, c, h, w):
    return (name, *LAYOUTS[layout].shape(n, c, h, w))


def _array(graph, name, chunks, dtype):
    return da.Array(graph, name, chunks=tuple(chunks), dtype=dtype,
                    meta=np.empty((0,) * 4, dtype=dtype))
