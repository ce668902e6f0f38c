"""MSE, BCE-with-logits and NLL losses (functions and modules): values against slow
obvious references, every reduction, gradients against finite differences (float64),
the errors for bad arguments. torch comparisons are in tests/test_torch_layers.py."""

import math

import numpy as np
import pytest

from fastconv import Tensor, gradcheck, nn
from fastconv.nn import functional as F


def _t(rng, *shape):
    return Tensor(rng.standard_normal(shape), requires_grad=True)


def _reduced(losses, reduction):
    return {"none": losses, "sum": losses.sum(), "mean": losses.mean()}[reduction]


REDUCTIONS = ["mean", "sum", "none"]


# ---------------------------------------------------------------------------------- MSE
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_loss(rng, reduction):
    x, t = _t(rng, 3, 4), _t(rng, 3, 4)
    want = _reduced((x.data - t.data) ** 2, reduction)
    np.testing.assert_allclose(F.mse_loss(x, t, reduction).numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(nn.MSELoss(reduction)(x, t).numpy(), want, rtol=1e-12)
    assert gradcheck(lambda a, b: F.mse_loss(a, b, reduction), [x, t])
    assert F.mse_loss(x.data.astype(np.float32), t.data.astype(np.float32)).dtype == np.float32


def test_mse_loss_errors():
    with pytest.raises(ValueError, match=r"mse_loss: target of shape \(3,\) must have the "
                       r"input's shape \(2, 3\)"):
        F.mse_loss(np.ones((2, 3)), np.ones(3))
    with pytest.raises(TypeError, match="mse_loss: target must be floating point, got dtype "
                       "int64"):
        F.mse_loss(np.ones(3), np.ones(3, np.int64))
    with pytest.raises(ValueError, match="mse_loss: reduction='max' is not known; acceptable "
                       "values are 'mean', 'sum', 'none'"):
        F.mse_loss(np.ones(3), np.ones(3), "max")
    with pytest.raises(ValueError, match="MSELoss: reduction='avg' is not known"):
        nn.MSELoss("avg")


# -------------------------------------------------------------------------------- BCE
def _bce_reference(x, y, weight=None, pos_weight=None):
    """-w [p y log s(x) + (1 - y) log(1 - s(x))], element by element with math.exp."""
    w = np.broadcast_to(1.0 if weight is None else weight, x.shape)
    p = np.broadcast_to(1.0 if pos_weight is None else pos_weight, x.shape)
    out = np.empty(x.shape)
    for i in np.ndindex(x.shape):
        s = 1 / (1 + math.exp(-x[i]))
        out[i] = -w[i] * (p[i] * y[i] * math.log(s) + (1 - y[i]) * math.log(1 - s))
    return out


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits(rng, reduction):
    x, y = _t(rng, 3, 4), Tensor(rng.uniform(size=(3, 4)), requires_grad=True)
    w, p = _t(rng, 4), Tensor(rng.uniform(0.5, 3, size=4), requires_grad=True)
    for kw in ({}, dict(weight=w), dict(pos_weight=p), dict(weight=w, pos_weight=p)):
        ref = _bce_reference(x.data, y.data, *(kw[k].data if k in kw else None
                                               for k in ("weight", "pos_weight")))
        got = F.binary_cross_entropy_with_logits(x, y, reduction=reduction, **kw)
        np.testing.assert_allclose(got.numpy(), _reduced(ref, reduction), rtol=1e-10)
        mod = nn.BCEWithLogitsLoss(kw.get("weight"), reduction, kw.get("pos_weight"))
        np.testing.assert_allclose(mod(x, y).numpy(), _reduced(ref, reduction), rtol=1e-10)
        names = ["x", "y", *kw]
        assert gradcheck(
            lambda *args, kw=kw, names=names: F.binary_cross_entropy_with_logits(
                args[0], args[1], reduction=reduction, **dict(zip(names[2:], args[2:],
                                                                   strict=True))),
            [x, y, *kw.values()])


def test_bce_with_logits_is_stable_for_large_logits():
    x = np.array([-1000.0, 1000.0, -40.0, 40.0], np.float32)
    y = np.array([1.0, 0.0, 0.0, 1.0], np.float32)
    a = Tensor(x, requires_grad=True)
    loss = F.binary_cross_entropy_with_logits(a, y, reduction="none")
    np.testing.assert_allclose(loss.numpy(), [1000, 1000, 4.248354e-18, 4.248354e-18],
                               rtol=1e-6)
    loss.sum().backward()
    np.testing.assert_allclose(a.grad, [-1, 1, 4.248354e-18, -4.248354e-18], rtol=1e-6)


def test_bce_module_keeps_weights_as_buffers():
    m = nn.BCEWithLogitsLoss(pos_weight=np.array([2.0, 3.0]))
    assert list(m.state_dict()) == ["pos_weight"]
    assert repr(m) == "BCEWithLogitsLoss(reduction='mean')"


def test_bce_with_logits_errors():
    op = "binary_cross_entropy_with_logits"
    with pytest.raises(ValueError, match=rf"{op}: target of shape \(2, 2\) must have the "
                       r"input's shape \(2, 3\)"):
        F.binary_cross_entropy_with_logits(np.ones((2, 3)), np.ones((2, 2)))
    with pytest.raises(ValueError, match=rf"{op}: pos_weight of shape \(2,\) does not "
                       r"broadcast to the input's shape \(2, 3\)"):
        F.binary_cross_entropy_with_logits(np.ones((2, 3)), np.ones((2, 3)),
                                           pos_weight=np.ones(2))
    with pytest.raises(ValueError, match=rf"{op}: weight of shape \(4, 2, 3\) does not "
                       "broadcast"):
        F.binary_cross_entropy_with_logits(np.ones((2, 3)), np.ones((2, 3)),
                                           weight=np.ones((4, 2, 3)))
    with pytest.raises(TypeError, match=f"{op}: target must be floating point"):
        F.binary_cross_entropy_with_logits(np.ones(2), np.ones(2, np.int64))
    with pytest.raises(ValueError, match=f"{op}: reduction=None is not known"):
        F.binary_cross_entropy_with_logits(np.ones(2), np.ones(2), reduction=None)


# -------------------------------------------------------------------------------- NLL
def _nll_reference(x, t, weight, ignore_index, reduction):
    """Loop over the predictions of (N, C, ...) log-probabilities."""
    c = x.shape[1]
    w = np.ones(c) if weight is None else weight
    losses = np.zeros(t.shape)
    total_w = 0.0
    for i in np.ndindex(t.shape):
        if t[i] == ignore_index:
            continue
        losses[i] = -w[t[i]] * x[(i[0], t[i], *i[1:])]
        total_w += w[t[i]]
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.sum() / total_w


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 2, 2)])
def test_nll_loss(rng, reduction, shape):
    x = _t(rng, *shape)
    t = rng.integers(0, 3, (shape[0], *shape[2:]))
    t.flat[1] = -100
    w = rng.uniform(0.5, 2, 3)
    for weight, ignore in ((None, -100), (w, -100), (w, 2)):
        if ignore == 2:
            t = np.where(t == -100, 0, t)
        want = _nll_reference(x.data, t, weight, ignore, reduction)
        got = F.nll_loss(x, t, weight, ignore_index=ignore, reduction=reduction)
        assert got.shape == want.shape
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
        mod = nn.NLLLoss(weight, ignore_index=ignore, reduction=reduction)
        np.testing.assert_allclose(mod(x, t).numpy(), want, rtol=1e-12)
        assert gradcheck(lambda a, weight=weight, ignore=ignore, t=t: F.nll_loss(
            a, t, weight, ignore_index=ignore, reduction=reduction), [x])


def test_nll_loss_unbatched_all_ignored_and_log_softmax(rng):
    x = _t(rng, 4)
    assert F.nll_loss(x, np.array(2)).item() == -x.data[2]
    assert math.isnan(F.nll_loss(_t(rng, 2, 3), np.array([-100, -100])).item())
    a, t = _t(rng, 4, 5), np.array([0, 4, 2, 2])
    np.testing.assert_allclose(F.nll_loss(F.log_softmax(a, 1), t).numpy(),
                               F.cross_entropy(a, t).numpy(), rtol=1e-12)
    m = nn.NLLLoss(np.ones(5))
    assert list(m.state_dict()) == ["weight"] and m.ignore_index == -100


def test_nll_loss_errors():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"nll_loss: target value 3 is out of range for C=3 "
                       r"classes \(must be in \[0, 2\] or ignore_index=-100\)"):
        F.nll_loss(x, np.array([0, 3]))
    with pytest.raises(ValueError, match=r"nll_loss: target of shape \(3,\) does not match "
                       r"input of shape \(2, 3\): expected target shape \(2,\)"):
        F.nll_loss(x, np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="nll_loss: target must hold integer class indices, "
                       "got dtype float64"):
        F.nll_loss(x, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"nll_loss: weight must have shape \(C,\) = \(3,\), "
                       r"got \(2,\)"):
        F.nll_loss(x, np.array([0, 1]), np.ones(2))
    with pytest.raises(ValueError, match="nll_loss: weight does not get a gradient"):
        F.nll_loss(x, np.array([0, 1]), Tensor(np.ones(3), requires_grad=True))
    with pytest.raises(ValueError, match="nll_loss: input must be .* got a 0-d tensor"):
        F.nll_loss(np.float64(1.0), np.array(0))
    with pytest.raises(ValueError, match="NLLLoss: reduction='mea' is not known"):
        nn.NLLLoss(reduction="mea")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_cross_entropy_kernels_match_the_formula(dtype, rng):
    # the kernels against numpy's whole-array formula in float64, with rows holding a
    # NaN, an infinity and large logits (NaN and inf rows give NaN, as numpy's formula)
    from fastconv.nn import _softmax_loss

    logits = (rng.standard_normal((7, 5)) * 3).astype(dtype)
    logits[1, 2] = np.nan
    logits[2, 0] = np.inf
    logits[3] = [1e4, -1e4, 0.0, 1e4, 3.0]
    target = np.array([0, 1, 2, 3, 4, 0, 3], np.intp)
    losses, logp = _softmax_loss.forward(logits[:, ::-1][:, ::-1], target)   # a view
    x = logits.astype(np.float64)
    with np.errstate(invalid="ignore"):
        shifted = x - x.max(axis=1, keepdims=True)
        want_logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    want = -want_logp[np.arange(7), target]
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert losses.dtype == logp.dtype == dtype
    np.testing.assert_allclose(logp, want_logp, rtol=tol, atol=tol)
    np.testing.assert_allclose(losses, want, rtol=tol, atol=tol)
    assert np.isnan(logp[1]).all() and np.isnan(logp[2]).all()
    scale = np.linspace(0.5, 2.0, 7).astype(dtype)
    grad = _softmax_loss.backward(logp, target, scale)
    want_grad = np.exp(want_logp)
    want_grad[np.arange(7), target] -= 1
    np.testing.assert_allclose(grad, want_grad * scale[:, None], rtol=tol, atol=tol)
