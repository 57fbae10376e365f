"""Single-stream latency for code that holds MeasureSettings: the loop of `hardware.agent`.

The loop itself lives in the agent so that a board measured remotely and this host run
exactly the same code; backends time through `hardware.isolated` (fresh process, host lock,
contention watch), and `time_queries` here is the bare in-process loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

from hardware import agent
from hardware.base import LatencyStats, MeasureSettings


def time_queries(run_once: Callable[[], object], settings: MeasureSettings) -> LatencyStats:
    """Warm up untimed, then time each call on its own until both the minimum query count and
    the minimum duration are met (or the maximum duration is reached). No lock, no retries."""
    samples, duration = agent.time_queries(run_once, settings.warmup_s, settings.warmup_queries,
                                           settings.min_queries, settings.min_duration_s, settings.max_duration_s)
    return LatencyStats.from_samples(samples, duration, settings.confidence)


def agent_settings_args(settings: MeasureSettings) -> list[str]:
    """The agent's command-line flags for these settings."""
    args = []
    for key, value in asdict(settings).items():
        if key != "remeasure_factor":
            args += [f"--{key.replace('_', '-')}", str(value)]
    return args
