"""im2col's forward and weight gradient from one unfold per image (``im2col.shared``):
against the references over strides, paddings, dilations, groups, dtypes and thread
counts; conv_transpose2d_backward takes it for grad_x and grad_w together; float64
gradcheck through the autograd op."""

import numba
import numpy as np
import pytest

import fastconv
from fastconv import autotune
from fastconv._args import conv_args_from_shapes
from fastconv.algos.im2col import shared

from . import reference as ref
from .conftest import count_calls
from .test_conv_transpose import grouped_gradcheck

# (n, c, h, w, d, kh, kw, stride, padding, dilation, groups)
CASES = [
    (3, 3, 7, 6, 4, 3, 3, 1, 1, 1, 1),
    (2, 4, 9, 8, 6, 4, 4, 2, 1, 1, 2),
    (3, 2, 8, 7, 3, 3, 2, (2, 1), ((2, 1), (0, 3)), (1, 2), 1),
    # by phases: kernel sides multiples of the stride
    (3, 2, 7, 9, 3, 2, 4, (1, 2), ((0, 1), (2, 0)), 1, 1),
    (2, 3, 10, 11, 4, 6, 3, 3, 2, 1, 1),
]


def _problem(case, dtype):
    """(x, w, conv2d record, grad_y) of a case."""
    n, c, h, w, d, kh, kw, stride, padding, dilation, groups = case
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((d, c // groups, kh, kw)).astype(dtype)
    a = conv_args_from_shapes("t", x.shape, wt.shape, stride, padding, dilation, groups,
                              dtype=dtype)
    return x, wt, a, rng.standard_normal(a.y_shape).astype(dtype)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_and_weight_grad_match_reference(case, dtype, threads):
    x, wt, a, gy = _problem(case, dtype)
    groups = a.groups
    assert shared.applies(a)
    y, gw = np.full(a.y_shape, np.nan, dtype), np.full(wt.shape, np.nan, dtype)
    sums = np.full(x.shape[1], np.nan)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        shared.forward_and_weight_grad(x, wt, gy, a, y, gw, sums)
    finally:
        numba.set_num_threads(before)
    want_y = ref.conv2d(x, wt, None, a.stride, a.padding, a.dilation, groups)
    want_gw = ref.conv2d_backward(gy, x, wt, a.stride, a.padding, a.dilation, groups)[1]
    tol = ref.tolerance(dtype, "im2col")
    assert y.dtype == gw.dtype == dtype
    assert ref.rel_error(y, want_y) <= tol and ref.rel_error(gw, want_gw) <= tol
    assert ref.rel_error(sums, x.sum(axis=(0, 2, 3), dtype=np.float64)) <= 1e-12


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES[1:2] + CASES[3:] + [
    (2, 2, 11, 11, 3, 4, 2, 2, 0, 1, 1)], ids=str)   # column 10: no output reads it
def test_input_gradient_by_phases_matches_reference(case, dtype):
    x, wt, a, gy = _problem(case, dtype)
    groups = a.groups
    assert shared.by_phases(a)
    gx = np.full(x.shape, np.nan, dtype)
    shared.input_gradient_by_phases(gy, wt, a, gx)
    want = ref.conv2d_backward(gy, x, wt, a.stride, a.padding, a.dilation, groups)[0]
    assert gx.dtype == dtype and ref.rel_error(gx, want) <= ref.tolerance(dtype, "im2col")


def test_conv_transpose_forward_folds_by_phases(monkeypatch):
    from fastconv.algos.im2col import drivers

    monkeypatch.setattr(drivers, "image_last_tile", lambda args, with_grad_x=True: 0)
    calls = count_calls(monkeypatch, drivers, "input_gradient_by_phases")
    rng = np.random.default_rng(5)
    x, w, b = (rng.standard_normal(s) for s in ((2, 6, 5, 4), (6, 3, 4, 2), 3))
    got = fastconv.conv_transpose2d(x, w, b, stride=2, padding=1, algo="im2col")
    want = ref.conv_transpose2d(x, w, b, (2, 2), (1, 1))
    assert calls == [1] and ref.rel_error(got, want) < 1e-12


def test_which_unfold_by_phases():
    args = [conv_args_from_shapes("t", (1, 1, 9, 9), w, *kw) for w, kw in [
        ((1, 1, 4, 4), (2, 1)), ((1, 1, 2, 4), ((1, 2), 0)), ((1, 1, 6, 3), (3,)),
        ((1, 1, 3, 3), (2, 1)), ((1, 1, 4, 4), (2, 1, 2)), ((1, 1, 4, 4), (1, 1))]]
    assert [shared.by_phases(a) for a in args] == [True, True, True, False, False, False]


def test_which_problems_apply():
    assert shared.applies(conv_args_from_shapes("t", (16, 32, 56, 56), (64, 32, 4, 4), 2, 1))
    assert not shared.applies(conv_args_from_shapes("t", (2, 8, 5, 5), (4, 8, 1, 1)))
    assert not shared.applies(conv_args_from_shapes("t", (2, 5, 5, 8), (3, 3, 8, 4),
                                                    layout="NHWC"))
    one = conv_args_from_shapes("t", (1, 32, 56, 56), (64, 32, 4, 4), 2, 1)
    assert shared.applies(one) is (numba.get_num_threads() == 1)
    # many small images: the forward unfolds them image-last
    assert not shared.applies(conv_args_from_shapes("t", (64, 6, 14, 14), (16, 6, 5, 5)))


@pytest.mark.parametrize("algo", ["im2col", "auto"])
def test_conv_transpose_backward_unfolds_once(algo, monkeypatch):
    """grad_x and grad_w together take the shared unfold (the decoder layer's geometry,
    small); one of them alone does not."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 6, 5, 5))
    w = rng.standard_normal((6, 3, 4, 4))
    kwargs = dict(stride=2, padding=1)
    gy = rng.standard_normal((2, 3, 10, 10))
    monkeypatch.setattr(autotune, "forward_choice", lambda a, algo="auto": "im2col")
    monkeypatch.setattr(autotune, "backward_choice", lambda a, algo="auto", need_x=True:
                        "im2col")
    monkeypatch.setattr(autotune.im2col, "image_last_tile", lambda a, with_grad_x=True: 0)
    calls = count_calls(monkeypatch, shared, "forward_and_weight_grad")
    gx, gw, gb = fastconv.conv_transpose2d_backward(gy, x, w, **kwargs, algo=algo)
    assert calls == [1]
    want = ref.conv_transpose2d_backward(gy, x, w, (2, 2), (1, 1))
    for got, exp in zip((gx, gw, gb), want, strict=True):
        assert ref.rel_error(got, exp) < 1e-12
    only_w = fastconv.conv_transpose2d_backward(gy, x, w, **kwargs, algo=algo,
                                                needs_input_grad=(False, True, False))
    assert calls == [1] and ref.rel_error(only_w[1], want[1]) < 1e-12


def test_gradcheck_through_the_shared_unfold(monkeypatch):
    """float64 central differences of conv_transpose2d (two images) where its backward
    unfolds once."""
    monkeypatch.setattr(autotune.im2col, "image_last_tile", lambda a, with_grad_x=True: 0)
    calls = count_calls(monkeypatch, shared, "forward_and_weight_grad")
    assert grouped_gradcheck("im2col", n=2) and calls


@pytest.mark.parametrize("stride", [(2, 2), (1, 2), (2, 3)])
@pytest.mark.parametrize("pad", [(0, 0), (1, 1), (2, 3)])
@pytest.mark.parametrize("width", [7, 8])
def test_phases_split_and_merge_back(stride, pad, width):
    """merge_phases undoes split_phases on every pixel the phases reach (the stride-2
    rows go by pixel pairs) and zeroes the rest, and the split sums those pixels; odd and
    even widths, paddings past a whole phase."""
    from fastconv.algos.im2col import phase_kernels

    (sh, sw), (pt, pl) = stride, pad
    img = np.random.default_rng(3).standard_normal((2, 6, width)).astype(np.float32)
    for hq, wq in [((6 + pt) // sh + 1, (width + pl) // sw + 1), (3, 2)]:
        phases, sums = np.full((2, sh, sw, hq, wq), np.nan, np.float32), np.empty(2)
        phase_kernels.split_phases(img, phases, pt, pl, sums)
        back = np.full_like(img, np.nan)
        phase_kernels.merge_phases(phases, back, pt, pl)
        want = np.zeros_like(img)
        rows, cols = min(6, hq * sh - pt), min(width, wq * sw - pl)
        want[:, :rows, :cols] = img[:, :rows, :cols]
        assert np.array_equal(back, want)
        assert np.allclose(sums, want.sum(axis=(1, 2), dtype=np.float64), rtol=1e-12)


def test_weight_grad_bits_do_not_depend_on_threads():
    """The images go to whichever thread is free, in runs whose sums are added in order:
    one thread and two give the same bits, call after call."""
    x, wt, a, gy = _problem((12, 3, 9, 8, 4, 4, 4, 2, 1, 1, 1), np.float32)
    before = numba.get_num_threads()
    results = []
    try:
        for threads in [1, 2, 2, 2]:
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            y, gw, sums = np.empty(a.y_shape, np.float32), np.empty_like(wt), np.empty(3)
            shared.forward_and_weight_grad(x, wt, gy, a, y, gw, sums)
            results.append((y, gw, sums))
    finally:
        numba.set_num_threads(before)
    for y, gw, sums in results[1:]:
        assert np.array_equal(y, results[0][0]) and np.array_equal(gw, results[0][1])
        assert np.array_equal(sums, results[0][2])
    want = ref.conv2d_backward(gy, x, wt, a.stride, a.padding, a.dilation, 1)[1]
    assert ref.rel_error(results[0][1], want) <= ref.tolerance(np.float32, "im2col")
