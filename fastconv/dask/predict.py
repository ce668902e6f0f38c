"""Run a trained fastconv.nn model over a batch-chunked dask array."""

from __future__ import annotations

import copy

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from dask.task_spec import DataNode, Task, TaskRef

from .ops import check_dask_array


def _forward(model, batch: np.ndarray) -> np.ndarray:
    """The model's output on one batch, without recording a graph (runs on a worker)."""
    import fastconv

    with fastconv.no_grad():
        out = model(fastconv.Tensor(batch))
    return np.asarray(out.data)


def predict(model, images, batch_chunk=None, *, output_shape=None):
    """Apply ``model`` in evaluation mode to every image of a dask array.

    Parameters
    ----------
    model : a ``fastconv.nn.Module`` (anything with ``eval()`` that maps a
        ``fastconv.Tensor`` batch to a Tensor). A copy is taken and put in evaluation
        mode; the caller's model is not changed, and later changes to it do not reach
        the graph. The copy sits once in the graph, so a distributed scheduler ships it
        to each worker once, not once per block.
    images : dask array (N, ...) of float32/float64, e.g. (N, C, H, W); each chunk
        along the batch axis is one forward pass. Chunks over the other axes are merged
        (the model needs whole images).
    batch_chunk : int or None; images per forward pass (rechunks the batch axis), None
        keeps the batch chunks of ``images``.
    output_shape : tuple or None; the shape of the model's output for one image (e.g.
        ``(10,)``) with dtype that of ``images``. None: found by running the copy on a
        single zero image here, the only work done before the caller computes.

    Returns
    -------
    dask array (N, *output_shape) with the batch chunks of the input and one chunk over
    the other axes; lazy.
    """
    op = "predict"
    images = check_dask_array(op, "images", images)
    if not callable(model) or not callable(getattr(model, "eval", None)):
        raise TypeError(f"{op}: model must be a fastconv.nn.Module (callable, with eval()), "
                        f"got {type(model).__name__}")
    if images.ndim < 2:
        raise ValueError(f"{op}: images must have a batch axis and image axes, got shape "
                         f"{images.shape}")
    if batch_chunk is not None and (not isinstance(batch_chunk, int)
                                    or isinstance(batch_chunk, bool) or batch_chunk < 1):
        raise ValueError(f"{op}: batch_chunk={batch_chunk!r} must be a positive int or None")
    model = copy.deepcopy(model)
    model.eval()
    images = images.rechunk((batch_chunk or images.chunks[0],) + images.shape[1:])
    if output_shape is None:
        probe = _forward(model, np.zeros((1,) + images.shape[1:], images.dtype))
        output_shape, dtype = probe.shape[1:], probe.dtype
    else:
        output_shape, dtype = tuple(int(d) for d in output_shape), images.dtype

    token = tokenize(images.name, model, output_shape)
    name, model_key = f"fastconv-predict-{token}", f"fastconv-model-{token}"
    dsk = {model_key: DataNode(model_key, model)}
    zeros = (0,) * (images.ndim - 1)
    tail = (0,) * len(output_shape)
    for i in range(len(images.chunks[0])):
        key = (name, i) + tail
        dsk[key] = Task(key, _forward, TaskRef(model_key), TaskRef((images.name, i) + zeros))
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[images])
    chunks = (images.chunks[0],) + tuple((d,) for d in output_shape)
    return da.Array(graph, name, chunks=chunks, dtype=dtype,
                    meta=np.empty((0,) * len(chunks), dtype=dtype))
