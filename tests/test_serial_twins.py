"""Kernels compiled twice, with and without threads (``algos._common.serial_twin``):
each twin keeps its own entries in numba's on-disk cache."""

import pytest

from fastconv.algos.conv3d import window
from fastconv.algos.im2col import unfold
from fastconv.algos.winograd import grad_w, tiling

TWINS = [
    (unfold._im2col_nchw, unfold._im2col_nchw_serial),
    (unfold._col2im_nchw, unfold._col2im_nchw_serial),
    (window.fold, window._fold_serial),
] + [(tiling._KERNELS[m][i], tiling._SERIAL[m][i - 1]) for m in (2, 4) for i in (1, 2)] \
  + [(grad_w._GRAD_KERNELS[m][0], grad_w._GRAD_SERIAL[m]) for m in (2, 4)]


@pytest.mark.parametrize("kernel,twin", TWINS, ids=lambda k: k.py_func.__name__)
def test_twin_has_its_own_cache_entries(kernel, twin):
    # Sharing the index file would let one load the other's machine code.
    assert kernel.targetoptions["parallel"] and "parallel" not in twin.targetoptions
    assert twin.targetoptions.get("fastmath") == kernel.targetoptions.get("fastmath")
    assert twin.targetoptions.get("nogil") is True   # Python threads overlap in it
    assert twin.py_func.__code__ is kernel.py_func.__code__
    ours, theirs = (d._cache._cache_file._index_path for d in (twin, kernel))
    assert ours != theirs and ours.endswith(".nbi")

