"""fastconv bench / calibrate on tiny inputs: the files they write and what is in them."""

import json

import numpy as np
import pytest

from fastconv import autotune, config
from fastconv.tools import bench, cli
from fastconv.tools.bench import runner


@pytest.fixture(autouse=True)
def isolated_profile(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path / "cache"))
    autotune.clear_cache()
    yield
    autotune.clear_cache()


def test_bench_tiny_suite_writes_json_markdown_and_plots(tmp_path, capsys):
    out = tmp_path / "report"
    assert cli.main(["bench", "--suite", "tiny", "--algos", "naive", "im2col", "fft",
                     "winograd", "auto", "--repeats", "1", "--runs", "2", "--no-extras",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "BLAS:" in printed and "threading layer" in printed
    assert "| shape | algo | median ms |" in printed
    data = json.loads((out / "results.json").read_text())
    tiny = [r for r in data["results"] if r["suite"] == "tiny"]
    runs = [(s.name, a) for s in bench.TINY_SUITE for a in bench.ALGOS
            if a != "winograd" or s.k == 3]           # Winograd: the 3x3 layers only
    assert sorted((r["shape"], r["algo"]) for r in tiny) == sorted(runs)  # once each
    for r in tiny:
        assert r["seconds"] > 0 and r["gflops"] > 0
        assert (r["chosen"] in autotune.ALGORITHMS) == (r["algo"] == "auto")
    assert data["info"]["numba_threads"] >= 1 and "blas" in data["info"]
    assert data["summary"]["tiny"]["auto_candidates"] == len(bench.TINY_SUITE)
    md = (out / "results.md").read_text()
    assert "## tiny" in md and "## Summary" in md
    assert (out / "shapes_tiny.png").read_bytes()[:8] == PNG


PNG = b"\x89PNG\r\n\x1a\n"


def test_kernel_sweep_plot(tmp_path):
    assert [s.name for s in bench.KERNEL_SWEEP] == [f"k{k}" for k in range(1, 32)]
    results = [bench.Result("kernel-sweep", f"k{k}", algo, secs * k, 1.0, 1, 1)
               for k in (1, 3, 5) for algo, secs in (("naive", 3e-4), ("im2col", 1e-4),
                                                      ("fft", 2e-4), ("torch", 1e-4))]
    paths = bench.plot(bench.Report({}, results), str(tmp_path))
    assert paths == [str(tmp_path / "kernel_sweep.png")]
    assert (tmp_path / "kernel_sweep.png").read_bytes()[:8] == PNG


def test_naive_on_a_reduced_batch_is_scaled_and_marked():
    shape = bench.Shape("small", 4, 2, 10, 10, 2, 3)
    rep = bench.run([shape], ("naive", "im2col"), suite="t", extras=(), repeats=1,
                    naive_budget=1e-9)
    naive, im2col = rep.results
    assert naive.batch == 1 and naive.n == 4 and naive.scaled
    assert not im2col.scaled
    assert naive.speedup_vs_naive == 1.0
    assert im2col.speedup_vs_naive == pytest.approx(naive.seconds / im2col.seconds)
    assert "* (1/4)" in bench.format_table(rep.results)
    assert all(r.other_load is None or 0 <= r.other_load <= 1 for r in rep.results)


def test_load_meter_and_marks(monkeypatch):
    meter = bench.LoadMeter().start()
    sum(i * i for i in range(10000))  # our own work is not counted as others' load
    load = meter.stop()
    assert load is None or 0.0 <= load <= 1.0
    assert bench.wait_until_idle(0.0, threshold=1.0, window=0.01) is True
    r = bench.Result("s", "a", "im2col", 0.01, 1.0, 1, 1, other_load=0.4)
    assert "!40%" in bench.format_table([r])
    s = bench.summarize([r])["s"]
    assert s["measured_under_load"] == [{"shape": "a", "algo": "im2col", "other_load": 0.4}]
    assert "1 measurements ran while other processes used more than 3%" in (
        bench.format_summary({"s": s}))


def test_summary_counts_auto_picks():
    def res(shape, algo, secs, chosen=None):
        return bench.Result("s", shape, algo, secs, 1.0, 1, 1, chosen)

    results = [res("a", "naive", 3.0), res("a", "im2col", 1.0), res("a", "fft", 2.0),
               res("a", "auto", 1.1, "im2col"), res("a", "torch", 2.2),
               res("b", "naive", 3.0), res("b", "im2col", 1.5), res("b", "fft", 1.0),
               res("b", "auto", 1.5, "im2col"), res("b", "torch", 1.5)]
    bench.relate(results)
    s = bench.summarize(results)["s"]
    assert s["auto_picked_fastest"] == 1 and s["auto_candidates"] == 2
    assert s["auto_worst_ratio"] == pytest.approx(1.5)
    assert s["auto_vs_torch_geomean"] == pytest.approx(np.sqrt(0.5 * 1.0))
    overview = bench.format_overview(results)
    assert "| shape | naive | im2col | fft | auto | torch | auto / torch |" in overview
    assert "| b | 3000 | 1500 | 1000 | 1500 (im2col) | 1500 | 1.00 |" in overview
    text = bench.format_summary({"s": s})
    assert "1/2 shapes" in text and "b: chose im2col, fastest fft (1.50x)" in text


def test_im2col_gemm_matches_the_tiling():
    m, k, n, count = bench.im2col_gemm(bench.Shape("r", 16, 64, 56, 56, 64, 3,
                                                   padding=1))
    assert (m, k) == (64, 576) and n * count == 16 * 56 * 56
    assert bench.im2col_gemm(bench.Shape("p", 4, 8, 5, 5, 6, 1)) == (6, 8, 25, 4)


def test_suites_cover_the_default_layers():
    names = [s.name for s in bench.DEFAULT_SUITE]
    assert names == ["lenet_c1", "lenet_c2", "cifar", "resnet_56", "resnet_28", "resnet_14",
                     "stride2", "pointwise", "depthwise", "stem", "dilated", "bigkernel"]
    assert [s.name for s in bench.QUICK_SUITE] == names
    assert all(q.n <= d.n for q, d in zip(bench.QUICK_SUITE, bench.DEFAULT_SUITE,
                                                 strict=True))
    dw = bench.DEFAULT_SUITE[8]
    assert (dw.groups, dw.c, dw.c_out) == (128, 128, 128)
    assert bench.DEFAULT_SUITE[-1].single_channel()


def test_calibrate_command_writes_a_loadable_profile(tmp_path, capsys):
    path = tmp_path / "p.json"
    assert cli.main(["calibrate", "--out", str(path), "--budget", "0"]) == 0
    assert f"wrote {path}" in capsys.readouterr().out
    prof = autotune.load_profile(str(path))
    assert prof.source.startswith("calibrated") and prof.gemm_gflops > 0
    assert cli.main(["calibrate", "--dry-run", "--json", "--budget", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["threads"] >= 1
    assert not (tmp_path / "cache" / "profile.json").exists()


def test_summary_skips_choices_that_were_not_timed():
    """auto picking an algorithm left out of --algos (naive on the depthwise layer) is not
    counted as a right or wrong pick."""
    report = bench.run(bench.TINY_SUITE, ("im2col", "fft", "winograd", "auto"),
                       suite="tiny", extras=(), repeats=1)
    chosen = {r.shape: r.chosen for r in report.results if r.algo == "auto"}
    assert chosen["tiny_dw"] == "naive"
    picks = report.summary["tiny"].get("auto_picks", [])
    assert all(p["chosen"] in ("im2col", "fft", "winograd") for p in picks)
    assert "tiny_dw" not in [p["shape"] for p in picks]


def test_median_time_repeats_short_calls_up_to_the_cap():
    calls = []
    bench.median_time(lambda: calls.append(1), repeats=3, min_time=60.0, max_repeats=40)
    assert len(calls) == 1 + 40                     # warm-up + the cap, not a minute
    calls.clear()
    bench.median_time(lambda: calls.append(1), repeats=3, min_time=60.0)
    assert len(calls) == 1 + 12                     # default cap: 4 x repeats
    calls.clear()
    bench.median_time(lambda: calls.append(1), repeats=3)
    assert len(calls) == 1 + 3


def test_bench_measurements_run_for_the_minimum_time(monkeypatch):
    seen = {}

    def fake_median_time(fn, **kw):
        seen.update(kw)
        return 1e-3

    monkeypatch.setattr(runner, "median_time", fake_median_time)
    runner._time_scaled(lambda xb: (lambda: None), np.zeros((2, 1)), 2, repeats=5,
                        max_time=1.0, budget=0.0)
    assert seen["min_time"] == bench.MIN_MEASURE_SECONDS > 0
    assert seen["max_repeats"] == bench.MAX_REPEATS >= 5


def test_bench_nhwc_layout_runs_every_pair_on_nhwc_arrays(tmp_path, capsys):
    out = tmp_path / "report"
    assert cli.main(["bench", "--suite", "tiny", "--layout", "NHWC", "--algos", "im2col",
                     "winograd", "auto", "--repeats", "1", "--no-extras",
                     "--out", str(out)]) == 0
    assert "layout NHWC" in capsys.readouterr().out
    data = json.loads((out / "results.json").read_text())
    assert data["info"]["layout"] == "NHWC"
    got = sorted((r["shape"], r["algo"]) for r in data["results"])
    want = sorted((s.name, a) for s in bench.TINY_SUITE for a in ("im2col", "winograd",
                                                                 "auto")
                  if a != "winograd" or s.k == 3)
    assert got == want
    assert all(r["seconds"] > 0 for r in data["results"])


@pytest.mark.parametrize("shape", bench.TINY_SUITE, ids=lambda s: s.name)
def test_nhwc_arrays_and_runner_compute_the_nchw_result(shape):
    x, w = shape.arrays(np.float64)
    xh, wh = shape.arrays(np.float64, layout="NHWC")
    assert xh.flags.c_contiguous and np.array_equal(xh, x.transpose(0, 2, 3, 1))
    assert wh.flags.c_contiguous and np.array_equal(wh, w.transpose(2, 3, 1, 0))
    want = runner._fastconv_runner(shape, "im2col", x, w, False)()
    got = runner._fastconv_runner(shape, "im2col", xh, wh, False, "NHWC")()
    np.testing.assert_allclose(got.transpose(0, 3, 1, 2), want, rtol=1e-12, atol=1e-12)
    a = shape.args(np.float64, layout="NHWC")
    assert a.layout == "NHWC" and a.x_shape == shape.args(np.float64).x_shape


def test_im2col_gemm_nhwc_is_pixels_by_taps_by_channels():
    shape = bench.Shape("r", 16, 64, 56, 56, 64, 3, padding=1)
    m, k, n, count = bench.im2col_gemm(shape, layout="NHWC")
    assert (k, n) == (576, 64) and m * count == 16 * 56 * 56


def test_bench_cuda_refuses_nhwc(capsys):
    assert cli.main(["bench", "--device", "cuda", "--layout", "NHWC"]) == 2
    assert "--layout NHWC is not available with --device cuda" in capsys.readouterr().err


def test_bench_nd_tiny_prints_conv1d_and_conv3d_rows(capsys):
    assert cli.main(["bench", "--suite", "nd-tiny", "--repeats", "1", "--no-extras"]) == 0
    printed = capsys.readouterr().out
    for layer in ("tiny_1d", "tiny_3d"):
        rows = [line.split() for line in printed.splitlines() if line.startswith(layer)]
        assert [r[1] for r in rows] == ["forward", "forward+backward"]
        assert all(float(r[2]) > 0 and r[3] == "-" for r in rows)


def test_bench_nd_checks_against_torch():
    pytest.importorskip("torch")
    from fastconv.tools.bench import nd

    rows = nd.measure(nd.ND_TINY[1:], repeats=1, rounds=1)
    assert [r["pass"] for r in rows] == ["forward", "forward+backward"]
    assert all(r["fastconv"] > 0 and r["torch"] > 0 for r in rows)
    assert "torch/fastconv" in nd.format_rows(rows)


def test_transposed_layer_runs_conv_transpose2d_beside_torch():
    """The decoder's layer kind: fastconv's runner computes conv_transpose2d (the scatter
    reference), its output shape is the transposed one, and a run reports what auto ran."""
    from . import reference as ref

    shape = next(s for s in bench.TINY_SUITE if s.transposed)
    x, w = shape.arrays(np.float64)
    got = runner._fastconv_runner(shape, "im2col", x, w, False)()
    want = ref.conv_transpose2d(x, w, stride=(2, 2), padding=(1, 1))
    assert got.shape == shape.y_shape(np.float64) == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert bench.SUITES["decoder"][0].out_hw() == (56, 56)
    extras = ("torch",) if runner._torch() is not None else ()
    rep = bench.run([shape], ("winograd", "im2col", "auto"), suite="t", extras=extras,
                    repeats=1, backward=True)
    algos = sorted(r.algo for r in rep.results)
    assert algos == sorted(("im2col", "auto") + extras)       # Winograd: 4x4 stride 2
    assert next(r.chosen for r in rep.results if r.algo == "auto") in autotune.ALGORITHMS
    assert rep.shapes["t/tiny_convT"]["op"] == "conv_transpose2d"


def test_bench_cuda_refuses_a_suite_of_transposed_layers_only(capsys):
    assert cli.main(["bench", "--suite", "decoder", "--device", "cuda"]) == 2
    assert "--device cuda times conv2d only" in capsys.readouterr().err


@pytest.mark.parametrize("gemm,pauses", [((512, 64, 784, 16), [runner.SETTLE_SECONDS]),
                                          ((64, 256, 196, 16), [runner.SETTLE_SECONDS]),
                                          ((4, 27, 144, 2), [])])
def test_pause_after_a_large_sgemm_reference(gemm, pauses, monkeypatch):
    """OpenBLAS's workers spin after a multi-threaded product: the next measurement
    waits for them to park; after a small (one-thread) product it does not."""
    from fastconv.tools.bench import suites

    slept = []
    monkeypatch.setattr(runner.engine, "im2col_gemm", lambda *a: gemm)
    monkeypatch.setattr(runner, "sgemm_gflops", lambda *a, **k: 1.0)
    monkeypatch.setattr(runner, "_maker", lambda *a: None)
    monkeypatch.setattr(runner.time, "sleep", slept.append)
    runner.run(suites.TINY_SUITE[:1], ("im2col",), extras=())
    assert slept == pauses


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc only")
def test_settled_allocator_gives_large_arrays_without_page_faults():
    """After ``settle_allocator`` a 20 MiB array allocated, freed and allocated again
    comes back without page faults; in a fresh process the second one still faults
    (the first was mapped afresh, and its free only then raised glibc's threshold, so
    the second grows the heap)."""
    import subprocess
    import sys

    def second_faults(settle: bool) -> list[str]:
        code = ("import resource, numpy as np\n"
                "from fastconv.tools.bench.malloc import settle_allocator\n"
                "def faults(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
                f"print(settle_allocator() if {settle} else '-')\n"
                "a = np.ones((20 << 20) // 8); del a\n"
                "f0 = faults(); a = np.ones((20 << 20) // 8); del a\n"
                "print(faults() - f0)\n")
        return subprocess.run([sys.executable, "-c", code], capture_output=True,
                              text=True, check=True, timeout=120).stdout.split("\n")

    settled, fresh = second_faults(True), second_faults(False)
    assert settled[0] == "glibc malloc after one free of a 31 MiB array"
    assert int(settled[1]) < 20 and int(fresh[1]) > int(settled[1])


def test_bench_with_fixed_malloc_says_so_in_its_header():
    """``--malloc-mb`` is a tuned setting: the report's header names it (a process of
    its own, as mallopt holds for the rest of the process)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    out = subprocess.run([sys.executable, "-m", "fastconv.tools", "bench", "--suite", "tiny",
                          "--algos", "im2col", "--repeats", "1", "--no-extras",
                          "--malloc-mb", "8"], capture_output=True, text=True, env=env,
                         check=True, timeout=300).stdout
    glibc = __import__("platform").libc_ver()[0] == "glibc"
    assert ("allocator: glibc mallopt: mmap threshold 8 MiB, trim threshold 32 MiB" if glibc
            else "allocator: defaults (mallopt unavailable)") in out
