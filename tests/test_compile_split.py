"""The cold warm-up step compiled in two processes (fastconv._compile_split): the jobs a
model gives the child, the child's kernels found in the cache by the parent, no child on
a warm cache or when turned off, and a failing, hanging or interrupted child tolerated."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fastconv import _compile_split as cs
from fastconv import _runtime, config, models, nn
from fastconv.tools import warmup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = [sys.executable, "-c"]


def test_lenet_jobs_follow_the_layers_backwards_with_their_shapes_and_needs():
    jobs = cs.backward_jobs(models.lenet5(1, 10, 8), (64, 1, 8, 8), np.float32)
    assert [(j["op"], j["x"], j["y"], j["needs"]) for j in jobs] == [
        ("max_pool2d", (64, 16, 4, 4), (64, 16, 2, 2), None),
        ("conv2d", (64, 6, 4, 4), (64, 16, 4, 4), (True, True, True)),
        ("max_pool2d", (64, 6, 8, 8), (64, 6, 4, 4), None),
        ("conv2d", (64, 1, 8, 8), (64, 6, 8, 8), (False, True, True)),  # data: no grad_x
    ]
    assert jobs[1]["w"] == (16, 6, 5, 5) and jobs[1]["args"] == ((1, 1), (2, 2),
                                                                   (1, 1), 1)
    assert {j["dtype"] for j in jobs} == {"float32"}


def test_nhwc_jobs_take_the_layouts_shapes_and_hwio_weights():
    jobs = cs.backward_jobs(models.lenet5(1, 10, 8, layout="NHWC"), (4, 8, 8, 1), np.float32)
    conv1 = jobs[-1]
    assert (conv1["x"], conv1["y"], conv1["w"], conv1["layout"]) == (
        (4, 8, 8, 1), (4, 8, 8, 6), (5, 5, 1, 6), "NHWC")


def test_the_walk_stops_at_a_layer_it_does_not_know_and_skips_gradient_free_layers():
    rng = np.random.default_rng(0)
    net = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(2, 2, 3, rng=rng), nn.BatchNorm2d(2),
                        nn.Conv2d(2, 2, 3, rng=rng))
    # the leading pool's input needs no gradient (no backward); batch norm ends the walk
    assert [j["op"] for j in cs.backward_jobs(net, (1, 2, 12, 12), np.float32)] == ["conv2d"]
    assert cs.backward_jobs(models.resnet_small(1, 10), (2, 1, 8, 8), np.float32) == []
    net[1].weight.requires_grad = net[1].bias.requires_grad = False   # frozen: no grads
    assert [j["needs"] for j in cs.backward_jobs(net, (1, 2, 12, 12), np.float32)] == []
    # the step's dtype differs from the weights': nothing (the step itself decides)
    assert cs.backward_jobs(net[1:], (1, 2, 8, 8), np.float64) == []


@pytest.fixture(autouse=True)
def _always(monkeypatch):
    """A child whatever the machine's load (the load rule has its own test)."""
    monkeypatch.setattr(config, "COMPILE_CHILD", "always")


@pytest.mark.parametrize("value, mode", [("", "auto"), ("1", "always"), (" Off ", "never"),
                                         ("maybe", None)])
def test_the_environment_variable_sets_the_mode_and_refuses_other_words(value, mode):
    code = "from fastconv import config; print(config.COMPILE_CHILD)"
    env = dict(os.environ, PYTHONPATH=ROOT, FASTCONV_COMPILE_CHILD=value)
    proc = subprocess.run([*PY, code], env=env, capture_output=True, text=True, timeout=120)
    if mode is None:
        assert "FASTCONV_COMPILE_CHILD='maybe' must be auto, always (1) or never (0)" in (
            proc.stderr)
    else:
        assert proc.stdout.split() == [mode]


@pytest.mark.parametrize("mode, cores, load, want", [
    ("auto", 2, 0.6, True), ("auto", 2, 1.3, False), ("auto", 2, 1.0, True),
    ("auto", 1, 0.0, False), ("always", 2, 5.0, True), ("never", 8, 0.0, False)])
def test_auto_wants_a_child_while_a_core_is_idle(monkeypatch, mode, cores, load, want):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    monkeypatch.setattr(config, "COMPILE_CHILD", mode)
    assert cs.wanted() is want


def test_a_busy_machine_starts_no_child_and_never_none_at_all(monkeypatch):
    split, started = _fake_child("pass")
    monkeypatch.setattr(cs, "wanted", lambda mode=None: False)
    with split:
        _compile_now()
    assert started == [] and split.returncode is None
    x = np.zeros((2, 1, 8, 8), np.float32)
    assert cs.for_step(models.lenet5(1, 10, 8), x).start is not None
    monkeypatch.setattr(config, "COMPILE_CHILD", "never")
    assert cs.for_step(models.lenet5(1, 10, 8), x).start is None


def test_no_child_for_the_gpu_or_for_a_batch_the_model_refuses():
    net = models.lenet5(1, 10, 8)
    assert cs.for_step(net, np.zeros((2, 1, 8, 8), np.float32), device="cuda").start is None
    assert cs.for_step(net, np.zeros((2, 1, 2, 2), np.float32)).start is None
    split = cs.for_step(net, np.zeros((2, 1, 8, 8), np.float32))
    assert [j["op"] for j in split.start.args[0]] == ["conv2d"] * 2  # the child's
    assert [j["op"] for j in split.local] == ["max_pool2d"] * 2      # the parent's


def _fake_child(code):
    """A Split whose child is ``python -c code``, and the list of children started."""
    started = []

    def start():
        started.append(subprocess.Popen([*PY, code]))
        return started[-1]

    return cs.Split(start), started


def _compile_now():
    """What numba's compile event calls: the hooks of the first-compile listener."""
    for hook in tuple(_runtime.FIRST_COMPILE.hooks):
        hook()


def test_the_child_starts_at_the_first_compile_only_and_a_failure_is_tolerated():
    split, started = _fake_child("import sys; sys.exit(3)")
    with split:
        assert started == []          # nothing compiled yet: a warm cache starts no child
        _compile_now()
        _compile_now()                # one child, however many kernels compile
    assert len(started) == 1 and split.returncode == 3 and split.proc is None
    assert split._on_compile not in _runtime.FIRST_COMPILE.hooks
    _compile_now()                    # after the block: no child
    assert len(started) == 1


def test_a_hook_already_running_when_the_block_closes_starts_no_child():
    """The hook runs on whichever thread compiles first; once the block has waited, a
    hook call that was already under way (it holds a reference) starts nothing."""
    split, started = _fake_child("pass")
    with split:
        hook = split._on_compile
        split.wait()
        hook()
        hook()                        # a second thread's call: no error either
    assert started == [] and split.proc is None


def test_a_hanging_child_is_killed_at_the_timeout_and_on_an_error():
    split, started = _fake_child("import time; time.sleep(60)")
    with split:
        _compile_now()
        assert split.wait(timeout=0.2) == -9
    assert started[0].poll() == -9
    split, started = _fake_child("import time; time.sleep(60)")
    with pytest.raises(KeyboardInterrupt), split:
        _compile_now()
        raise KeyboardInterrupt   # Ctrl-C in the forward: the child does not outlive it
    assert started[0].poll() == -9 and split.proc is None


def test_a_child_that_cannot_start_costs_nothing():
    def fail():
        raise OSError("no processes left")

    with cs.Split(fail) as split:
        _compile_now()
    assert split.proc is None and split.returncode is None


def test_an_unknown_job_is_refused_by_name():
    with pytest.raises(ValueError, match=r"compile child: job op='conv9d' is not known"):
        cs.run_jobs([{"op": "conv9d", "dtype": "float32", "y": (1,)}])


# A warm-up step of LeNet on 8x8 digits (batch 64, as fastconv train) that prints the
# fastconv kernels this process compiled, whether a child ran and how it ended.
STEP = textwrap.dedent("""
    import numpy as np
    from numba.core import event
    from fastconv import _compile_split as cs, models, optim, training

    compiled = []
    class Listener(event.Listener):
        def on_start(self, ev):
            func = ev.data["dispatcher"].py_func
            if func.__module__.startswith("fastconv."):
                compiled.append(func.__name__)
        def on_end(self, ev):
            pass
    event.register("numba:compile", Listener())
    children = []
    start = cs.start_child
    cs.start_child = lambda jobs: children.append(start(jobs)) or children[-1]
    net = models.lenet5(1, 10, 8)
    x = np.random.default_rng(0).standard_normal((64, 1, 8, 8)).astype(np.float32)
    training.warm_up(net, optim.SGD(net.parameters(), lr=0.1), x, np.arange(64) % 10)
    print("CHILDREN", [c.returncode for c in children])
    print("COMPILED", " ".join(sorted(set(compiled))))
""")


def _step(cache_dir, **env):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir), PYTHONPATH=ROOT,
               FASTCONV_QUIET="1", **env)
    proc = subprocess.run([*PY, STEP], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    return eval(lines["CHILDREN"]), set(lines["COMPILED"].split())


def test_cold_step_loads_the_childs_kernels_and_a_warm_one_starts_no_child(tmp_path):
    # one thread: the split holds where the kernels run serially, and compiles are cheaper
    children, compiled = _step(tmp_path, NUMBA_NUM_THREADS="1", FASTCONV_COMPILE_CHILD="1")
    assert children == [0]
    assert "_max_pool_2x2_planes" in compiled                           # the parent's forward
    assert not compiled & {"_grad_w_image_last", "_grad_x_image_last"}  # the child's
    assert os.listdir(tmp_path)
    children, compiled = _step(tmp_path, NUMBA_NUM_THREADS="1", FASTCONV_COMPILE_CHILD="1")
    assert children == [] and compiled == set()


# ``fastconv warmup``: the parent's tasks replaced by two that record themselves (the
# first one "compiles"); the child runs the real second task of the selection (im2col,
# float32, NHWC), this one's twin.
SELECTION = ([], ["float32"], ["NHWC"], ["im2col"])


def _recording_tasks(monkeypatch, compiles=True):
    ran = []
    first = ("first", lambda: (ran.append("first"), compiles and _compile_now()))
    second = ("second", lambda: ran.append("second"))
    monkeypatch.setattr(warmup, "tasks", lambda *selection: [first, second])
    return ran


def test_warmup_gives_every_other_task_to_a_child(monkeypatch):
    ran = _recording_tasks(monkeypatch)
    res = warmup.run(*SELECTION, progress=False)
    assert ran == ["first"] and res["tasks"] == 2 and res["compiled"] >= 0
    assert not _runtime.FIRST_COMPILE.hooks and config.COMPILE_CHILD == "always"


def test_warmup_without_a_compile_or_with_a_failing_child_runs_every_task(monkeypatch):
    spawned = []
    monkeypatch.setattr(cs, "spawn", lambda *a, **k: spawned.append(a) or subprocess.Popen(
        [*PY, "import sys; sys.exit(1)"], stdout=subprocess.PIPE))
    ran = _recording_tasks(monkeypatch, compiles=False)   # a warm cache: no child
    warmup.run(*SELECTION, progress=False)
    assert ran == ["first", "second"] and spawned == []
    ran = _recording_tasks(monkeypatch)                   # the child fails
    warmup.run(*SELECTION, progress=False)
    assert ran == ["first", "second"] and len(spawned) == 1
