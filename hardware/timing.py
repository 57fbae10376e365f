"""Single-stream latency: the MLPerf-style loop of `hardware.agent`, for code that holds a Profile.

The loop itself lives in the agent so that a board measured remotely and this host run
exactly the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from hardware import agent
from hardware.base import LatencyStats, MeasureSettings
from hardware.lock import lock_path


def time_queries(run_once: Callable[[], object], settings: MeasureSettings) -> LatencyStats:
    """Warm up untimed, then time each call on its own until both the minimum query count and
    the minimum duration are met (or the maximum duration is reached). No lock, no retries."""
    samples, duration = agent.time_queries(run_once, settings.warmup_s, settings.warmup_queries,
                                           settings.min_queries, settings.min_duration_s, settings.max_duration_s)
    return LatencyStats.from_samples(samples, duration, settings.confidence)


def measure_loop(run_once: Callable[[], object], settings: MeasureSettings,
                 threads: int) -> tuple[LatencyStats, dict[str, Any]]:
    """The full protocol in this process: host lock, contention watch, bounded re-timing."""
    path = lock_path()
    out = agent.measure_loop(run_once, asdict(settings), threads, str(path) if path else None)
    return LatencyStats.from_dict(out["latency"]), out["host"]


def agent_settings_args(settings: MeasureSettings) -> list[str]:
    """The agent's command-line flags for these settings."""
    args = []
    for key, value in asdict(settings).items():
        if key != "remeasure_factor":
            args += [f"--{key.replace('_', '-')}", str(value)]
    return args
