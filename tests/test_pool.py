"""Pooling: max / average / global average and their gradients against the references,
finite differences, the worked example, torch's edge rules; bad arguments."""

import numpy as np
import pytest

import fastconv
from fastconv.pool import pool_output_size

from . import reference as ref

LAYOUTS = ["NCHW", "NHWC"]
DTYPES = [np.float32, np.float64]

# (n, c, h, w, kernel, stride, padding, dilation, ceil_mode)
MAX_CASES = [
    (2, 3, 6, 6, 2, None, 0, 1, False),
    (1, 2, 7, 8, 3, 2, 1, 1, False),
    (1, 2, 7, 8, 3, 2, 1, 1, True),
    (2, 2, 5, 5, 2, 1, 0, 1, False),              # overlapping windows
    (1, 3, 9, 7, (3, 2), (2, 1), (1, 1), (2, 1), True),
    (1, 1, 8, 8, 2, 3, 1, 2, True),
    (1, 2, 6, 5, 4, 1, 2, 1, False),
    (2, 20, 5, 6, 3, 1, 1, 1, False),             # > one 16-channel block in NHWC kernels
    (1, 1, 1, 1, 2, 1, 1, 2, False),              # the window lies wholly in the padding
]
# (n, c, h, w, kernel, stride, padding, ceil_mode, count_include_pad)
AVG_CASES = [
    (2, 3, 6, 6, 2, None, 0, False, True),
    (1, 1, 5, 5, 3, 2, 1, True, True),            # divisor clipped at the right padding
    (1, 1, 5, 5, 3, 2, 1, True, False),
    (1, 2, 7, 8, 3, 2, 1, False, False),
    (2, 2, 5, 5, 2, 1, 0, False, True),           # overlapping windows
    (1, 3, 9, 7, (3, 2), (2, 1), (1, 1), True, True),
    (1, 2, 6, 5, 4, 1, 2, False, True),
    (2, 20, 4, 5, 2, 1, 1, True, False),
]


def _ids(cases):
    return ["-".join(str(v).replace(" ", "") for v in c) for c in cases]


def _pair(v, default=None):
    if v is None:
        v = default
    return (v, v) if isinstance(v, int) else tuple(v)


def _to(a, layout):
    return a if layout == "NCHW" or a is None else np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _from(a, layout):
    return a if layout == "NCHW" else a.transpose(0, 3, 1, 2)


def _distinct(shape, rng):
    """Values 0.1 apart, so no ties and a small finite-difference step keeps every argmax."""
    return (rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 - 3.0)


# ------------------------------------------------------------------------ output size
@pytest.mark.parametrize("n,k,s,p,r,ceil,want", [
    (5, 2, 2, 0, 1, False, 2),
    (5, 2, 2, 0, 1, True, 3),
    (5, 3, 2, 1, 1, True, 3),
    (6, 3, 2, 1, 1, True, 4),    # the 4th window starts at 5, inside the input
    (4, 2, 2, 1, 1, True, 3),    # the 3rd window starts at 3, inside the input
    (3, 2, 2, 1, 1, True, 2),    # a 3rd would start at 3: in the right padding, dropped
    (8, 2, 3, 1, 2, False, 3),
    (1, 2, 1, 1, 2, False, 1),
])
def test_output_size_law(n, k, s, p, r, ceil, want):
    assert pool_output_size(n, k, s, p, r, ceil) == want == ref.pool_out_size(n, k, s, p, r,
                                                                              ceil)


def test_lecture_worked_example():
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    for layout in LAYOUTS:
        y = _from(fastconv.max_pool2d(_to(x, layout), 2, stride=1, layout=layout), layout)
        np.testing.assert_array_equal(y[0, 0], [[4, 5], [7, 8]])
        y32 = fastconv.max_pool2d(x.astype(np.float32), 2, stride=1)
        np.testing.assert_array_equal(y32[0, 0], [[4, 5], [7, 8]])


# --------------------------------------------------------------------------- max pool
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MAX_CASES, ids=_ids(MAX_CASES))
def test_max_pool_matches_reference(case, dtype, layout, rng):
    n, c, h, w, k, s, p, r, ceil = case
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    want, want_idx = ref.max_pool2d(x, _pair(k), _pair(s, k), _pair(p), _pair(r), ceil)
    y, idx = fastconv.max_pool2d(_to(x, layout), k, s, p, r, ceil, layout=layout,
                                 return_indices=True)
    assert y.dtype == dtype and idx.dtype == np.int64
    np.testing.assert_array_equal(_from(y, layout), want.astype(dtype))
    np.testing.assert_array_equal(_from(idx, layout), want_idx)
    gy = rng.standard_normal(want.shape).astype(dtype)
    gx = fastconv.max_pool2d_backward(_to(gy, layout), idx, _to(x, layout).shape,
                                      layout=layout)
    assert gx.dtype == dtype
    want_gx = ref.max_pool2d_backward(gy, want_idx, x.shape)
    assert ref.rel_error(_from(gx, layout), want_gx) <= ref.tolerance(dtype, "pool")


# small enough for one perturbation per element; not the all-padding window
FD_MAX = [c for c in MAX_CASES if c[0] * c[1] * c[2] * c[3] <= 200 and c[2] > 1]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", FD_MAX, ids=_ids(FD_MAX))
def test_max_pool_gradient_matches_finite_differences(case, layout, rng):
    n, c, h, w, k, s, p, r, ceil = case
    x = _distinct((n, c, h, w), rng)
    y = fastconv.max_pool2d(x, k, s, p, r, ceil)
    gy = rng.standard_normal(y.shape)

    def loss():
        return float(np.sum(gy * ref.max_pool2d(x, _pair(k), _pair(s, k), _pair(p), _pair(r),
                                                 ceil)[0]))

    want = ref.numerical_grad(loss, x, eps=0.02)      # values are 0.1 apart
    _, idx = fastconv.max_pool2d(_to(x, layout), k, s, p, r, ceil, layout=layout,
                                 return_indices=True)
    gx = fastconv.max_pool2d_backward(_to(gy, layout), idx, _to(x, layout).shape,
                                      layout=layout)
    assert ref.rel_error(_from(gx, layout), want) <= 1e-10


@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_pool_ties_nan_and_infinities(layout):
    """First maximum wins ties; a NaN is the maximum (the last NaN, as torch); -inf is a
    value like any other; padding never wins."""
    x = np.array([[[[3.0, 3.0, -np.inf, -np.inf],
                    [1.0, 3.0, -np.inf, -np.inf],
                    [1.0, np.nan, 2.0, np.nan],
                    [np.nan, 5.0, np.nan, 9.0]]]])
    y, idx = fastconv.max_pool2d(_to(x, layout), 2, layout=layout, return_indices=True)
    y, idx = _from(y, layout), _from(idx, layout)
    np.testing.assert_array_equal(idx[0, 0], [[0, 2], [12, 14]])
    assert y[0, 0, 0, 0] == 3.0 and y[0, 0, 0, 1] == -np.inf
    assert np.isnan(y[0, 0, 1]).all()
    # padding (-inf never read) cannot beat a real -inf
    y, idx = fastconv.max_pool2d(np.full((1, 1, 2, 2), -np.inf), 2, padding=1,
                                 return_indices=True)
    np.testing.assert_array_equal(idx[0, 0], [[0, 1], [2, 3]])


# 2x2 windows with stride 2 and no padding run a kernel of their own in NCHW
# (_max_pool_2x2_planes); odd sizes leave the last row/column out, ceil_mode with an odd
# size has partial windows and goes to the general kernel.
POOL_2X2 = [(2, 3, 6, 6, False), (1, 2, 7, 9, False), (3, 1, 2, 2, False), (2, 5, 8, 4, True),
            (1, 2, 5, 7, True), (64, 6, 28, 28, False), (1, 1, 3, 2, False)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_2X2, ids=_ids(POOL_2X2))
def test_max_pool_2x2_stride_2_matches_reference(case, dtype, layout, rng):
    n, c, h, w, ceil = case
    x = rng.integers(-2, 3, (n, c, h, w)).astype(dtype)        # many ties
    x[rng.random(x.shape) < 0.02] = np.nan
    x[rng.random(x.shape) < 0.02] = -np.inf
    want, want_idx = ref.max_pool2d(x, (2, 2), (2, 2), ceil_mode=ceil)
    y, idx = fastconv.max_pool2d(_to(x, layout), 2, ceil_mode=ceil, layout=layout,
                                 return_indices=True)
    y_only = fastconv.max_pool2d(_to(x, layout), 2, ceil_mode=ceil, layout=layout)
    assert y.dtype == y_only.dtype == dtype and idx.dtype == np.int64
    np.testing.assert_array_equal(_from(y, layout), want.astype(dtype))
    np.testing.assert_array_equal(_from(y_only, layout), want.astype(dtype))
    np.testing.assert_array_equal(_from(idx, layout), want_idx)
    gy = rng.standard_normal(want.shape).astype(dtype)
    gx = fastconv.max_pool2d_backward(_to(gy, layout), idx, _to(x, layout).shape,
                                      layout=layout)
    want_gx = ref.max_pool2d_backward(gy, want_idx, x.shape)
    assert ref.rel_error(_from(gx, layout), want_gx) <= ref.tolerance(dtype, "pool")


def test_max_pool_2x2_unbatched_and_views(rng):
    x = rng.standard_normal((3, 9, 12, 10))[::2, :, 1:, ::-1]       # (2, 9, 11, 10) view
    want, want_idx = ref.max_pool2d(x, (2, 2), (2, 2))
    y, idx = fastconv.max_pool2d(x, 2, return_indices=True)
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(idx, want_idx)
    y1, idx1 = fastconv.max_pool2d(x[1], 2, return_indices=True)
    np.testing.assert_array_equal(y1, want[1])
    np.testing.assert_array_equal(idx1, want_idx[1])
    np.testing.assert_array_equal(fastconv.max_pool2d(x[1], (2, 2), stride=2), want[1])


def test_max_pool_2x2_gradient_matches_finite_differences(rng):
    x = _distinct((2, 3, 5, 6), rng)
    gy = rng.standard_normal((2, 3, 2, 3))

    def loss():
        return float(np.sum(gy * ref.max_pool2d(x, (2, 2), (2, 2))[0]))

    want = ref.numerical_grad(loss, x, eps=0.02)
    _, idx = fastconv.max_pool2d(x, 2, return_indices=True)
    gx = fastconv.max_pool2d_backward(gy, idx, x.shape)
    assert ref.rel_error(gx, want) <= 1e-10


def test_max_pool_window_in_padding_gets_no_gradient():
    x = np.array([[[[7.0]]]])
    y, idx = fastconv.max_pool2d(x, 2, stride=1, padding=1, dilation=2, return_indices=True)
    assert y.shape == (1, 1, 1, 1) and y[0, 0, 0, 0] == -np.inf and idx[0, 0, 0, 0] == -1
    gx = fastconv.max_pool2d_backward(np.ones_like(y), idx, x.shape)
    assert gx[0, 0, 0, 0] == 0.0


@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_pool_backward_overlapping_windows_deterministic(layout, rng):
    """Stride 1 with a 3x3 kernel: most inputs win several windows; the (plane / channel
    block) ownership gives the same bits on every run."""
    x = rng.integers(0, 3, (4, 40, 9, 9)).astype(np.float32)   # many ties
    xl = _to(x, layout)
    y, idx = fastconv.max_pool2d(xl, 3, stride=1, padding=1, layout=layout,
                                 return_indices=True)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    runs = [fastconv.max_pool2d_backward(gy, idx, xl.shape, layout=layout) for _ in range(3)]
    for r in runs[1:]:
        np.testing.assert_array_equal(r, runs[0])
    _, want_idx = ref.max_pool2d(x, (3, 3), (1, 1), (1, 1))
    want = ref.max_pool2d_backward(_from(gy, layout), want_idx, x.shape)
    assert ref.rel_error(_from(runs[0], layout), want) <= 1e-5


# --------------------------------------------------------------------------- avg pool
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", AVG_CASES, ids=_ids(AVG_CASES))
def test_avg_pool_matches_reference(case, dtype, layout, rng):
    n, c, h, w, k, s, p, ceil, cip = case
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    geom = (_pair(k), _pair(s, k), _pair(p), ceil, cip)
    want = ref.avg_pool2d(x, *geom)
    y = fastconv.avg_pool2d(_to(x, layout), k, s, p, ceil, cip, layout=layout)
    assert y.dtype == dtype
    assert ref.rel_error(_from(y, layout), want) <= ref.tolerance(dtype, "pool")
    gy = rng.standard_normal(want.shape).astype(dtype)
    gx = fastconv.avg_pool2d_backward(_to(gy, layout), _to(x, layout).shape, k, s, p, ceil,
                                      cip, layout=layout)
    assert gx.dtype == dtype
    want_gx = ref.avg_pool2d_backward(gy, x.shape, *geom)
    assert ref.rel_error(_from(gx, layout), want_gx) <= ref.tolerance(dtype, "pool")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", AVG_CASES, ids=_ids(AVG_CASES))
def test_avg_pool_gradient_matches_finite_differences(case, layout, rng):
    n, c, h, w, k, s, p, ceil, cip = case
    x = rng.standard_normal((n, c, h, w))
    geom = (_pair(k), _pair(s, k), _pair(p), ceil, cip)
    gy = rng.standard_normal(ref.avg_pool2d(x, *geom).shape)
    want = ref.numerical_grad(lambda: float(np.sum(gy * ref.avg_pool2d(x, *geom))), x, 0.5)
    gx = fastconv.avg_pool2d_backward(_to(gy, layout), _to(x, layout).shape, k, s, p, ceil,
                                      cip, layout=layout)
    assert ref.rel_error(_from(gx, layout), want) <= 1e-10


def test_avg_pool_divisors_by_hand():
    """3x3, stride 2, padding 1, ceil_mode on 5x5 ones: corners see 4 of 9 cells; the last
    window is clipped at the end of the right padding (3 rows, not 4)."""
    x = np.ones((1, 1, 5, 5))
    y = fastconv.avg_pool2d(x, 3, 2, 1, ceil_mode=True)[0, 0]
    np.testing.assert_allclose(y, [[4 / 9, 6 / 9, 4 / 9], [6 / 9, 1, 6 / 9],
                                   [4 / 9, 6 / 9, 4 / 9]], rtol=1e-15)
    y = fastconv.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)
    np.testing.assert_array_equal(y, np.ones((1, 1, 3, 3)))


# -------------------------------------------------------------------- global average
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_global_avg_pool(dtype, layout, rng):
    x = rng.standard_normal((2, 20, 5, 3)).astype(dtype)
    y = fastconv.global_avg_pool2d(_to(x, layout), layout=layout)
    assert y.shape == ((2, 20, 1, 1) if layout == "NCHW" else (2, 1, 1, 20))
    assert y.dtype == dtype
    want = ref.avg_pool2d(x, (5, 3), (5, 3))
    assert ref.rel_error(_from(y, layout), want) <= ref.tolerance(dtype, "pool")
    gy = rng.standard_normal(want.shape).astype(dtype)
    gx = fastconv.global_avg_pool2d_backward(_to(gy, layout), _to(x, layout).shape,
                                             layout=layout)
    assert gx.dtype == dtype
    want_gx = ref.avg_pool2d_backward(gy, x.shape, (5, 3), (5, 3))
    assert ref.rel_error(_from(gx, layout), want_gx) <= ref.tolerance(dtype, "pool")
    if dtype == np.float64:
        x64 = x.copy()
        fd = ref.numerical_grad(lambda: float(np.sum(gy * x64.mean((2, 3), keepdims=True))),
                                x64, 0.5)
        assert ref.rel_error(_from(gx, layout), fd) <= 1e-10


def test_global_avg_pool_float32_sums_in_float64():
    x = np.full((1, 1, 1000, 1000), 0.1, np.float32)
    x[0, 0, 0, 0] = 1e4
    want = (1e4 + 0.1 * (1e6 - 1)) / 1e6
    assert abs(float(fastconv.global_avg_pool2d(x)[0, 0, 0, 0]) - want) <= 1e-6 * want


# ------------------------------------------------------------ unbatched, empty, views
@pytest.mark.parametrize("layout", LAYOUTS)
def test_unbatched_input(layout, rng):
    x4 = rng.standard_normal((1, 3, 6, 7))
    x4l = _to(x4, layout)
    x3 = x4l[0]
    y, idx = fastconv.max_pool2d(x3, 3, 2, 1, layout=layout, return_indices=True)
    y4, idx4 = fastconv.max_pool2d(x4l, 3, 2, 1, layout=layout, return_indices=True)
    np.testing.assert_array_equal(y, y4[0])
    np.testing.assert_array_equal(fastconv.max_pool2d_backward(y, idx, x3.shape, layout=layout),
                                  fastconv.max_pool2d_backward(y4, idx4, x4l.shape,
                                                               layout=layout)[0])
    a = fastconv.avg_pool2d(x3, 2, layout=layout)
    np.testing.assert_array_equal(a, fastconv.avg_pool2d(x4l, 2, layout=layout)[0])
    np.testing.assert_array_equal(
        fastconv.avg_pool2d_backward(a, x3.shape, 2, layout=layout),
        fastconv.avg_pool2d_backward(a[None], x4l.shape, 2, layout=layout)[0])
    g = fastconv.global_avg_pool2d(x3, layout=layout)
    assert g.shape == ((3, 1, 1) if layout == "NCHW" else (1, 1, 3))
    assert fastconv.global_avg_pool2d_backward(g, x3.shape, layout=layout).shape == x3.shape


@pytest.mark.parametrize("layout", LAYOUTS)
def test_empty_batch(layout):
    x = np.zeros((0, 3, 6, 6) if layout == "NCHW" else (0, 6, 6, 3), np.float32)
    y, idx = fastconv.max_pool2d(x, 2, layout=layout, return_indices=True)
    assert y.shape == ((0, 3, 3, 3)) and idx.shape == y.shape
    assert fastconv.max_pool2d_backward(y, idx, x.shape, layout=layout).shape == x.shape
    assert fastconv.avg_pool2d(x, 2, layout=layout).shape == (0, 3, 3, 3)
    assert fastconv.avg_pool2d_backward(y, x.shape, 2, layout=layout).shape == x.shape
    assert fastconv.global_avg_pool2d(x, layout=layout).shape[0] == 0


def test_non_contiguous_input(rng):
    base = rng.standard_normal((3, 4, 14, 12))
    x = base[::2, 1::2, ::2, ::-1]                           # (2, 2, 7, 12)
    want, want_idx = ref.max_pool2d(x, (2, 3), (2, 3))
    y, idx = fastconv.max_pool2d(x, (2, 3), return_indices=True)
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(idx, want_idx)
    assert ref.rel_error(fastconv.avg_pool2d(x, 3, 1, 1), ref.avg_pool2d(x, (3, 3), (1, 1),
                                                                          (1, 1))) <= 1e-12


# ----------------------------------------------------------------------------- errors
X = np.zeros((2, 3, 8, 8), np.float32)


@pytest.mark.parametrize("fn,kwargs,exc,match", [
    ("max", dict(kernel_size=0), ValueError, r"max_pool2d: kernel_size=0 must be positive"),
    ("avg", dict(kernel_size=(2, 0)), ValueError,
     r"avg_pool2d: kernel_size=\(2, 0\) must be positive"),
    ("max", dict(kernel_size=4, padding=3), ValueError,
     r"max_pool2d: padding=3 must be at most half the kernel size 4"),
    ("avg", dict(kernel_size=(3, 4), padding=(2, 1)), ValueError,
     r"avg_pool2d: padding=\(2, 1\) must be at most half the kernel size \(3, 4\)"),
    ("avg", dict(kernel_size=1, padding=1), ValueError,
     r"avg_pool2d: padding=1 must be at most half the kernel size 1"),
    ("max", dict(kernel_size=(2, 2, 2)), ValueError,
     r"max_pool2d: kernel_size=\(2, 2, 2\) must be an int or a pair \(h, w\), got 3 values"),
    ("max", dict(stride=(1,)), ValueError,
     r"max_pool2d: stride=\(1,\) must be an int or a pair \(h, w\), got 1 values"),
    ("avg", dict(padding=(1, 1, 1)), ValueError,
     r"avg_pool2d: padding=\(1, 1, 1\) must be an int or a pair"),
    ("max", dict(dilation=(1, 2, 3)), ValueError, r"max_pool2d: dilation=\(1, 2, 3\) must be"),
    ("max", dict(stride=0), ValueError, r"max_pool2d: stride=0 must be positive"),
    ("max", dict(dilation=0), ValueError, r"max_pool2d: dilation=0 must be positive"),
    ("avg", dict(padding=-1), ValueError, r"avg_pool2d: padding=-1 must be >= 0"),
    ("max", dict(kernel_size=1.5), TypeError, r"max_pool2d: kernel_size=1.5 must be an int"),
    ("max", dict(kernel_size=9), ValueError,
     r"max_pool2d: output size 0x0 is too small: input 8x8, kernel 9x9"),
    ("max", dict(ceil_mode="yes"), TypeError, r"max_pool2d: ceil_mode='yes' must be a bool"),
    ("avg", dict(count_include_pad=None), TypeError,
     r"avg_pool2d: count_include_pad=None must be a bool"),
    ("max", dict(layout="NWHC"), ValueError, r"max_pool2d: layout='NWHC' is not supported"),
    ("max", dict(x=X.astype(np.int32)), TypeError,
     r"max_pool2d: input has dtype int32; accepted dtypes are float32 and float64"),
    ("avg", dict(x=X.astype(np.uint8)), TypeError, r"avg_pool2d: input has dtype uint8"),
    ("max", dict(x=np.zeros(8, np.float32)), ValueError,
     r"max_pool2d: input must be 4-D \(batched\) or 3-D \(unbatched\) in layout NCHW, got 1-D"),
    ("avg", dict(x={}), TypeError,
     r"avg_pool2d: input must be an array-like convertible to a numpy array, got dict"),
    ("max", dict(x="x"), TypeError,
     r"max_pool2d: input must be an array-like convertible to a numpy array, got str"),
    ("avg", dict(x=[1.0]), ValueError, r"avg_pool2d: input must be 4-D \(batched\) or 3-D"),
])
def test_bad_pool_arguments_are_named(fn, kwargs, exc, match):
    call = dict(x=X, kernel_size=2)
    call.update(kwargs)
    x = call.pop("x")
    f = fastconv.max_pool2d if fn == "max" else fastconv.avg_pool2d
    with pytest.raises(exc, match=match):
        f(x, **call)


Y = np.zeros((2, 3, 4, 4), np.float32)
IDX = np.zeros((2, 3, 4, 4), np.int64)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(indices=IDX[..., :3]), ValueError,
     r"max_pool2d_backward: indices must have the shape of grad_y \(2, 3, 4, 4\), got "
     r"\(2, 3, 4, 3\)"),
    (dict(indices=IDX.astype(np.int32)), TypeError,
     r"max_pool2d_backward: indices has dtype int32; expected int64"),
    (dict(indices="idx"), TypeError,
     r"max_pool2d_backward: indices must be an array-like convertible to a numpy array, "
     r"got str"),
    (dict(indices=IDX + 64), ValueError,
     r"max_pool2d_backward: indices must lie in \[0, H\*W\) = \[0, 64\) \(or be -1\), got "
     r"values from 64 to 64"),
    (dict(indices=IDX - 2), ValueError, r"max_pool2d_backward: indices must lie in"),
    (dict(input_shape=(2, 4, 8, 8)), ValueError,
     r"max_pool2d_backward: grad_y of shape \(2, 3, 4, 4\) does not match input_shape "
     r"\(2, 4, 8, 8\)"),
    (dict(input_shape=(3, 8, 8)), ValueError,
     r"max_pool2d_backward: grad_y is 4-D but input_shape \(3, 8, 8\) is 3-D"),
    (dict(input_shape=(8, 8)), ValueError,
     r"max_pool2d_backward: grad_y is 4-D but input_shape \(8, 8\) is 2-D \(one gray image\)"),
    (dict(input_shape=(8,)), ValueError, r"max_pool2d_backward: input must be 4-D"),
    (dict(input_shape=None), TypeError, r"max_pool2d_backward: input_shape=None must be"),
    (dict(grad_y=Y.astype(np.int64)), TypeError, r"max_pool2d_backward: grad_y has dtype int64"),
    (dict(layout="CHW"), ValueError, r"max_pool2d_backward: layout='CHW' is not supported"),
    (dict(mask=Y[..., :3]), ValueError,
     r"max_pool2d_backward: mask must have grad_y's shape \(2, 3, 4, 4\) and dtype float32, "
     r"got \(2, 3, 4, 3\) float32"),
    (dict(mask=Y.astype(np.float64)), ValueError,
     r"max_pool2d_backward: mask must have grad_y's shape .* got \(2, 3, 4, 4\) float64"),
    (dict(mask=Y.astype(np.int64)), TypeError, r"max_pool2d_backward: mask has dtype int64"),
])
def test_bad_max_pool_backward_arguments(kwargs, exc, match):
    call = dict(grad_y=Y, indices=IDX, input_shape=(2, 3, 8, 8))
    call.update(kwargs)
    with pytest.raises(exc, match=match):
        fastconv.max_pool2d_backward(call.pop("grad_y"), call.pop("indices"),
                                     call.pop("input_shape"), **call)


def test_bad_avg_and_global_backward_arguments():
    with pytest.raises(ValueError, match=r"avg_pool2d_backward: grad_y must have shape "
                       r"\(2, 3, 4, 4\) \(the pooling output\), got \(2, 3, 4, 5\)"):
        fastconv.avg_pool2d_backward(np.zeros((2, 3, 4, 5)), (2, 3, 8, 8), 2)
    with pytest.raises(ValueError, match=r"avg_pool2d_backward: padding=2 must be at most"):
        fastconv.avg_pool2d_backward(np.zeros((2, 3, 4, 4)), (2, 3, 8, 8), 2, padding=2)
    with pytest.raises(ValueError, match=r"avg_pool2d_backward: kernel_size=0 must be positive"):
        fastconv.avg_pool2d_backward(np.zeros((2, 3, 4, 4)), (2, 3, 8, 8), 0)
    with pytest.raises(ValueError, match=r"global_avg_pool2d_backward: grad_y must have shape "
                       r"\(2, 1, 1, 3\) \(the pooling output\), got \(2, 3, 1, 1\)"):
        fastconv.global_avg_pool2d_backward(np.zeros((2, 3, 1, 1)), (2, 8, 8, 3),
                                            layout="NHWC")
    with pytest.raises(TypeError, match=r"global_avg_pool2d_backward: grad_y has dtype int64"):
        fastconv.global_avg_pool2d_backward(np.zeros((2, 3, 1, 1), np.int64), (2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"global_avg_pool2d: input has no pixels \(H=0, W=4\)"):
        fastconv.global_avg_pool2d(np.zeros((1, 2, 0, 4)))
    with pytest.raises(MemoryError, match=r"max_pool2d_backward: the gradient of shape "
                       r"\(1, 1, 4000000000, 4000000000\) \(float64\) needs"):
        fastconv.max_pool2d_backward(np.zeros((1, 1, 1, 1)), np.zeros((1, 1, 1, 1), np.int64),
                                     (1, 1, 4 * 10**9, 4 * 10**9))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("kernel, stride", [(2, 2), (3, 1)])
def test_max_pool_backward_writes_the_whole_gradient(layout, kernel, stride, rng, monkeypatch):
    # the unpool kernels zero their own part of the gradient: an output buffer full of
    # NaN must come back as the reference, zeros where no maximum sits
    from fastconv.pool import ops

    def dirty(op, what, shape, dtype):
        return np.full(shape, np.nan, dtype)

    x = rng.standard_normal((3, 4, 7, 6)).astype(np.float32)
    xl = x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    y, idx = fastconv.max_pool2d(xl, kernel, stride, layout=layout, return_indices=True)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    want = fastconv.max_pool2d_backward(gy, idx, xl.shape, layout=layout)
    monkeypatch.setattr(ops, "allocate", dirty)
    got = fastconv.max_pool2d_backward(gy, idx, xl.shape, layout=layout)
    assert not np.isnan(got).any()
    np.testing.assert_array_equal(got, want)
    assert (got == 0).sum() >= got.size - gy.size     # untouched inputs stay zero


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels", [1, 6, 19])
def test_max_pool_2x2_nhwc_matches_nchw_with_ties_and_nans(channels, dtype, rng):
    # NHWC 2x2 stride-2 windows run a kernel of their own: same maxima and indices as
    # NCHW's, the first maximum winning ties and the last NaN winning
    x = rng.integers(0, 3, (3, channels, 6, 8)).astype(dtype)   # many ties
    x[0, 0, 0, 1] = np.nan
    x[1, -1, 2, 2] = x[1, -1, 3, 3] = np.nan
    xn = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    y, idx = fastconv.max_pool2d(x, 2, return_indices=True)
    yn, idxn = fastconv.max_pool2d(xn, 2, layout="NHWC", return_indices=True)
    np.testing.assert_array_equal(yn.transpose(0, 3, 1, 2), y)
    np.testing.assert_array_equal(idxn.transpose(0, 3, 1, 2), idx)
    np.testing.assert_array_equal(fastconv.max_pool2d(xn, 2, layout="NHWC"), yn)
    assert idx[1, -1, 1, 1] == 3 * 8 + 3                  # the last NaN of its window
    assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 1


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("window", [dict(kernel_size=2), dict(kernel_size=3, stride=2,
                                                              padding=1)])
def test_max_pool_backward_mask_passes_gradient_where_positive(layout, dtype, window, rng):
    """mask: the gradient of the pooled values where mask > 0 only (NaN and -0.0 pass
    nothing), as a separate masking of grad_y before the backward; for 4-D, unbatched
    3-D and 2-D arrays."""
    x = rng.standard_normal((2, 3, 7, 8)).astype(dtype)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    y, idx = fastconv.max_pool2d(x, **window, layout=layout, return_indices=True)
    g = rng.standard_normal(y.shape).astype(dtype)
    mask = rng.standard_normal(y.shape).astype(dtype)
    mask.flat[:4] = [np.nan, -0.0, 0.0, np.inf]
    want = fastconv.max_pool2d_backward(np.where(mask > 0, g, 0).astype(dtype), idx, x.shape,
                                        layout=layout)
    got = fastconv.max_pool2d_backward(g, idx, x.shape, layout=layout, mask=mask)
    assert got.dtype == dtype and np.count_nonzero(got) > 0
    np.testing.assert_array_equal(got, want)
    one = fastconv.max_pool2d_backward(g[0], idx[0], x.shape[1:], layout=layout,
                                       mask=mask[0])
    np.testing.assert_array_equal(one, want[0])
    if layout == "NCHW":        # one gray image
        plane = fastconv.max_pool2d_backward(g[0, 0], idx[0, 0], x.shape[2:], mask=mask[0, 0])
        np.testing.assert_array_equal(plane, want[0, 0])
