"""Optimisers and schedules against their formulas written out step by step (torch's
own numbers are compared in test_torch_nn.py)."""

import math

import numpy as np
import pytest

from fastconv import Tensor, optim
from fastconv.nn import Parameter


def _params(rng, dtype=np.float64):
    return [Parameter(rng.standard_normal((3, 2)).astype(dtype)),
            Parameter(rng.standard_normal(4).astype(dtype))]


def _grads(rng, params, steps):
    return [[rng.standard_normal(p.shape).astype(p.dtype) for p in params] for _ in range(steps)]


@pytest.mark.parametrize("momentum,nesterov,wd,damp", [(0.0, False, 0.0, 0.0),
                                                        (0.9, False, 0.0, 0.0),
                                                        (0.9, True, 1e-2, 0.0),
                                                        (0.5, False, 0.1, 0.3)])
def test_sgd_formula(rng, momentum, nesterov, wd, damp):
    params = _params(rng)
    start = [p.data.copy() for p in params]
    grads = _grads(rng, params, 4)
    opt = optim.SGD(params, lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=wd,
                    dampening=damp)
    for gs in grads:
        for p, g in zip(params, gs, strict=True):
            p.grad = g
        opt.step()
    for i, p in enumerate(params):
        w, buf = start[i].copy(), None
        for gs in grads:
            d = gs[i] + wd * w
            buf = d.copy() if buf is None else momentum * buf + (1 - damp) * d
            step = (d + momentum * buf if nesterov else buf) if momentum else d
            w = w - 0.1 * step
        np.testing.assert_allclose(p.data, w, rtol=1e-12)


@pytest.mark.parametrize("cls,wd,amsgrad", [(optim.Adam, 0.0, False), (optim.Adam, 0.1, False),
                                            (optim.Adam, 0.0, True), (optim.AdamW, 0.1, False),
                                            (optim.AdamW, 0.1, True)])
def test_adam_formula(rng, cls, wd, amsgrad):
    params = _params(rng)
    start = [p.data.copy() for p in params]
    grads = _grads(rng, params, 5)
    lr, b1, b2, eps = 0.01, 0.8, 0.99, 1e-6
    opt = cls(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, amsgrad=amsgrad)
    for gs in grads:
        for p, g in zip(params, gs, strict=True):
            p.grad = g
        opt.step()
    for i, p in enumerate(params):
        w, m, v, vmax = start[i].copy(), 0.0, 0.0, 0.0
        for t, gs in enumerate(grads, 1):
            g = gs[i]
            if cls is optim.AdamW:
                w = w * (1 - lr * wd)
            else:
                g = g + wd * w
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            vmax = np.maximum(vmax, v)
            vhat = (vmax if amsgrad else v) / (1 - b2 ** t)
            w = w - lr * (m / (1 - b1 ** t)) / (np.sqrt(vhat) + eps)
        np.testing.assert_allclose(p.data, w, rtol=1e-10)


def test_adamw_decays_without_gradient_signal(rng):
    p = Parameter(np.full(3, 2.0))
    opt = optim.AdamW([p], lr=0.1, weight_decay=0.5)
    p.grad = np.zeros(3)
    opt.step()
    np.testing.assert_allclose(p.data, 2.0 * (1 - 0.1 * 0.5))


def test_float32_parameters_stay_float32(rng):
    for cls in (optim.SGD, optim.Adam, optim.AdamW):
        params = _params(rng, np.float32)
        opt = cls(params, lr=0.1, weight_decay=0.01)
        for p in params:
            p.grad = np.ones(p.shape, np.float32)
        opt.step()
        assert all(p.dtype == np.float32 for p in params)


def test_param_groups_zero_grad_and_skipped_params(rng):
    a, b, c = (Parameter(np.ones(2)) for _ in range(3))
    opt = optim.SGD([{"params": [a]}, {"params": [b, c], "lr": 1.0}], lr=0.1)
    a.grad, b.grad = np.ones(2), np.ones(2)          # c has no gradient: left alone
    opt.step()
    np.testing.assert_allclose(a.data, 0.9)
    np.testing.assert_allclose(b.data, 0.0)
    np.testing.assert_allclose(c.data, 1.0)
    opt.zero_grad()
    assert a.grad is None and b.grad is None
    a.grad = np.ones(2)
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(a.grad, 0.0)


def test_optimiser_errors():
    p = Parameter(np.ones(2))
    with pytest.raises(ValueError, match="SGD: got an empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="SGD: lr=-1 must be non-negative"):
        optim.SGD([p], lr=-1)
    with pytest.raises(ValueError, match="nesterov momentum requires momentum > 0"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match=r"Adam: betas=\(0.9, 1.0\) must lie in \[0, 1\)"):
        optim.Adam([p], betas=(0.9, 1.0))
    with pytest.raises(TypeError, match="can only optimise Tensors, got ndarray"):
        optim.Adam([np.ones(2)])
    with pytest.raises(ValueError, match="does not require grad"):
        optim.Adam([Tensor(np.ones(2))])
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.SGD([{"params": [p]}, {"params": [p]}], lr=0.1)


@pytest.mark.parametrize("cls,kw", [(optim.SGD, dict(lr=0.1, momentum=0.9)),
                                    (optim.Adam, dict(lr=0.05)), (optim.AdamW, dict(lr=0.05))])
def test_optimisers_minimise_a_quadratic(rng, cls, kw):
    target = rng.standard_normal(5)
    w = Parameter(np.zeros(5))
    opt = cls([w], **kw)
    for _ in range(300):
        opt.zero_grad()
        loss = ((w - target) ** 2).sum()
        loss.backward()
        opt.step()
    np.testing.assert_allclose(w.data, target, atol=0.02)


def test_step_lr():
    p = Parameter(np.ones(1))
    opt = optim.SGD([p], lr=1.0)
    sched = optim.StepLR(opt, step_size=3, gamma=0.5)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]
    assert sched.get_last_lr() == [0.25] and sched.last_epoch == 8
    with pytest.raises(ValueError, match="StepLR: step_size=0 must be a positive int"):
        optim.StepLR(opt, 0)


def test_cosine_annealing_lr():
    p = Parameter(np.ones(1))
    opt = optim.Adam([{"params": [p], "lr": 0.1}])
    sched = optim.CosineAnnealingLR(opt, T_max=4, eta_min=0.01)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    want = [0.01 + 0.09 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(6)]
    np.testing.assert_allclose(lrs, want, rtol=1e-14)
    assert lrs[0] == pytest.approx(0.1) and lrs[4] == pytest.approx(0.01)
    with pytest.raises(TypeError, match="is not an Optimizer"):
        optim.CosineAnnealingLR(object(), 3)
