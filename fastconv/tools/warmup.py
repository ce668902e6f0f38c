"""``fastconv warmup``: compile the common kernels ahead of time into numba's cache.

Without it the kernels compile on first use (one line on stderr says so) and are
cached afterwards (``fastconv._runtime``). ``warmup`` runs, on tiny arrays, what the
usual work calls:

* models: a training step (forward, backward, optimiser step) and an evaluation forward
  of each bundled model on a batch of 16 of its datasets' image sizes (LeNet: 8x8
  digits, 28x28 MNIST; the ResNet: 16x16 shapes), as ``fastconv.training.warm_up``
  (the models are NCHW);
* layers: max / average / global average pooling and batch norm, forward and backward,
  in each layout, and the element-wise ops' threaded kernels (arrays of 2^18 elements
  or more);
* algos: ``conv2d`` and ``conv2d_backward`` with each algorithm on the default bench
  suite's layers (shrunk: at most 4 channels, 12x12 or the kernel's size; 1 image, and 4
  for the im2col path that tiles several small images) in each layout; with it (once,
  beside NCHW) ``conv3d`` and ``conv3d_backward`` of the algorithms conv3d has (their
  kernels run channels-first whatever the layout; conv1d runs conv2d's kernels), and
  for NHWC Winograd the products in registers that only batches of megabytes take, and
  for im2col the register tiles that only layers of 128 output channels take.

Kernels are specialised on dtype and layout, not on sizes, so the tiny arrays compile
what the real ones use. Each of those runs once per dtype (float32 and float64 by
default).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import subprocess
import sys
import time

import numpy as np

MODELS = ("lenet", "resnet")
DTYPES = ("float32", "float64")
LAYOUT_NAMES = ("NCHW", "NHWC")
CONV_ALGOS = ("naive", "im2col", "fft", "winograd")
#: The conv2d algorithms that conv3d has too.
CONV3D_ALGOS = ("naive", "im2col", "fft", "winograd")


def _shrunk_suite():
    """The default suite's layers on tiny arrays (the same stride, padding, dilation,
    groups and kernel size), each with 1 image and with 4 (im2col's image-last tiles)."""
    from fastconv.algos.im2col import IMAGE_LAST_MIN_IMAGES

    from .bench.suites import DEFAULT_SUITE

    out = []
    for s in DEFAULT_SUITE:
        c = 4 if s.groups > 1 else min(s.c, 4)
        groups = c if s.groups > 1 else 1
        side = max(12, s.dilation * (s.k - 1) + 2)
        for n in (1, IMAGE_LAST_MIN_IMAGES):
            out.append(dataclasses.replace(s, n=n, c=c, h=side, w=side, groups=groups,
                                           c_out=c if groups > 1 else min(s.c_out, 4)))
    return tuple(out)


#: The image sizes each bundled model is trained on (``fastconv train``'s datasets).
MODEL_SIZES = {"lenet": (8, 28), "resnet": (16,)}


def _model_task(name: str, dtype):
    def task():
        from fastconv import optim, training

        rng = np.random.default_rng(0)
        for size in MODEL_SIZES[name]:
            net = training.build_model(name, 1, 10, size, rng).to(dtype)
            opt = optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
            x = rng.standard_normal((16, 1, size, size)).astype(dtype)
            training.warm_up(net, opt, x, np.arange(16) % 10)
    return f"{name} {np.dtype(dtype).name}", task


def _layers_task(dtype, layout: str):
    def task():
        import fastconv as fc

        def images(c):
            x = np.random.default_rng(0).standard_normal((2, c, 6, 6)).astype(dtype)
            return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "NHWC" else x

        x = images(4)
        y, idx = fc.max_pool2d(x, 2, layout=layout, return_indices=True)
        fc.max_pool2d_backward(y, idx, x.shape, layout=layout)
        y = fc.avg_pool2d(x, 2, layout=layout)
        fc.avg_pool2d_backward(y, x.shape, 2, layout=layout)
        y = fc.global_avg_pool2d(x, layout=layout)
        fc.global_avg_pool2d_backward(y, x.shape, layout=layout)
        for c in (4, 8):        # NHWC sums of 8 channels run in registers
            xc = images(c)
            mean, var = np.zeros(c, dtype), np.ones(c, dtype)
            weight, bias = np.ones(c, dtype), np.zeros(c, dtype)
            for training in (True, False):
                y, m, invstd = fc.batch_norm(xc, mean, var, weight, bias, training,
                                             layout=layout, return_stats=True)
                fc.batch_norm_backward(y, xc, m, invstd, weight, training=training,
                                       layout=layout)
        from fastconv import _elementwise  # the threaded kernel of large arrays
        _elementwise._threaded(_elementwise.ADD, x.reshape(-1), x.reshape(-1),
                               np.empty(x.size, dtype))
    return f"layers {np.dtype(dtype).name} {layout}", task


def _conv_task(algo: str, dtype, layout: str):
    def task():
        import fastconv as fc
        from fastconv.algos import registry

        for shape in _shrunk_suite():
            if registry.get(algo).why_not(shape.args(dtype, layout=layout)) is not None:
                continue
            x, w = shape.arrays(dtype, layout=layout)
            bias = np.zeros(shape.c_out, dtype)
            y = fc.conv2d(x, w, bias, **shape.kwargs(), layout=layout, algo=algo)
            fc.conv2d_backward(y, x, w, **shape.kwargs(), layout=layout, algo=algo)
        if algo == "im2col":          # the register tiles' forwards: 128+ output channels
            _register_tile_layer(fc, dtype, layout)
        if algo == "winograd" and layout == "NHWC":   # large batches' stage, uncalled
            from fastconv import _small_gemm
            _small_gemm.product(np.ones((1, 6, 1), dtype), np.ones((1, 1, 64), dtype),
                                np.empty((1, 6, 64), dtype))
        if layout == "NCHW" and algo in CONV3D_ALGOS:
            x, w = np.ones((1, 2, 4, 4, 4), dtype), np.ones((2, 2, 3, 3, 3), dtype)
            y = fc.conv3d(x, w, padding=1, algo=algo)
            fc.conv3d_backward(y, x, w, padding=1, algo=algo)
    return f"{algo} {np.dtype(dtype).name} {layout}", task


def _register_tile_layer(fc, dtype, layout: str) -> None:
    """The forward of a layer of 128 output channels, 3x3 at stride 2, in ``layout``: the
    register tiles read in place (NHWC, ``im2col.indirect_nhwc``) or on rows staged
    channels last (NCHW, ``im2col.indirect_nchw``), which the shrunk suite's 4 channels
    do not reach."""
    x = np.ones((1, 8, 16, 16) if layout == "NCHW" else (1, 16, 16, 8), dtype)
    w = np.ones((128, 8, 3, 3) if layout == "NCHW" else (3, 3, 8, 128), dtype)
    fc.conv2d(x, w, stride=2, padding=1, layout=layout, algo="im2col")


def tasks(models=MODELS, dtypes=DTYPES, layouts=LAYOUT_NAMES, algos=CONV_ALGOS) -> list:
    """(label, callable) for each piece of the warm-up, in order.

    >>> [label for label, _ in tasks(["lenet"], ["float32"], ["NCHW"], ["im2col"])]
    ['lenet float32', 'layers float32 NCHW', 'im2col float32 NCHW']
    """
    dts = [np.dtype(d).type for d in dtypes]
    out = [_model_task(m, d) for m in models for d in dts]
    out += [_layers_task(d, lay) for d in dts for lay in layouts]
    out += [_conv_task(a, d, lay) for a in algos for d in dts for lay in layouts]
    return out


def run(models=MODELS, dtypes=DTYPES, layouts=LAYOUT_NAMES, algos=CONV_ALGOS,
        progress: bool = True) -> dict:
    """Compile (or load from the cache) the kernels of ``tasks``; returns {"seconds",
    "compiled" (kernels compiled now, the rest came from the cache; a child's included),
    "tasks", "cache_dir"}. The first-use notice stays quiet meanwhile (the bar is the
    progress).

    In two processes, as the warm-up step of ``fastconv train``
    (``fastconv._compile_split``): at the first kernel that compiles (never with a warm
    cache) a child process takes every other task (``python -m fastconv.tools.warmup``);
    this one runs the rest, then waits for it. A child that fails, or outlives twice
    this process's time (at least ``TIMEOUT_S``; killed then), leaves its tasks to this
    one. ``FASTCONV_COMPILE_CHILD`` as there (by default a child only with a core idle).
    """
    from fastconv import _compile_split, _runtime, config

    todo = tasks(models, dtypes, layouts, algos)
    selection = repr(tuple(list(a) for a in (models, dtypes, layouts, algos)))
    mine, theirs = todo[0::2], todo[1::2]
    split = _compile_split.Split(functools.partial(
        _compile_split.spawn, __name__, selection, stdout=subprocess.PIPE)
        if config.COMPILE_CHILD != "never" and theirs else None)
    bar = _bar(len(todo), progress)
    saved = config.QUIET, config.COMPILE_CHILD
    # the training steps of the models take no child of their own beside this one
    config.QUIET = True
    if theirs:
        config.COMPILE_CHILD = "never"
    before, start, child = _runtime.FIRST_COMPILE.compiles, time.perf_counter(), 0
    try:
        with split:
            _run_tasks(mine, bar)
            if split.proc is not None:
                if bar is not None:
                    bar.set_postfix_str("the child process's half")
                proc = split.proc
                if split.wait(max(_compile_split.TIMEOUT_S,
                                  2 * (time.perf_counter() - start))) == 0:
                    child, theirs = _count(proc.stdout.read()), []
                    if bar is not None:
                        bar.update(len(todo) - len(mine))
        _run_tasks(theirs, bar)     # no child, or it failed: this process does its tasks
    finally:
        config.QUIET, config.COMPILE_CHILD = saved
        if bar is not None:
            bar.close()
    return {"seconds": time.perf_counter() - start, "tasks": len(todo),
            "compiled": _runtime.FIRST_COMPILE.compiles - before + child,
            "cache_dir": _runtime.cache_dir()}


def _bar(total: int, progress: bool):
    if not progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="warmup", unit="step", file=sys.stderr)


def _run_tasks(todo, bar) -> None:
    for label, task in todo:
        if bar is not None:
            bar.set_postfix_str(label)
        task()
        if bar is not None:
            bar.update(1)


def _count(out: bytes) -> int:
    """The child's count of compiled kernels (its last line; 0 if it printed none)."""
    words = out.split()
    return int(words[-1]) if words and words[-1].isdigit() else 0


def _child(selection: str) -> int:
    """The child of :func:`run`: every other task of the selection (a repr of the
    models, dtypes, layouts and algos); prints the number of kernels it compiled."""
    from fastconv import _runtime

    for _, task in tasks(*ast.literal_eval(selection))[1::2]:
        task()
    print(_runtime.FIRST_COMPILE.compiles)
    return 0


def cmd_warmup(args) -> int:
    """``fastconv warmup``: compile the common kernels into the cache; says how long it
    took and where the cache is."""
    res = run(args.models, args.dtype, args.layout, args.algos, progress=not args.no_progress)
    print(f"fastconv warmup: {res['tasks']} steps, {res['compiled']} kernels compiled (the "
          f"rest were cached) in {res['seconds']:.1f} s; cache: {res['cache_dir']}")
    return 0


def add_parser(sub) -> None:
    """The ``warmup`` subcommand and its options."""
    pw = sub.add_parser("warmup", help="compile the common kernels ahead of time (numba's "
                        "cache; first use then has no wait)")
    pw.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS),
                    help="bundled models to run a training step of (none: --models)")
    pw.add_argument("--dtype", nargs="+", default=list(DTYPES), choices=list(DTYPES),
                    help="floating-point types to compile for")
    pw.add_argument("--layout", nargs="+", default=list(LAYOUT_NAMES),
                    choices=list(LAYOUT_NAMES),
                    help="data layouts to compile for (the models run NCHW)")
    pw.add_argument("--algos", nargs="*", default=list(CONV_ALGOS), choices=list(CONV_ALGOS),
                    help="conv2d algorithms to compile, forward and backward")
    pw.add_argument("--no-progress", action="store_true", help="no progress bar")
    pw.set_defaults(func=cmd_warmup)


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
