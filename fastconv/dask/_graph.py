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

from ..layout import LAYOUTS_BY_RANK
from ._geometry import Axis, chunk_pieces

#: Every layout (1-D, 2-D and 3-D) by name.
ALL_LAYOUTS = {name: lay for table in LAYOUTS_BY_RANK.values() for name, lay in table.items()}
#: (channel axis, *spatial axes) of a batched array in each layout.
AXES = {name: (lay.channel_axis, *lay.spatial_axes) for name, lay in ALL_LAYOUTS.items()}


def _cut(block: np.ndarray, axes, spans) -> np.ndarray:
    index = [slice(None)] * block.ndim
    for ax, span in zip(axes, spans, strict=True):
        index[ax] = slice(*span)
    return block[tuple(index)]


def _assemble(pieces, spans, axes, chosen=()):
    """The slice from nested chunk ``pieces`` (one nesting level per spatial axis),
    taking ``spans[d][i]`` = (start, stop) of the i-th chunk along axis d."""
    depth = len(chosen)
    if depth == len(axes):
        return _cut(pieces, axes, chosen)
    parts = [_assemble(p, spans, axes, chosen + (span,))
             for p, span in zip(pieces, spans[depth], strict=True)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axes[depth])


def _run_block(op, pieces, spans, axes, keep, origin, *extra):
    """Assemble the input slice from chunk pieces, run ``op`` and trim its output.

    pieces: chunks as a nested list, one level per spatial axis (rows of chunks, then
    columns, ...); spans: per spatial axis, the (start, stop) taken from each chunk
    along it; keep: per spatial axis, (first local output index, length) to keep;
    origin: the global position of the slice along each spatial axis.
    """
    result = op(_assemble(pieces, spans, axes), origin, *extra)
    wanted = tuple((j0, j0 + n) for j0, n in keep)

    def trim(y):
        if all(y.shape[ax] == n for ax, (_, n) in zip(axes, keep, strict=True)):
            return y
        return np.ascontiguousarray(_cut(y, axes, wanted))

    return tuple(trim(y) for y in result) if isinstance(result, tuple) else trim(result)


def window_map(x, op, axes: tuple[Axis, ...], *, layout: str, dtypes, out_channels=None,
               extra=(), name: str = "fastconv") -> list:
    """Apply a sliding-window op to a batched dask array, block by output block.

    Parameters
    ----------
    x : dask array (N, C, H, W) for layout "NCHW" or (N, H, W, C) for "NHWC"; likewise
        3-D (NCW, NWC) and 5-D (NCDHW, NDHWC) arrays.
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
    ``out_channels`` over the channels and ``Axis.output_chunks`` over each spatial axis.
    """
    c_ax, *sp_ax = AXES[layout]
    if out_channels is not None and len(x.chunks[c_ax]) != 1:
        raise ValueError("window_map: x must have one channel chunk when out_channels is set")
    outs_sp = [axis.output_chunks(x.chunks[ax]) for axis, ax in zip(axes, sp_ax, strict=True)]
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

    plans = [list(enumerate(_plans(axis, out, x.chunks[ax])))
             for axis, out, ax in zip(axes, outs_sp, sp_ax, strict=True)]
    for bi, ci, *cell in itertools.product(range(len(x.chunks[0])), range(len(chan)),
                                           *plans):
        in_c = ci if out_channels is None else 0
        key = _key(block_name, layout, bi, ci, *(i for i, _ in cell))
        dsk[key] = Task(key, _run_block, op,
                        _refs(x.name, layout, bi, in_c, [p["pieces"] for _, p in cell]),
                        [[(lo, hi) for _, lo, hi in p["pieces"]] for _, p in cell],
                        tuple(sp_ax), tuple(p["keep"] for _, p in cell),
                        tuple(p["start"] for _, p in cell), *extra_args)

    chunks = [None] * x.ndim
    chunks[0], chunks[c_ax] = x.chunks[0], chan
    for ax, out in zip(sp_ax, outs_sp, strict=True):
        chunks[ax] = out
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


def _refs(name, layout, bi, ci, pieces, index=()):
    """Nested Lists of references to the input chunks ``pieces`` (per spatial axis, the
    (chunk index, start, stop) of each chunk along it)."""
    if len(index) == len(pieces):
        return TaskRef(_key(name, layout, bi, ci, *index))
    return List(*(_refs(name, layout, bi, ci, pieces, index + (i,))
                  for i, _, _ in pieces[len(index)]))


def _key(name, layout, n, c, *spatial):
    return (name, *ALL_LAYOUTS[layout].shape(n, c, *spatial))


def _array(graph, name, chunks, dtype):
    return da.Array(graph, name, chunks=tuple(chunks), dtype=dtype,
                    meta=np.empty((0,) * len(chunks), dtype=dtype))
