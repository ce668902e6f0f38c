"""The ``fastconv`` command line: info, bench, calibrate, train."""

from __future__ import annotations

import json
import sys

from . import warmup
from .options import (
    CliError,
    Parser,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    readable_file,
    writable_dir,
    writable_file,
)

#: The top-level help's description (plain text: argparse prints it as it is).
DESCRIPTION = ("fastconv: 2-D convolution on the CPU (numpy, numba, scipy). Show what it "
               "runs on (info), time its algorithms against each other and against torch "
               "and scipy (bench), measure this machine for algo='auto' (calibrate), or "
               "train a small CNN (train).")


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
        print(info.as_text(data))
    return 0


def cmd_bench(args) -> int:
    """``fastconv bench``: the suites on the CPU (tables, summary, report files), or
    ``--device cuda``: the GPU check and timings."""
    from . import bench
    from .bench.malloc import fix_malloc
    from .bench.nd import ND_SUITES

    nd_suites = [s for s in args.suite or () if s in ND_SUITES]
    if nd_suites and args.device == "cuda":
        print(f"fastconv bench: --suite {nd_suites[0]} runs on the CPU only", file=sys.stderr)
        return 2
    if nd_suites:
        _bench_nd(nd_suites, args)
        if len(nd_suites) == len(args.suite):
            return 0
        args.suite = [s for s in args.suite if s not in ND_SUITES]
    if args.device == "cuda":
        from .bench.cuda import cli_main

        if args.layout != "NCHW":
            print(f"fastconv bench: --layout {args.layout} is not available with --device "
                  "cuda (the GPU benchmark runs NCHW)", file=sys.stderr)
            return 2

        shapes = [s for name in (args.suite or ["quick"]) for s in bench.SUITES[name]
                  if not s.transposed]         # the GPU has no conv_transpose2d
        if not shapes:
            print("fastconv bench: --device cuda times conv2d only; the suites chosen hold "
                  "transposed layers alone", file=sys.stderr)
            return 2
        status = cli_main(shapes, progress=_progress("bench cuda"), out=args.out)
        if not args.out and status != 2:   # 2: nothing was measured
            print(NOT_SAVED_BENCH)
        return status
    extras = () if args.no_extras else bench.EXTRAS
    fixed = fix_malloc(args.malloc_mb) if args.malloc_mb else None
    report = bench.Report(bench.environment(args.backward, args.layout, extras=extras,
                                            allocator=fixed))
    print(bench.format_header(report.info))
    for suite in args.suite or ["default"]:
        bench.run(bench.SUITES[suite], tuple(args.algos), suite=suite, extras=extras,
                  repeats=args.repeats, naive_budget=args.naive_budget,
                  backward=args.backward, wait_idle=args.wait_idle, runs=args.runs,
                  progress=_progress(f"bench {suite}"), report=report, layout=args.layout)
        print("\n" + bench.format_suite(report, suite))
    print("\n" + bench.legend(report.results) + "\n")
    print(bench.format_summary(report.summary))
    if args.out:
        for path in bench.write(report, args.out):
            print(f"wrote {path}")
    else:
        print(NOT_SAVED_BENCH)
    return 0


def _bench_nd(suites, args) -> None:
    """The conv1d / conv3d suites (``fastconv.tools.bench.nd``): algo "auto" beside torch,
    forward and forward + backward, printed as a table."""
    from .bench import nd

    for suite in suites:
        rows = nd.measure(nd.ND_SUITES[suite], repeats=args.repeats,
                          extras=not args.no_extras)
        print(f"\n{suite}: conv1d / conv3d, float32, algo auto; best of 3 blocks of "
              f"{args.repeats} calls, fastconv and torch alternating\n")
        print(nd.format_rows(rows))


NOT_SAVED_BENCH = ("results not saved (add --out DIR to write results.json, results.md and "
                   "the plots)")


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
    notes = sys.stderr if args.json else sys.stdout   # stdout stays JSON with --json
    if args.dry_run:
        print("dry run: profile not saved (run without --dry-run to save it)", file=notes)
    else:
        print(f"wrote {autotune.profile_path(args.out)}", file=notes)
    return 0


def cmd_train(args) -> int:
    """``fastconv train``: train a small CNN (fastconv.training.run). Exit status 130
    after Ctrl-C (a checkpoint written), 1 on a NaN/Inf loss, an unusable --resume file
    or a dataset that cannot be fetched (one line on stderr each)."""
    from fastconv import devices, training
    from fastconv.checkpoint import CheckpointError
    from fastconv.cuda import CudaUnavailableError

    try:   # before any work: a model or optimiser without a GPU path, or no usable GPU
        training.check_device(args.model, args.optimizer, args.device)
        devices.require("train", args.device)
    except (ValueError, CudaUnavailableError) as e:
        raise CliError(str(e).removeprefix("train: ")) from None
    try:
        training.run(model=args.model, dataset=args.dataset, epochs=args.epochs,
                     batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                     optimizer=args.optimizer, out=args.out, progress=not args.no_progress,
                     checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every,
                     resume=args.resume, layout=args.layout, device=args.device)
    except training.Interrupted as e:
        print(f"fastconv train: {e.message}", file=sys.stderr)
        return 130
    except (training.NonFiniteLossError, CheckpointError) as e:
        print(f"fastconv train: {str(e).removeprefix('train: ')}", file=sys.stderr)
        return 1
    except ImportError as e:   # digits: scikit-learn missing
        raise CliError(str(e), status=1) from None
    except (OSError, ValueError) as e:   # a download, a checksum or a disk failed
        if isinstance(e, ValueError) and not str(e).startswith("fetch:"):
            raise
        raise CliError(_data_failure(args.dataset, e), status=1) from None
    if not args.out:
        print("weights and metrics not saved (add --out DIR to write weights.npz and "
              "metrics.json)")
    return 0


def _data_failure(dataset: str, e: Exception) -> str:
    """One line for a dataset that could not be fetched (or a failed read or write): the
    error and, for MNIST, the variable that points fastconv at another copy."""
    msg = str(e)
    if dataset == "mnist" and msg.startswith("fetch:"):
        msg = msg.removeprefix("fetch: ") + (
            "; set FASTCONV_MNIST_MIRROR to a URL or a local directory holding the four "
            "MNIST .gz files (or use --dataset digits or synthetic)")
    return msg


def add_train_parser(sub) -> None:
    """The ``train`` subcommand and its options."""
    text = "train LeNet-5 or a small ResNet on digits, shapes or MNIST"
    pt = sub.add_parser("train", help=text, description=text[0].upper() + text[1:] + ".")
    pt.add_argument("--model", choices=["lenet", "resnet"], default="lenet",
                    help="lenet: LeNet-5; resnet: a small residual network")
    pt.add_argument("--dataset", choices=["digits", "synthetic", "mnist"], default="digits",
                    help="digits: scikit-learn's 8x8 digits; synthetic: 16x16 drawn shapes; "
                         "mnist: downloaded once (FASTCONV_MNIST_MIRROR names another copy)")
    pt.add_argument("--epochs", type=positive_int, default=15, help="passes over the data")
    pt.add_argument("--batch-size", type=positive_int, default=16,
                    help="images per optimizer step")
    pt.add_argument("--lr", type=positive_float, default=0.05,
                    help="initial learning rate (cosine-annealed to 0 over the epochs)")
    pt.add_argument("--seed", type=non_negative_int, default=0,
                    help="seed of the weights, the shuffling and the split")
    pt.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="sgd",
                    help="sgd: momentum 0.9, weight decay 5e-4; adam, adamw: torch's "
                         "defaults")
    pt.add_argument("--out", default=None, metavar="DIR",
                    help="directory for weights.npz and metrics.json, created when absent "
                         "(default: nothing is saved)")
    pt.add_argument("--checkpoint", default=None, metavar="PATH",
                    help="checkpoint file written by --checkpoint-every and by Ctrl-C "
                         "(default: <out>/checkpoint.npz, or ./checkpoint.npz)")
    pt.add_argument("--checkpoint-every", type=positive_int, default=None, metavar="N",
                    help="write the checkpoint every N epochs (default: only on Ctrl-C)")
    pt.add_argument("--resume", default=None, metavar="PATH",
                    help="continue the run that wrote this checkpoint (same options)")
    pt.add_argument("--layout", choices=["NCHW", "NHWC"], default="NCHW",
                    help="NHWC: every layer channels last (the images transposed once, up "
                         "front; the same parameters, results within float32 rounding); "
                         "NCHW, torch's layout, is the default: on these datasets the two "
                         "train about equally fast; on the training benchmark's 28x28 and "
                         "32x32 images NHWC trained the ResNets 0-40%% faster and LeNet-5 "
                         "between 23%% slower and 4%% faster")
    pt.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: train and evaluate on the GPU (lenet with sgd; the loss and "
                         "the logits read back once per batch)")
    pt.add_argument("--no-progress", action="store_true", help="one line per epoch, no bar")
    pt.set_defaults(func=cmd_train)


def build_parser() -> Parser:
    """The ``fastconv`` parser: info, bench, calibrate, train."""
    from fastconv import __version__

    p = Parser(prog="fastconv", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"fastconv {__version__}",
                   help="print fastconv's version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=Parser)
    text = "versions, threading layer, BLAS, cache, CUDA"
    pi = sub.add_parser("info", help=text, description=f"Show the {text}.")
    pi.add_argument("--json", action="store_true", help="print JSON")
    pi.set_defaults(func=cmd_info)
    from fastconv._args import LAYOUTS

    from .bench import ALGOS, SUITES
    from .bench.nd import ND_SUITES

    text = "time naive vs im2col vs FFT vs Winograd (and torch, scipy)"
    pb = sub.add_parser("bench", help=text, description=text[0].upper() + text[1:] + ".")
    pb.add_argument("--suite", nargs="+", default=None,
                    choices=list(SUITES) + list(ND_SUITES), metavar="SUITE",
                    help=f"shape suites to run, of {', '.join([*SUITES, *ND_SUITES])} "
                         "(default: default; quick with --device cuda; 'tiny' and "
                         "'nd-tiny' are for tests; 'nd': a conv1d audio and a conv3d "
                         "volume layer, algo auto, forward and forward + backward beside "
                         "torch, printed only)")
    pb.add_argument("--algos", nargs="+", default=list(ALGOS), choices=list(ALGOS),
                    metavar="ALGO", help="fastconv's algorithms to time (auto: its own "
                    "choice)")
    pb.add_argument("--backward", action="store_true",
                    help="time forward + backward (conv2d_backward; torch autograd)")
    pb.add_argument("--layout", choices=list(LAYOUTS), default="NCHW",
                    help="data layout: NCHW with OIHW weights, or NHWC with HWIO weights "
                         "(torch then runs on channels_last tensors)")
    pb.add_argument("--repeats", type=positive_int, default=5, metavar="N",
                    help="timed calls per measurement")
    pb.add_argument("--naive-budget", type=non_negative_float, metavar="SECONDS", default=2.0,
                    help="seconds per shape for the direct algorithm; it runs on fewer "
                         "images and is scaled when slower (0: full batch)")
    pb.add_argument("--wait-idle", type=non_negative_float, default=0.0, metavar="SECONDS",
                    help="on a shared machine: before each measurement wait up to SECONDS "
                         "for other processes to go quiet, and retry (twice at most) when "
                         "they took more than 3%% of the CPU meanwhile")
    pb.add_argument("--runs", type=positive_int, default=1, metavar="N",
                    help="go through the suite N times and keep each measurement's "
                         "smallest median (the least disturbed run)")
    pb.add_argument("--no-extras", action="store_true",
                    help="skip torch and scipy even when installed")
    pb.add_argument("--malloc-mb", type=non_negative_int, default=0, metavar="MIB",
                    help="fix glibc malloc's thresholds for the run (arrays up to MIB MiB "
                         "from the heap; a tuned setting, reported as such); default: "
                         "glibc's adaptive ones after one large free")
    pb.add_argument("--out", default=None, metavar="DIR",
                    help="directory for results.json, results.md and the PNG plots, created "
                         "when absent (default: nothing is saved)")
    pb.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda: check conv2d on the GPU against the CPU and time it")
    pb.set_defaults(func=cmd_bench)
    text = "measure this machine for algo='auto'"
    pc = sub.add_parser("calibrate", help=text, description=f"Calibrate: {text} and save "
                        "the profile that algo='auto' plans with.")
    pc.add_argument("--out", default=None, metavar="PATH",
                    help="profile path (default: <cache dir>/profile.json)")
    pc.add_argument("--budget", type=non_negative_float, default=4.0, metavar="SECONDS",
                    help="seconds of measuring (at least 3 rounds run)")
    pc.add_argument("--dry-run", action="store_true", help="measure and print, save nothing")
    pc.add_argument("--json", action="store_true", help="print JSON")
    pc.set_defaults(func=cmd_calibrate)
    add_train_parser(sub)
    warmup.add_parser(sub)
    return p


def main(argv=None) -> int:
    """Run the command line ``argv`` (default: sys.argv[1:]); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_outputs(args)
        return args.func(args)
    except CliError as e:
        print(f"fastconv {args.command}: {e.message}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:   # Ctrl-C in bench, calibrate or warmup: one line, no trace
        print(f"fastconv {args.command}: interrupted",
              file=sys.stderr)
        return 130


def _check_outputs(args) -> None:
    """Refuse, before any work, output paths that cannot be written and a --resume file
    that cannot be read (CliError, exit status 2)."""
    if args.command in ("bench", "train") and args.out:
        writable_dir(args.out)
    if args.command == "train" and args.checkpoint:
        writable_file(args.checkpoint, "--checkpoint")
    if args.command == "train" and args.resume:
        readable_file(args.resume, "--resume")
    if args.command == "calibrate" and args.out and not args.dry_run:
        writable_file(args.out, "--out")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
