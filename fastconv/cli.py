"""The ``fastconv`` command line: info, bench, train."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _progress(desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return lambda it: tqdm(it, desc=desc, unit="run", file=sys.stderr)


def cmd_info(args) -> int:
    import numpy as np

    from . import conv2d, info

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
    from . import benchmark, info

    suite = benchmark.QUICK_SUITE
    if args.device == "cuda":
        from .cuda.bench import cli_main

        return cli_main(suite, progress=_progress("bench cuda"), out=args.out)
    print(f"BLAS: {info.blas_summary()}")
    data = info.collect()
    print(f"numba threading layer: {data['threading_layer']}, threads: {data['numba_threads']}")
    results = benchmark.run(suite, tuple(args.algos), progress=_progress("bench"))
    table = benchmark.format_table(results)
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"info": data, "results": [r.as_dict() for r in results]}, f, indent=2)
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(table + "\n")
        print(f"wrote {args.out}/results.json and results.md")
    return 0


def cmd_train(args) -> int:
    from . import training

    training.run(model=args.model, dataset=args.dataset, epochs=args.epochs,
                 batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                 optimizer=args.optimizer, out=args.out, progress=not args.no_progress)
    return 0


def add_train_parser(sub) -> None:
    pt = sub.add_parser("train", help="train LeNet-5 or a small ResNet on digits, shapes or "
                        "MNIST")
    pt.add_argument("--model", choices=["lenet", "resnet"], default="lenet")
    pt.add_argument("--dataset", choices=["digits", "synthetic", "mnist"], default="digits")
    pt.add_argument("--epochs", type=int, default=15)
    pt.add_argument("--batch-size", type=int, default=16)
    pt.add_argument("--lr", type=float, default=0.05,
                    help="initial learning rate (cosine-annealed to 0 over the epochs)")
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd",
                    help="sgd: momentum 0.9, weight decay 5e-4; adam: torch's defaults")
    pt.add_argument("--out", default=None, help="directory for weights.npz and metrics.json")
    pt.add_argument("--no-progress", action="store_true", help="one line per epoch, no bar")
    pt.set_defaults(func=cmd_train)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastconv", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    pi = sub.add_parser("info", help="versions, threading layer, BLAS, cache, CUDA")
    pi.add_argument("--json", action="store_true", help="print JSON")
    pi.set_defaults(func=cmd_info)
    pb = sub.add_parser("bench", help="time naive vs im2col vs FFT")
    pb.add_argument("--algos", nargs="+", default=["naive", "im2col", "fft"],
                    choices=["naive", "im2col", "fft", "auto"])
    pb.add_argument("--out", default=None, help="directory for results.json / results.md")
    pb.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda: check conv2d on the GPU against the CPU and time it")
    pb.set_defaults(func=cmd_bench)
    add_train_parser(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
