"""The stride-1 windowed unfold of conv1d / conv3d with its images split over threads
(``window.split_threads``): against the formula's reference, every gradient, the fold and
the flipped-forward input gradient, uneven runs of images; which problems split."""

import numpy as np
import pytest

import fastconv
from fastconv import _blas
from fastconv._args.conv_nd import conv_nd_args_from_shapes
from fastconv.algos.conv3d import window
from fastconv.conv1d_window import as_volume

from . import nd_checks as nd
from .conftest import count_calls

# (n, c_in, size, c_out, kernel, stride, padding, dilation, groups)
CASES = [
    (3, 2, (4, 3, 5), 4, (2, 2, 2), 1, 1, 1, 2),
    (5, 3, (3, 4, 4), 2, (3, 2, 3), 1, ((2, 0), (0, 1), (1, 2)), (1, 2, 1), 1),
    (4, 3, (9,), 4, (3,), 1, 2, 2, 1),
]


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_split_matches_reference(case, threads, monkeypatch):
    conv, conv_backward = ((fastconv.conv1d, fastconv.conv1d_backward)
                           if len(case[2]) == 1 else
                           (fastconv.conv3d, fastconv.conv3d_backward))
    monkeypatch.setattr(window, "split_threads", lambda a, t=None: min(threads, a.n))
    runs = count_calls(monkeypatch, _blas, "on_threads")
    nd.check_forward(conv, case, "im2col", 1e-10)
    assert runs == [1]
    x, wt, _, kwargs = nd.nd_arrays(case)
    a = nd.record(x, wt, kwargs)
    a = as_volume(a) if a.rank == 1 else a
    for fold in (True, False):      # the input gradient by folding, by the flipped forward
        if fold or window.input_gradient_problem(a) is not None:
            monkeypatch.setattr(window, "input_gradient_by_fold", lambda a, _f=fold: _f)
            runs.clear()
            nd.check_backward(conv_backward, case, "im2col", 1e-10)
            assert runs == [1] * (1 if fold else 2)   # the flipped forward splits too


def test_split_weight_gradient_is_the_sum_over_images(monkeypatch):
    """Three threads (some with no image when the batch is short): the weight gradient of
    the batch is the sum of its slices'."""
    x, wt, _, kwargs = nd.nd_arrays(CASES[1])
    monkeypatch.setattr(window, "split_threads", lambda a, t=None: 3)
    gy = np.random.default_rng(2).standard_normal(fastconv.conv3d(x, wt, **kwargs).shape)
    whole = fastconv.conv3d_backward(gy, x, wt, **kwargs, algo="im2col")[1]
    parts = sum(fastconv.conv3d_backward(gy[i:i + 2], x[i:i + 2], wt, **kwargs,
                                         algo="im2col")[1] for i in (0, 2)) + \
        fastconv.conv3d_backward(gy[4:], x[4:], wt, **kwargs, algo="im2col")[1]
    np.testing.assert_allclose(whole, parts, rtol=1e-12)


@pytest.mark.parametrize("x_shape,w_shape,kw,threads", [
    ((8, 64, 16000), (64, 64, 9), dict(padding=4), 2),             # the audio layer
    ((4, 16, 32, 32, 32), (32, 16, 3, 3, 3), dict(padding=1), 2),  # the volume layer
    ((1, 16, 32, 32, 32), (32, 16, 3, 3, 3), dict(padding=1), 1),  # one image
    ((4, 2, 6, 6, 6), (2, 2, 3, 3, 3), {}, 1),                     # small GEMMs
])
def test_which_problems_split(x_shape, w_shape, kw, threads):
    rank = len(x_shape) - 2
    a = conv_nd_args_from_shapes("t", x_shape, w_shape, rank=rank, **kw)
    a = as_volume(a) if rank == 1 else a
    assert window.split_threads(a, threads=2) == threads
    assert window.split_threads(a, threads=1) == 1
