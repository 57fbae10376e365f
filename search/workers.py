"""`--workers N`: N-1 more local worker processes beside the coordinator, on one storage.

Each worker is the same `compsearch run` with a worker index (its own seed, no baseline,
no final report); they share the study through the storage, the budget through the budget
lock, and the host-wide measurement lock, so they compress in parallel but never time
latency while another computes.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from search.driver import RunOptions


def worker_command(space_file: str, options: RunOptions, index: int, timeout_s: float | None) -> list[str]:
    cmd = [sys.executable, "-m", "search", "run", space_file, "--study", options.study,
           "--trials", str(options.trials), "--storage", options.storage, "--tracking-uri", options.tracking_uri,
           "--results-dir", str(options.results_dir), "--worker-index", str(index), "--quiet"]
    if options.seed is not None:
        cmd += ["--seed", str(options.seed)]
    if timeout_s is not None:
        cmd += ["--timeout", f"{max(1, int(timeout_s))}s"]
    if options.trial_timeout_s is not None:
        cmd += ["--trial-timeout", f"{int(options.trial_timeout_s)}s"]
    if options.trial_memory_bytes is not None:
        cmd += ["--trial-memory", f"{options.trial_memory_bytes}"]
    return cmd


def launch_workers(space_file: str, options: RunOptions, deadline: float | None) -> list[subprocess.Popen]:
    left = None if deadline is None else deadline - time.monotonic()
    return [subprocess.Popen(worker_command(space_file, options, i, left)) for i in range(1, options.workers)]
