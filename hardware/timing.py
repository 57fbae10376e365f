"""Single-stream latency: the MLPerf-style loop shared by every measured backend."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from hardware.base import LatencyStats, MeasureSettings


def time_queries(run_once: Callable[[], object], settings: MeasureSettings) -> LatencyStats:
    """Warm up untimed, then time each call on its own until both the minimum query count and
    the minimum duration are met (or the maximum duration is reached)."""
    warm_end = time.perf_counter() + settings.warmup_s
    done = 0
    while done < settings.warmup_queries or time.perf_counter() < warm_end:
        run_once()
        done += 1
    samples: list[int] = []
    start = time.perf_counter_ns()
    min_ns = int(settings.min_duration_s * 1e9)
    max_ns = int(settings.max_duration_s * 1e9)
    while True:
        t0 = time.perf_counter_ns()
        run_once()
        t1 = time.perf_counter_ns()
        samples.append(t1 - t0)
        elapsed = t1 - start
        if (len(samples) >= settings.min_queries and elapsed >= min_ns) or elapsed >= max_ns:
            break
    return LatencyStats.from_samples(np.asarray(samples), (time.perf_counter_ns() - start) / 1e9)
