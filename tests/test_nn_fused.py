"""Fused batch norm + ReLU and residual add + ReLU against the ops they fuse."""

import numpy as np
import pytest

import fastconv
from fastconv import nn
from fastconv.autograd import Tensor, gradcheck
from fastconv.nn import functional as F
from fastconv.nn import fused


def test_add_relu_values_nan_and_gradients(rng):
    a, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
    a[0, 0, 0] = np.nan
    got = fused.add_relu(a, b).data
    np.testing.assert_array_equal(got, F.relu(Tensor(a) + Tensor(b)).data)
    assert np.isnan(got[0, 0, 0])
    f32 = fused.add_relu(a.astype(np.float32), b.astype(np.float32)).data
    assert f32.dtype == np.float32
    a[0, 0, 0] = 0.3
    ts = [Tensor(a, requires_grad=True), Tensor(b, requires_grad=True)]
    assert gradcheck(lambda x, y: fused.add_relu(x, y), ts)


def test_add_relu_shape_error():
    with pytest.raises(ValueError, match=r"add_relu: a of shape \(2, 3\) and b of shape "
                                         r"\(3,\) must have one shape"):
        fused.add_relu(np.zeros((2, 3)), np.zeros(3))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_relu_is_relu_of_batch_norm(rng, layout, training):
    x = rng.standard_normal((3, 4, 5, 2))       # NCHW (3, 4, 5, 2) or NHWC C = 2
    c = x.shape[1] if layout == "NCHW" else x.shape[3]
    w, b = rng.standard_normal(c), rng.standard_normal(c)
    m, v = rng.standard_normal(c), rng.random(c) + 0.5
    stats = [(m.copy(), v.copy()), (m.copy(), v.copy())]
    ref = F.relu(F.batch_norm(x, *stats[0], w, b, training, layout=layout)).data
    got = fused.batch_norm_relu(x, *stats[1], w, b, training, layout=layout).data
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats[1], stats[0], rtol=1e-12)  # same running update
    ts = [Tensor(x, requires_grad=True), Tensor(w, requires_grad=True),
          Tensor(b, requires_grad=True)]
    rm, rv = rng.standard_normal(c), rng.random(c) + 0.5
    assert gradcheck(lambda xx, ww, bb: fused.batch_norm_relu(
        xx, rm.copy(), rv.copy(), ww, bb, training, layout=layout), ts)


def _bn_inputs(rng, layout, dtype, channels, with_bias=True, *, zeros=False,
               nan=False):
    """x (2, C, 5, 6) in ``layout``, a residual like it, weight, bias (None without) and
    running statistics, all of ``dtype``. ``zeros``: channel 1 constant, its bias 0, so
    that its normalised values are exactly 0; ``nan``: one NaN in x (channel 2)."""
    x = rng.standard_normal((2, channels, 5, 6)).astype(dtype)
    if zeros:
        x[:, 1] = 0.75                               # x - mean = 0: v = bias[1] = 0
    if nan:
        x[1, 2, 3, 4] = np.nan
    r = rng.standard_normal(x.shape).astype(dtype)
    if layout == "NHWC":
        x, r = (np.ascontiguousarray(a.transpose(0, 2, 3, 1)) for a in (x, r))
    w = rng.standard_normal(channels).astype(dtype)
    b = rng.standard_normal(channels).astype(dtype) if with_bias else None
    if zeros and b is not None:
        b[1] = 0.0
    rm, rv = rng.standard_normal(channels).astype(dtype), (rng.random(channels) + 0.5).astype(dtype)
    return x, r, w, b, rm, rv


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels", [3, 16])
@pytest.mark.parametrize("training,with_bias", [(True, True), (True, False), (False, True)])
def test_batch_norm_relu_gradient_from_x_is_the_one_from_its_output(rng, layout, dtype,
                                                                    channels, training,
                                                                    with_bias):
    """The autograd op finds where its ReLU passed the gradient from x (the normalised
    value recomputed, as stored); batch_norm_backward(relu_output=y) reads y. The same
    gradients to the last bits the two kernels' arithmetic may order differently (a
    value the ReLU passed in one and not the other would differ by itself), with values
    at 0 (a constant channel, bias 0) and, in evaluation, NaN (16 channels: the vector
    kernels of NHWC; 3: the row kernels)."""
    x, _, w, b, rm, rv = _bn_inputs(rng, layout, dtype, channels, with_bias, zeros=True,
                                    nan=not training)
    gy = rng.standard_normal(x.shape).astype(dtype)
    xt, wt = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
    bt = None if b is None else Tensor(b, requires_grad=True)
    y = fused.batch_norm_relu(xt, rm.copy(), rv.copy(), wt, bt, training, layout=layout)
    y.backward(gy)
    y2, mean, invstd = fastconv.batch_norm(x, rm.copy(), rv.copy(), w, b, training,
                                           layout=layout, return_stats=True, fuse_relu=True)
    np.testing.assert_array_equal(y.data, y2)
    assert (y2 == 0).any() and (y2 > 0).any()
    want = fastconv.batch_norm_backward(gy, x, mean, invstd, w, training=training,
                                        layout=layout, relu_output=y2)
    got = (xt.grad, wt.grad, None if bt is None else bt.grad)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    for g, wnt in zip(got, want, strict=False):
        if g is not None:
            np.testing.assert_allclose(g, wnt, rtol=tol, atol=tol)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels", [3, 16])
@pytest.mark.parametrize("training,with_bias", [(True, True), (True, False), (False, True)])
def test_batch_norm_add_relu_is_add_relu_of_batch_norm(rng, layout, dtype, channels,
                                                       training, with_bias):
    """One op against batch norm then add_relu: the output (the fused sum rounded once,
    the pair's twice), the running statistics, and all four gradients."""
    x, r, w, b, rm, rv = _bn_inputs(rng, layout, dtype, channels, with_bias)
    ts = [Tensor(a, requires_grad=True) for a in (x, r, w)]
    bt = None if b is None else Tensor(b, requires_grad=True)
    stats = [(rm.copy(), rv.copy()), (rm.copy(), rv.copy())]
    got = fused.batch_norm_add_relu(ts[0], ts[1], *stats[0], ts[2], bt, training,
                                    layout=layout)
    assert type(got._ctx).__name__ == "BatchNorm" and got._ctx.residual
    refs = [Tensor(a, requires_grad=True) for a in (x, r, w)]
    bref = None if b is None else Tensor(b, requires_grad=True)
    want = fused.add_relu(F.batch_norm(refs[0], *stats[1], refs[2], bref, training,
                                       layout=layout), refs[1])
    tol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got.data, want.data, rtol=tol, atol=tol)
    assert (got.data == 0).any() and (got.data > 0).any()
    np.testing.assert_array_equal(stats[0][0], stats[1][0])
    np.testing.assert_array_equal(stats[0][1], stats[1][1])
    gz = rng.standard_normal(x.shape).astype(dtype)
    got.backward(gz)
    want.backward(gz)
    pairs = list(zip(ts, refs, strict=True)) + ([(bt, bref)] if b is not None else [])
    for t, ref in pairs:
        np.testing.assert_allclose(t.grad, ref.grad, rtol=10 * tol, atol=10 * tol)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_add_relu_gradients_against_finite_differences(rng, layout, training):
    x, r, w, b, rm, rv = _bn_inputs(rng, layout, np.float64, 3)
    ts = [Tensor(a, requires_grad=True) for a in (x, r, w, b)]
    assert gradcheck(lambda xx, rr, ww, bb: fused.batch_norm_add_relu(
        xx, rr, rm.copy(), rv.copy(), ww, bb, training, layout=layout), ts)


def test_batch_norm_add_relu_of_arrays_it_does_not_take_is_the_pair(rng):
    """A float16 input or a residual of another dtype: batch norm, then add_relu."""
    x, r, w, b, rm, rv = _bn_inputs(rng, "NCHW", np.float32, 3)
    half = [a.astype(np.float16) for a in (x, r, w, b, rm, rv)]
    for xx, rr, ww, bb, m, v in (half, (x, r.astype(np.float64), w, b, rm, rv)):
        got = fused.batch_norm_add_relu(Tensor(xx, requires_grad=True), rr, m.copy(),
                                        v.copy(), ww, bb, True)
        assert type(got._ctx).__name__ == "AddReLU"
        want = fused.add_relu(F.batch_norm(xx, m.copy(), v.copy(), ww, bb, True), rr)
        np.testing.assert_array_equal(got.data, want.data)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("stride", [1, 2])
def test_basic_block_matches_its_unfused_ops(rng, stride, layout):
    """BasicBlock's fused forward and gradients against its layers called one by one."""
    block = nn.BasicBlock(2, 3, stride, rng=rng, dtype=np.float64, layout=layout)
    shape = (2, 2, 5, 5) if layout == "NCHW" else (2, 5, 5, 2)
    x = Tensor(rng.standard_normal(shape), requires_grad=True)
    buffers = [b.copy() for b in block.buffers()]
    y = block(x)
    (y * Tensor(np.arange(y.data.size, dtype=float).reshape(y.shape))).sum().backward()
    got = [y.data, x.grad] + [p.grad for p in block.parameters()]
    for b, saved in zip(block.buffers(), buffers, strict=True):
        b[...] = saved
    block.zero_grad()
    x2 = Tensor(x.data, requires_grad=True)
    out = F.relu(block.bn1(block.conv1(x2)))
    out = block.bn2(block.conv2(out))
    ref = F.relu(out + block.downsample(x2))
    (ref * Tensor(np.arange(ref.data.size, dtype=float).reshape(ref.shape))).sum().backward()
    want = [ref.data, x2.grad] + [p.grad for p in block.parameters()]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


def _pool_inputs(rng, dtype):
    """Maps with NaN, ties among positives, windows of negatives only, zeros of both
    signs: the cases where max pooling and the ReLU could disagree about the order."""
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    x[0, 0, :2, :2] = [[np.nan, 1.0], [2.0, 3.0]]
    x[0, 1, :2, :2] = [[-1.0, -2.0], [-0.0, -3.0]]
    x[0, 1, 2:4, 2:4] = [[0.0, -0.0], [-1.0, 0.0]]
    x[1, 0, :2, :2] = 2.5                            # a tie of positives
    x[1, 2, :2, :2] = -np.inf
    return x


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("window", [dict(kernel_size=2), dict(kernel_size=3, stride=2,
                                                              padding=1),
                                    dict(kernel_size=2, stride=1, dilation=2),
                                    dict(kernel_size=3, stride=2, ceil_mode=True)])
def test_relu_max_pool_is_max_pool_of_relu_exactly(rng, layout, dtype, window):
    """The fused op pools first and applies the ReLU to the pooled map; the values and
    the gradient are those of ReLU then max pooling, bit for bit."""
    x = _pool_inputs(rng, dtype)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    xa, xb = Tensor(x, requires_grad=True), Tensor(x, requires_grad=True)
    got = fused.relu_max_pool2d(xa, **window, layout=layout)
    want = F.max_pool2d(F.relu(xb), **window, layout=layout)
    np.testing.assert_array_equal(got.data, want.data)
    assert got.dtype == dtype and np.isnan(got.data).any()
    g = rng.standard_normal(got.shape).astype(dtype)
    (got * Tensor(g)).sum().backward()
    (want * Tensor(g)).sum().backward()
    np.testing.assert_array_equal(xa.grad, xb.grad)
    assert np.count_nonzero(xa.grad) > 0


def test_relu_max_pool_gradient_against_finite_differences(rng):
    x = Tensor(rng.standard_normal((2, 2, 6, 6)), requires_grad=True)
    assert gradcheck(lambda t: fused.relu_max_pool2d(t, 2), [x])


def test_relu_max_pool_without_a_graph_and_its_errors(rng):
    x = rng.standard_normal((1, 2, 4, 4))
    np.testing.assert_array_equal(fused.relu_max_pool2d(x, 2).data,
                                  F.max_pool2d(np.maximum(x, 0), 2).data)
    with pytest.raises(ValueError, match="max_pool2d"):
        fused.relu_max_pool2d(x, 5)


class _LeakyPool(nn.MaxPool2d):
    def forward(self, x):                       # not a plain max pool: never fused
        return super().forward(x) * 2.0


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_sequential_runs_fused_pairs_with_the_results_of_each_module(rng, layout):
    """Sequential fuses ReLU + MaxPool2d and BatchNorm2d + ReLU (the output's op shows
    it) and gives what calling the modules one by one gives; subclasses that change
    forward and unbatched inputs run module by module."""
    kw = dict(layout=layout, dtype=np.float64)
    seq = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, rng=rng, **kw), nn.BatchNorm2d(4, **kw),
                        nn.ReLU(), nn.Conv2d(4, 4, 3, rng=rng, **kw), nn.ReLU(),
                        nn.MaxPool2d(2, layout=layout))
    x = rng.standard_normal((3, 2, 8, 8))
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    stats = [b.copy() for b in seq.buffers()]
    xa = Tensor(x, requires_grad=True)
    got = seq(xa)
    assert type(got._ctx).__name__ == "MaxPool2d" and got._ctx.relu_out is not None
    bn_out = got._ctx.inputs[0]._ctx.inputs[0]      # conv2's input: bn + relu, one op
    assert type(bn_out._ctx).__name__ == "BatchNorm"
    got.sum().backward()
    grads = [xa.grad] + [p.grad.copy() for p in seq.parameters()]
    for b, s in zip(seq.buffers(), stats, strict=True):
        b[...] = s
    seq.zero_grad()
    xb = Tensor(x, requires_grad=True)
    want = xb
    for m in seq:
        want = m(want)
    assert type(want._ctx).__name__ == "MaxPool2d" and want._ctx.relu_out is None
    assert type(want._ctx.inputs[0]._ctx.inputs[0]._ctx.inputs[0]._ctx).__name__ == "ReLU"
    want.sum().backward()
    np.testing.assert_allclose(got.data, want.data, rtol=1e-12, atol=1e-12)
    for g, w in zip(grads, [xb.grad] + [p.grad for p in seq.parameters()], strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
    leaky = nn.Sequential(nn.ReLU(), _LeakyPool(2, layout=layout))
    np.testing.assert_array_equal(leaky(x).data, 2.0 * F.max_pool2d(np.maximum(x, 0), 2,
                                                                    layout=layout).data)
    one = x[0]                                   # an unbatched image
    np.testing.assert_array_equal(nn.Sequential(nn.ReLU(), nn.MaxPool2d(2, layout=layout))(
        one).data, F.max_pool2d(np.maximum(x, 0), 2, layout=layout).data[0])


@pytest.mark.parametrize("bias", [True, False])
def test_linear_relu_is_relu_of_linear_exactly(rng, bias):
    """functional.linear(relu=True) and Sequential(Linear, ReLU) against the two ops,
    bit for bit (NaN kept), and the gradient against finite differences."""
    x = rng.standard_normal((5, 7)).astype(np.float32)
    x[0, 0] = np.nan
    lin = nn.Linear(7, 4, bias=bias, rng=rng)
    xa, xb = Tensor(x, requires_grad=True), Tensor(x, requires_grad=True)
    got = nn.Sequential(lin, nn.ReLU())(xa)
    assert type(got._ctx).__name__ == "Linear"
    want = F.relu(lin(xb))
    np.testing.assert_array_equal(got.data, want.data)
    assert np.isnan(got.data[0]).all()
    g = rng.standard_normal(got.shape).astype(np.float32)
    grads = []
    for y, t in ((got, xa), (want, xb)):
        lin.zero_grad()
        (y * Tensor(g)).sum().backward()
        grads.append([t.grad] + [p.grad for p in lin.parameters()])
    for a, b in zip(*grads, strict=True):
        np.testing.assert_array_equal(a, b)
    w = Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    b = Tensor(rng.standard_normal(3), requires_grad=True) if bias else None
    ts = [Tensor(rng.standard_normal((6, 4)), requires_grad=True), w] + ([b] if bias else [])
    assert gradcheck(lambda *t: F.linear(t[0], t[1], t[2] if bias else None, relu=True), ts)
