#!/usr/bin/env bash
# The hardware check of fastconv's GPU path, for a machine with an NVIDIA GPU, its driver
# and fastconv installed with the cuda extra (numba-cuda[cu12]); nothing is downloaded.
# Within 10 minutes it runs, each step under its own time limit and whatever the others
# did:
#   1. tests/cuda on the GPU (NUMBA_ENABLE_CUDASIM=0; the same tests as the simulator's),
#   2. fastconv bench --device cuda --suite quick (GPU results against the CPU, GFLOP/s),
#   3. bench/gpu_check.py measure: im2col's GEMM against cuBLAS SGEMM (cupy, torch) and
#      conv2d against torch's cuDNN FP32 (TF32 off), peers that are not installed skipped,
# then writes the markdown report OUT/report.md (and prints it).
#
#   bench/gpu_check.sh [OUT]        # OUT defaults to bench/results/gpu_check
#   PYTHON=/path/to/python bench/gpu_check.sh
#
# Exit status: 0 when every step passed, 1 otherwise (see the report).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-bench/results/gpu_check}"
PY="${PYTHON:-python3}"
export NUMBA_ENABLE_CUDASIM=0
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # this checkout's fastconv
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.numba_cache}"
mkdir -p "$OUT" "$NUMBA_CACHE_DIR"
rm -f "$OUT"/*.rc "$OUT"/*.log "$OUT"/compare.json "$OUT"/cuda_results.*

# step NAME SECONDS COMMAND...: run COMMAND under a time limit, log and exit status in OUT.
step() {
    local name="$1" limit="$2"
    shift 2
    echo "== $name (at most ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo $? >"$OUT/$name.rc"
    tail -n 3 "$OUT/$name.log"
}

step tests 240 "$PY" -m pytest -q -p no:cacheprovider tests/cuda
step bench 180 "$PY" -m fastconv.tools bench --device cuda --suite quick --out "$OUT"
step compare 150 "$PY" bench/gpu_check.py measure --out "$OUT" --suite quick --repeats 10
"$PY" bench/gpu_check.py report --dir "$OUT" >"$OUT/report.md"
cat "$OUT/report.md"
echo "report: $OUT/report.md"
for name in tests bench compare; do
    [ "$(cat "$OUT/$name.rc")" = 0 ] || exit 1
done
