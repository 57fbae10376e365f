"""A search run as the efficiency benchmark reads it: its finished trials and its hypervolume curve.

search/benchmarks/efficiency.py fills these from the studies; search/benchmarks/retime.py times the
points again and recomputes the curve.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Step:
    """One finished trial as the hypervolume reads it."""

    loss: tuple[float, float] | None  # feasible: (normalised drop, bytes / baseline bytes); else None
    latency_ms: float | None = None   # as the study timed it
    model: Path | None = None         # its ONNX file, to time again side by side


@dataclass
class Run:
    workload: str
    method: str
    seed: int
    trials: list[int] = field(default_factory=list)   # trial count after each finished trial
    seconds: list[float] = field(default_factory=list)  # wall time since the study started
    hv: list[float] = field(default_factory=list)  # the curve the tables read: re-timed latencies once `retime` ran
    rejected: int = 0
    host: str = ""  # the CPU and its int8 flags that timed this run's baseline
    steps: list[Step] = field(default_factory=list)
    base: Step | None = None
    hv_search: list[float] = field(default_factory=list)  # the curve with each study's own single timings
    retimed: bool = False


def curve(run: Run, latency_of: Callable[[Step], float]) -> list[float]:
    """Hypervolume after each step, the latency of each point (and of the baseline) from `latency_of`."""
    from search.report.hypervolume import REF, hypervolume

    latency0 = latency_of(run.base)
    losses = [(0.0, 1.0, 1.0)]  # the baseline's own corner
    out = []
    for step in run.steps:
        if step.loss is not None:
            drop, size = step.loss
            losses.append((drop, latency_of(step) / latency0, size))
        out.append(hypervolume(losses) / REF ** 3)
    return out
