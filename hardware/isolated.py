"""Each timing in its own fresh process that does nothing else.

The search process holds torch, the task's data, a sampler and MLflow; its heap, threads and
caches are not what a deployed model sees. So every timing runs a fresh interpreter (the
agent script for ONNX Runtime, `python -m hardware.torch_backend` for PyTorch) with the
profile's thread counts pinned through the environment, reads one JSON object back, and
turns it into a `Timing`. The child takes the host-wide lock itself, around warm-up and
timing only, so session creation in one worker overlaps nothing that matters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from hardware import agent
from hardware.base import Feeds, LatencyStats, MeasureSettings, Profile, Timing
from hardware.lock import holding_compute_slot, lock_path
from hardware.timing import agent_settings_args

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class MeasurementError(RuntimeError):
    """The measuring process failed or refused (e.g. nodes fell back off the provider)."""


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    if threads > 0:
        env.update({var: str(threads) for var in THREAD_VARS})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def child_timeout_s(settings: MeasureSettings) -> float:
    # Timing itself is bounded by max_duration_s per attempt; the rest is start-up and
    # waiting for the host lock behind other workers' measurements.
    per_attempt = settings.warmup_s + settings.max_duration_s + settings.retry_wait_s + 5
    return 600 + settings.max_attempts * per_attempt


def run_child(argv: list[str], threads: int, timeout_s: float) -> dict[str, Any]:
    """Run `python ARGV --out FILE` in a fresh process; return the JSON it wrote."""
    if holding_compute_slot():
        raise RuntimeError("a timing was started inside a compute slot: the measuring process would wait for "
                           "this one forever; end the `with compute_slot()` block before measuring")
    with tempfile.TemporaryDirectory(prefix="compsearch-measure-") as tmp:
        out = Path(tmp) / "result.json"
        try:
            proc = subprocess.run([sys.executable, *argv, "--out", str(out)], env=child_env(threads),
                                  capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise MeasurementError(f"measuring process timed out after {timeout_s:.0f}s") from None
        if not out.exists():
            tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            raise MeasurementError(f"measuring process died: {tail}")
        result = json.loads(out.read_text())
    if "error" in result:
        raise MeasurementError(result["error"])
    return result


def timing_from_json(result: dict[str, Any]) -> Timing:
    return Timing(latency=LatencyStats.from_dict(result["latency"]), session_init_s=result["session_init_s"],
                  first_run_ms=result["first_run_ms"], peak_rss_mb=result["peak_rss_mb"], host=result["host"],
                  environment={**result["environment"], **_placement_env(result.get("placement")),
                               "measured_in_pid": str(result.get("pid", ""))})


def _placement_env(placement: dict[str, Any] | None) -> dict[str, str]:
    if not placement:
        return {}
    return {"placement": ", ".join(f"{ep}={n}" for ep, n in placement["nodes_by_provider"].items())}


def save_feeds(query: Feeds, directory: Path) -> Path:
    path = directory / "query.npz"
    np.savez(path, **query)
    return path


def agent_argv(model: Path, profile: Profile, settings: MeasureSettings, feeds: Path | None) -> list[str]:
    """The agent's command line for one ONNX Runtime timing under `profile`."""
    path = lock_path()
    argv = [agent.__file__, str(model), "--provider", profile.provider, "--threads", str(profile.threads),
            "--graph-optimization", profile.graph_optimization, "--batch-size", str(profile.batch_size),
            "--sequence-length", str(profile.sequence_length), *agent_settings_args(settings)]
    if profile.options:
        argv += ["--provider-options", json.dumps(profile.options)]
    if feeds is not None:
        argv += ["--feeds", str(feeds)]
    if path is not None:
        argv += ["--lock", str(path)]
    return argv


def median_of_processes(time_once: Callable[[], Timing], processes: int) -> Timing:
    """Time in `processes` fresh processes, one after another; keep the one with the median p50.

    The whole figure (p90, p99, CI, environment) comes from that one process, so it stays
    internally consistent; the host record lists every process's p50 and their spread."""
    timings = sorted((time_once() for _ in range(max(1, processes))), key=lambda t: t.latency.p50_ms)
    chosen = timings[(len(timings) - 1) // 2]
    p50s = [round(t.latency.p50_ms, 6) for t in timings]
    chosen.host = {**chosen.host, "processes": len(timings), "process_p50_ms": p50s,
                   "process_spread": p50s[-1] / p50s[0] - 1.0 if p50s[0] > 0 else 0.0,
                   "processes_contended": sum(bool(t.host.get("contended")) for t in timings)}
    return chosen


def time_onnx(model: Path, profile: Profile, query: Feeds | None, settings: MeasureSettings) -> Timing:
    """An ONNX Runtime timing of `model`: the median of `settings.processes` fresh agent processes."""
    attempts = [settings.max_attempts]

    def once(feeds: Path | None) -> Timing:
        used = replace(settings, max_attempts=attempts[0])
        timing = timing_from_json(run_child(agent_argv(model, profile, used, feeds), profile.threads,
                                            child_timeout_s(used)))
        if timing.host.get("contended") and timing.host.get("attempts", 0) >= attempts[0]:
            # Contention outlasted every retry of this process: it comes from outside and persists, and
            # more retries would only cost time. The next processes time once each (still marked
            # contended); the figure stays the median of `processes` fresh processes.
            attempts[0] = 1
        return timing

    with tempfile.TemporaryDirectory(prefix="compsearch-feeds-") as tmp:
        feeds = save_feeds(query, Path(tmp)) if query is not None else None
        return median_of_processes(lambda: once(feeds), settings.processes)
