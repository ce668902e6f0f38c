"""The ``fastconv`` command line: bad options and paths end in one line and exit status
2 (1 for failures while working), never a traceback; --version, the help, and the
lines saying where results went."""

import os
import re
import subprocess
import sys

import pytest

import fastconv
from fastconv import autotune, config, training
from fastconv.tools import bench, calibrate, cli


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    autotune.clear_cache()
    yield
    autotune.clear_cache()


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if training or benchmarking starts."""
    def refuse(*a, **k):
        raise AssertionError("work started before the options were checked")
    monkeypatch.setattr(training, "run", refuse)
    monkeypatch.setattr(bench, "environment", refuse)
    monkeypatch.setattr(bench, "run", refuse)


BAD_VALUES = [
    (["train", "--epochs", "-1"], "--epochs: must be a positive integer, got '-1'"),
    (["train", "--epochs", "2.5"], "--epochs: must be a positive integer, got '2.5'"),
    (["train", "--batch-size", "0"], "--batch-size: must be a positive integer, got '0'"),
    (["train", "--lr", "-5"], "--lr: must be a positive finite number, got '-5'"),
    (["train", "--lr", "0"], "--lr: must be a positive finite number, got '0'"),
    (["train", "--lr", "inf"], "--lr: must be a positive finite number, got 'inf'"),
    (["train", "--seed", "-1"], "--seed: must be a non-negative integer, got '-1'"),
    (["train", "--checkpoint-every", "0"], "--checkpoint-every: must be a positive integer"),
    (["bench", "--repeats", "0"], "--repeats: must be a positive integer, got '0'"),
    (["bench", "--runs", "-2"], "--runs: must be a positive integer, got '-2'"),
    (["bench", "--naive-budget", "-1"], "--naive-budget: must be a non-negative finite"),
    (["bench", "--wait-idle", "nan"], "--wait-idle: must be a non-negative finite number"),
    (["calibrate", "--budget", "-3"], "--budget: must be a non-negative finite number, "
                                      "got '-3'"),
]


@pytest.mark.parametrize("argv, message", BAD_VALUES, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else "")
def test_bad_values_exit_2_with_one_line(argv, message, capsys, no_work):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"fastconv {argv[0]}: error: argument ") and message in last


def _blocked(tmp_path):
    """A directory that cannot be created: its parent is a regular file."""
    (tmp_path / "a_file").write_text("x")
    return str(tmp_path / "a_file" / "run")


@pytest.mark.parametrize("argv", [["train", "--out"], ["bench", "--suite", "tiny", "--out"],
                                  ["calibrate", "--out"]], ids=lambda v: v[0])
def test_unwritable_out_is_refused_before_any_work(argv, tmp_path, capsys, no_work,
                                                   monkeypatch):
    import fastconv.tools.calibrate as calibrate_mod

    monkeypatch.setattr(calibrate_mod, "calibrate", training.run)     # refuses too
    path = _blocked(tmp_path) + ("/p.json" if argv[0] == "calibrate" else "")
    assert cli.main(argv + [path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fastconv {argv[0]}: --out {path}")
    assert "cannot create it or write in it" in err[0]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc (Linux)")
def test_out_under_proc_fails_before_training(capsys, no_work):
    assert cli.main(["train", "--out", "/proc/nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("fastconv train: --out /proc/nope: cannot")


def test_out_that_is_a_file_and_calibrate_out_that_is_a_directory(tmp_path, capsys, no_work):
    (tmp_path / "f").write_text("x")
    assert cli.main(["train", "--out", str(tmp_path / "f")]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    assert cli.main(["calibrate", "--out", str(tmp_path)]) == 2
    assert "is a directory; give a file path" in capsys.readouterr().err


def test_resume_and_checkpoint_paths_are_checked_first(tmp_path, capsys, no_work):
    assert cli.main(["train", "--resume", str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fastconv train: --resume {tmp_path / 'missing.npz'}: no such file"]
    assert cli.main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a file" in capsys.readouterr().err
    assert cli.main(["train", "--checkpoint", _blocked(tmp_path) + "/c.npz"]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_unreadable_resume_file_exits_1_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a checkpoint")
    assert cli.main(["train", "--dataset", "synthetic", "--epochs", "1", "--batch-size",
                     "400", "--no-progress", "--resume", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fastconv train: {bad}")


def test_mnist_without_a_reachable_mirror_names_the_variable(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(config, "MNIST_MIRROR", str(tmp_path / "no-mirror"))
    assert cli.main(["train", "--dataset", "mnist", "--epochs", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith("fastconv train: could not download ")
    assert "set FASTCONV_MNIST_MIRROR to a URL or a local directory" in err[0]


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"fastconv {fastconv.__version__}"


def _subparsers(parser):
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {name: p for name, p in action.choices.items()
            if name in ("info", "bench", "calibrate", "train")}


def test_help_is_plain_text_with_every_option_explained_and_defaults_shown():
    parser = cli.build_parser()
    texts = [parser.format_help()]
    subs = _subparsers(parser)
    assert set(subs) == {"info", "bench", "calibrate", "train"}
    for name, sub in subs.items():
        text = sub.format_help()
        texts.append(text)
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings} has no help text"
            shows_default = action.default not in (None, False) and action.dest != "help"
            if shows_default:
                opt = action.option_strings[-1]
                block = re.search(rf"^  {opt}\b.*?(?=^  -|\Z)", text.split("options:")[1],
                                  re.M | re.S).group(0)
                assert "(default: " in " ".join(block.split()), (name, opt)
    for text in texts:
        assert "``" not in text and ":func:" not in text and "None" not in text
    assert "(default: 15)" in subs["train"].format_help()
    assert "(default: nothing is saved)" in subs["bench"].format_help()


def test_train_says_where_results_went(tmp_path, capsys):
    argv = ["train", "--dataset", "synthetic", "--epochs", "1", "--batch-size", "400",
            "--no-progress"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "weights and metrics not saved (add --out DIR" in out
    assert not os.listdir(tmp_path / ".") or "weights.npz" not in os.listdir(tmp_path)
    assert cli.main(argv + ["--out", str(tmp_path / "new" / "run")]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'new' / 'run' / 'weights.npz'} and metrics.json" in out
    assert "not saved" not in out


def _tables(text: str) -> list[list[list[str]]]:
    """The markdown tables in ``text``: rows of cells, the header first."""
    tables, rows = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            if not re.fullmatch(r"\|(-+:?\|)+", line):
                rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows:
            tables.append(rows)
            rows = []
    return tables


def test_bench_report_without_extras_has_no_none_and_no_empty_column(tmp_path, capsys):
    out = tmp_path / "rep"
    assert cli.main(["bench", "--suite", "tiny", "--algos", "im2col", "winograd", "auto",
                     "--repeats", "1", "--no-extras", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    md = (out / "results.md").read_text()
    for text in (printed, md):
        assert "None" not in text
        assert "torch" not in text.split("compared with:")[0]
        assert "OPENBLAS_CORETYPE=" in text and "/ torch" not in text
        tables = _tables(text)
        assert len(tables) == 3                    # overview, every measurement, layers
        for table in tables:
            head, *rows = table
            for i, name in enumerate(head):
                assert any(row[i] not in ("", "-", "n/a") for row in rows), name
        assert ["tiny_dw", "2", "4", "10", "10", "4", "3", "1", "1", "1", "4"] in tables[2]
        assert "share of SGEMM: GFLOP/s / the rate numpy's SGEMM reaches" in text
        assert "Above 100% is possible for FFT, Winograd" in text
        assert "n/a: not applicable" in text       # Winograd on the 5x5 layer
    assert printed.rstrip().endswith(f"wrote {out / 'shapes_tiny.png'}")
    assert cli.main(["bench", "--suite", "tiny", "--algos", "im2col", "--repeats", "1",
                     "--no-extras"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(
        "results not saved (add --out DIR to write results.json, results.md and the plots)")


def test_report_words_for_missing_peers_and_the_torch_ratio():
    header = bench.format_header({"torch": None, "torch_threads": None, "scipy": "1.0",
                                  "openblas_coretype_env": None, "threading_layer": None,
                                  "extras": list(bench.EXTRAS)})
    assert "None" not in header and "torch not installed" in header
    assert "OPENBLAS_CORETYPE=unset" in header and "threading layer unknown" in header
    results = [bench.Result("s", "a", algo, secs, 1.0, 1, 1, "im2col" if algo == "auto"
                            else None) for algo, secs in (("auto", 1.0), ("torch", 2.0))]
    bench.relate(results)
    assert "| a | 1000 (im2col) | 2000 | 0.50 |" in bench.format_overview(results)
    assert "below 1 means fastconv is faster" in bench.legend(results)
    summary = bench.format_summary(bench.summarize(results))
    assert "auto / torch, geometric mean of time ratios: 0.500 (fastconv faster" in summary


def test_info_prints_no_none(capsys):
    assert cli.main(["info"]) == 0
    assert "None" not in capsys.readouterr().out


def test_a_subprocess_gets_one_line_and_status_2():
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    proc = subprocess.run([sys.executable, "-m", "fastconv.tools", "train", "--lr", "-5"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "fastconv train: error: argument --lr: must be a positive finite number, got '-5'")


@pytest.mark.parametrize("argv", [["bench", "--suite", "quick"], ["calibrate", "--dry-run"]])
def test_ctrl_c_in_bench_or_calibrate_exits_130_with_one_line(argv, monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(bench, "environment", interrupted)
    monkeypatch.setattr(bench, "run", interrupted)
    monkeypatch.setattr(calibrate, "calibrate", interrupted)
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert err == f"fastconv {argv[0]}: interrupted\n"
