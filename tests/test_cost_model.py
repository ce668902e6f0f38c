"""The cost model's pieces: the GEMM roofline, the FFT's transform lengths, Winograd's
input gradient priced as its own problem, and the
calibration's solves for the unfold and FFT rates (synthetic probe times from known
rates must give those rates back); bench/auto_survey.py, which measures auto's choices
against every algorithm, on tiny layers."""

import dataclasses
import json
import math

import numpy as np
import pytest

from fastconv import costs
from fastconv._args import conv_args_from_shapes
from fastconv.algos import fft
from fastconv.algos.winograd import cost as winograd_cost
from fastconv.costs import DEFAULT_PROFILE, gemm_seconds
from fastconv.tools import calibrate

from .conftest import load_script


def test_gemm_time_is_the_larger_of_arithmetic_and_memory():
    p = DEFAULT_PROFILE
    fast_memory = dataclasses.replace(p, copy_gbs=1e12)
    slow_memory = dataclasses.replace(p, copy_gbs=1e-3)
    # a square product: its arithmetic alone when memory is fast
    arithmetic = gemm_seconds(fast_memory, 256, 1152, 1024)
    assert gemm_seconds(p, 256, 1152, 1024) == pytest.approx(arithmetic)
    # a matrix-vector product is priced at its traffic when that takes longer
    m, k, n = 1, 1296, 1440
    memory = (m * k + k * n + m * n) * 4 / (slow_memory.copy_gbs * 1e9)
    assert gemm_seconds(slow_memory, m, k, n) == pytest.approx(memory)
    assert gemm_seconds(p, m, k, n, batch=3) == pytest.approx(3 * gemm_seconds(p, m, k, n))


def test_tall_products_have_their_own_halves_for_k_and_n():
    """The pixels as rows (many rows, at least TALL_MIN_N columns): a short k costs less
    than with the pixels as columns; fewer columns keep the profile's halves."""
    p = dataclasses.replace(DEFAULT_PROFILE, copy_gbs=1e12)   # the arithmetic alone
    eff = costs.efficiency

    def arithmetic(m, k, n, half_k, half_n):
        e = min(eff(m, p.gemm_half_m), eff(k, half_k), eff(n, half_n))
        return 2.0 * m * k * n / (p.gemm_gflops * 1e9 * e)

    tall = gemm_seconds(p, 16384, 9, 64)
    assert tall == pytest.approx(arithmetic(16384, 9, 64, costs.TALL_HALF_K,
                                            costs.TALL_HALF_N))
    assert tall < gemm_seconds(p, 64, 9, 16384) / 2     # the same product, pixels as columns
    assert gemm_seconds(p, 16384, 9, 4) == pytest.approx(
        arithmetic(16384, 9, 4, p.gemm_half_k, p.gemm_half_n))
    assert gemm_seconds(p, 256, 9, 64) == pytest.approx(     # not 8x taller than wide
        arithmetic(256, 9, 64, p.gemm_half_k, p.gemm_half_n))


@pytest.mark.parametrize("m, k, n", [(16384, 1, 64), (1, 75, 16384), (1024, 1600, 1)])
def test_outer_and_matrix_vector_products_are_priced_at_their_memory_traffic(m, k, n):
    # K = 1 runs as one multiply an output, M or N = 1 as a matrix-vector product: their
    # traffic from memory, whatever a GEMM of one row would take
    p = DEFAULT_PROFILE
    fast_arithmetic = dataclasses.replace(p, gemm_gflops=1e9)
    memory = (m * k + k * n + m * n) * 4 / (p.copy_gbs * 1e9)
    assert gemm_seconds(p, m, k, n) == pytest.approx(memory)
    assert gemm_seconds(fast_arithmetic, m, k, n, batch=2) == pytest.approx(2 * memory)
    # in cache an outer product costs nothing here, a matrix-vector product its
    # arithmetic at GEMV_SHARE of the GEMM rate
    in_cache = dataclasses.replace(p, copy_gbs=math.inf)
    gemv = 2.0 * m * k * n / (p.gemm_gflops * 1e9 * costs.GEMV_SHARE)
    assert gemm_seconds(in_cache, m, k, n) == pytest.approx(0.0 if k == 1 else gemv)
    # two of each are a GEMM again: at least its traffic, more where its skinniest
    # dimension slows the arithmetic (two terms a sum, the pixels as columns)
    two = [max(d, 2) for d in (m, k, n)]
    memory_two = (two[0] * two[1] + two[1] * two[2] + two[0] * two[2]) * 4 / (p.copy_gbs * 1e9)
    assert gemm_seconds(p, *two) >= memory_two
    assert gemm_seconds(p, 64, 2, 16384) > 1.5 * (2 * 16384 + 2 * 64 + 16384 * 64) * 4 / (
        p.copy_gbs * 1e9)


@pytest.mark.parametrize("x_shape, w_shape, padding, layout", [
    ((32, 1, 28, 28), (16, 1, 3, 3), 1, "NCHW"),
    ((2, 10, 12, 4), (3, 3, 4, 8), 0, "NHWC"),
    ((2, 4, 11, 9), (8, 4, 3, 3), ((2, 0), (1, 2)), "NCHW"),
])
def test_winograd_prices_grad_x_as_the_forward_of_its_own_problem(x_shape, w_shape, padding,
                                                                   layout, monkeypatch):
    """grad_x is grad_y correlated with the flipped kernel, channels swapped: the
    problem conv2d would build from grad_y's shape (its GEMMs differ from the forward's
    where the channel counts do), and the backward's model prices that forward."""
    a = conv_args_from_shapes("conv2d", x_shape, w_shape, padding=padding, layout=layout)
    priced = []
    forward_cost = winograd_cost.cost

    def recording_cost(args, *rest, **kw):
        priced.append(args)
        return forward_cost(args, *rest, **kw)

    monkeypatch.setattr(winograd_cost, "cost", recording_cost)
    winograd_cost.backward_cost(a, DEFAULT_PROFILE)
    assert (a.grad_x_problem in priced) == winograd_cost.grads(a)[0]
    (pt, pb), (pl, pr) = a.padding
    adjoint = a.grad_x_problem
    w_adjoint = (a.c_in, a.c_out, 3, 3) if layout == "NCHW" else (3, 3, a.c_out, a.c_in)
    assert adjoint == conv_args_from_shapes("conv2d", a.y_layout_shape, w_adjoint,
                                            padding=((2 - pt, 2 - pb), (2 - pl, 2 - pr)),
                                            layout=layout)
    assert adjoint.y_layout_shape == a.x_layout_shape
    assert adjoint.grad_x_problem == a


def test_fft_prices_lengths_with_factors_3_and_5_higher():
    unit = dataclasses.replace(DEFAULT_PROFILE, fft_ns=1.0, fft_plane_us=0.0)
    none = dataclasses.replace(DEFAULT_PROFILE, fft_ns=0.0, fft_plane_us=0.0)

    def transforms(padding):
        """(transform shape, modelled transform time per point * log2(points))"""
        a = conv_args_from_shapes("conv2d", (1, 1, 128, 128), (1, 1, 5, 5), padding=padding)
        fh, fw = fft.forward_transform_shape(a)
        t = fft.cost(a, unit).seconds - fft.cost(a, none).seconds
        return (fh, fw), t / (fh * fw * math.log2(fh * fw))

    (valid, per_valid), (same, per_same) = transforms(0), transforms(2)
    assert (valid, same) == ((128, 128), (135, 135))     # 132 -> 135 = 3^3 * 5
    assert per_same / per_valid == pytest.approx(fft.MIXED_RADIX_COST, rel=0.01)
    assert per_same > 1.2 * per_valid


def test_unfold_rates_solve_both_probes_together():
    inv_bw, row = 1 / 40e9, 3e-9
    long, short = (7_225_344, 32_256), (1_806_336, 64_512)
    times = [b * inv_bw + s * row for b, s in (long, short)]
    got = calibrate._unfold_rates(long, times[0], short, times[1])
    assert got == pytest.approx((inv_bw, row))
    # noise that leaves no positive solution: the long probe's time is all bandwidth
    got = calibrate._unfold_rates(long, 1e-4, short, 1e-6)
    assert got == (pytest.approx(1e-4 / long[0]), 0.0)


def test_fft_rates_come_from_the_two_convolution_probes():
    prof = dataclasses.replace(DEFAULT_PROFILE, fft_ns=0.5, fft_call_us=0.0)
    want = dataclasses.replace(prof, fft_ns=0.17, fft_call_us=80.0)

    def probe_time(shapes):
        return fft.cost(conv_args_from_shapes("calibrate", *shapes), want).seconds

    ns, call_us = calibrate._fft_conv_rates(prof, probe_time(calibrate.FFT_CONV_PROBE),
                                            probe_time(calibrate.FFT_CONV_BIG_PROBE))
    assert (ns, call_us) == (pytest.approx(0.17), pytest.approx(80.0))
    # a big probe no slower than the small one: the bare transforms' rate stands
    small = probe_time(calibrate.FFT_CONV_PROBE)
    ns, call_us = calibrate._fft_conv_rates(prof, small, small)
    assert ns == prof.fft_ns and call_us >= 0


# ------------------------------------------------------------ bench/auto_survey.py
@pytest.fixture(scope="module")
def survey():
    return load_script("bench/auto_survey.py")


@pytest.mark.parametrize("kind", ["survey", "fft"])
def test_survey_layers_stay_in_their_kind(survey, kind):
    rng = np.random.default_rng(3)
    for _ in range(50):
        layer = survey.random_layer(rng, kind)
        xs, ws = survey.shapes(layer)
        assert len(xs) == len(ws) == 4 and np.prod(xs) <= 4e6
        assert layer["k"] <= 7 if kind == "survey" else 5 <= layer["k"] <= 15


def test_survey_times_every_algorithm_and_reports_misses(survey, monkeypatch, tmp_path,
                                                         capsys):
    tiny = [dict(n=1, ci=2, co=3, h=12, k=3, stride=1, padding=1, layout="NHWC"),
            dict(n=2, ci=1, co=2, h=10, k=5, stride=1, padding=0, layout="NCHW")]
    monkeypatch.setattr(survey, "random_layer", lambda rng, kind: dict(tiny[0]) if
                        rng.random() < 0.5 else dict(tiny[1]))
    out = tmp_path / "rows.json"
    assert survey.main(["--layers", "4", "--runs", "2", "--calls", "1",
                        "--json", str(out)]) == 0
    back = tmp_path / "backward.json"
    assert survey.main(["--layers", "2", "--runs", "1", "--calls", "1", "--backward",
                        "--json", str(back)]) == 0
    assert all(r["auto"] in r["times"] for r in json.loads(back.read_text()))
    rows = json.loads(out.read_text())
    assert len(rows) == 4
    for r in rows:
        assert r["auto"] in r["times"] and {"im2col", "fft"} <= set(r["times"])
        assert all(t > 0 for t in r["times"].values())
    assert capsys.readouterr().out.startswith("4 layers: auto within 10% of the fastest")
    rows = [dict(auto="fft", times={"fft": 3.0, "im2col": 1.0}),
            dict(auto="naive", times={"naive": 1.0, "fft": 2.0})]
    assert survey.summary(rows).startswith("2 layers: auto within 10% of the fastest on "
                                           "50.0%")
