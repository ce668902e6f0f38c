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



@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nesterov,wd,damp,maximize", [(False, 0.0, 0.0, False),
                                                        (False, 5e-4, 0.0, False),
                                                        (True, 1e-2, 0.0, True),
                                                        (False, 0.1, 0.3, False)])
def test_sgd_momentum_step_is_numpys_to_the_bit(rng, dtype, nesterov, wd, damp, maximize):
    """The one-pass momentum step (``optim._sgd_momentum``) rounds as numpy's
    whole-array operations, written out here, do: the same parameters and buffers to the
    bit, in float32 and float64."""
    params = _params(rng, dtype) + [Parameter(rng.standard_normal((4, 3, 5, 5)).astype(dtype))]
    want = [p.data.copy() for p in params]
    bufs = [None] * len(params)
    lr, mom = 0.05, 0.9
    opt = optim.SGD(params, lr=lr, momentum=mom, nesterov=nesterov, weight_decay=wd,
                    dampening=damp, maximize=maximize)
    for gs in _grads(rng, params, 4):
        for i, (p, g) in enumerate(zip(params, gs, strict=True)):
            p.grad = g
            d = -g if maximize else g
            if wd != 0:
                d = d + wd * want[i]
            if bufs[i] is None:
                bufs[i] = np.array(d, copy=True)
            else:
                bufs[i] *= mom
                bufs[i] += d if damp == 0 else (1 - damp) * d
            want[i] -= lr * (d + mom * bufs[i] if nesterov else bufs[i])
        opt.step()
    for i, p in enumerate(params):
        assert p.data.dtype == dtype
        np.testing.assert_array_equal(p.data, want[i])
        np.testing.assert_array_equal(opt.state[id(p)]["momentum_buffer"], bufs[i])

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


# ---------------------------------------------------------------------- state dicts
_OPTIMS = [("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)),
           ("SGD", dict(lr=0.1, momentum=0.5, dampening=0.2)),
           ("Adam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)),
           ("Adam", dict(lr=0.01, amsgrad=True)),
           ("AdamW", dict(lr=0.01, weight_decay=0.1))]


def _run(opt, params, grads):
    for gs in grads:
        for p, g in zip(params, gs, strict=True):
            p.grad = g
        opt.step()


@pytest.mark.parametrize("name,kw", _OPTIMS)
def test_optimizer_state_dict_round_trip(rng, name, kw):
    """Stopping after 3 steps and continuing from the state dict in a fresh optimiser
    gives the uninterrupted run's values exactly."""
    params = _params(rng)
    start = [p.data.copy() for p in params]
    grads = _grads(rng, params, 6)
    opt = getattr(optim, name)(params, **kw)
    _run(opt, params, grads)
    full = [p.data.copy() for p in params]

    for p, s in zip(params, start, strict=True):
        p.data = s.copy()
    first = getattr(optim, name)(params, **kw)
    _run(first, params, grads[:3])
    sd = first.state_dict()
    midway = [p.data.copy() for p in params]
    _run(first, params, grads[3:4])                    # the saved copies must not move
    for p, w in zip(params, midway, strict=True):
        p.data = w
    second = getattr(optim, name)(params, lr=123.0)
    second.load_state_dict(sd)
    assert second.param_groups[0]["lr"] == kw["lr"]
    _run(second, params, grads[3:])
    for p, f in zip(params, full, strict=True):
        np.testing.assert_array_equal(p.data, f)


def test_optimizer_load_state_dict_errors(rng):
    params = _params(rng)
    opt = optim.Adam(params)
    _run(opt, params, _grads(rng, params, 1))
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="expected a dict with the keys 'state' and "
                                         "'param_groups', got \\['state'\\]"):
        opt.load_state_dict({"state": {}})
    two = optim.Adam([{"params": params[:1]}, {"params": params[1:]}])
    with pytest.raises(ValueError, match="the state dict has 1 parameter groups, the "
                                         "optimiser 2"):
        two.load_state_dict(sd)
    one = optim.Adam(params[:1])
    with pytest.raises(ValueError, match="parameter group 0 has 2 parameters in the state "
                                         "dict, 1 in the optimiser"):
        one.load_state_dict(sd)
    bad = opt.state_dict()
    bad["state"][1]["exp_avg"] = np.zeros((5,))
    with pytest.raises(ValueError, match=r"exp_avg of parameter 1 has shape \(5,\) in the "
                                         r"state dict, the parameter \(4,\)"):
        opt.load_state_dict(bad)
    with pytest.raises(ValueError, match=r"SGD.load_state_dict: parameter 0 has unknown "
                                         r"state \['exp_avg', 'exp_avg_sq', 'step'\]"):
        optim.SGD(params, momentum=0.9).load_state_dict(sd)
    bad = opt.state_dict()
    bad["state"][7] = bad["state"].pop(1)
    with pytest.raises(ValueError, match="state for parameter 7, but the optimiser has 2"):
        opt.load_state_dict(bad)


@pytest.mark.parametrize("cls,kw", [(optim.StepLR, dict(step_size=2, gamma=0.5)),
                                    (optim.CosineAnnealingLR, dict(T_max=5, eta_min=0.01))])
def test_scheduler_state_dict_round_trip(rng, cls, kw):
    params = _params(rng)
    opt = optim.SGD(params, lr=0.1)
    sched = cls(opt, **kw)
    for _ in range(3):
        sched.step()
    sd = sched.state_dict()
    assert sd["last_epoch"] == 3 and sd["base_lrs"] == [0.1]
    lrs = []
    for _ in range(3):
        sched.step()
        lrs.append(sched.get_last_lr())
    opt2 = optim.SGD(params, lr=0.1)
    sched2 = cls(opt2, **kw)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sd)
    assert sched2.last_epoch == 3
    lrs2 = []
    for _ in range(3):
        sched2.step()
        lrs2.append(sched2.get_last_lr())
    assert lrs2 == lrs
    with pytest.raises(ValueError, match=r"missing keys \[\], unknown keys \['foo'\]"):
        sched2.load_state_dict({**sd, "foo": 1})
    with pytest.raises(ValueError, match="2 base learning rates in the state dict, 1 "
                                         "parameter groups"):
        sched2.load_state_dict({**sd, "base_lrs": [0.1, 0.1]})


@pytest.mark.parametrize("name,kw", _OPTIMS)
def test_state_dicts_match_torch(rng, name, kw):
    """Structure and values of the optimiser's and the schedule's state dicts against
    torch's after a few steps (torch adds its implementation flags to the groups)."""
    torch = pytest.importorskip("torch")
    params = _params(rng)
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    grads = _grads(rng, params, 4)
    opt = getattr(optim, name)(params, **kw)
    topt = getattr(torch.optim, name)(tparams, **kw)
    sched = optim.CosineAnnealingLR(opt, T_max=6, eta_min=1e-3)
    tsched = torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=6, eta_min=1e-3)
    for gs in grads:
        for p, tp, g in zip(params, tparams, gs, strict=True):
            p.grad, tp.grad = g, torch.tensor(g)
        opt.step()
        topt.step()
        sched.step()
        tsched.step()
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert set(sd) == set(tsd) and list(sd["state"]) == list(tsd["state"])
    for i, st in sd["state"].items():
        assert set(st) == set(tsd["state"][i])
        for k, v in st.items():
            np.testing.assert_allclose(v, tsd["state"][i][k].numpy(), rtol=1e-10, atol=1e-14)
    flags = {"foreach", "fused", "differentiable", "capturable", "decoupled_weight_decay"}
    for g, tg in zip(sd["param_groups"], tsd["param_groups"], strict=True):
        assert set(g) <= set(tg) and set(tg) - set(g) <= flags
        for k, v in g.items():
            assert v == pytest.approx(tg[k], rel=1e-12), k
    ssd, tssd = sched.state_dict(), tsched.state_dict()
    assert set(ssd) <= set(tssd)
    for k, v in ssd.items():
        assert v == pytest.approx(tssd[k], rel=1e-12), k
