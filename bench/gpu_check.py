"""The GPU hardware check's measurements and report (run by bench/gpu_check.sh).

    python bench/gpu_check.py measure --out DIR [--suite quick] [--repeats 10]
    python bench/gpu_check.py report --dir DIR            # markdown on stdout

``measure`` (needs a GPU and numba-cuda) times, in float32 with the arrays on the device:

- GEMM: im2col's forward product for each layer of the suite with groups=1, the shape
  the GPU path issues, (C_out x C_in*k*k) @ (C_in*k*k x chunk*H_out*W_out): fastconv's
  register-blocked and tiled kernels beside cuBLAS SGEMM through cupy and through torch
  (TF32 off in both);
- conv2d: ``fastconv.cuda.conv2d(algo="im2col")`` and ``"naive"`` beside torch's cuDNN
  (``cudnn.allow_tf32 = matmul.allow_tf32 = False``, ``cudnn.benchmark = True``) on every
  layer of the suite, with each result's relative error against torch's and every
  result's (cuDNN's too) against the CPU's in float64 (the largest difference over the
  largest magnitude; float32 sums of a few thousand terms give about 1e-7 to 1e-6).

Each call: one warm-up (compiles), then the median of ``--repeats`` synchronised calls.
A peer that cannot be imported or run is reported as skipped with the reason. It writes
DIR/compare.json. ``report`` turns DIR (compare.json, the bench's cuda_results.md, each
step's .rc and .log files written by gpu_check.sh) into one short markdown report.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

STEPS = (("tests", "tests/cuda on the GPU (NUMBA_ENABLE_CUDASIM=0)"),
         ("bench", "fastconv bench --device cuda --suite quick"),
         ("compare", "GEMM and conv2d against cuBLAS and cuDNN"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="time fastconv and its peers on the GPU")
    m.add_argument("--out", required=True, metavar="DIR", help="writes DIR/compare.json")
    m.add_argument("--suite", default="quick", help="a fastconv bench suite (default quick)")
    m.add_argument("--repeats", type=int, default=10, help="timed calls per case (median)")
    r = sub.add_parser("report", help="the markdown report of a gpu_check.sh run")
    r.add_argument("--dir", required=True, metavar="DIR")
    a = p.parse_args(argv)
    if a.command == "measure" and a.repeats < 1:
        p.error(f"--repeats={a.repeats} must be at least 1")
    return a


# --------------------------------------------------------------------------- measuring
def median_seconds(fn, sync, repeats: int) -> float:
    """One warm-up call, then the median of ``repeats`` calls each followed by ``sync()``."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _skip(exc) -> str:
    return f"skipped: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def gemm_cases(shapes):
    """(layer name, M, K, N) of the GPU im2col forward GEMM of each groups=1 layer."""
    import numpy as np

    from fastconv.cuda._conv import unfolding

    out = []
    for s in shapes:
        if s.groups != 1:
            continue
        a = s.args(np.float32)
        u = unfolding(a)
        out.append((s.name, a.c_out, u.kdim, u.chunk() * u.positions))
    return out


def _peers():
    """{name: module or the reason it is skipped} for cupy and torch (TF32 off)."""
    peers = {}
    os.environ.setdefault("CUPY_TF32", "0")  # cupy: no TF32 in its float32 GEMMs
    try:
        import cupy

        cupy.cuda.Device(0).compute_capability  # noqa: B018 - fails without a GPU
        peers["cupy"] = cupy
    except Exception as exc:
        peers["cupy"] = _skip(exc)
    try:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("torch.cuda.is_available() is False")
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
        peers["torch"] = torch
    except Exception as exc:
        peers["torch"] = _skip(exc)
    return peers


def measure_gemm(cases, peers, repeats):
    import numpy as np
    from numba import cuda

    from fastconv.cuda import _gemm

    rows = []
    for name, m, k, n in cases:
        rng = np.random.default_rng(0)
        a = rng.standard_normal((1, m, k), dtype=np.float32)
        b = rng.standard_normal((1, k, n), dtype=np.float32)
        da, db, dc = cuda.to_device(a), cuda.to_device(b), cuda.device_array((1, m, n),
                                                                            np.float32)
        flops = 2.0 * m * k * n
        row = {"layer": name, "M": m, "K": k, "N": n, "gflops": {}}
        for kernel in _gemm.KERNELS:
            def call(kernel=kernel, da=da, db=db, dc=dc):
                _gemm.gemm(da, db, dc, kernel=kernel)

            secs = median_seconds(call, cuda.synchronize, repeats)
            row["gflops"][f"fastconv {kernel}"] = flops / secs / 1e9
        for peer in ("cupy", "torch"):
            mod = peers[peer]
            if isinstance(mod, str):
                row["gflops"][f"cuBLAS ({peer})"] = mod
                continue
            try:
                if peer == "cupy":
                    pa, pb = mod.asarray(a[0]), mod.asarray(b[0])
                    sync = mod.cuda.Device().synchronize
                else:
                    pa, pb = mod.from_numpy(a[0]).cuda(), mod.from_numpy(b[0]).cuda()
                    sync = mod.cuda.synchronize
                secs = median_seconds(lambda pa=pa, pb=pb, mod=mod: mod.matmul(pa, pb), sync,
                                      repeats)
                row["gflops"][f"cuBLAS ({peer})"] = flops / secs / 1e9
            except Exception as exc:
                row["gflops"][f"cuBLAS ({peer})"] = _skip(exc)
        rows.append(row)
    return rows


def measure_conv(shapes, peers, repeats):
    import numpy as np
    from numba import cuda

    from fastconv import conv2d as cpu_conv2d
    from fastconv.cuda import conv2d
    from fastconv.tools.bench.cuda import rel_error as rel

    torch = peers["torch"]
    rows = []
    for s in shapes:
        x, w = s.arrays(np.float32)
        dx, dw = cuda.to_device(x), cuda.to_device(w)
        exact = cpu_conv2d(x.astype(np.float64), w.astype(np.float64), algo="naive",
                           **s.kwargs())   # the direct algorithm: seconds to compile
        row = {"layer": s.name, "gflops": {}, "rel_error": {}, "error_vs_float64": {}}
        want = None
        if isinstance(torch, str):
            row["gflops"]["cuDNN (torch)"] = torch
        else:
            try:
                tx, tw = torch.from_numpy(x).cuda(), torch.from_numpy(w).cuda()
                kw = s.kwargs()

                def call(tx=tx, tw=tw, kw=kw):
                    return torch.nn.functional.conv2d(tx, tw, **kw)

                secs = median_seconds(call, torch.cuda.synchronize, repeats)
                row["gflops"]["cuDNN (torch)"] = s.flops() / secs / 1e9
                want = call().cpu().numpy().astype(np.float64)
                row["error_vs_float64"]["cuDNN (torch)"] = rel(want, exact)
            except Exception as exc:
                row["gflops"]["cuDNN (torch)"] = _skip(exc)
        kwargs = s.kwargs()
        for algo in ("im2col", "naive"):
            def call(algo=algo, dx=dx, dw=dw, kw=kwargs):
                return conv2d(dx, dw, algo=algo, **kw)

            secs = median_seconds(call, cuda.synchronize, repeats)
            row["gflops"][f"fastconv {algo}"] = s.flops() / secs / 1e9
            got = call().copy_to_host()
            row["error_vs_float64"][f"fastconv {algo}"] = rel(got, exact)
            if want is not None:
                row["rel_error"][f"fastconv {algo}"] = rel(got, want)
        rows.append(row)
    return rows


def measure(out: str, suite: str, repeats: int) -> dict:
    from fastconv.cuda import require
    from fastconv.cuda._device import env_summary
    from fastconv.tools.bench.suites import SUITES

    require("gpu_check")
    shapes = SUITES[suite]
    peers = _peers()
    result = {"env": env_summary(), "suite": suite, "repeats": repeats,
              "peers": {k: (v if isinstance(v, str) else getattr(v, "__version__", "?"))
                        for k, v in peers.items()},
              "gemm": measure_gemm(gemm_cases(shapes), peers, repeats),
              "conv": measure_conv(shapes, peers, repeats)}
    pathlib.Path(out).mkdir(parents=True, exist_ok=True)
    (pathlib.Path(out) / "compare.json").write_text(json.dumps(result, indent=2))
    return result


# --------------------------------------------------------------------------- reporting
def _cell(v) -> str:
    if isinstance(v, str):
        return v.split(":")[0]  # "skipped" (the reason is listed under the table)
    return f"{v:.1f}"


def _table(rows, columns, first) -> list[str]:
    lines = ["| " + " | ".join(first + columns) + " |",
             "|" + "---|" * len(first) + "---:|" * len(columns)]
    for r in rows:
        lead = [str(r[k]) for k in ("layer", "M", "K", "N") if k in r][:len(first)]
        lines.append("| " + " | ".join(lead + [_cell(r["gflops"].get(c, "n/a"))
                                               for c in columns]) + " |")
    return lines


def _step_status(d: pathlib.Path, step: str) -> str:
    rc_file = d / f"{step}.rc"
    if not rc_file.exists():
        return "not run"
    rc = rc_file.read_text().strip()
    status = {"0": "passed", "124": "timed out"}.get(rc, f"failed (exit {rc})")
    log = d / f"{step}.log"
    if log.exists():
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        if tail:
            status += f": `{tail[-1].strip()[:160]}`"
    return status


def report(directory: str) -> str:
    d = pathlib.Path(directory)
    lines = ["# fastconv GPU check", ""]
    data = None
    if (d / "compare.json").exists():
        data = json.loads((d / "compare.json").read_text())
        env = data.get("env", {})
        lines += [f"Device: {env.get('device', '?')} (compute capability "
                  f"{env.get('compute_capability', '?')}); suite {data.get('suite')}, "
                  f"median of {data.get('repeats')} calls, float32, arrays on the device.",
                  ""]
    lines += ["## Steps", ""]
    lines += [f"- {title}: {_step_status(d, step)}" for step, title in STEPS]
    if (d / "cuda_results.md").exists():
        lines += ["", "## fastconv bench --device cuda", "",
                  (d / "cuda_results.md").read_text().strip()]
    if data is None:
        lines += ["", "No comparison measurements (compare.json is missing)."]
        return "\n".join(lines) + "\n"
    skipped = {f"{k}: {v}" for k, v in data.get("peers", {}).items()
               if isinstance(v, str) and v.startswith("skipped")}
    for part in ("gemm", "conv"):
        for r in data.get(part, []):
            for k, v in r["gflops"].items():
                if isinstance(v, str):
                    skipped.add(f"{k}: {v}")
    gemm = data.get("gemm", [])
    if gemm:
        cols = list(gemm[0]["gflops"])
        lines += ["", "## im2col GEMM, GFLOP/s (TF32 off)", ""]
        lines += _table(gemm, cols, ["layer", "M", "K", "N"])
    conv = data.get("conv", [])
    if conv:
        cols = list(conv[0]["gflops"])
        lines += ["", "## conv2d forward, GFLOP/s (cuDNN FP32, TF32 off)", ""]
        lines += _table(conv, cols, ["layer"])
        errors = [v for r in conv for v in r.get("rel_error", {}).values()]
        if errors:
            lines += ["", f"Largest relative error of fastconv against cuDNN: "
                          f"{max(errors):.1e}."]
        exact = {}
        for r in conv:
            for k, v in r.get("error_vs_float64", {}).items():
                exact[k] = max(exact.get(k, 0.0), v)
        if exact:
            lines += ["", "Largest relative error against the CPU in float64: "
                          + ", ".join(f"{k} {v:.1e}" for k, v in exact.items()) + "."]
    if skipped:
        lines += ["", "Skipped peers:", ""] + [f"- {s}" for s in sorted(skipped)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.command == "measure":
        measure(a.out, a.suite, a.repeats)
        return 0
    sys.stdout.write(report(a.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
