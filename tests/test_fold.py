"""unfold / fold and the Unfold / Fold layers: against the slow reference
(tests/reference.py), as adjoints, by finite differences, and against torch where it is
installed. Errors name the op, the rule and the values."""

import numpy as np
import pytest

import fastconv
from fastconv import Tensor, gradcheck, nn
from fastconv.nn import functional as F

from . import reference as ref

#: (input shape, kernel_size, dilation, padding, stride) as torch takes them.
CASES = [
    ((2, 3, 5, 6), 2, 1, 0, 1),
    ((1, 2, 5, 6), (2, 3), (1, 2), 1, (2, 1)),
    ((2, 1, 7, 4), 3, 1, (2, 0), 2),
    ((1, 2, 4, 4), 1, 1, 0, 3),
    ((1, 1, 3, 3), 3, 1, 1, 1),
]


def _pairs(*values):
    return [v if isinstance(v, tuple) else (v, v) for v in values]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, k, d, p, s", CASES)
def test_unfold_and_fold_match_reference(rng, dtype, shape, k, d, p, s):
    x = rng.standard_normal(shape).astype(dtype)
    cols = fastconv.unfold(x, k, d, p, s)
    assert cols.dtype == dtype
    np.testing.assert_array_equal(cols, ref.unfold(x, *_pairs(k, d, p, s)))
    c = rng.standard_normal(cols.shape).astype(dtype)
    y = fastconv.fold(c, shape[-2:], k, d, p, s)
    assert y.dtype == dtype and y.shape == shape
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, ref.fold(c, shape[-2:], *_pairs(k, d, p, s)), **tol)


@pytest.mark.parametrize("shape, k, d, p, s", CASES)
def test_fold_is_the_adjoint_of_unfold(rng, shape, k, d, p, s):
    """<unfold(x), c> = <x, fold(c)>."""
    x = rng.standard_normal(shape)
    cols = fastconv.unfold(x, k, d, p, s)
    c = rng.standard_normal(cols.shape)
    np.testing.assert_allclose(np.vdot(cols, c), np.vdot(x, fastconv.fold(c, shape[-2:], k, d,
                                                                           p, s)), rtol=1e-12)


def test_unbatched_and_by_hand(rng):
    x = np.arange(9.0).reshape(1, 3, 3)
    cols = fastconv.unfold(x, 2)
    np.testing.assert_array_equal(cols, [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7],
                                         [4, 5, 7, 8]])
    np.testing.assert_array_equal(fastconv.fold(np.ones((4, 4)), 3, 2),
                                  [[[1, 2, 1], [2, 4, 2], [1, 2, 1]]])
    # non-overlapping blocks: fold inverts unfold
    y = rng.standard_normal((2, 3, 4, 6))
    np.testing.assert_array_equal(fastconv.fold(fastconv.unfold(y, 2, stride=2), (4, 6), 2,
                                                stride=2), y)


@pytest.mark.parametrize("op", ["unfold", "fold"])
def test_gradcheck(rng, op):
    if op == "unfold":
        a = Tensor(rng.standard_normal((1, 2, 3, 4)), requires_grad=True)
        assert gradcheck(lambda t: F.unfold(t, (2, 2), 1, 1, (2, 1)), [a])
    else:
        a = Tensor(rng.standard_normal((1, 8, 10)), requires_grad=True)
        assert gradcheck(lambda t: F.fold(t, (3, 4), (2, 2), 1, 1, (2, 1)), [a])


def test_layers(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    u = nn.Unfold(2, padding=1)
    cols = u(x)
    np.testing.assert_array_equal(cols.numpy(), ref.unfold(x, (2, 2), padding=(1, 1)))
    f = nn.Fold((4, 5), 2, padding=1)
    np.testing.assert_allclose(f(cols).numpy(), ref.fold(cols.numpy(), (4, 5), (2, 2),
                                                          padding=(1, 1)), rtol=1e-12)
    assert repr(u) == "Unfold(kernel_size=2, dilation=1, padding=1, stride=1)"
    assert repr(f) == "Fold(output_size=(4, 5), kernel_size=2, dilation=1, padding=1, stride=1)"


@pytest.mark.parametrize("call, match", [
    (lambda: fastconv.unfold(np.zeros((2, 3, 5, 6)), 7),
     r"unfold: spatial size \(5, 6\) with kernel_size=\(7, 7\), dilation=\(1, 1\), "
     r"padding=\(0, 0\), stride=\(1, 1\) gives -1 x 0 blocks; each must be at least 1"),
    (lambda: fastconv.unfold(np.zeros((2, 3, 5, 6)), 0), r"unfold: kernel_size=0 must be "
     r"positive"),
    (lambda: fastconv.unfold(np.zeros((2, 3, 5, 6)), 2, stride=0),
     r"unfold: stride=0 must be positive"),
    (lambda: fastconv.unfold(np.zeros((2, 3, 5, 6)), 2, padding=-1),
     r"unfold: padding=-1 must be >= 0"),
    (lambda: fastconv.unfold(np.zeros((5, 6)), 2),
     r"unfold: input must be 4-D \(N, C, H, W\) or 3-D \(C, H, W\), got 2-D shape \(5, 6\)"),
    (lambda: fastconv.unfold(np.zeros((1, 1, 5, 6), np.int64), 2),
     r"unfold: input has dtype int64; accepted dtypes are float32 and float64"),
    (lambda: fastconv.fold(np.zeros((2, 12, 20)), (5, 7), 2),
     r"fold: input has L=20 blocks \(shape \(2, 12, 20\)\) but output_size=\(5, 7\) with "
     r"kernel_size=\(2, 2\), dilation=\(1, 1\), padding=\(0, 0\), stride=\(1, 1\) gives "
     r"4 x 6 = 24"),
    (lambda: fastconv.fold(np.zeros((2, 13, 20)), (5, 6), 2),
     r"fold: input's axis of size 13 \(shape \(2, 13, 20\)\) must be divisible by "
     r"kernel_size 2 x 2 = 4"),
    (lambda: fastconv.fold(np.zeros(20), (5, 6), 2),
     r"fold: input must be 3-D \(N, C\*kh\*kw, L\) or 2-D \(C\*kh\*kw, L\), got 1-D"),
    (lambda: fastconv.fold(np.zeros((2, 12, 20)), (1, 1), 2),
     r"fold: spatial size \(1, 1\) .* gives 0 x 0 blocks; each must be at least 1"),
])
def test_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


# -------------------------------------------------------------------------------- torch
TORCH_CASES = CASES + [
    ((2, 2, 6, 7), (3, 2), (2, 1), (1, 2), (1, 3)),
    ((1, 3, 8, 8), 3, 2, 2, 2),
    ((3, 5, 5), (1, 3), 1, (0, 1), (2, 2)),        # unbatched
]


@pytest.mark.parametrize("shape, k, d, p, s", TORCH_CASES)
def test_unfold_and_fold_match_torch(rng, shape, k, d, p, s):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    x = rng.standard_normal(shape)
    tx = torch.tensor(x, requires_grad=True)
    want = tf.unfold(tx, k, d, p, s)
    xt = Tensor(x, requires_grad=True)
    got = F.unfold(xt, k, d, p, s)
    np.testing.assert_array_equal(got.numpy(), want.detach().numpy())
    g = rng.standard_normal(want.shape)
    want.backward(torch.tensor(g))
    got.backward(g)
    np.testing.assert_allclose(xt.grad, tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    tc = torch.tensor(g, requires_grad=True)
    want_f = tf.fold(tc, shape[-2:], k, d, p, s)
    ct = Tensor(g, requires_grad=True)
    got_f = F.fold(ct, shape[-2:], k, d, p, s)
    np.testing.assert_allclose(got_f.numpy(), want_f.detach().numpy(), rtol=1e-12, atol=1e-12)
    gy = rng.standard_normal(want_f.shape)
    want_f.backward(torch.tensor(gy))
    got_f.backward(gy)
    np.testing.assert_array_equal(ct.grad, tc.grad.numpy())


@pytest.mark.slow
def test_random_sweep_matches_torch(rng):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    for _ in range(100):
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 4)), *rng.integers(1, 9, 2))
        k, d, p, s = (tuple(int(v) for v in rng.integers(lo, hi, 2))
                      for lo, hi in ((1, 4), (1, 3), (0, 3), (1, 4)))
        x = rng.standard_normal(shape).astype(np.float32)
        try:
            want = tf.unfold(torch.tensor(x), k, d, p, s).numpy()
        except RuntimeError:
            with pytest.raises(ValueError, match="unfold: "):
                fastconv.unfold(x, k, d, p, s)
            continue
        np.testing.assert_array_equal(fastconv.unfold(x, k, d, p, s), want)
        np.testing.assert_allclose(fastconv.fold(want, shape[-2:], k, d, p, s),
                                   tf.fold(torch.tensor(want), shape[-2:], k, d, p, s).numpy(),
                                   rtol=1e-5, atol=1e-5)


def test_layers_match_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    tu, tfold = torch.nn.Unfold((2, 3), 1, 1, 2), torch.nn.Fold((5, 6), (2, 3), 1, 1, 2)
    u, f = nn.Unfold((2, 3), 1, 1, 2), nn.Fold((5, 6), (2, 3), 1, 1, 2)
    cols = tu(torch.tensor(x))
    np.testing.assert_array_equal(u(x).numpy(), cols.numpy())
    np.testing.assert_allclose(f(cols.numpy()).numpy(), tfold(cols).numpy(), rtol=1e-6)
    assert (repr(u), repr(f)) == (repr(tu), repr(tfold))
