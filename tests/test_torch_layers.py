"""The activations, Dropout2d, interpolate / Upsample and the MSE, BCE-with-logits and NLL
losses against torch (skipped when torch is not installed): values and gradients of every
input, in float32 and float64."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
TF = torch.nn.functional

from fastconv import Tensor, nn  # noqa: E402
from fastconv.nn import functional as F  # noqa: E402

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-6)}
DTYPES = [np.float32, np.float64]


def _both(rng, shape, dtype, low=None, high=None):
    """The same random array as a fastconv Tensor and a torch tensor, both requiring grad."""
    a = (rng.standard_normal(shape) if low is None else rng.uniform(low, high, shape))
    a = a.astype(dtype)
    return Tensor(a.copy(), requires_grad=True), torch.from_numpy(a.copy()).requires_grad_()


def _check(ours, theirs, ins, dtype, rng):
    """Values of both outputs, then the gradient of every input pair for one random
    upstream gradient."""
    np.testing.assert_allclose(ours.numpy(), theirs.detach().numpy(), **TOL[dtype])
    g = rng.standard_normal(ours.shape).astype(dtype)
    ours.backward(g)
    theirs.backward(torch.from_numpy(g))
    for i, (a, b) in enumerate(ins):
        np.testing.assert_allclose(a.grad, b.grad.numpy(), err_msg=f"input {i}", **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_activations_match_torch(rng, dtype):
    cases = [
        (lambda a: F.leaky_relu(a, 0.2), lambda a: TF.leaky_relu(a, 0.2)),
        (lambda a: nn.LeakyReLU()(a), lambda a: torch.nn.LeakyReLU()(a)),
        (lambda a: F.gelu(a), lambda a: TF.gelu(a)),
        (lambda a: F.gelu(a, "tanh"), lambda a: TF.gelu(a, approximate="tanh")),
        (lambda a: nn.Sigmoid()(a), lambda a: torch.nn.Sigmoid()(a)),
        (lambda a: nn.Tanh()(a), lambda a: torch.nn.Tanh()(a)),
        (lambda a: nn.Softmax(dim=1)(a), lambda a: torch.nn.Softmax(dim=1)(a)),
    ]
    for ours, theirs in cases:
        a, b = _both(rng, (3, 4, 5), dtype)
        a.data[0, 0, :3] = b.data[0, 0, :3] = torch.tensor([0.0, 9.0, -9.0])
        _check(ours(a), theirs(b), [(a, b)], dtype, rng)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode, align_corners", [("nearest", None), ("bilinear", False),
                                                 ("bilinear", True)])
def test_interpolate_matches_torch(rng, mode, align_corners, dtype, layout):
    sizes = [dict(size=(7, 3)), dict(size=(10, 12)), dict(size=1), dict(scale_factor=2),
             dict(scale_factor=(0.35, 1.7)), dict(scale_factor=3.0001),
             dict(scale_factor=(2.5, 0.75)), dict(size=(5, 4)),
             dict(scale_factor=(0.35, 1.7), recompute_scale_factor=True)]
    for kw in sizes:
        a, b = _both(rng, (2, 3, 5, 6), dtype)
        x = a if layout == "NCHW" else Tensor(np.ascontiguousarray(
            a.data.transpose(0, 2, 3, 1)), requires_grad=True)
        ours = F.interpolate(x, mode=mode, align_corners=align_corners, layout=layout, **kw)
        theirs = TF.interpolate(b, mode=mode, align_corners=align_corners, **kw)
        if layout == "NHWC":
            ours = ours.permute(0, 3, 1, 2)
        if mode == "nearest":   # the same pixels, exactly
            np.testing.assert_array_equal(ours.numpy(), theirs.detach().numpy(), str(kw))
        g = rng.standard_normal(ours.shape).astype(dtype)
        ours.backward(g)
        theirs.backward(torch.from_numpy(g))
        np.testing.assert_allclose(ours.numpy(), theirs.detach().numpy(), err_msg=str(kw),
                                   **TOL[dtype])
        gx = x.grad if layout == "NCHW" else x.grad.transpose(0, 3, 1, 2)
        np.testing.assert_allclose(gx, b.grad.numpy(), err_msg=str(kw), **TOL[dtype])


def test_upsample_module_matches_torch(rng):
    x = rng.standard_normal((1, 2, 4, 3)).astype(np.float32)
    for args in (dict(scale_factor=2), dict(size=(5, 7), mode="bilinear"),
                 dict(scale_factor=1.5, mode="bilinear", align_corners=True)):
        np.testing.assert_allclose(nn.Upsample(**args)(x).numpy(),
                                   torch.nn.Upsample(**args)(torch.from_numpy(x)).numpy(),
                                   **TOL[np.float32])


def test_dropout2d_eval_and_extremes_match_torch(rng):
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    tx = torch.from_numpy(x)
    for p, training in ((0.5, False), (0.0, True), (1.0, True)):
        np.testing.assert_array_equal(F.dropout2d(x, p, training).numpy(),
                                      TF.dropout2d(tx, p, training).numpy())
    # in training, torch's survivors are scaled as ours: whole channels, by 1 / (1 - p)
    y = TF.dropout2d(torch.ones(64, 8, 2, 2), 0.25, True).numpy()
    assert set(np.unique(y)) == set(np.unique(F.dropout2d(np.ones((64, 8, 2, 2),
                                                                   np.float32), 0.25)))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_losses_match_torch(rng, dtype, reduction):
    # MSE, both arguments differentiable
    a, b = _both(rng, (3, 4), dtype)
    c, d = _both(rng, (3, 4), dtype)
    _check(F.mse_loss(a, c, reduction), TF.mse_loss(b, d, reduction=reduction),
           [(a, b), (c, d)], dtype, rng)
    # BCE with logits: input and target differentiable in both (ours also differentiates
    # weight and pos_weight, see tests/test_losses.py; torch refuses to)
    x, tx = _both(rng, (3, 4), dtype)
    x.data[0, :2] = tx.data[0, :2] = torch.tensor([30.0, -30.0])
    y, ty = _both(rng, (3, 4), dtype, 0, 1)
    w, tw = _both(rng, (3, 1), dtype)
    p, tp = _both(rng, (4,), dtype, 0.5, 3)
    _check(F.binary_cross_entropy_with_logits(x, y, w.detach(), reduction, p.detach()),
           TF.binary_cross_entropy_with_logits(tx, ty, tw.detach(), reduction=reduction,
                                               pos_weight=tp.detach()),
           [(x, tx), (y, ty)], dtype, rng)
    a, b = _both(rng, (5,), dtype)
    t = rng.uniform(size=5).astype(dtype)
    _check(nn.BCEWithLogitsLoss(reduction=reduction)(a, t),
           torch.nn.BCEWithLogitsLoss(reduction=reduction)(b, torch.from_numpy(t)),
           [(a, b)], dtype, rng)
    # NLL: (N, C) and (N, C, d1, d2), class weights, ignore_index
    weight = rng.uniform(0.5, 2, 4).astype(dtype)
    for shape, ignore in (((6, 4), -100), ((2, 4, 3, 2), 1)):
        a, b = _both(rng, shape, dtype)
        t = rng.integers(0, 4, (shape[0], *shape[2:]))
        t.flat[0] = ignore
        _check(F.nll_loss(a, t, weight, ignore, reduction),
               TF.nll_loss(b, torch.from_numpy(t), torch.from_numpy(weight), ignore_index=ignore,
                           reduction=reduction), [(a, b)], dtype, rng)
        a, b = _both(rng, shape, dtype)
        _check(nn.NLLLoss(ignore_index=ignore, reduction=reduction)(a, t),
               torch.nn.NLLLoss(ignore_index=ignore, reduction=reduction)(
                   b, torch.from_numpy(t)), [(a, b)], dtype, rng)
