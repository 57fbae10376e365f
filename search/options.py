"""The options of one `compsearch run`, as typed values (seconds as floats, memory in bytes).

The CLI builds them from flags and the space; the driver runs with them; `--workers` hands them
to the worker processes it starts without turning a number into a unit string and back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class RunOptions:
    study: str
    trials: int
    timeout_s: float | None
    storage: str
    tracking_uri: str
    results_dir: Path
    seed: int | None = None
    quiet: bool = False
    workers: int = 1
    trial_timeout_s: float | None = None
    trial_memory_bytes: int | None = None
    worker_index: int | None = None  # set in the processes that --workers launches
    remeasure: bool = True  # re-time the Pareto candidates with a longer run at the end
