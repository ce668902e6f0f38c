"""The ``fastconv`` command line: info, bench, calibrate, train."""

from __future__ import annotations

import argparse
import json
import sys


def _progress(desc: str):
    """A tqdm progress bar on stderr wrapping an iterable, or None without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return lambda it: tqdm(it, desc=desc, unit="run", file=sys.stderr)


def cmd_info(args) -> int:
    """``fastconv info``: versions, threading layer, BLAS, cache, CUDA (text or JSON)."""
    import numpy as np

    from fastconv import conv2d

    from . import info

    # One tiny parallel call so numba reports the threading layer actually loaded.
    conv2d(np.zeros((1, 1, 2, 2), np.float32), np.zeros((1, 1, 1, 1), np.float32),
           algo="naive")
    data = info.collect()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        width = max(len(k) for k in data)
        for k, v in data.items():
            print(f"{k:<{width}}  {v}")
    return 0


def cmd_bench(args) -> int:
    """``fastconv bench``: the suites on the CPU (tables, summary, report files), or
    ``--device cuda``: the GPU check and timings."""
    from . import bench

    if args.device == "cuda":
        from .bench.cuda import cli_main

        if args.layout != "NCHW":
            print(f"fastconv bench: --layout {args.layout} is not available with --device "
                  "cuda (the GPU benchmark runs NCHW)", file=sys.stderr)
            return 2

        shapes = [s for name in (args.suite or ["quick"]) for s in bench.SUITES[name]]
        return cli_main(shapes, progress=_progress("bench cuda"), out=args.out)
    extras = () if args.no_extras else bench.EXTRAS
    report = bench.Report(bench.environment(args.backward, args.layout))
    print(bench.format_header(report.info))
    for suite in args.suite or ["default"]:
        bench.run(bench.SUITES[suite], tuple(args.algos), suite=suite, extras=extras,
                  repeats=args.repeats, naive_budget=args.naive_budget,
                  backward=args.backward, wait_idle=args.wait_idle, runs=args.runs,
                  progress=_progress(f"bench {suite}"), report=report, layout=args.layout)
        rs = [r for r in report.results if r.suite == suite]
        print(f"\n{suite}: median ms per call\n" + bench.format_overview(rs))
        print("\n" + bench.format_table(rs))
    print("\n" + bench.FOOTNOTE + "\n")
    print(bench.format_summary(report.summary))
    if args.out:
        for path in bench.write(report, args.out):
            print(f"wrote {path}")
    return 0


def cmd_calibrate(args) -> int:
    """``fastconv calibrate``: measure this machine for algo="auto" and save the profile."""
    from fastconv import autotune

    from .calibrate import calibrate

    prof = calibrate(args.out, save=not args.dry_run, budget=args.budget)
    if args.json:
        print(json.dumps(prof.as_dict(), indent=2))
    else:
        for k, v in prof.as_dict().items():
            print(f"{k:<16} {v}")
    if not args.dry_run:
        print(f"wrote {autotune.profile_path(args.out)}")
    return 0


def cmd_train(args) -> int:
    """``fastconv train``: train a small CNN (fastconv.training.run). Exit status 130
    after Ctrl-C (a checkpoint written), 1 on a NaN/Inf loss or an unusable --resume."""
    from fastconv import training
    from fastconv.checkpoint import CheckpointError

    try:
        training.run(model=args.model, dataset=args.dataset, epochs=args.epochs,
                     batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                     optimizer=args.optimizer, out=args.out, progress=not args.no_progress,
                     checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every,
                     resume=args.resume)
    except training.Interrupted as e:
        print(f"fastconv train: {e.message}", file=sys.stderr)
        return 130
    except (training.NonFiniteLossError, CheckpointError) as e:
        print(f"fastconv train: {str(e).removeprefix('train: ')}", file=sys.stderr)
        return 1
    return 0


def add_train_parser(sub) -> None:
    """The ``train`` subcommand and its options."""
    pt = sub.add_parser("train", help="train LeNet-5 or a small ResNet on digits, shapes or "
                        "MNIST")
    pt.add_argument("--model", choices=["lenet", "resnet"], default="lenet")
    pt.add_argument("--dataset", choices=["digits", "synthetic", "mnist"], default="digits")
    pt.add_argument("--epochs", type=int, default=15)
    pt.add_argument("--batch-size", type=int, default=16)
    pt.add_argument("--lr", type=float, default=0.05,
                    help="initial learning rate (cosine-annealed to 0 over the epochs)")
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="sgd",
                    help="sgd: momentum 0.9, weight decay 5e-4; adam, adamw: torch's "
                         "defaults")
    pt.add_argument("--out", default=None, help="directory for weights.npz and metrics.json")
    pt.add_argument("--checkpoint", default=None, metavar="PATH",
                    help="checkpoint file written by --checkpoint-every and by Ctrl-C "
                         "(default: <out>/checkpoint.npz, or ./checkpoint.npz)")
    pt.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                    help="write the checkpoint every N epochs (default: only on Ctrl-C)")
    pt.add_argument("--resume", default=None, metavar="PATH",
                    help="continue the run that wrote this checkpoint (same options)")
    pt.add_argument("--no-progress", action="store_true", help="one line per epoch, no bar")
    pt.set_defaults(func=cmd_train)


def build_parser() -> argparse.ArgumentParser:
    """The ``fastconv`` parser: info, bench, calibrate, train."""
    p = argparse.ArgumentParser(prog="fastconv", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    pi = sub.add_parser("info", help="versions, threading layer, BLAS, cache, CUDA")
    pi.add_argument("--json", action="store_true", help="print JSON")
    pi.set_defaults(func=cmd_info)
    from fastconv._args import LAYOUTS

    from .bench import ALGOS, SUITES

    pb = sub.add_parser("bench", help="time naive vs im2col vs FFT (and torch, scipy)")
    pb.add_argument("--suite", nargs="+", default=None, choices=list(SUITES),
                    help="shape suites to run (default: default; quick with --device cuda; "
                         "'tiny' is for tests)")
    pb.add_argument("--algos", nargs="+", default=list(ALGOS), choices=list(ALGOS))
    pb.add_argument("--backward", action="store_true",
                    help="time forward + backward (conv2d_backward; torch autograd)")
    pb.add_argument("--layout", choices=list(LAYOUTS), default="NCHW",
                    help="data layout: NCHW with OIHW weights, or NHWC with HWIO weights "
                         "(torch then runs on channels_last tensors)")
    pb.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    pb.add_argument("--naive-budget", type=float, default=2.0,
                    help="seconds per shape for the direct algorithm; it runs on fewer "
                         "images and is scaled when slower (0: full batch)")
    pb.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                    help="on a shared machine: before each measurement wait up to SECONDS "
                         "for other processes to go quiet, and retry (twice at most) when "
                         "they took more than 3%% of the CPU meanwhile")
    pb.add_argument("--runs", type=int, default=1,
                    help="go through the suite N times and keep each measurement's "
                         "smallest median (the least disturbed run)")
    pb.add_argument("--no-extras", action="store_true",
                    help="skip torch and scipy even when installed")
    pb.add_argument("--out", default=None,
                    help="directory for results.json, results.md and the PNG plots")
    pb.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda: check conv2d on the GPU against the CPU and time it")
    pb.set_defaults(func=cmd_bench)
    pc = sub.add_parser("calibrate", help="measure this machine for algo='auto'")
    pc.add_argument("--out", default=None,
                    help="profile path (default: <cache dir>/profile.json)")
    pc.add_argument("--budget", type=float, default=4.0, help="seconds of measuring")
    pc.add_argument("--dry-run", action="store_true", help="measure and print, save nothing")
    pc.add_argument("--json", action="store_true", help="print JSON")
    pc.set_defaults(func=cmd_calibrate)
    add_train_parser(sub)
    __import__("fastconv.tools.warmup", fromlist=["add_parser"]).add_parser(sub)
    return p


def main(argv=None) -> int:
    """Run the command line ``argv`` (default: sys.argv[1:]); returns the exit status."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
