"""Fused batch norm + ReLU and residual add + ReLU against the ops they fuse."""

import numpy as np
import pytest

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


@pytest.mark.parametrize("stride", [1, 2])
def test_basic_block_matches_its_unfused_ops(rng, stride):
    """BasicBlock's fused forward and gradients against its layers called one by one."""
    block = nn.BasicBlock(2, 3, stride, rng=rng, dtype=np.float64)
    x = Tensor(rng.standard_normal((2, 2, 5, 5)), requires_grad=True)
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
