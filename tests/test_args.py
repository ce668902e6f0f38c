"""The canonical argument record and the output-size law."""

import dataclasses

import numpy as np
import pytest

from fastconv._args import conv_args_from_shapes, conv_output_size, same_padding


@pytest.mark.parametrize("n,k,s,p,r,want", [
    (3, 2, 1, 0, 1, 2),        # the seed's n - k + 1
    (28, 5, 1, 0, 1, 24),
    (56, 3, 2, 1, 1, 28),
    (224, 7, 2, 3, 1, 112),
    (56, 3, 1, 2, 2, 56),      # dilated "same"
    (5, 3, 3, 0, 1, 1),
    (7, 3, 2, 0, 1, 3),
])
def test_output_size_law(n, k, s, p, r, want):
    assert conv_output_size(n, k, s, p, p, r) == want
    # brute force: count window starts that fit inside the padded input
    starts = [i for i in range(0, n + 2 * p) if i % s == 0 and i + r * (k - 1) < n + 2 * p]
    assert len(starts) == want


@pytest.mark.parametrize("k,r,want", [(3, 1, (1, 1)), (4, 1, (1, 2)), (3, 2, (2, 2)),
                                      (1, 1, (0, 0)), (2, 3, (1, 2))])
def test_same_padding_splits_floor_half_first(k, r, want):
    assert same_padding(k, r) == want
    assert conv_output_size(10, k, 1, *want, r) == 10


def test_record_is_canonical_and_frozen():
    a = conv_args_from_shapes("conv2d", (2, 8, 10, 12), (4, 4, 3, 5), stride=(2, 1),
                              padding=((1, 2), (0, 3)), dilation=2, groups=2)
    assert a.stride == (2, 1) and a.dilation == (2, 2)
    assert a.padding == ((1, 2), (0, 3))
    assert (a.h_out, a.w_out) == (conv_output_size(10, 3, 2, 1, 2, 2),
                                  conv_output_size(12, 5, 1, 0, 3, 2))
    assert a.y_shape == (2, 4, a.h_out, a.w_out)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.groups = 1


def test_nhwc_shapes_map_to_the_same_record():
    a = conv_args_from_shapes("conv2d", (2, 8, 10, 12), (4, 8, 3, 3), padding=1)
    b = conv_args_from_shapes("conv2d", (2, 10, 12, 8), (3, 3, 8, 4), padding=1,
                              layout="NHWC")
    assert a.x_shape == b.x_shape and a.w_shape == b.w_shape and a.y_shape == b.y_shape


def test_flops_counts_multiply_adds_twice():
    a = conv_args_from_shapes("conv2d", (1, 4, 5, 5), (2, 2, 3, 3), groups=2, dtype=np.float64)
    assert a.flops == 2 * 1 * 2 * 3 * 3 * 2 * 9


@pytest.mark.parametrize("good,bad", [(1, True), ((1, 1), (1, True)), (1, 1.0),
                                      ((1, 1), "(1, 1)")], ids=str)
def test_a_remembered_problem_keeps_apart_arguments_that_compare_equal(good, bad):
    """A validated problem is remembered by its arguments: a stride that equals a
    remembered one but is not an int (or pair of ints) still raises."""
    a = conv_args_from_shapes("conv2d", (2, 3, 9, 9), (4, 3, 3, 3), stride=good)
    assert a.stride == (1, 1)
    with pytest.raises((TypeError, ValueError), match="conv2d: stride="):
        conv_args_from_shapes("conv2d", (2, 3, 9, 9), (4, 3, 3, 3), stride=bad)


@pytest.mark.parametrize("good,bad", [(((1, 1), (1, 1)), ((1, True), (1, 1))), (1, 1.0),
                                      (1, True)], ids=str)
def test_a_remembered_padding_keeps_apart_values_that_compare_equal(good, bad):
    """Pairs of (low, high) ints are remembered as they are, floats and bools by their
    type too: a padding equal to a remembered one but of bools or floats still raises."""
    a = conv_args_from_shapes("conv2d", (2, 3, 9, 9), (4, 3, 3, 3), padding=good)
    assert a.padding == ((1, 1), (1, 1))
    with pytest.raises((TypeError, ValueError), match="conv2d: padding="):
        conv_args_from_shapes("conv2d", (2, 3, 9, 9), (4, 3, 3, 3), padding=bad)


def test_the_record_hashes_once_and_pickles_without_its_hash():
    """The record's hash is kept after first use (a plan key hashes it every call) and
    left out of a pickle (a string's hash differs between processes), as are the
    layout shapes it keeps."""
    import pickle
    a = conv_args_from_shapes("conv2d", (2, 3, 9, 9), (4, 3, 3, 3), padding=1)
    assert hash(a) == hash(dataclasses.astuple(a)) and "_hash_once" in vars(a)
    assert a.y_layout_shape == (2, 4, 9, 9) and "y_layout_shape" in vars(a)   # kept too
    b = pickle.loads(pickle.dumps(a))
    assert b == a and "_hash_once" not in vars(b) and hash(b) == hash(a)
    assert "y_layout_shape" not in vars(b) and b.y_layout_shape == a.y_layout_shape
