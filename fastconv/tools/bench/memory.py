"""Peak memory of one large conv2d: resnet_56's layer (64 -> 64 channels, 3x3, 56x56,
padding 1) on x (n, 64, 56, 56) float32.

A full unfold of a batch of 256 would take about 1.8 GB; im2col works in tiles, so the
peak should stay within the workspace budget plus input plus output (plus interpreter
and libraries). Each measurement runs in a fresh subprocess that reads its own peak RSS
(``ru_maxrss``) after one conv2d.
"""

from __future__ import annotations

import json
import subprocess
import sys

MIB = 1 << 20

#: The subprocess: one measurement, printed as a JSON line (argv: n, algo).
CHILD = ("import json, sys\n"
         "from fastconv.tools.bench.memory import child\n"
         "print(json.dumps(child(int(sys.argv[1]), sys.argv[2])))\n")


def _rss() -> int:
    """Peak resident set size of this process so far, in bytes."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def child(n: int, algo: str) -> dict:
    """One conv2d on x (n, 64, 56, 56) and w (64, 64, 3, 3) in this process: the byte
    counts of input, output, workspace budget and plan, and the peak RSS after import,
    before and after the call."""
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
    """``child(n, algo)`` in a fresh interpreter, with the limit (input + output +
    workspace budget, +15%) and whether the peak stayed within it."""
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), algo], capture_output=True,
                         text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["limit"] = 1.15 * (r["workspace_budget"] + r["input_bytes"] + r["output_bytes"])
    r["limit_with_baseline"] = r["limit"] + r["rss_after_import"]
    r["within_limit"] = r["peak_rss"] <= r["limit"]
    return r


def format_row(r: dict) -> str:
    """One ``measure`` row as a line of text."""
    return (f"resnet_56 N={r['n']} algo={r['algo']} (ran {r['ran']}): peak RSS "
            f"{r['peak_rss'] / MIB:.0f} MiB; after import {r['rss_after_import'] / MIB:.0f} "
            f"MiB, before conv2d {r['rss_before_conv'] / MIB:.0f} MiB; input "
            f"{r['input_bytes'] / MIB:.0f} MiB + output {r['output_bytes'] / MIB:.0f} MiB + "
            f"budget {r['workspace_budget'] / MIB:.0f} MiB, +15% = {r['limit'] / MIB:.0f} MiB "
            f"-> {'within' if r['within_limit'] else 'OVER'} the limit (full unfold would be "
            f"{r['full_unfold_bytes'] / MIB:.0f} MiB; the plan's workspace "
            f"{r['plan_workspace_bytes'] / MIB:.1f} MiB)")
