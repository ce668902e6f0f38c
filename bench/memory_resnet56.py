"""Peak memory of one large conv2d: resnet_56 (64 -> 64 channels, 3x3, 56x56) with N=256.

A full unfold of this batch would take about 1.8 GB; im2col works in tiles, so the peak
should stay within the workspace budget plus input plus output (plus interpreter and
libraries). Each measurement runs in a fresh subprocess that reads its own peak RSS
(``ru_maxrss``) after one conv2d.

    python bench/memory_resnet56.py [--n 256] [--algo auto im2col] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

MIB = 1 << 20


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def child(n: int, algo: str) -> dict:
    import numpy as np

    import fastconv
    from fastconv import config

    base = _rss()  # interpreter + numpy + numba + scipy
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 64, 56, 56), dtype=np.float32)
    w = rng.standard_normal((64, 64, 3, 3), dtype=np.float32)
    plan = fastconv.plan(x.shape, w.shape, padding=1)
    before = _rss()
    y = fastconv.conv2d(x, w, padding=1, algo=algo)
    peak = _rss()
    return {"n": n, "algo": algo, "ran": plan.algorithm if algo == "auto" else algo,
            "input_bytes": x.nbytes, "output_bytes": y.nbytes,
            "workspace_budget": config.WORKSPACE_BYTES,
            "plan_workspace_bytes": plan.workspaces[plan.algorithm if algo == "auto"
                                                    else algo],
            "full_unfold_bytes": n * 64 * 9 * 56 * 56 * 4,
            "rss_after_import": base, "rss_before_conv": before, "peak_rss": peak}


def measure(n: int, algo: str) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--n", str(n),
                          "--algo", algo], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["limit"] = 1.15 * (r["workspace_budget"] + r["input_bytes"] + r["output_bytes"])
    r["limit_with_baseline"] = r["limit"] + r["rss_after_import"]
    r["within_limit"] = r["peak_rss"] <= r["limit"]
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--algo", nargs="+", default=["auto", "im2col"])
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.n, a.algo[0])))
        return 0
    rows = [measure(a.n, algo) for algo in a.algo]
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"resnet_56 N={r['n']} algo={r['algo']} (ran {r['ran']}): peak RSS "
              f"{r['peak_rss'] / MIB:.0f} MiB; after import {r['rss_after_import'] / MIB:.0f} "
              f"MiB, before conv2d {r['rss_before_conv'] / MIB:.0f} MiB; input "
              f"{r['input_bytes'] / MIB:.0f} MiB + output {r['output_bytes'] / MIB:.0f} MiB + "
              f"budget {r['workspace_budget'] / MIB:.0f} MiB, +15% = {r['limit'] / MIB:.0f} MiB "
              f"-> {'within' if r['within_limit'] else 'OVER'} the limit (full unfold would be "
              f"{r['full_unfold_bytes'] / MIB:.0f} MiB; the plan's workspace "
              f"{r['plan_workspace_bytes'] / MIB:.1f} MiB)")
    return 0 if all(r["within_limit"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
