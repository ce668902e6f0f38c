"""Wall-clock timing shared by the benchmark and the autotuner."""

from __future__ import annotations

import time

import numpy as np


def median_time(fn, *, repeats: int = 5, min_time: float = 0.0, max_time: float = 10.0,
                warmup: bool = True, max_repeats: int | None = None) -> float:
    """Median wall time (seconds) of ``fn()`` over up to ``repeats`` calls.

    One untimed warm-up call first (it also compiles) unless ``warmup`` is False. Stops
    early once ``max_time`` seconds have been spent (at least one timed call always
    runs); repeats further while the total is below ``min_time``, up to ``max_repeats``
    calls (default 4 x ``repeats``)."""
    cap = 4 * repeats if max_repeats is None else max(repeats, max_repeats)
    if warmup:
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        spent = time.perf_counter() - start
        if len(times) >= repeats and (spent >= min_time or len(times) >= cap):
            break
        if spent >= max_time:
            break
    return float(np.median(times))
