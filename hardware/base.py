"""The Backend contract and the Measurement record.

A backend turns an artifact into something that runs (`prepare`), runs one batch of inputs
(`Prepared.run`), and measures: quality from its own outputs, latency per query, bytes.
Implementations live in one module per runtime and are imported only when a profile
names them (see `hardware.profiles`), so a missing runtime only matters to its users.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class MeasureSettings:
    """Single-stream protocol: untimed warm-up, then time each query until both minima are met."""

    warmup_s: float = 0.2
    warmup_queries: int = 20
    min_queries: int = 200
    min_duration_s: float = 1.0
    max_duration_s: float = 30.0


@dataclass(frozen=True)
class Profile:
    """A hardware target: which backend, with which options, measured how."""

    name: str
    backend: str
    description: str = ""
    provider: str = "CPUExecutionProvider"
    threads: int = 1
    batch_size: int = 1
    graph_optimization: str = "all"
    options: dict[str, Any] = field(default_factory=dict)
    measure: MeasureSettings = MeasureSettings()
    source: str = ""


@dataclass
class LatencyStats:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    queries: int
    duration_s: float
    throughput_qps: float

    @classmethod
    def from_samples(cls, samples_ns: np.ndarray, duration_s: float) -> LatencyStats:
        ms = samples_ns.astype(np.float64) / 1e6
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(float(p50), float(p90), float(p99), float(ms.mean()), float(ms.min()), float(ms.max()),
                   int(len(ms)), float(duration_s), float(len(ms) / duration_s) if duration_s > 0 else 0.0)


@dataclass
class Measurement:
    """Everything one backend measured for one artifact on one profile."""

    profile: str
    quality: float
    latency: LatencyStats | None
    bytes: int
    bytes_compressed: int
    session_init_s: float = 0.0
    first_run_ms: float = 0.0
    kernels: dict[str, str] = field(default_factory=dict)  # layer -> op type it ran as
    environment: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Flat numeric metrics, named as they are logged (`latency_p50_ms`, `bytes`, ...)."""
        out: dict[str, float] = {"quality": self.quality, "bytes": float(self.bytes),
                                 "bytes_compressed": float(self.bytes_compressed),
                                 "session_init_s": self.session_init_s, "first_run_ms": self.first_run_ms}
        if self.latency is not None:
            lat = self.latency
            out.update({
                "latency_p50_ms": lat.p50_ms, "latency_p90_ms": lat.p90_ms, "latency_p99_ms": lat.p99_ms,
                "latency_mean_ms": lat.mean_ms, "latency_min_ms": lat.min_ms, "latency_max_ms": lat.max_ms,
                "latency_queries": float(lat.queries), "latency_duration_s": lat.duration_s,
                "throughput_qps": lat.throughput_qps,
            })
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Prepared(ABC):
    """An artifact loaded into a runtime, ready to run batches."""

    @abstractmethod
    def run(self, feeds: Feeds) -> np.ndarray:
        """Run one batch; return the first output as a NumPy array."""

    def kernels(self) -> dict[str, str]:
        """Layer -> the op type that runs it after the runtime's own graph optimisation."""
        return {}


class Backend(ABC):
    """A runtime that executes artifacts for one profile.

    `prepare` must fail loudly rather than fall back to another device, and `measure` must
    compute quality from this backend's own outputs.
    """

    def __init__(self, profile: Profile):
        self.profile = profile

    @classmethod  # noqa: B027 - an optional hook: by default a backend is available
    def check_available(cls, profile: Profile) -> None:
        """Raise UserError naming the missing package or provider if `profile` cannot run here."""

    @abstractmethod
    def prepare(self, model_path: Path, layer_nodes: dict[str, str]) -> Prepared:
        """Load the artifact for this profile."""

    @abstractmethod
    def measure(self, model_path: Path, layer_nodes: dict[str, str],
                evaluate: Callable[[Callable[[Feeds], np.ndarray]], float], query: Feeds) -> Measurement:
        """Quality via `evaluate(run)`, then latency of `query` per the profile's settings."""
