"""Time from a fresh interpreter to the first conv2d result, with numba's cache warm and
cold.

Each run is a new process: it records the time just before ``import fastconv`` and after
the first ``conv2d`` returns (an 8-channel 3x3 layer on a 3x32x32 image, algo="auto"),
and the whole process's wall time is measured from outside too. Cold: an empty
NUMBA_CACHE_DIR (every kernel the call needs compiles). Warm: the same directory again.
The runs: ``fastconv.tools.bench.startup``.

    python bench/startup_time.py [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

from fastconv.tools.bench import startup


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    result = startup.measure(a.runs)
    print(json.dumps(result, indent=2) if a.json else startup.format_result(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
