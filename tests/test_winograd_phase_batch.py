"""A dilated NCHW layer's Winograd forward and backward with its phases as one batch
(``winograd.phase_batch``), other dilated layers' forward on strided views of the phases
(``drivers._run``): which layers batch, and the results against the reference over
dilations, paddings, groups, bias, dtypes and both tile sizes; non-finite input."""

import numpy as np
import pytest

import fastconv
from fastconv._args import conv_args_from_shapes
from fastconv.algos.winograd import cost as winograd_cost
from fastconv.algos.winograd import phase_batch
from fastconv.costs import load_profile

from . import reference as ref
from .conftest import count_calls
from .test_winograd import F32_TOL, _arrays, _ids, tile  # noqa: F401  (tile: a fixture)

#: Small NCHW layers' weight gradients in the Winograd domain, as these tests check them
pytestmark = pytest.mark.usefixtures("nchw_winograd_grad_w")

# (n, c_in, h, w, c_out, padding, groups, dilation): every phase the same problem
CASES = [
    (2, 3, 12, 10, 4, 2, 1, 2),                     # padding = dilation, even sides
    (1, 4, 12, 9, 6, 3, 2, 3),                      # dilation 3, groups
    (2, 2, 8, 12, 3, (2, 4), 1, (2, 4)),            # a dilation per axis
    (1, 3, 8, 8, 2, ((4, 0), (2, 2)), 1, 2),        # uneven padding, a multiple of 2
]


@pytest.mark.parametrize("size,out,pads,dilation,uniform", [
    ((12, 10), (12, 10), (2, 2), (2, 2), True),
    ((12, 11), (12, 11), (2, 2), (2, 2), False),    # odd side: phases of 6 and 5
    ((12, 10), (10, 8), (1, 1), (2, 2), False),     # padding 1: the phases pad 1 and 0
    ((9, 9), (9, 9), (3, 3), (3, 3), True),
    ((4, 4), (2, 2), (0, 0), (3, 3), False),        # phases without outputs
])
def test_which_layers_batch_their_phases(size, out, pads, dilation, uniform):
    got = phase_batch.uniform_phases(size, out, pads, dilation)
    assert (got is not None) == uniform
    if uniform:
        pt, pl, order = got
        assert (pt, pl) == (pads[0] // dilation[0], pads[1] // dilation[1])
        # output phase (rho_h, rho_w) reads input phase (sigma_h, sigma_w): here the same
        assert order.tolist() == [[rh * dilation[1] + rw for rw in range(dilation[1])]
                                  for rh in range(dilation[0])]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_batched_forward_matches_reference(case, dtype, tile, monkeypatch):  # noqa: F811
    x, wt, b, a, kw = _arrays(case, dtype)
    calls = count_calls(monkeypatch, phase_batch, "_phase_copy")
    got = fastconv.conv2d(x, wt, b, algo="winograd", **kw)
    want = ref.conv2d(x, wt, b, a.stride, a.padding, a.dilation, a.groups)
    assert len(calls) == 2      # x's phases in, y's out
    assert got.dtype == dtype and got.shape == want.shape
    assert ref.rel_error(got, want) <= (1e-13 if dtype == np.float64 else F32_TOL[tile])


@pytest.mark.parametrize("case", [(1, 2, 6, 6, 3, 1, 1, 2), (2, 4, 7, 6, 2, 2, 2, 2),
                                  (1, 2, 9, 9, 2, (1, 3), 1, 3)], ids=_ids)
def test_forward_of_other_phases_runs_on_views(case, monkeypatch):
    """Phases padded differently or of different sizes: one run per phase on strided
    views of x and y, no copies."""
    x, wt, b, a, kw = _arrays(case, np.float64)
    calls = count_calls(monkeypatch, phase_batch, "_phase_copy")
    got = fastconv.conv2d(x, wt, b, algo="winograd", **kw)
    want = ref.conv2d(x, wt, b, a.stride, a.padding, a.dilation, a.groups)
    assert calls == []
    assert ref.rel_error(got, want) <= 1e-13


def test_gather_and_scatter_are_inverse():
    x = np.arange(2 * 3 * 6 * 8, dtype=np.float64).reshape(2, 3, 6, 8)
    xb = np.empty((16, 3, 3, 2))
    order = np.array([[3, 2, 1, 0], [7, 6, 5, 4]])
    phase_batch._phase_copy(x, xb, order, True)
    assert np.array_equal(xb[(1 * 4 + 0) * 2 + 1], x[1, :, 1::2, 3::4])  # block order[1, 3]
    back = np.empty_like(x)
    phase_batch._phase_copy(back, xb, order, False)
    assert np.array_equal(back, x)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_input_gets_the_direct_pattern(value):
    x, wt, b, a, kw = _arrays(CASES[0], np.float32)
    x[1, 2, 5, 4] = value
    got = fastconv.conv2d(x, wt, b, algo="winograd", **kw)
    want = fastconv.conv2d(x, wt, b, algo="im2col", **kw)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(got[np.isfinite(want)], want[np.isfinite(want)])
    assert np.isnan(want).any() or np.isinf(want).any()


@pytest.mark.parametrize("needs", [(True, True, False), (True, False, False),
                                   (False, True, False)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_batched_backward_matches_reference(case, dtype, needs, monkeypatch):
    x, wt, _, a, kw = _arrays(case, dtype)
    gy = np.random.default_rng(1).standard_normal(a.y_shape).astype(dtype)
    wants = ref.conv2d_backward(gy, x, wt, a.stride, a.padding, a.dilation, a.groups)
    calls = count_calls(monkeypatch, phase_batch, "_phase_copy")
    got = fastconv.conv2d_backward(gy, x, wt, algo="winograd", needs_input_grad=needs, **kw)
    assert len(calls) == 1 + needs[0] + needs[1]   # gy in; x in for grad_w; grad_x out
    tol = 1e-12 if dtype == np.float64 else 2e-5
    errors = [None if g is None else ref.rel_error(g, want)
              for g, want in zip(got, wants, strict=True)]
    assert [e is None for e in errors] == [not k for k in needs]
    assert all(e is None or e <= tol for e in errors)


def test_batched_gradients_match_finite_differences(monkeypatch):
    """float64 central differences through conv2d (padding 2, dilation 2, batched)."""
    x, wt, b, _, kw = _arrays((1, 2, 6, 4, 2, 2, 1, 2), np.float64)
    forwards = count_calls(monkeypatch, phase_batch, "forward_batched")
    calls = count_calls(monkeypatch, phase_batch, "_phase_copy")
    inputs = [fastconv.Tensor(v, requires_grad=True) for v in (x, wt, b)]
    assert fastconv.gradcheck(lambda x, w, b: fastconv.nn.functional.conv2d(
        x, w, b, algo="winograd", **kw), inputs)
    # per forward: x in, y out; per backward: grad_y and x in, grad_x out
    backwards = len(calls) - 2 * len(forwards)
    assert forwards and backwards > 0 and backwards % 3 == 0


@pytest.mark.parametrize("case", [(1, 2, 6, 6, 3, 1, 1, 2), (1, 2, 7, 6, 3, 2, 1, 2)],
                         ids=_ids)
def test_other_phases_run_one_by_one(case, monkeypatch):
    """Padding 1 at dilation 2 (phases padded by 1 and 0), or an odd side (phases of 4
    and 3 rows): the phases are different problems, run one by one."""
    x, wt, _, a, kw = _arrays(case, np.float64)
    gy = np.random.default_rng(1).standard_normal(a.y_shape)
    calls = count_calls(monkeypatch, phase_batch, "_phase_copy")
    got = fastconv.conv2d_backward(gy, x, wt, algo="winograd", **kw)
    wants = ref.conv2d_backward(gy, x, wt, a.stride, a.padding, a.dilation, a.groups)
    assert calls == []
    assert all(ref.rel_error(g, want) <= 1e-12 for g, want in zip(got, wants, strict=True))


@pytest.mark.parametrize("dilation,padding,layout,says", [
    (2, 2, "NCHW", "4 phases as one batch"), (2, 1, "NCHW", "4 phases in place"),
    (1, 2, "NCHW", None), (2, 2, "NHWC", "4 phases in place")])
def test_cost_model_says_how_the_phases_run(dilation, padding, layout, says):
    x, w = ((16, 64, 56, 56), (64, 64, 3, 3)) if layout == "NCHW" else \
        ((16, 56, 56, 64), (3, 3, 64, 64))
    a = conv_args_from_shapes("conv2d", x, w, padding=padding, dilation=dilation,
                              layout=layout)
    detail = winograd_cost.cost(a, load_profile()).detail
    assert ("phases" in detail) is (says is not None)
    assert says is None or says in detail


@pytest.mark.parametrize("padding,layout,says", [
    (2, "NCHW", True), (1, "NCHW", False), (2, "NHWC", False)])    # NHWC: in place
def test_backward_plan_says_the_phases_run_as_one_batch(padding, layout, says):
    x, w = ((16, 64, 56, 56), (64, 64, 3, 3)) if layout == "NCHW" else \
        ((16, 56, 56, 64), (3, 3, 64, 64))
    why = fastconv.plan(x, w, padding=padding, dilation=2, layout=layout, backward=True).why
    assert ("(its 4 phases as one batch)" in why) is says
