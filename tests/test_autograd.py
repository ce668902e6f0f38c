"""Autograd: every op's gradient against central finite differences (float64, tiny
shapes), the engine (accumulation, shared inputs, no_grad, errors), dtype keeping."""

import threading

import numpy as np
import pytest
import scipy.special

import fastconv
from fastconv import Tensor, gradcheck, no_grad
from fastconv.autograd import Function, GradcheckError
from fastconv.nn import functional as F


def _t(rng, *shape, low=None):
    """A float64 leaf; ``low`` keeps |values| >= low (away from kinks and log(0))."""
    a = rng.standard_normal(shape)
    if low is not None:
        a = np.sign(a) * (np.abs(a) + low)
    return Tensor(a, requires_grad=True)


# ----------------------------------------------------------------------------- tensor ops
BINARY_SHAPES = [((2, 3), (2, 3)), ((2, 3), (3,)), ((2, 1), (1, 4)), ((4,), (3, 1, 4)),
                 ((2, 3), ())]


@pytest.mark.parametrize("sa,sb", BINARY_SHAPES)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_arithmetic_broadcasting(rng, op, sa, sb):
    a, b = _t(rng, *sa), _t(rng, *sb, low=0.5)
    fn = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b,
          "mul": lambda a, b: a * b, "div": lambda a, b: a / b}[op]
    assert gradcheck(fn, [a, b])
    out = fn(a, b)
    np.testing.assert_array_equal(out.data, fn(a.data, b.data))


@pytest.mark.parametrize("fn", [
    lambda a: 2.0 + a, lambda a: a + 2, lambda a: 3.0 - a, lambda a: a - 1.5,
    lambda a: 2.5 * a, lambda a: a * 4, lambda a: 2.0 / a, lambda a: a / 4.0,
    lambda a: -a, lambda a: +a * 1.0, lambda a: a ** 3, lambda a: a ** 2.0,
    lambda a: np.full((2, 3), 2.0) * a, lambda a: np.ones(3) - a, lambda a: np.ones(3) / a,
    lambda a: np.eye(3)[:2] @ a.T,
], ids=["radd", "add", "rsub", "sub", "rmul", "mul", "rdiv", "div", "neg", "pos", "pow3",
        "pow2f", "array_mul", "array_rsub", "array_rdiv", "array_rmatmul"])
def test_scalar_and_array_operands(rng, fn):
    a = _t(rng, 2, 3, low=0.5)
    out = fn(a)
    assert isinstance(out, Tensor)
    assert gradcheck(fn, [a])


def test_pow_with_tensor_exponent_and_base(rng):
    a = Tensor(rng.uniform(0.5, 2.0, (2, 3)), requires_grad=True)
    b = _t(rng, 2, 3)
    assert gradcheck(lambda a, b: a ** b, [a, b])
    assert gradcheck(lambda b: 2.0 ** b, [b])


@pytest.mark.parametrize("sa,sb", [((2, 3), (3, 4)), ((3,), (3, 4)), ((2, 3), (3,)),
                                   ((3,), (3,)), ((2, 2, 3), (3, 4)), ((2, 1, 2, 3), (3, 3, 2)),
                                   ((3,), (2, 3, 4))])
def test_matmul(rng, sa, sb):
    a, b = _t(rng, *sa), _t(rng, *sb)
    assert gradcheck(lambda a, b: a @ b, [a, b])
    np.testing.assert_allclose((a @ b).data, a.data @ b.data)


@pytest.mark.parametrize("dim,keepdim", [(None, False), (0, False), (1, True), ((0, 2), False),
                                         (-1, True), ((2, 0), True)])
@pytest.mark.parametrize("op", ["sum", "mean"])
def test_reductions(rng, op, dim, keepdim):
    a = _t(rng, 2, 3, 4)
    def fn(a):
        return getattr(a, op)(dim, keepdim)

    assert gradcheck(fn, [a])
    want = getattr(np, op)(a.data, axis=dim, keepdims=keepdim)
    np.testing.assert_allclose(fn(a).data, want)


def test_reduction_numpy_aliases(rng):
    a = _t(rng, 2, 3)
    np.testing.assert_allclose(a.sum(axis=1, keepdims=True).data, a.data.sum(1, keepdims=True))
    with pytest.raises(ValueError, match="dim=2 is out of range for a 2-D tensor"):
        a.sum(2)
    with pytest.raises(TypeError, match="either dim or axis"):
        a.mean(dim=0, axis=0)


@pytest.mark.parametrize("fn", [
    lambda a: a.reshape(4, 6), lambda a: a.reshape((-1,)), lambda a: a.view(2, 12),
    lambda a: a.transpose(0, 2), lambda a: a.permute(1, 2, 0), lambda a: a.T,
    lambda a: a.flatten(), lambda a: a.flatten(1), lambda a: F.flatten(a),
    lambda a: a[1], lambda a: a[:, 1:3, ::2], lambda a: a[..., -1],
    lambda a: a[np.array([0, 1, 0])],                         # repeated index accumulates
    lambda a: a[:, np.array([2, 2, 0]), np.array([1, 1, 3])],
], ids=["reshape", "reshape_neg", "view", "transpose", "permute", "T", "flatten",
        "flatten1", "F.flatten", "index", "slices", "ellipsis", "fancy_repeat", "fancy_2d"])
def test_shape_ops(rng, fn):
    a = _t(rng, 2, 3, 4)
    assert gradcheck(fn, [a])


def test_shape_op_errors(rng):
    a = _t(rng, 2, 3, 4)
    with pytest.raises(ValueError, match="permute: dims=.* is not a permutation"):
        a.permute(0, 0, 1)
    with pytest.raises(ValueError, match="flatten: start_dim=2 comes after end_dim=1"):
        a.flatten(2, 1)


@pytest.mark.parametrize("name", ["exp", "log", "relu", "tanh", "sigmoid"])
def test_elementwise(rng, name):
    a = _t(rng, 3, 4, low=0.1)
    if name == "log":
        a = Tensor(np.abs(a.data), requires_grad=True)
    assert gradcheck(lambda a: getattr(a, name)(), [a])


def test_elementwise_values(rng):
    a = Tensor(np.array([-800.0, -1.0, 0.0, 2.0, 800.0]))
    np.testing.assert_allclose(a.relu().data, [0, 0, 0, 2, 800])
    s = a.sigmoid().data
    assert np.all(np.isfinite(s))
    np.testing.assert_allclose(s, scipy.special.expit(a.data), rtol=1e-12)


@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax(rng, name, dim):
    a = _t(rng, 3, 4)
    assert gradcheck(lambda a: getattr(F, name)(a, dim), [a])
    e = np.exp(a.data - a.data.max(dim, keepdims=True))
    p = e / e.sum(dim, keepdims=True)
    want = p if name == "softmax" else np.log(p)
    np.testing.assert_allclose(getattr(a, name)(dim).data, want, rtol=1e-12, atol=1e-14)


def test_softmax_is_stable_for_large_logits():
    a = Tensor(np.array([[1000.0, 1001.0, 999.0], [-1e4, 0.0, 1e4]]))
    p = F.softmax(a, 1).data
    lp = F.log_softmax(a, 1).data
    assert np.all(np.isfinite(p)) and np.all(np.isfinite(lp))
    np.testing.assert_allclose(p.sum(1), 1.0)
    np.testing.assert_allclose(lp[0], np.array([-1, 0, -2]) - np.log1p(np.exp(-1) + np.exp(-2)))


# ----------------------------------------------------------------------------- loss & dense
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy(rng, reduction):
    x = _t(rng, 4, 5)
    target = np.array([0, 4, 2, 2])
    assert gradcheck(lambda x: F.cross_entropy(x, target, reduction), [x])
    lp = x.data - x.data.max(1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(1, keepdims=True))
    losses = -lp[np.arange(4), target]
    want = {"mean": losses.mean(), "sum": losses.sum(), "none": losses}[reduction]
    np.testing.assert_allclose(F.cross_entropy(x, target, reduction).data, want, rtol=1e-12)


def test_cross_entropy_large_logits_finite():
    x = Tensor(np.array([[1e4, 0.0, -1e4]]), requires_grad=True)
    loss = F.cross_entropy(x, np.array([2]))
    assert np.isclose(loss.item(), 2e4)
    loss.backward()
    np.testing.assert_allclose(x.grad, [[1.0, 0.0, -1.0]])


def test_cross_entropy_errors(rng):
    x = _t(rng, 3, 4)
    with pytest.raises(ValueError, match=r"target value 4 is out of range for C=4 classes"):
        F.cross_entropy(x, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"target value -1 is out of range"):
        F.cross_entropy(x, np.array([0, -1, 1]))
    with pytest.raises(TypeError, match="target must hold integer class indices"):
        F.cross_entropy(x, np.array([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"target must have shape \(N,\) = \(3,\)"):
        F.cross_entropy(x, np.array([0, 1]))
    with pytest.raises(ValueError, match="input must be 2-D logits"):
        F.cross_entropy(x.reshape(12), np.array([0]))
    with pytest.raises(ValueError, match="reduction='avg' is not known"):
        F.cross_entropy(x, np.array([0, 1, 2]), "avg")


@pytest.mark.parametrize("xshape", [(3, 4), (2, 3, 4), (4,)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear(rng, xshape, bias):
    x, w = _t(rng, *xshape), _t(rng, 5, 4)
    b = _t(rng, 5) if bias else None
    inputs = [x, w] + ([b] if bias else [])
    assert gradcheck(lambda x, w, *b: F.linear(x, w, *b), inputs)
    want = x.data @ w.data.T + (b.data if bias else 0)
    np.testing.assert_allclose(F.linear(x, w, b).data, want, rtol=1e-12)


def test_linear_errors(rng):
    with pytest.raises(ValueError, match="linear: input of shape \\(3, 4\\) does not match "
                       "weight of shape \\(5, 3\\)"):
        F.linear(_t(rng, 3, 4), _t(rng, 5, 3))
    with pytest.raises(ValueError, match=r"linear: bias must have shape \(5,\)"):
        F.linear(_t(rng, 3, 4), _t(rng, 5, 4), _t(rng, 4))


def test_dropout(rng):
    x = _t(rng, 50, 40)
    y = F.dropout(x, 0.3, True, rng=np.random.default_rng(1))
    kept = y.data != 0
    assert 0.6 < kept.mean() < 0.8
    np.testing.assert_allclose(y.data[kept], x.data[kept] / 0.7)
    assert gradcheck(lambda x: F.dropout(x, 0.5, True, rng=np.random.default_rng(3)),
                     [Tensor(x.data[:3, :4].copy(), requires_grad=True)])
    assert F.dropout(x, 0.3, training=False) is x
    np.testing.assert_array_equal(F.dropout(x, 1.0).data, 0)
    with pytest.raises(ValueError, match="dropout: p=1.5 must be a probability"):
        F.dropout(x, 1.5)


def test_dropout_default_generator_is_seeded(rng):
    x = Tensor(np.ones((20, 20)))
    fastconv.manual_seed(7)
    a = F.dropout(x, 0.5).data
    fastconv.manual_seed(7)
    b = F.dropout(x, 0.5).data
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, F.dropout(x, 0.5).data)


def test_manual_seed_replaces_the_default_generator():
    """fastconv.manual_seed (also fastconv.autograd's) is fastconv.rng's: it installs
    default_rng(seed) as the generator that dropout, init and DataLoader draw from."""
    assert fastconv.manual_seed is fastconv.rng.manual_seed is fastconv.autograd.manual_seed
    g = fastconv.manual_seed(4)
    assert g is fastconv.rng.default_generator() is fastconv.autograd.default_generator()
    np.testing.assert_array_equal(g.random(5), np.random.default_rng(4).random(5))


# ------------------------------------------------------------------------ kernel-backed ops
CONV_CASES = [  # x shape, w shape, kwargs
    ((2, 3, 5, 5), (4, 3, 3, 3), dict()),
    ((1, 2, 6, 5), (3, 2, 3, 2), dict(stride=2, padding=1)),
    ((2, 4, 5, 6), (4, 2, 2, 3), dict(padding=((1, 0), (2, 1)), dilation=(2, 1), groups=2)),
    ((1, 2, 5, 5), (2, 2, 3, 3), dict(padding="same")),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("xs,ws,kw", CONV_CASES)
def test_conv2d(rng, xs, ws, kw, bias):
    x, w = _t(rng, *xs), _t(rng, *ws)
    b = _t(rng, ws[0]) if bias else None
    inputs = [x, w] + ([b] if bias else [])
    assert gradcheck(lambda x, w, *b: F.conv2d(x, w, *(b or [None]), **kw), inputs)
    np.testing.assert_allclose(F.conv2d(x, w, b, **kw).data,
                               fastconv.conv2d(x.data, w.data, None if b is None else b.data,
                                               **kw))


def test_conv2d_nhwc(rng):
    x, w = _t(rng, 1, 5, 4, 2), _t(rng, 3, 2, 2, 3)  # NHWC input, HWIO weight
    assert gradcheck(lambda x, w: F.conv2d(x, w, stride=(1, 2), layout="NHWC"), [x, w])


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                dict(kernel_size=(2, 3), stride=1, dilation=(1, 2)),
                                dict(kernel_size=2, ceil_mode=True)])
def test_max_pool2d(rng, kw):
    x = _t(rng, 2, 2, 5, 7)  # distinct values: no ties for the finite differences
    assert gradcheck(lambda x: F.max_pool2d(x, **kw), [x])


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                dict(kernel_size=3, stride=2, padding=1,
                                     count_include_pad=False, ceil_mode=True)])
def test_avg_pool2d(rng, kw):
    x = _t(rng, 2, 2, 5, 6)
    assert gradcheck(lambda x: F.avg_pool2d(x, **kw), [x])


def test_global_avg_pool2d(rng):
    x = _t(rng, 2, 3, 4, 5)
    assert gradcheck(F.global_avg_pool2d, [x])
    assert gradcheck(lambda x: F.adaptive_avg_pool2d(x, 1), [x])
    np.testing.assert_allclose(F.global_avg_pool2d(x).data, x.data.mean((2, 3), keepdims=True))
    with pytest.raises(ValueError, match=r"output_size=\(2, 2\) is not supported; only output "
                       "size 1"):
        F.adaptive_avg_pool2d(x, (2, 2))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm(rng, training, affine):
    x = _t(rng, 3, 2, 3, 2)
    w = Tensor(rng.uniform(0.5, 1.5, 2), requires_grad=True)
    b = _t(rng, 2)
    inputs = [x] + ([w, b] if affine else [])

    def fn(x, *wb):
        # fresh running statistics each call: the finite differences must not see updates
        rm, rv = np.array([0.1, -0.2]), np.array([0.9, 1.3])
        return F.batch_norm(x, rm, rv, *wb, training=training, eps=1e-5)

    assert gradcheck(fn, inputs)
    y = fn(x, *inputs[1:]).data
    if training:
        mean, var = x.data.mean((0, 2, 3)), x.data.var((0, 2, 3))
    else:
        mean, var = np.array([0.1, -0.2]), np.array([0.9, 1.3])
    want = (x.data - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5)
    if affine:
        want = want * w.data[:, None, None] + b.data[:, None, None]
    np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------- engine
def test_gradients_accumulate_and_shared_inputs(rng):
    x = _t(rng, 3)
    y = (x * x + x).sum()                # x used three times
    y.backward()
    np.testing.assert_allclose(x.grad, 2 * x.data + 1)
    (x * 3).sum().backward()             # a second backward adds
    np.testing.assert_allclose(x.grad, 2 * x.data + 4)


def test_diamond_graph(rng):
    x = _t(rng, 2, 2)
    h = x.exp()
    out = (h * 2 + h.log() * h).sum()
    out.backward()
    e = np.exp(x.data)
    np.testing.assert_allclose(x.grad, 2 * e + (x.data + 1) * e)


def test_explicit_grad_and_errors(rng):
    x = _t(rng, 2, 3)
    y = x * 2
    with pytest.raises(RuntimeError, match="grad can be implicitly created only for "
                       "one-element outputs"):
        y.backward()
    with pytest.raises(ValueError, match=r"grad has shape \(3,\) but the output has shape "
                       r"\(2, 3\)"):
        y.backward(np.ones(3))
    y.backward(np.full((2, 3), 0.5))
    np.testing.assert_allclose(x.grad, 1.0)
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(2)).sum().backward()
    with pytest.raises(TypeError, match="only floating-point tensors can require gradients"):
        Tensor(np.arange(3), requires_grad=True)


def test_no_grad(rng):
    x = _t(rng, 3)
    with no_grad():
        y = x * 2
        with no_grad():
            pass
        z = x + 1                        # still off after the nested block
    assert not y.requires_grad and y._ctx is None and not z.requires_grad
    assert (x * 2).requires_grad

    @no_grad()
    def f(t, depth=0):
        return f(t, depth - 1) if depth > 0 else t * 3

    assert not f(x).requires_grad and not f(x, 3).requires_grad
    assert fastconv.autograd.is_grad_enabled()
    seen = []
    worker = threading.Thread(target=lambda: seen.append((x * 2).requires_grad))
    with no_grad():                      # per thread: another thread still records
        worker.start()
        worker.join()
    assert seen == [True]


def test_needs_input_grad_is_known_in_forward(rng):
    """ctx.needs_input_grad is set before forward and all False without a graph, so a
    forward may skip what only backward needs."""
    seen = []

    class Probe(Function):
        @staticmethod
        def forward(ctx, a, b):
            seen.append(ctx.needs_input_grad)
            return a + b

        @staticmethod
        def backward(ctx, g):
            return g, g

    x, c = _t(rng, 3), Tensor(np.ones(3))
    Probe.apply(x, c)
    Probe.apply(c, c)
    with no_grad():
        Probe.apply(x, c)
    assert seen == [(True, False), (False, False), (False, False)]


def test_max_pool_without_graph_matches_and_records_nothing(rng):
    x = _t(rng, 2, 3, 6, 6)
    with no_grad():
        y = F.max_pool2d(x, 2)
    assert y._ctx is None and not y.requires_grad
    np.testing.assert_array_equal(y.data, fastconv.max_pool2d(x.data, 2))
    np.testing.assert_array_equal(F.max_pool2d(x, 2).data, y.data)


@pytest.mark.parametrize("parallel_min", [1 << 18, 0], ids=["serial", "threads"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_kernels_match_numpy(dtype, parallel_min, rng, monkeypatch):
    from fastconv import _elementwise

    monkeypatch.setattr(_elementwise, "PARALLEL_MIN", parallel_min)
    a = rng.standard_normal((4, 3, 7, 5)).astype(dtype)
    a[0, 0, 0, :3] = [np.nan, -np.inf, np.inf]
    a[1, 1, 1, 1] = 0.0
    view = a[:, ::2, 1:, ::-1]                       # non-contiguous
    for arr in (a, view):
        y = _elementwise.relu(arr)
        assert y.dtype == dtype and y.shape == arr.shape
        np.testing.assert_array_equal(y, np.maximum(arr, 0))   # NaN stays NaN
        g = rng.standard_normal(arr.shape).astype(dtype)
        gx = _elementwise.relu_backward(g, y)
        assert gx.dtype == dtype
        np.testing.assert_array_equal(gx, np.where(arr > 0, g, 0))
        b = rng.standard_normal(arr.shape).astype(dtype)
        np.testing.assert_array_equal(_elementwise.add_relu(arr, b), np.maximum(arr + b, 0))
        np.testing.assert_array_equal(_elementwise.add(arr, b), arr + b)
    assert _elementwise.add(a, a[:1]) is None                     # broadcasting: numpy's
    long = rng.standard_normal(2 * _elementwise.CHUNK + 5).astype(dtype)  # 3 chunks
    np.testing.assert_array_equal(_elementwise.relu(long), np.maximum(long, 0))
    np.testing.assert_array_equal(_elementwise.add(long, long), 2 * long)
    ints = np.array([-2, 0, 3])
    np.testing.assert_array_equal(_elementwise.relu(ints), [0, 0, 3])
    np.testing.assert_array_equal(_elementwise.relu_backward(np.ones(3), ints), [0, 0, 1])


def test_conv2d_input_without_grad_gives_the_same_weight_gradients(rng):
    """The first layer's input (data) needs no gradient: conv2d_backward then skips
    grad_x; the weight and bias gradients do not change."""
    xd = rng.standard_normal((3, 2, 6, 6))
    w, b = _t(rng, 4, 2, 3, 3), _t(rng, 4)
    F.conv2d(Tensor(xd), w, b, padding=1).sum().backward()
    gw, gb = w.grad, b.grad
    w.grad = b.grad = None
    x = Tensor(xd.copy(), requires_grad=True)
    F.conv2d(x, w, b, padding=1).sum().backward()
    np.testing.assert_allclose(gw, w.grad, rtol=1e-12)
    np.testing.assert_allclose(gb, b.grad, rtol=1e-12)
    assert x.grad is not None and x.grad.shape == xd.shape


def test_leaf_facts_detach_item(rng):
    x = _t(rng, 2, 3)
    assert x.shape == (2, 3) and x.ndim == 2 and x.dtype == np.float64 and len(x) == 2
    assert x.size() == (2, 3) and x.size(-1) == 3 and x.numel() == 6
    assert x.is_leaf and not (x * 1).is_leaf
    d = (x * 2).detach()
    assert not d.requires_grad and d._ctx is None
    assert x.numpy() is x.data
    assert x.sum().item() == pytest.approx(x.data.sum())
    with pytest.raises(ValueError, match="only one-element tensors"):
        x.item()
    assert "requires_grad=True" in repr(x) and "grad_fn=<MulBackward>" in repr(x * 2)
    np.testing.assert_array_equal(np.asarray(x), x.data)


def test_deep_graph_does_not_recurse(rng):
    x = Tensor(np.array([1.0]), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0 + 0.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0])


def test_float32_stays_float32(rng):
    x = Tensor(rng.standard_normal((2, 3)).astype(np.float32), requires_grad=True)
    w = Tensor(rng.standard_normal((4, 3)).astype(np.float32), requires_grad=True)
    y = (F.linear(x, w) * 0.5 + 1.0 - np.float64(2.0)) / 3.0
    loss = F.cross_entropy(y.relu() ** 2.0, np.array([0, 3])) + y.tanh().mean() * 1e-3
    assert y.dtype == np.float32 and loss.dtype == np.float32
    loss.backward()
    assert x.grad.dtype == np.float32 and w.grad.dtype == np.float32


def test_ndarray_on_the_left_stays_in_graph(rng):
    x = _t(rng, 3)
    y = np.ones(3) * x + np.ones(3)
    assert isinstance(y, Tensor) and y.requires_grad


def test_function_torch_style_subclass(rng):
    class Cube(Function):
        @staticmethod
        def forward(ctx, a):
            ctx.save_for_backward(a)
            return a ** 3

        @staticmethod
        def backward(ctx, g):
            (a,) = ctx.saved_tensors
            return 3 * a * a * g

    assert gradcheck(Cube.apply, [_t(rng, 4)])


def test_gradcheck_catches_a_wrong_gradient(rng):
    class BadSquare(Function):
        @staticmethod
        def forward(ctx, a):
            ctx.save_for_backward(a)
            return a * a

        @staticmethod
        def backward(ctx, g):
            return 2.02 * ctx.saved_tensors[0] * g   # 1% off

    with pytest.raises(GradcheckError, match=r"gradient of input 1 \(shape \(2, 2\)\) is "
                       r"wrong: max error"):
        gradcheck(lambda a, b: a + BadSquare.apply(b), [_t(rng, 2, 2), _t(rng, 2, 2, low=1)])
    with pytest.raises(TypeError, match="input 0 has dtype float32; use float64"):
        gradcheck(lambda a: a * 2, [Tensor(np.ones(2, np.float32), requires_grad=True)])
    with pytest.raises(ValueError, match="no input has requires_grad=True"):
        gradcheck(lambda a: a * 2, [Tensor(np.ones(2))])


def test_autograd_grad_does_not_touch_dot_grad(rng):
    x, y = _t(rng, 3), _t(rng, 3)
    h = x * y
    gx, gh = fastconv.autograd.grad((h * h).sum(), [x, h])
    np.testing.assert_allclose(gx, 2 * h.data * y.data)
    np.testing.assert_allclose(gh, 2 * h.data)
    assert x.grad is None


# ---------------------------------------------------------------- torch habits on Tensors
def test_python_number_conversions():
    t = Tensor(np.array([2.5]))
    assert float(t) == 2.5 and int(t) == 2 and bool(t) is True
    assert isinstance(float(Tensor(np.float32(1.5))), float)
    with pytest.raises(ValueError, match=r"float: only one-element tensors .* shape \(2,\)"):
        float(Tensor(np.zeros(2)))
    with pytest.raises(ValueError, match=r"bool: only one-element tensors .* shape \(2, 2\)"):
        bool(Tensor(np.zeros((2, 2))))


def test_asarray_shares_the_data():
    a = np.arange(6.0).reshape(2, 3)
    t = Tensor(a, requires_grad=True)
    assert np.asarray(t) is a
    assert np.asarray(t, dtype=np.float32).dtype == np.float32


@pytest.mark.parametrize("op", ["__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__"])
def test_comparisons_give_boolean_tensors_outside_the_graph(op):
    a = np.array([1.0, 2.0, 3.0])
    b = np.array([3.0, 2.0, 1.0])
    t = Tensor(a, requires_grad=True)
    for other in (Tensor(b), b, 2.0):
        out = getattr(t, op)(other)
        assert isinstance(out, Tensor) and out.dtype == np.bool_ and not out.requires_grad
        np.testing.assert_array_equal(out.data, getattr(a, op)(other if not isinstance(
            other, Tensor) else b))


def test_comparison_reads_like_torch_and_tensors_stay_hashable():
    logits = Tensor(np.array([[0.1, 0.9], [0.8, 0.2]]))
    target = np.array([1, 1])
    assert float((logits.argmax(1) == target).data.mean()) == 0.5
    t = Tensor(np.zeros(3))
    assert {t: 1}[t] == 1
    assert (t == "x") is False


def test_argmax_like_numpy():
    a = np.random.default_rng(0).standard_normal((3, 4, 5))
    t = Tensor(a)
    assert int(t.argmax()) == np.argmax(a)
    for d in (0, 1, -1):
        got = t.argmax(d)
        assert got.dtype == np.int64 and not got.requires_grad
        np.testing.assert_array_equal(got.data, np.argmax(a, axis=d))
    assert t.argmax(1, keepdim=True).shape == (3, 1, 5)


def test_max_values_and_indices_with_dim():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 4, 5))
    for d in (0, 1, 2, -2):
        values, indices = Tensor(a).max(dim=d)
        np.testing.assert_array_equal(values.data, a.max(axis=d))
        np.testing.assert_array_equal(indices.data, a.argmax(axis=d))
    res = Tensor(a).max(1, keepdim=True)
    assert res.values.shape == (3, 1, 5) and res.indices.shape == (3, 1, 5)
    assert gradcheck(lambda x: x.max(dim=1).values, [Tensor(a, requires_grad=True)])
    assert gradcheck(lambda x: x.max(dim=0, keepdim=True)[0], [Tensor(a, requires_grad=True)])


def test_max_over_all_shares_the_gradient_among_ties():
    rng = np.random.default_rng(2)
    t = Tensor(rng.standard_normal((4, 3)), requires_grad=True)
    assert float(t.max()) == t.data.max() and t.max().shape == ()
    assert gradcheck(lambda x: x.max(), [t])
    ties = Tensor(np.array([1.0, 3.0, 3.0]), requires_grad=True)
    ties.max().backward()
    np.testing.assert_array_equal(ties.grad, [0.0, 0.5, 0.5])
    with pytest.raises(ValueError, match="max: the tensor is empty"):
        Tensor(np.zeros(0)).max()


def test_max_matches_torch():
    torch = pytest.importorskip("torch")
    a = np.array([[1.0, 5.0, 5.0], [7.0, 2.0, 7.0]])
    values, indices = Tensor(a).max(dim=1)
    tv, ti = torch.from_numpy(a).max(dim=1)
    np.testing.assert_array_equal(values.data, tv.numpy())
    np.testing.assert_array_equal(indices.data, ti.numpy())
    np.testing.assert_array_equal(Tensor(a).argmax(0).data, torch.from_numpy(a).argmax(0))
