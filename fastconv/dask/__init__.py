"""fastconv on Dask: convolve and pool image collections larger than one machine.

``fastconv.dask.conv2d``, ``conv3d``, ``max_pool2d`` and ``avg_pool2d`` take a ``dask.array.Array``
(same arguments and layouts as the in-memory functions) and return a lazy dask array
whose blocks are computed by the in-memory fastconv functions, on whatever scheduler is
active: threads, processes, or a ``dask.distributed`` cluster. The results equal the
in-memory results, whatever the chunking (see ``_geometry`` for why).

``predict`` runs a trained ``fastconv.nn`` model in evaluation mode over a
batch-chunked dask array of images.

``local_cluster`` starts a ``dask.distributed.LocalCluster`` whose worker processes
share the cores without oversubscribing them (numba and BLAS threads per worker) and
share the numba cache.

Needs the optional extra ``dask``: ``pip install '.[dask]'`` in a fastconv checkout.
"""

from __future__ import annotations

try:
    import dask.array  # noqa: F401
    import dask.task_spec  # noqa: F401  (public since dask 2025.1)
except ImportError as exc:  # pragma: no cover - exercised only without dask
    raise ImportError(
        "fastconv.dask needs dask>=2025.1 with dask.array; install the optional extra: "
        "pip install '.[dask]' in a fastconv checkout (it brings dask[array,distributed])"
    ) from exc

from .cluster import local_cluster, worker_env  # noqa: F401
from .ops import avg_pool2d, conv2d, conv3d, max_pool2d  # noqa: F401
from .predict import predict  # noqa: F401
