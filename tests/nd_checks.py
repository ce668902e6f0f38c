"""Shared checks of conv1d and conv3d against the N-d references (tests/reference.py)."""

import numpy as np

from fastconv._args.conv_nd import conv_nd_args_from_shapes

from . import reference as ref


def nd_arrays(case, dtype=np.float64, seed=0):
    """x, w, bias and the keyword arguments of a case (n, c_in, size, c_out, kernel,
    stride, padding, dilation, groups), size and kernel tuples."""
    n, c, size, d, kernel, stride, padding, dilation, groups = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, *size)).astype(dtype)
    wt = rng.standard_normal((d, c // groups, *kernel)).astype(dtype)
    b = rng.standard_normal(d).astype(dtype)
    return x, wt, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def record(x, wt, kwargs):
    return conv_nd_args_from_shapes("ref", x.shape, wt.shape, rank=x.ndim - 2, **kwargs)


def check_forward(conv, case, algo, tol):
    """``conv`` (fastconv.conv1d / conv3d) in float64 equals the formula's reference."""
    x, wt, b, kwargs = nd_arrays(case)
    a = record(x, wt, kwargs)
    want = ref.conv_nd(x, wt, b, a.stride, a.padding, a.dilation, a.groups)
    got = conv(x, wt, b, **kwargs, algo=algo)
    assert got.shape == want.shape and got.dtype == np.float64
    assert ref.rel_error(got, want) < tol


def check_backward(conv_backward, case, algo, tol):
    """``conv_backward`` in float64 equals the reference's three gradients."""
    x, wt, _, kwargs = nd_arrays(case)
    a = record(x, wt, kwargs)
    gy = np.random.default_rng(1).standard_normal((a.n, a.c_out, *a.out))
    want = ref.conv_nd_backward(gy, x, wt, a.stride, a.padding, a.dilation, a.groups)
    got = conv_backward(gy, x, wt, **kwargs, algo=algo)
    for g, r in zip(got, want, strict=True):
        assert g.shape == r.shape and g.dtype == np.float64
        assert ref.rel_error(g, r) < tol


def check_unbatched(conv, conv_backward, case):
    """An input without its batch axis gives the batched result's first item, and
    gradients of the unbatched shapes."""
    x, wt, b, kwargs = nd_arrays(case)
    y = conv(x[0], wt, b, **kwargs)
    np.testing.assert_allclose(y, conv(x, wt, b, **kwargs)[0])
    gx, gw, gb = conv_backward(np.ones_like(y), x[0], wt, **kwargs)
    assert gx.shape == x[0].shape and gw.shape == wt.shape and gb.shape == b.shape


def check_channels_last_layer(layer_cls, channels_last: str, x, **kwargs):
    """A layer with a channels-last ``layout`` (same weight, torch's shape) gives the
    channels-first layer's output and gradients on the moved-axis input."""
    from fastconv import Tensor, manual_seed

    manual_seed(0)
    first = layer_cls(**kwargs, dtype=np.float64)
    manual_seed(0)
    last = layer_cls(**kwargs, dtype=np.float64, layout=channels_last)
    assert last.weight.shape == first.weight.shape
    assert repr(last).endswith(f"layout={channels_last!r})")
    xf, xl = Tensor(x, requires_grad=True), Tensor(np.moveaxis(x, 1, -1), requires_grad=True)
    yf, yl = first(xf), last(xl)
    np.testing.assert_allclose(np.moveaxis(yl.data, -1, 1), yf.data, rtol=1e-12, atol=1e-12)
    (yf * yf).sum().backward()
    (yl * yl).sum().backward()
    np.testing.assert_allclose(np.moveaxis(xl.grad, -1, 1), xf.grad, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(last.weight.grad, first.weight.grad, rtol=1e-10, atol=1e-12)
