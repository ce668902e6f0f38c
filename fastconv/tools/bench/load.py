"""What other processes take from the machine while we measure: a CPU-load meter, waits
for an idle machine, and measurements retried when they were disturbed (Linux; elsewhere
the load is unknown, None, and nothing waits)."""

from __future__ import annotations

import os
import time

#: Other processes' CPU share above which a measurement counts as disturbed: 2-thread
#: BLAS waits for its slower thread, so a few percent of stolen time can double a GEMM.
LOAD_THRESHOLD = 0.03


def _cpu_ticks() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot (Linux), else None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return (total - idle) / hz, total / hz


def _own_cpu() -> float:
    """CPU seconds this process has used (user + system)."""
    import resource  # POSIX only

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class LoadMeter:
    """Share of the machine's CPU time used by *other* processes between start() and
    stop() (0: idle apart from us, 1: every core busy with others). None off Linux."""

    def start(self):
        self._m, self._own = _cpu_ticks(), _own_cpu()
        return self

    def stop(self) -> float | None:
        m1, own1 = _cpu_ticks(), _own_cpu()
        if self._m is None or m1 is None:
            return None
        total = m1[1] - self._m[1]
        if total <= 0:
            return None
        others = (m1[0] - self._m[0]) - (own1 - self._own)
        return float(min(max(others / total, 0.0), 1.0))


def wait_until_idle(timeout: float, threshold: float = LOAD_THRESHOLD,
                    window: float = 1.0) -> bool:
    """Wait up to ``timeout`` seconds for a ``window`` in which other processes use at
    most ``threshold`` of the CPU; True when one came (always True off Linux)."""
    end = time.perf_counter() + timeout
    while True:
        meter = LoadMeter().start()
        time.sleep(window)
        load = meter.stop()
        if load is None or load <= threshold:
            return True
        if time.perf_counter() >= end:
            return False


def measured(measure, wait_idle: float):
    """(measure(), CPU share of other processes meanwhile). With ``wait_idle`` > 0: wait
    for an idle machine first, and measure again (at most twice more) when others took
    more than ``LOAD_THRESHOLD``."""
    attempts = 3 if wait_idle > 0 else 1
    for attempt in range(attempts):
        if wait_idle > 0:
            wait_until_idle(wait_idle)
        meter = LoadMeter().start()
        value = measure()
        load = meter.stop()
        if load is None or load <= LOAD_THRESHOLD or attempt == attempts - 1:
            break
    return value, load
