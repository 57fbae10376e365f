"""A plain view of an Optuna study: what `show --json`, MLflow and the terminal all read.

Everything here is computed from the storage alone, so any process (another worker, a
report on another machine) sees the same trials, front and baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.pareto import pareto_front

OBJECTIVES = ("quality", "latency_p50_ms", "bytes")
DIRECTIONS = ("maximize", "minimize", "minimize")
CONSTRAINT_KEY = "quality_drop"


@dataclass
class TrialView:
    number: int
    state: str
    baseline: bool
    recipe: dict[str, Any]
    recipe_hash: str | None
    summary: str
    params: dict[str, Any]
    values: dict[str, float] | None
    metrics: dict[str, dict[str, float]]
    quality_drop: float | None
    feasible: bool
    failure_reason: str | None
    duration_s: float | None
    start_ms: float | None
    environment: dict[str, str] = field(default_factory=dict)
    kernels: dict[str, dict[str, str]] = field(default_factory=dict)
    artifact_dir: str | None = None

    def flat_params(self) -> dict[str, Any]:
        out = dict(self.params)
        for step in self.recipe.get("steps", []):
            for k, v in step.items():
                if k == "type":
                    continue
                if isinstance(v, dict):  # per-layer values as one compact param
                    out[f"{step['type']}.{k}"] = ",".join(f"{layer}={b}" for layer, b in v.items())
                else:
                    out[f"{step['type']}.{k}"] = v
        return out

    def flat_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.values:
            out.update(self.values)
        for profile, metrics in self.metrics.items():
            out.update({f"{profile}.{k}": v for k, v in metrics.items()})
        if self.quality_drop is not None:
            out["quality_drop"] = self.quality_drop
        # Numeric knobs as metrics too: the UI's parallel-coordinates chart cuts string labels.
        for k, v in self.params.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"knob.{k}"] = float(v)
        bits = [b for step in self.recipe.get("steps", []) if step["type"] == "quantize"
                for b in step["layer_bits"].values()]
        out["knob.int8_layers"] = float(sum(b == "int8" for b in bits))
        return {k: v for k, v in out.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def _failure_reason(trial: FrozenTrial) -> str | None:
    if trial.state == TrialState.COMPLETE:
        return None  # a retried trial inherits its predecessor's attributes
    reason = trial.user_attrs.get("failure_reason") or trial.system_attrs.get("fail_reason")
    if reason is None and trial.state == TrialState.FAIL:
        # Failed by the storage, not by a worker: its heartbeat stopped (crashed or killed machine).
        return "interrupted: its worker stopped sending heartbeats (crashed or killed); retried once"
    return reason


def trial_view(trial: FrozenTrial, objective_names: tuple[str, ...]) -> TrialView:
    attrs = trial.user_attrs
    constraints = trial.constraints or {}
    excess = constraints.get(CONSTRAINT_KEY)
    values = dict(zip(objective_names, trial.values, strict=True)) if trial.values else None
    return TrialView(
        number=trial.number,
        state=trial.state.name,
        baseline=bool(attrs.get("baseline", False)),
        recipe=attrs.get("recipe", {"steps": []}),
        recipe_hash=attrs.get("recipe_hash"),
        summary=attrs.get("summary", ""),
        params=dict(trial.params),
        values=values,
        metrics=attrs.get("metrics", {}),
        quality_drop=attrs.get("quality_drop"),
        feasible=trial.state == TrialState.COMPLETE and (excess is None or excess <= 0),
        failure_reason=_failure_reason(trial),
        duration_s=trial.duration.total_seconds() if trial.duration else None,
        start_ms=trial.datetime_start.timestamp() * 1000 if trial.datetime_start else None,
        environment=attrs.get("environment", {}),
        kernels=attrs.get("kernels", {}),
        artifact_dir=attrs.get("artifact_dir"),
    )


@dataclass
class StudyView:
    name: str
    attrs: dict[str, Any]
    objective_names: tuple[str, ...]
    trials: list[TrialView]

    @classmethod
    def load(cls, study: optuna.Study) -> StudyView:
        quality = study.user_attrs.get("quality_name", "quality")
        names = (quality, *OBJECTIVES[1:])
        return cls(study.study_name, dict(study.user_attrs), names,
                   [trial_view(t, names) for t in study.get_trials(deepcopy=False)])

    @property
    def baseline(self) -> TrialView | None:
        done = [t for t in self.trials if t.baseline and t.state == "COMPLETE"]
        return done[0] if done else None

    def pareto_numbers(self) -> list[int]:
        points = {t.number: tuple(t.values.values()) for t in self.trials if t.feasible and t.values}
        return pareto_front(points, DIRECTIONS)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out

    def front_rows(self) -> list[dict[str, Any]]:
        """The Pareto front with ratios against the baseline, one dict per point."""
        base = self.baseline
        rows = []
        for number in self.pareto_numbers():
            t = next(t for t in self.trials if t.number == number)
            q, lat, size = (t.values or {}).values()
            row: dict[str, Any] = {"trial": number, self.objective_names[0]: q, "latency_p50_ms": lat,
                                   "bytes": size, "recipe": t.summary}
            objective_metrics = t.metrics.get(self.attrs.get("objective_profile", ""), {})
            # int2/binary layers have no kernel: such a latency is an fp32 kernel's, not a low-bit one's.
            row["lowbit_simulated_layers"] = int(objective_metrics.get("lowbit_simulated_layers", 0))
            if base and base.values:
                bq, blat, bsize = base.values.values()
                row["quality_change"] = q - bq
                row["x_faster"] = blat / lat if lat else None
                row["x_smaller"] = bsize / size if size else None
            rows.append(row)
        return rows

    def to_json(self) -> dict[str, Any]:
        base = self.baseline
        quality_name = self.objective_names[0]
        return {
            "study": self.name,
            "space": {k: self.attrs.get(k) for k in ("space_name", "space_file", "space_hash")},
            "task": self.attrs.get("task"),
            "quality_name": quality_name,
            "objectives": [{"name": n, "direction": d} for n, d in zip(self.objective_names, DIRECTIONS, strict=True)],
            "objective_profile": self.attrs.get("objective_profile"),
            "constraint": {"name": CONSTRAINT_KEY, "max_quality_drop": self.attrs.get("max_quality_drop")},
            "counts": self.counts(),
            "baseline": None if base is None else {"trial": base.number, "values": base.values,
                                                   "metrics": base.metrics},
            "pareto": self.pareto_numbers(),
            "remeasured": self.attrs.get("remeasured"),  # end-of-study re-timing of the front (search/remeasure.py)
            "front": self.front_rows(),
            "trials": [{
                "number": t.number, "state": t.state, "baseline": t.baseline, "recipe": t.recipe,
                "recipe_hash": t.recipe_hash, "summary": t.summary, "params": t.params, "values": t.values,
                "metrics": t.metrics, "quality_drop": t.quality_drop, "feasible": t.feasible,
                "failure_reason": t.failure_reason, "duration_s": t.duration_s, "kernels": t.kernels,
                "artifact_dir": t.artifact_dir,
            } for t in self.trials],
        }
