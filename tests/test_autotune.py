"""choose_algorithm / plan: the cost model's choices, the cache, calibration profiles,
measure=True, and that auto's choice always computes the right result."""

import dataclasses
import json
import warnings

import numpy as np
import pytest

import fastconv
from fastconv import _lanes, autotune, config
from fastconv._args import conv_args_from_shapes
from fastconv.tools.calibrate import calibrate

from . import reference as ref
from .conftest import from_nhwc, to_nhwc


@pytest.fixture(autouse=True)
def isolated_profile(tmp_path, monkeypatch):
    """Every test starts with an empty cache directory (so the default profile) and an
    empty plan cache."""
    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path / "cache"))
    autotune.clear_cache()
    yield
    autotune.clear_cache()


def test_plan_fields():
    p = fastconv.plan((16, 64, 56, 56), (64, 64, 3, 3), padding=1)
    assert isinstance(p, fastconv.Plan)
    assert p.algorithm in fastconv.ALGORITHMS
    assert set(p.estimates) == set(fastconv.ALGORITHMS) == set(p.workspaces)
    assert p.estimates[p.algorithm] == min(p.estimates.values())
    assert p.flops == 2 * 16 * 64 * 56 * 56 * 64 * 9
    assert p.workspace_bytes == p.workspaces[p.algorithm] > 0
    assert not p.measured
    assert p.why.startswith(f"{p.algorithm}: estimated") and "default profile" in p.why
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.algorithm = "fft"
    d = p.as_dict()
    assert json.loads(json.dumps(d))["estimates"] == dict(p.estimates)


@pytest.mark.parametrize("x_shape,w_shape,kwargs,want", [
    ((1, 1, 512, 512), (1, 1, 31, 31), {}, "fft"),
    ((1, 1, 256, 256), (1, 1, 25, 25), {}, "fft"),
    ((16, 64, 56, 56), (64, 64, 3, 3), dict(padding=1), "winograd"),
    ((16, 256, 14, 14), (256, 256, 3, 3), dict(padding=1), "winograd"),
    ((16, 64, 56, 56), (128, 64, 3, 3), dict(stride=2, padding=1), "im2col"),
    ((16, 256, 14, 14), (64, 256, 1, 1), {}, "im2col"),
    ((8, 3, 224, 224), (64, 3, 7, 7), dict(stride=2, padding=3), "im2col"),
    ((16, 128, 56, 56), (128, 1, 3, 3), dict(padding=1, groups=128), "naive"),
    # a single-channel NHWC stem: the unfold's 3-value runs cost a cache line each; with
    # 256-bit registers the direct kernel's model wins (AVX2, 2-core AMD EPYC, measured
    # best of 9: naive 0.55 ms, im2col 0.50-0.53: within 10%)
    ((32, 28, 28, 1), (3, 3, 1, 16), dict(padding=1, layout="NHWC"),
     "im2col" if _lanes.WIDE else "naive"),
])
def test_default_profile_choices(x_shape, w_shape, kwargs, want):
    assert fastconv.choose_algorithm(x_shape, w_shape, **kwargs) == want
    assert fastconv.plan(x_shape, w_shape, **kwargs).algorithm == want


def test_choice_grows_towards_fft_with_the_kernel():
    """On one single-channel image the model moves from the direct/im2col algorithms to
    FFT as the kernel grows, and never back."""
    picks = [fastconv.choose_algorithm((1, 1, 256, 256), (1, 1, k, k)) for k in range(1, 32)]
    assert picks[0] != "fft" and picks[-1] == "fft"
    first_fft = picks.index("fft")
    assert all(p == "fft" for p in picks[first_fft:])


def test_layouts_and_dtypes_are_planned():
    nchw = fastconv.plan((4, 8, 16, 16), (8, 8, 3, 3), padding=1)
    nhwc = fastconv.plan((4, 16, 16, 8), (3, 3, 8, 8), padding=1, layout="NHWC")
    f64 = fastconv.plan((4, 8, 16, 16), (8, 8, 3, 3), padding=1, dtype=np.float64)
    assert nchw.flops == nhwc.flops == f64.flops
    assert f64.estimates["im2col"] > nchw.estimates["im2col"]  # half the GEMM rate
    assert fastconv.plan((8, 16, 16), (8, 8, 3, 3)).flops == 2 * 8 * 14 * 14 * 8 * 9


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(dtype=np.int32), TypeError,
     r"choose_algorithm: dtype=int32 is not supported; accepted dtypes are float32"),
    (dict(dtype="nonsense"), TypeError, r"choose_algorithm: dtype='nonsense' is not a dtype"),
    (dict(groups=3), ValueError, r"choose_algorithm: groups=3 must divide C_in=8"),
    (dict(layout="CHWN"), ValueError, r"choose_algorithm: layout='CHWN' is not supported"),
    (dict(x_shape=(0, 8, 10, 10)), ValueError, r"choose_algorithm: the batch is empty"),
    (dict(padding="same", stride=2), ValueError, r"padding='same' requires stride 1"),
])
def test_bad_arguments_are_named(kwargs, exc, match):
    call = dict(x_shape=(2, 8, 10, 10), w_shape=(4, 8, 3, 3))
    call.update(kwargs)
    with pytest.raises(exc, match=match):
        fastconv.choose_algorithm(call.pop("x_shape"), call.pop("w_shape"), **call)


def test_plan_errors_name_plan():
    with pytest.raises(ValueError, match=r"^plan: kernel height 13"):
        fastconv.plan((1, 1, 10, 10), (1, 1, 13, 3))


# --------------------------------------------------------------------------- cache
def test_plans_are_cached_per_problem():
    a = fastconv.plan((2, 8, 10, 10), (4, 8, 3, 3))
    assert fastconv.plan((2, 8, 10, 10), (4, 8, 3, 3)) is a
    assert fastconv.plan((3, 8, 10, 10), (4, 8, 3, 3)) is not a  # batch is part of the key
    assert autotune.cache_info()["size"] == 2
    autotune.clear_cache()
    assert autotune.cache_info()["size"] == 0
    assert fastconv.plan((2, 8, 10, 10), (4, 8, 3, 3)) is not a


def test_cache_is_bounded_least_recently_used_out(monkeypatch):
    monkeypatch.setattr(config, "PLAN_CACHE_SIZE", 3)
    first = fastconv.plan((1, 2, 8, 8), (2, 2, 3, 3))
    for n in range(2, 4):
        fastconv.plan((n, 2, 8, 8), (2, 2, 3, 3))
    assert fastconv.plan((1, 2, 8, 8), (2, 2, 3, 3)) is first  # refreshed
    for n in range(4, 7):
        fastconv.plan((n, 2, 8, 8), (2, 2, 3, 3))
    assert autotune.cache_info() == {"size": 3, "maxsize": 3}
    assert fastconv.plan((1, 2, 8, 8), (2, 2, 3, 3)) is not first


def test_conv2d_auto_uses_the_cached_plan(rng, monkeypatch):
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    fastconv.conv2d(x, w, algo="auto")
    assert autotune.cache_info()["size"] == 1
    assert autotune.cache_info()["size"] == 1
    first = fastconv.plan(x.shape, w.shape)
    fastconv.conv2d(x, w, algo="auto")
    assert autotune.cache_info()["size"] == 1  # answered from the cache
    assert fastconv.plan(x.shape, w.shape) is first


def test_the_algorithm_a_call_runs_is_resolved_once_per_problem(rng, monkeypatch):
    """run_forward keeps the entry the policy chose for a problem; clear_cache and a
    change of the registry make it ask again."""
    from fastconv.algos import registry

    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    asked = []
    real = autotune.forward_choice
    monkeypatch.setattr(autotune, "forward_choice",
                        lambda a, algo="auto": asked.append(a) or real(a, algo))
    for _ in range(3):
        fastconv.conv2d(x, w)
    assert len(asked) == 1
    autotune.clear_cache()
    fastconv.conv2d(x, w)
    assert len(asked) == 2
    with registry.replaced("im2col", forward=registry.get("im2col").forward):
        fastconv.conv2d(x, w)
    assert len(asked) == 3


def test_choices_kept_per_problem_are_forgotten_with_the_plans(monkeypatch):
    """``per_problem`` choices (here im2col's backward route) hold until clear_cache."""
    from fastconv.algos.im2col import drivers

    a = conv_args_from_shapes("t", (32, 14, 14, 32), (3, 3, 32, 64), stride=2, padding=1,
                              layout="NHWC")
    assert drivers._backward_route(a, True) == "direct"
    monkeypatch.setattr(drivers, "direct_backward_chosen", lambda a, with_grad_x=True: False)
    assert drivers._backward_route(a, True) == "direct"
    autotune.clear_cache()
    assert drivers._backward_route(a, True) == "gemms"


# --------------------------------------------------------------------- calibration
def test_calibration_profile_round_trip(tmp_path):
    prof = calibrate(budget=0.0)
    path = autotune.profile_path()
    assert path.startswith(config.CACHE_DIR)
    assert autotune.load_profile() == prof
    assert prof.source.startswith("calibrated")
    for name in ("gemm_gflops", "copy_gbs", "fft_ns", "fft_gmacs", "direct_gflops",
                 "depthwise_gmacs", "call_us"):
        assert getattr(prof, name) > 0, name
    assert "calibrated" in fastconv.plan((2, 4, 8, 8), (4, 4, 3, 3)).why
    # an explicit path, and a dry run that writes nothing
    other = tmp_path / "elsewhere" / "p.json"
    autotune.save_profile(prof, str(other))
    assert autotune.load_profile(str(other)) == prof
    calibrate(str(tmp_path / "dry.json"), save=False, budget=0.0)
    assert not (tmp_path / "dry.json").exists()


def test_calibrated_depthwise_rate_reproduces_its_probe_through_the_model():
    """The depthwise rate is solved from the probe's time through ``naive.cost``: the
    probe's rows run in SIMD registers, which the model prices at
    ``LANES_DEPTHWISE_SPEEDUP`` times the profile's rate, so the raw multiply-add rate
    would count that speed-up twice."""
    from fastconv.algos import naive
    from fastconv.tools import calibrate as cal

    a = conv_args_from_shapes("t", *cal.DEPTHWISE_PROBE)
    assert naive._depthwise_macs(a)[1] == naive.LANES_DEPTHWISE_SPEEDUP
    truth = dataclasses.replace(autotune.DEFAULT_PROFILE, depthwise_gmacs=7.5)
    t = naive.cost(a, truth).seconds           # the time a machine of that rate takes
    start = dataclasses.replace(truth, depthwise_gmacs=30.0)
    assert cal._depthwise_rate(start, t) == pytest.approx(7.5, rel=1e-9)
    macs = naive._depthwise_macs(a)[0]
    assert macs / t / 1e9 > 2 * 7.5            # the raw rate, the speed-up counted twice
    # a time at or below the model's fixed cost leaves the given rate
    assert cal._depthwise_rate(start, truth.call_us * 1e-6 / 2) == 30.0


def test_custom_profile_changes_the_choice():
    shape = ((1, 1, 256, 256), (1, 1, 25, 25))
    assert fastconv.choose_algorithm(*shape) == "fft"
    slow_fft = autotune.DEFAULT_PROFILE.as_dict() | {"fft_ns": 1e3, "source": "test"}
    autotune.save_profile(autotune.Profile(**slow_fft))
    assert fastconv.choose_algorithm(*shape) != "fft"
    assert "test profile" in fastconv.plan(*shape).why


@pytest.mark.parametrize("content,match", [
    ("not json", "ignoring calibration profile"),
    ('{"version": 99, "profile": {}}', "version 99"),
    ('{"version": 1}', "ignoring calibration profile"),
])
def test_unreadable_profile_falls_back_to_default(content, match):
    path = autotune.profile_path()
    import os

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(content)
    with pytest.warns(RuntimeWarning, match=match):
        assert autotune.load_profile() == autotune.DEFAULT_PROFILE


def test_profile_for_other_thread_count_is_not_used():
    other = autotune.DEFAULT_PROFILE.as_dict() | {"threads": 999, "source": "elsewhere"}
    autotune.save_profile(autotune.Profile(**other))
    with pytest.warns(RuntimeWarning, match="measured with 999 threads"):
        assert autotune.load_profile() == autotune.DEFAULT_PROFILE


# ------------------------------------------------------------------------ measure
def test_measure_times_every_algorithm():
    p = fastconv.plan((2, 4, 12, 12), (4, 4, 3, 3), padding=1, measure=True)
    assert p.measured and p.algorithm in fastconv.ALGORITHMS
    assert p.algorithm == min(p.estimates, key=p.estimates.get)
    assert p.why.startswith(f"{p.algorithm}: measured")
    assert fastconv.choose_algorithm((2, 4, 12, 12), (4, 4, 3, 3), padding=1,
                                     measure=True) == p.algorithm
    # measured and modelled plans are cached separately
    assert not fastconv.plan((2, 4, 12, 12), (4, 4, 3, 3), padding=1).measured


def test_measure_scales_slow_algorithms(monkeypatch):
    """An algorithm the model expects to be slow runs on fewer images."""
    slow = autotune.DEFAULT_PROFILE.as_dict() | {"direct_gflops": 1e-6}
    autotune.save_profile(autotune.Profile(**slow))
    p = fastconv.plan((4, 2, 8, 8), (2, 2, 3, 3), measure=True)
    assert "naive timed on 1 of 4 images and scaled" in p.why


# ---------------------------------------------------------------- auto is correct
# (x_shape NCHW, w_shape OIHW, kwargs): layers where different algorithms win
AUTO_CASES = [
    ((2, 3, 16, 16), (4, 3, 3, 3), dict(padding=1)),
    ((1, 1, 64, 64), (1, 1, 21, 21), dict(padding=3)),
    ((1, 1, 40, 40), (1, 1, 15, 15), dict(stride=2)),
    ((2, 6, 12, 12), (6, 1, 3, 3), dict(padding=1, groups=6)),
    ((2, 4, 10, 10), (8, 2, 1, 1), dict(groups=2)),
    ((1, 2, 30, 30), (3, 2, 11, 11), dict(padding="same", dilation=2)),
    ((3, 2, 7, 9), (2, 2, 2, 3), dict(stride=(2, 1), padding=((1, 0), (2, 1)))),
]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", AUTO_CASES)
def test_auto_choice_gives_the_right_result(case, dtype, layout, rng):
    x_shape, w_shape, kwargs = case
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    a = conv_args_from_shapes("t", x_shape, w_shape, **kwargs)
    want = ref.conv2d(x, w, b, a.stride, a.padding, a.dilation, a.groups)
    xl, wl = (x, w) if layout == "NCHW" else to_nhwc(x, w)
    for measure in (False, True):
        p = fastconv.plan(xl.shape, wl.shape, layout=layout, dtype=dtype, measure=measure,
                          **kwargs)
        got = fastconv.conv2d(xl, wl, b, layout=layout, algo=p.algorithm, **kwargs)
        got = got if layout == "NCHW" else from_nhwc(got)
        assert ref.rel_error(got, want) <= ref.tolerance(dtype, p.algorithm), p.why
    auto = fastconv.conv2d(xl, wl, b, layout=layout, algo="auto", **kwargs)
    chosen = fastconv.conv2d(xl, wl, b, layout=layout,
                             algo=fastconv.choose_algorithm(xl.shape, wl.shape, layout=layout,
                                                            dtype=dtype, **kwargs), **kwargs)
    np.testing.assert_array_equal(auto, chosen)


def test_no_warnings_from_a_plain_plan():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastconv.plan((2, 3, 8, 8), (3, 3, 3, 3))


def test_backward_has_its_own_plan():
    """conv2d_backward's direct algorithm has no depthwise kernel: where the forward
    runs the depthwise kernel, the backward plan picks another algorithm."""
    shape = ((16, 128, 56, 56), (128, 1, 3, 3))
    kwargs = dict(padding=1, groups=128)
    assert fastconv.choose_algorithm(*shape, **kwargs) == "naive"
    back = fastconv.plan(*shape, backward=True, **kwargs)
    fwd = fastconv.plan(*shape, **kwargs)
    assert back.estimates["im2col"] > fwd.estimates["im2col"]
    assert "(backward)" in back.why
    lenet = ((64, 1, 28, 28), (6, 1, 5, 5))    # im2col's direct image-last kernel
    assert fastconv.choose_algorithm(*lenet) == "im2col"
    assert fastconv.choose_algorithm(*lenet, backward=True) != "naive"


def test_conv2d_backward_auto_uses_the_backward_plan(rng, monkeypatch):
    # one image: im2col's image-last backward (taken by "auto" before the plan wherever
    # it applies, see test_conv_backward.py) needs a batch
    x = rng.standard_normal((1, 1, 12, 12))
    w = rng.standard_normal((3, 1, 5, 5))
    gy = rng.standard_normal((1, 3, 8, 8))
    want = fastconv.choose_algorithm(x.shape, w.shape, dtype=np.float64, backward=True)
    ran = []
    from fastconv.algos import registry

    real = registry.get(want).backward
    with registry.replaced(want, backward=lambda *a: ran.append(want) or real(*a)):
        got = fastconv.conv2d_backward(gy, x, w, algo="auto")
    assert ran == [want]
    ref_gx, ref_gw, _ = fastconv.conv2d_backward(gy, x, w, algo="naive")
    np.testing.assert_allclose(got[0], ref_gx, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(got[1], ref_gw, rtol=1e-10, atol=1e-10)


def test_measured_backward_plan():
    p = fastconv.plan((2, 4, 10, 10), (4, 4, 3, 3), padding=1, measure=True, backward=True)
    assert p.measured and p.why.startswith(f"{p.algorithm}: measured") and "(backward)" in p.why
    assert p.algorithm == min(p.estimates, key=p.estimates.get)


# ------------------------------------------------- one channel last: the NCHW twin
def test_one_channel_nhwc_problems_are_planned_as_their_nchw_twin():
    """An NHWC problem of one input and one output channel lies in memory as the NCHW
    one: its plan is the twin's (the NHWC direct kernel vectorises over channels, so
    its 1-channel rate is not the model's), and only then."""
    for k in (3, 5, 16):
        nhwc = fastconv.plan((1, 64, 64, 1), (k, k, 1, 1), padding=1, layout="NHWC")
        nchw = fastconv.plan((1, 1, 64, 64), (1, 1, k, k), padding=1)
        assert nhwc == nchw
        back = fastconv.plan((2, 64, 64, 1), (k, k, 1, 1), layout="NHWC", backward=True)
        assert back == fastconv.plan((2, 1, 64, 64), (1, 1, k, k), backward=True)
    a = conv_args_from_shapes("conv2d", (2, 9, 9, 3), (3, 3, 3, 1), layout="NHWC")
    assert a.memory_twin is a                                # 3 input channels: itself
    b = conv_args_from_shapes("conv2d", (2, 9, 9, 1), (3, 3, 1, 2), layout="NHWC")
    assert b.memory_twin is b                                # 2 output channels
    c = conv_args_from_shapes("conv2d", (2, 1, 9, 9), (1, 1, 3, 3))
    assert c.memory_twin is c                                # NCHW already


@pytest.mark.parametrize("algo", ["auto", "naive", "im2col", "fft", "winograd"])
@pytest.mark.parametrize("stride, padding, dilation", [
    ((1, 1), ((1, 1), (1, 1)), (1, 1)), ((2, 2), ((2, 2), (1, 1)), (1, 1)),
    ((1, 1), ((2, 2), (2, 2)), (2, 2))])
def test_one_channel_nhwc_runs_as_nchw_with_the_formulas_results(algo, stride, padding,
                                                                  dilation):
    """Forward and both gradients of a 1 -> 1 channel NHWC layer, run as the NCHW
    twin on views of the caller's arrays: the reference's values, written into the
    caller's (NHWC) arrays, for a strided input too."""
    k = 3 if algo == "winograd" else 5
    if algo == "winograd" and (stride, dilation) != ((1, 1), (1, 1)):
        pytest.skip("Winograd runs 3x3 kernels of stride and dilation 1")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 20, 34, 1))[:, ::2, 1::2]    # (3, 10, 17, 1), strided
    w = rng.standard_normal((k, k, 1, 1))
    bias = rng.standard_normal(1)
    window = dict(stride=stride, padding=padding, dilation=dilation)
    oihw = w.transpose(3, 2, 0, 1)
    want = ref.conv2d(from_nhwc(x), oihw, bias, **window).transpose(0, 2, 3, 1)
    y = fastconv.conv2d(x, w, bias, layout="NHWC", algo=algo, **window)
    assert y.shape == want.shape
    assert ref.rel_error(y, want) < ref.tolerance(np.float64, algo)
    gy = rng.standard_normal(y.shape)
    gx, gw, gb = fastconv.conv2d_backward(gy, x, w, layout="NHWC", algo=algo, **window)
    rgx, rgw, rgb = ref.conv2d_backward(from_nhwc(gy), from_nhwc(x), oihw, **window)
    assert gx.shape == x.shape and gw.shape == w.shape
    assert ref.rel_error(gx, rgx.transpose(0, 2, 3, 1)) < ref.tolerance(np.float64, algo)
    assert ref.rel_error(gw, rgw.transpose(2, 3, 1, 0)) < ref.tolerance(np.float64, algo)
    assert ref.rel_error(gb, rgb) < 1e-12


def test_nhwc_direct_rate_counts_the_register_share_of_output_channels():
    """The NHWC direct kernel vectorises over the output channels of a group: fewer than
    a register's width run at that share of its rate in the model, so a layer of one
    output channel is not planned onto it (it ran 8.5 ms there against 0.45 in
    Winograd: 16 -> 1 channels 3x3, 8 x 64 x 64)."""
    from fastconv.algos import naive

    lanes = _lanes.per_register(4)
    prof = autotune.DEFAULT_PROFILE

    def per_flop(c_out, groups=1):
        a = conv_args_from_shapes("conv2d", (8, 64, 64, 16), (3, 3, 16 // groups, c_out),
                                  padding=1, groups=groups, layout="NHWC")
        return (naive.cost(a, prof).seconds - prof.call_us * 1e-6) / a.flops

    assert per_flop(1) == pytest.approx(lanes * per_flop(lanes))
    assert per_flop(2 * lanes) == pytest.approx(per_flop(lanes))       # a full register
    assert per_flop(2 * lanes, groups=2) == pytest.approx(per_flop(lanes))
    plan = fastconv.plan((8, 64, 64, 16), (3, 3, 16, 1), padding=1, layout="NHWC")
    assert plan.algorithm != "naive", plan.why
