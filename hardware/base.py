"""The Backend contract and the Measurement record.

A backend turns an artifact into something that runs (`prepare`), runs one batch of inputs
(`Prepared.run`), and measures: quality from its own outputs, latency per query (in a fresh
process, under the host-wide lock, with contention recorded), bytes.
Implementations live in one module per runtime and are imported only when a profile
names them (see `hardware.profiles`), so a missing runtime only matters to its users.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar

import numpy as np

from hardware.artifact import Artifact

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class MeasureSettings:
    """Single-stream protocol: untimed warm-up, then time each query until both minima are met.

    A timing during which other processes used more than `max_other_cpu` cores is marked
    contended and taken again, `max_attempts` times at most. `remeasure_factor` scales the
    minima for the longer re-measurement of the Pareto candidates at the end of a study.
    `processes` fresh processes time the query one after another and the figure is the one
    with the median p50: a single process now and then runs 10-100% slow on a VM (where its
    memory landed, which core it got), and the median of three ignores that one.
    """

    warmup_s: float = 0.2
    warmup_queries: int = 20
    min_queries: int = 200
    min_duration_s: float = 1.0
    max_duration_s: float = 30.0
    max_attempts: int = 3
    max_other_cpu: float = 0.3
    retry_wait_s: float = 1.0
    confidence: float = 0.95
    remeasure_factor: float = 5.0
    processes: int = 1

    def scaled(self, factor: float) -> MeasureSettings:
        return replace(self, min_queries=int(self.min_queries * factor), min_duration_s=self.min_duration_s * factor,
                       max_duration_s=max(self.max_duration_s, self.min_duration_s * factor * 2))


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
    device: str = "cpu"  # torch: cpu or cuda
    precision: str = "fp32"  # torch: fp32, fp16 or bf16
    compile: bool = False  # torch: torch.compile the module before timing
    sequence_length: int = 0  # dynamic non-batch input dims (0: not applicable, taken as 1)
    spec: dict[str, Any] = field(default_factory=dict)  # estimate: the target's peak numbers


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
    std_ms: float = 0.0
    ci_low_ms: float = 0.0  # confidence interval of the median (order statistics)
    ci_high_ms: float = 0.0
    confidence: float = 0.95

    @classmethod
    def from_samples(cls, samples_ns: np.ndarray, duration_s: float, confidence: float = 0.95) -> LatencyStats:
        from hardware.agent import summarize

        return cls.from_dict(summarize(samples_ns, duration_s, confidence))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LatencyStats:
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})


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
    peak_rss_mb: float = 0.0  # of the process that measured
    host: dict[str, Any] = field(default_factory=dict)  # contention: cpu_wall_ratio, other_cpu_cores, ...
    estimates: dict[str, float] = field(default_factory=dict)  # analytic figures; names carry `est`

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
                "throughput_qps": lat.throughput_qps, "latency_std_ms": lat.std_ms,
                "latency_p50_ci_low_ms": lat.ci_low_ms, "latency_p50_ci_high_ms": lat.ci_high_ms,
            })
        if self.peak_rss_mb:
            out["peak_rss_mb"] = self.peak_rss_mb
        for key in ("cpu_wall_ratio", "other_cpu_cores", "loadavg_1m", "attempts", "processes", "process_spread"):
            if isinstance(self.host.get(key), (int, float)):
                out[key] = float(self.host[key])
        if "contended" in self.host:
            out["contended"] = float(bool(self.host["contended"]))
        out.update(self.estimates)
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


@dataclass
class Timing:
    """What one isolated timing run returns: steady-state latency plus what came before it."""

    latency: LatencyStats
    session_init_s: float
    first_run_ms: float
    peak_rss_mb: float
    host: dict[str, Any]
    environment: dict[str, Any]


class Backend(ABC):
    """A runtime that executes artifacts for one profile.

    Contract:
    - `check_available` raises UserError naming the missing package before anything runs.
    - Every method receives the whole `Artifact` (the ONNX file, the layer -> node map, the
      per-layer records, sidecars such as the torch.export `program`) and reads nothing else
      from disk: no file is found beside the model by its name.
    - `prepare` must fail loudly rather than fall back to another device.
    - `measure` computes quality from this backend's own outputs (`evaluate(run)`), and
      times through `time`, which runs in a fresh process doing nothing else (see
      `hardware.isolated`) under the host-wide measurement lock.
    - A backend with `needs_program` runs `artifact.program` (the compressed module before
      ONNX-stage quantization) and refuses an artifact without one.
    """

    needs_program: ClassVar[bool] = False
    measures_latency: ClassVar[bool] = True  # False: figures are estimates (names carry `est`)

    def __init__(self, profile: Profile):
        self.profile = profile

    @classmethod  # noqa: B027 - an optional hook: by default a backend is available
    def check_available(cls, profile: Profile) -> None:
        """Raise UserError naming the missing package or provider if `profile` cannot run here."""

    @abstractmethod
    def prepare(self, artifact: Artifact) -> Prepared:
        """Load the artifact for this profile."""

    @abstractmethod
    def measure(self, artifact: Artifact, evaluate: Callable[[Callable[[Feeds], np.ndarray]], float],
                query: Feeds) -> Measurement:
        """Quality via `evaluate(run)`, then latency of `query` per the profile's settings."""

    def time(self, artifact: Artifact, query: Feeds | None, settings: MeasureSettings | None = None) -> Timing:
        """Latency of `query` (None: random inputs shaped from the model) in a fresh process
        (settings default to the profile's)."""
        raise NotImplementedError(f"backend {self.profile.backend!r} does not time artifacts")
