"""Peak memory of one large conv2d: resnet_56 (64 -> 64 channels, 3x3, 56x56) with N=256.

A full unfold of this batch would take about 1.8 GB; im2col works in tiles, so the peak
should stay within the workspace budget plus input plus output (plus interpreter and
libraries). Each measurement runs in a fresh subprocess that reads its own peak RSS
(``ru_maxrss``) after one conv2d (``fastconv.tools.bench.memory``). Exit status 1 when a
peak is over the limit.

    python bench/memory_resnet56.py [--n 256] [--algo auto im2col] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

from fastconv.tools.bench import memory


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--algo", nargs="+", default=["auto", "im2col"])
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(memory.child(a.n, a.algo[0])))
        return 0
    rows = [memory.measure(a.n, algo) for algo in a.algo]
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(memory.format_row(r))
    return 0 if all(r["within_limit"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
