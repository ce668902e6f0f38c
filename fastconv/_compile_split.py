"""A cold first training step compiled in two processes.

On an empty numba cache the untimed warm-up step of ``fastconv train``
(:func:`fastconv.training.warm_up`) compiles about a dozen kernels one after another on
one core, and the backward's are about half of that CPU time (LeNet: the image-last
grad_w and grad_x kernels, 6 of 12 s). :func:`for_step` splits that work. At the first
compile of a fastconv kernel in the step (so never while the cache is warm: numba's
compile event fires only for a kernel neither compiled nor cached), a child process
(``python -m fastconv._compile_split``) calls ``conv2d_backward`` for the model's
convolutions on zero arrays of the step's shapes, dtype and layout, with the same
numba thread count, so the kernels it compiles into the shared cache
(``NUMBA_CACHE_DIR``) have the signatures the parent will meet. The parent meanwhile
compiles the forward, then the max-unpooling (``max_pool2d_backward``, cheap), and
waits for the child before its backward pass (on leaving the :class:`Split` block); a
dispatcher looks in the cache when it meets a new signature, so the parent then loads
the child's kernels instead of compiling them.

The child only ever saves time: when it cannot start, fails, or outlives ``TIMEOUT_S``
(then it is killed), the parent compiles the rest itself; an error or Ctrl-C in the
step kills and reaps it. The jobs come from an ``nn.Sequential`` of ``Conv2d``,
``MaxPool2d``, ``ReLU``, ``Dropout`` and ``Identity`` layers (the walk stops at the first
other layer; other models and ``device="cuda"`` get no child). ``fastconv warmup``
splits its steps with :class:`Split` and :func:`spawn` too (the child takes every other
step).

A child only helps with a core to run on: by default (``config.COMPILE_CHILD`` "auto")
it starts when the 1-minute load average leaves a core idle (:func:`wanted`; on a busy
machine it would only add its own start-up and the kernels both compile);
``FASTCONV_COMPILE_CHILD=always`` (or 1) starts it anyway, ``never`` (or 0) never.

>>> from fastconv import nn
>>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2))
>>> for job in backward_jobs(net, (4, 1, 8, 8), np.float32):
...     print(job["op"], job["x"], "->", job["y"], job["needs"])
max_pool2d (4, 2, 6, 6) -> (4, 2, 3, 3) None
conv2d (4, 1, 8, 8) -> (4, 2, 6, 6) (False, True, True)
"""

from __future__ import annotations

import ast
import functools
import os
import subprocess
import sys
import threading

import numpy as np

from . import _runtime, config

#: Seconds the parent waits for the child before killing it and compiling on its own.
TIMEOUT_S = 120.0

_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wanted(mode: str | None = None) -> bool:
    """Whether a child process may start now under ``mode`` (default
    ``config.COMPILE_CHILD``): "always", or "auto" while the 1-minute load average is at
    most the usable cores - 1 (a core is idle for it; never on one core)."""
    mode = config.COMPILE_CHILD if mode is None else mode
    if mode != "auto":
        return mode == "always"
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:        # no affinity masks on this system
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):   # no load average here: assume the others idle
        load = 0.0
    return cores > 1 and load <= cores - 1


def backward_jobs(model, x_shape, dtype) -> list[dict]:
    """The backward calls (plain dicts) of ``model``'s convolution and max-pooling layers
    for an input batch of ``x_shape`` and ``dtype``, last layer first.

    ``model``: an ``nn.Sequential``; the walk stops at the first layer other than Conv2d
    (zero padding), MaxPool2d, ReLU, Dropout and Identity (other models: no jobs). A
    layer's input needs a gradient once a layer with parameters came before it, as in
    the autograd graph (a frozen one passes none on). ``needs``: conv2d_backward's
    ``needs_input_grad``."""
    from . import nn
    from ._args.conv import conv_args_from_shapes
    from ._args.pool import pool_args
    from .layout import LAYOUTS

    if not isinstance(model, nn.Sequential):
        return []
    dtype, shape, flows, jobs = np.dtype(dtype), tuple(x_shape), False, []
    for layer in model:
        if isinstance(layer, nn.Conv2d) and layer.padding_mode == "zeros":
            if layer.weight.data.dtype != dtype or len(shape) != 4:
                break
            w_shape = LAYOUTS[layer.layout].weight_shape(*layer.weight.shape)
            a = conv_args_from_shapes("Conv2d", shape, w_shape, layer.stride, layer.padding,
                                      layer.dilation, layer.groups, layer.layout, dtype)
            needs = (flows, layer.weight.requires_grad,
                     layer.bias is not None and layer.bias.requires_grad)
            if any(needs):
                jobs.append({"op": "conv2d", "x": shape, "y": a.y_layout_shape,
                             "w": a.w_layout_shape, "args": (layer.stride, layer.padding,
                                                             layer.dilation, layer.groups),
                             "layout": layer.layout, "dtype": dtype.name, "needs": needs})
            flows, shape = any(needs), a.y_layout_shape
        elif isinstance(layer, nn.MaxPool2d):
            a = pool_args("MaxPool2d", shape, layer.kernel_size, layer.stride, layer.padding,
                          layer.dilation, layer.ceil_mode, layer.layout)
            if flows:
                jobs.append({"op": "max_pool2d", "x": shape, "y": a.y_shape,
                             "layout": layer.layout, "dtype": dtype.name, "needs": None})
            shape = a.y_shape
        elif not isinstance(layer, (nn.ReLU, nn.Dropout, nn.Identity)):
            break
    return jobs[::-1]


def run_jobs(jobs) -> None:
    """Run ``jobs`` (:func:`backward_jobs`) on zero arrays: what the child process does."""
    from . import conv, pool

    for job in jobs:
        dtype = np.dtype(job["dtype"])
        grad_y = np.zeros(job["y"], dtype)
        if job["op"] == "conv2d":
            conv.conv2d_backward(grad_y, np.zeros(job["x"], dtype), np.zeros(job["w"], dtype),
                                 *job["args"], layout=job["layout"],
                                 needs_input_grad=job["needs"])
        elif job["op"] == "max_pool2d":
            pool.max_pool2d_backward(grad_y, np.zeros(job["y"], np.int64), job["x"],
                                     layout=job["layout"])
        else:
            raise ValueError(f"compile child: job op={job['op']!r} is not known")


def _run_quietly(jobs) -> None:
    """:func:`run_jobs` in the parent, errors ignored: these calls only compile ahead of
    the real backward pass, which runs (and reports any error) anyway."""
    try:
        run_jobs(jobs)
    except Exception:
        pass


class Split:
    """A child process that compiles into the shared cache while this one compiles, as a
    context manager (see the module docstring): ``start()`` (returning the started
    ``subprocess.Popen``) is called at the first compile of a fastconv kernel inside the
    block, before :meth:`wait`; ``start`` None: never a child. ``local``: jobs this
    process runs itself, after the block's work, when a child runs."""

    def __init__(self, start=None, local=()):
        self.start, self.local = start, list(local)
        self.mode = config.COMPILE_CHILD  # as set when the step began (see wanted)
        self.proc = None
        self.returncode = None  # the child's exit status once waited for (None: no child)
        # The hook runs on whichever thread compiles first (a background compile, a
        # helper thread of a split op): starting the child and closing the block (after
        # which no child may start) exclude each other.
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> Split:
        if self.start is not None:
            _runtime.FIRST_COMPILE.hooks.append(self._on_compile)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        """Leaving normally waits for the child (:meth:`wait`); an exception (Ctrl-C
        too) kills it. Either way no child outlives the block."""
        try:
            if exc_type is None:
                if self.proc is not None:
                    _run_quietly(self.local)
                self.wait()
        finally:
            self._close()
            self._stop()

    def _unhook(self) -> None:
        try:
            _runtime.FIRST_COMPILE.hooks.remove(self._on_compile)
        except ValueError:  # already removed
            pass

    def _on_compile(self) -> None:
        with self._lock:
            self._unhook()
            if self._closed or not wanted(self.mode):
                return
            try:
                self.proc = self.start()
            except (OSError, ValueError):  # no child: the parent compiles everything
                self.proc = None

    def _close(self) -> None:
        """No child starts from now on."""
        with self._lock:
            self._closed = True
            self._unhook()

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the child (if one started) at most ``timeout`` seconds (default
        ``TIMEOUT_S``), killing it then; no child starts after this. Returns its exit
        status (None: no child; negative: killed)."""
        self._close()
        if self.proc is not None:
            try:
                self.returncode = self.proc.wait(TIMEOUT_S if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self._stop()
        return self.returncode

    def _stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            self.returncode = proc.wait()
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()


def spawn(module: str, *args: str, stdout=subprocess.DEVNULL) -> subprocess.Popen:
    """``python -m module args``: this fastconv, the same numba cache and thread count, no
    first-use notice and no child of its own (``FASTCONV_COMPILE_CHILD=never``); stderr
    discarded."""
    import numba

    env = dict(os.environ, FASTCONV_QUIET="1", FASTCONV_COMPILE_CHILD="never",
               NUMBA_CACHE_DIR=_runtime.cache_dir(),
               NUMBA_NUM_THREADS=str(numba.get_num_threads()))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PKG_PARENT, env.get("PYTHONPATH"))
                                        if p)
    return subprocess.Popen([sys.executable, "-m", module, *args], env=env,
                            stdin=subprocess.DEVNULL, stdout=stdout,
                            stderr=subprocess.DEVNULL)


def start_child(jobs) -> subprocess.Popen:
    """The child of a warm-up step: ``python -m fastconv._compile_split <jobs>``."""
    return spawn(__name__, repr(list(jobs)))


def for_step(model, x, device: str = "cpu") -> Split:
    """The :class:`Split` of a warm-up step of ``model`` on the batch ``x`` (an array):
    no child when turned off, for ``device="cuda"`` or when there is nothing to do."""
    if config.COMPILE_CHILD == "never" or device != "cpu":
        return Split()
    x = np.asarray(getattr(x, "data", x))
    try:
        jobs = backward_jobs(model, x.shape, x.dtype)
    except ValueError:       # a shape the layers refuse: the step itself will say so
        return Split()
    # the child: the convolutions' gradients (LeNet: about 6 s of CPU with the image-last
    # copy); the parent: the cheap max-unpooling, after its forward
    convs = [j for j in jobs if j["op"] == "conv2d"]
    return Split(functools.partial(start_child, convs) if convs else None,
                 [j for j in jobs if j["op"] != "conv2d"])


def main(argv) -> int:
    run_jobs(ast.literal_eval(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
