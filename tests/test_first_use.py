"""First use: one notice when kernels compile (never when they come from the cache), the
untimed warm-up step leaves training unchanged, and ``fastconv warmup``."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fastconv import _runtime, _small_gemm, config, nn, optim, training
from fastconv.algos.im2col import drivers, indirect_nchw
from fastconv.autograd import Tensor
from fastconv.nn import functional as F
from fastconv.rng import default_generator, manual_seed
from fastconv.tools import cli, warmup

from .conftest import count_calls

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One fastconv kernel (the element-wise ops', run by ReLU forward and backward: the
# cheapest to compile) and one of the user's own numba functions, which must not count.
CHILD = textwrap.dedent("""
    import numpy as np
    from numba import njit
    import fastconv
    from fastconv.autograd import Tensor
    from fastconv.nn import functional as F

    x = Tensor(np.linspace(-1, 1, 8, dtype=np.float32), requires_grad=True)
    F.relu(x).sum().backward()
    njit(lambda a: a + 1)(1.0)
    print("COMPILED", fastconv._runtime.FIRST_COMPILE.compiles)
""")


def _child(cache_dir, quiet=None):
    env = {k: v for k, v in os.environ.items() if k != "FASTCONV_QUIET"}
    env.update(NUMBA_CACHE_DIR=str(cache_dir), PYTHONPATH=ROOT)
    if quiet is not None:
        env["FASTCONV_QUIET"] = quiet
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_notice_once_on_a_cold_cache_never_on_a_warm_one(tmp_path):
    cold = _child(tmp_path)
    assert "COMPILED 1" in cold.stdout
    assert cold.stderr.count(_runtime.NOTICE) == 1
    assert cold.stderr.count("compiling kernels") == 1
    warm = _child(tmp_path)
    assert "COMPILED 0" in warm.stdout
    assert "compiling kernels" not in warm.stderr


def test_fastconv_quiet_silences_the_notice(tmp_path):
    proc = _child(tmp_path, quiet="1")
    assert "COMPILED 1" in proc.stdout
    assert "compiling kernels" not in proc.stderr


def test_cache_is_the_user_cache_dir_unless_numba_cache_dir_is_set(tmp_path):
    code = "import fastconv, numba; print(fastconv._runtime.cache_dir(), numba.config.CACHE_DIR)"
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", "FASTCONV_CACHE_DIR")}
    env.update(PYTHONPATH=ROOT, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120, cwd=tmp_path, check=True).stdout.split()
    cache = tmp_path / "xdg" / "fastconv" / "numba" / _runtime.source_fingerprint()
    assert out == [str(cache)] * 2
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "mine")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120, cwd=tmp_path, check=True).stdout.split()
    assert out == [str(tmp_path / "mine")] * 2


def test_kernel_cache_follows_every_kernel_module(tmp_path):
    """numba checks only a kernel's own file: the cache is named by all of fastconv's
    kernel modules, so an edit to a helper another module's kernel inlines gives a new
    cache; modules without numba do not count."""
    pkg = tmp_path / "pkg"
    (pkg / "algos").mkdir(parents=True)
    (pkg / "algos" / "helper.py").write_text("from numba import njit\n")
    (pkg / "kernel.py").write_text("import numba\n")
    (pkg / "docs.py").write_text("x = 1\n")
    before = _runtime.source_fingerprint(str(pkg))
    (pkg / "docs.py").write_text("x = 2\n")
    assert _runtime.source_fingerprint(str(pkg)) == before
    (pkg / "algos" / "helper.py").write_text("from numba import njit  # edited\n")
    assert _runtime.source_fingerprint(str(pkg)) != before


def test_old_kernel_caches_are_pruned(tmp_path):
    names = [f"{k:016x}" for k in range(6)] + ["im2col_" + "a" * 40]
    for age, name in enumerate(names):
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (1e9 - age, 1e9 - age))   # names[0] the newest
    (tmp_path / "notes").mkdir()                              # not a cache: kept
    current = names[-2]
    _runtime._prune_caches(str(tmp_path), current, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [current, names[0], names[1], "notes"])


@pytest.mark.parametrize("layer", ["tbb", "safe"])
def test_a_requested_tbb_threading_layer_loads(layer):
    """NUMBA_THREADING_LAYER set to a layer that needs TBB: fastconv preloads pip's
    libtbb for it as for its own choice, and a parallel kernel runs on TBB."""
    if _runtime.threading_layer() != "tbb":
        pytest.skip("TBB is not this environment's threading layer")
    code = ("import numpy as np, numba, fastconv\n"
            "x = np.ones((2, 3, 8, 8), np.float32)\n"
            "fastconv.conv2d(x, np.ones((4, 3, 3, 3), np.float32), algo='im2col')\n"
            "print(numba.threading_layer())")
    env = dict(os.environ, PYTHONPATH=ROOT, NUMBA_THREADING_LAYER=layer)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == "tbb"


def _net_and_opt(seed):
    rng = np.random.default_rng(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, rng=rng), nn.BatchNorm2d(4),
                        nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.Linear(64, 3, rng=rng))
    return net, optim.SGD(net.parameters(), lr=0.1, momentum=0.9)


def _steps(net, opt, x, y, n=3):
    for _ in range(n):
        opt.zero_grad()
        F.cross_entropy(net(Tensor(x)), y).backward()
        opt.step()
    return [p.data.copy() for p in net.parameters()] + [b.copy() for _, b in
                                                        net.named_buffers()]


@pytest.mark.parametrize("steps_before", [0, 1])
def test_warm_up_leaves_training_bit_for_bit_unchanged(rng, steps_before):
    """Dropout (fastconv's generator), batch norm (buffers) and momentum (optimiser
    state, also once it exists): the same weights with and without the warm-up."""
    x = rng.standard_normal((6, 1, 4, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    manual_seed(7)
    net, opt = _net_and_opt(1)
    _steps(net, opt, x, y, steps_before)
    plain = _steps(net, opt, x, y)
    manual_seed(7)
    net, opt = _net_and_opt(1)
    _steps(net, opt, x, y, steps_before)
    state = default_generator().bit_generator.state
    before = opt.state_dict()
    assert training.warm_up(net, opt, x, y) >= 0
    assert default_generator().bit_generator.state == state
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert after["state"].keys() == before["state"].keys()
    for i in before["state"]:
        np.testing.assert_array_equal(after["state"][i]["momentum_buffer"],
                                      before["state"][i]["momentum_buffer"])
    warmed = _steps(net, opt, x, y)
    assert len(plain) == len(warmed) == 9
    for a, b in zip(plain, warmed, strict=True):
        np.testing.assert_array_equal(a, b)


def test_train_reports_the_untimed_warm_up(tmp_path):
    lines = []
    metrics = training.run(epochs=1, batch_size=64, progress=False, log=lines.append, seed=2)
    assert 0 <= metrics["warmup_seconds"] < 600
    assert sum(line.startswith("warm-up step: ") for line in lines) == 1
    i = next(i for i, line in enumerate(lines) if line.startswith("warm-up step"))
    assert lines[i + 1].startswith("epoch 1:")


def test_warmup_command_on_a_tiny_configuration(capsys):
    quiet = config.QUIET
    assert cli.main(["warmup", "--models", "--algos", "im2col", "--dtype", "float32",
                     "--layout", "NHWC", "--no-progress"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert out[0].startswith("fastconv warmup: 2 steps, ")
    assert out[0].endswith(f"; cache: {_runtime.cache_dir()}")
    assert config.QUIET is quiet  # the notice is silenced only while the bar runs


def test_warmup_tasks_cover_models_layers_and_algorithms():
    labels = [label for label, _ in warmup.tasks()]
    assert len(labels) == 2 * 2 + 2 * 2 + 4 * 2 * 2
    assert "resnet float64" in labels and "winograd float32 NHWC" in labels
    shrunk = warmup._shrunk_suite()
    assert {s.n for s in shrunk} == {1, 4} and all(s.c <= 4 and s.h <= 62 for s in shrunk)


@pytest.mark.parametrize("bad", [["--dtype", "float16"], ["--layout", "CHWN"]])
def test_warmup_command_refuses_unknown_choices(bad, capsys):
    with pytest.raises(SystemExit):
        cli.main(["warmup", *bad])
    assert "invalid choice" in capsys.readouterr().err


def test_warmup_help_explains_every_option_and_shows_defaults():
    sub = next(a for a in cli.build_parser()._actions
               if a.__class__.__name__ == "_SubParsersAction").choices["warmup"]
    text = " ".join(sub.format_help().split())
    assert all(action.help for action in sub._actions)
    for default in ("lenet resnet", "float32 float64", "NCHW NHWC",
                    "naive im2col fft winograd"):
        assert f"(default: {default})" in text
    assert "None" not in text and "``" not in text


def test_image_last_grad_w_task_compiles_once_for_its_parallel_loop():
    # The kernel's body is compiled apart from its parallel loop (a lighter first
    # compile); the loop passes the task index as int64 so that the loop and a direct
    # call share one specialisation (the loop's own index type would compile it twice).
    # A fresh uncached compile of the parallel kernel types its call of the task (a
    # kernel loaded from numba's cache would not).
    from numba import njit, types

    from fastconv.algos.im2col import image_last_grad as ilg

    kernel = njit(parallel=True)(ilg._grad_w_image_last.py_func)
    gt = np.ones((5, 2, 2, 3), np.float32)   # D=5 output channels: a block of 4 and of 1
    xt = np.ones((1, 3, 3, 3), np.float32)   # one input channel, 3x3 images
    gw = np.zeros((5, 1, 2, 2))
    kernel(gt, xt, gw, 1, 1, 0, 0, 1, 1)
    np.testing.assert_array_equal(gw, np.full((5, 1, 2, 2), 2 * 2 * 3.0))
    assert {sig[0] for sig in ilg._grad_w_task.signatures} == {types.int64}


def test_threaded_element_wise_kernel_loads_from_the_cache(tmp_path):
    """The element-wise ops over the threads: compiled and cached by a first process,
    loaded (no compile) and right in a second."""
    script = textwrap.dedent("""
        import numpy as np
        import fastconv
        from fastconv import _elementwise as E
        E.PARALLEL_MIN = 0
        a = np.linspace(-2, 2, 9, dtype=np.float32)
        print(E.relu(a).tolist() == np.maximum(a, 0).tolist(),
              E.add(a, a).tolist() == (2 * a).tolist(),
              E.add_relu(a, a).tolist() == np.maximum(2 * a, 0).tolist())
        print("COMPILED", fastconv._runtime.FIRST_COMPILE.compiles)
    """)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), FASTCONV_QUIET="1")
    compiles = []
    for _ in range(2):                    # compiles and caches, then loads
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             env=env, cwd=ROOT, timeout=600)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.split("\n")
        assert lines[0].split() == ["True", "True", "True"]
        compiles.append(int(lines[1].split()[1]))
    assert compiles[0] > 0 and compiles[1] == 0


@pytest.mark.parametrize("layout,module,kernel", [
    ("NCHW", indirect_nchw, "forward"), ("NHWC", drivers, "forward_indirect")])
def test_warmup_runs_the_register_tiles_of_wide_layers(layout, module, kernel, monkeypatch):
    """The im2col task runs a layer of 128 output channels in each layout: its register
    tiles are a kernel that the shrunk suite's 4 channels never reach."""
    if not _small_gemm.FOUR_REGISTER_TILES:
        pytest.skip("the 4-register tiles need AVX-512")
    calls = count_calls(monkeypatch, module, kernel)
    monkeypatch.setattr(warmup, "_shrunk_suite", lambda: ())
    _, task = warmup._conv_task("im2col", np.float32, layout)
    task()
    assert calls == [1]
