"""A plain view of an Optuna study: what `show --json`, MLflow and the terminal all read.

Everything here is computed from the storage alone, so any process (another worker, a
report on another machine) sees the same trials, front and baseline.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from statistics import mean
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.study.figures import figure_kind, find_key, ratio, versus
from search.study.pareto import pareto_front

OBJECTIVES = ("quality", "latency_p50_ms", "bytes")
DIRECTIONS = ("maximize", "minimize", "minimize")
CONSTRAINT_KEY = "quality_drop"
REPORT_ATTR = "report_split"  # the study attribute search/study/report_split.py writes
# Each profile's figures a front row carries for every profile (MLflow's front table shows them).
HEADLINE = ("quality", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "bytes", "bytes_compressed")


@dataclass(frozen=True)
class FrontRow:
    """One trial's figures on one profile, against the baseline's on the same profile.

    Built only by `StudyView.row` / `StudyView.front`; everything else formats it."""

    trial: int
    profile: str
    recipe: str  # the recipe's summary
    figures: dict[str, float]  # this trial's metrics on `profile`
    baseline: dict[str, float] | None  # the baseline's on `profile`; None without a completed baseline
    latency_key: str  # the p50 metric on `profile` (estimated profiles name theirs with `est`)
    per_profile: dict[str, dict[str, float]]  # this trial's HEADLINE figures on every profile
    # Quality on the task's report split (search/study/report_split.py): report_quality, report_per_file,
    # report_drop, report_drop_per_file, report_breaks_constraint; None when not evaluated.
    report: dict[str, Any] | None = None

    @property
    def quality_drop(self) -> float | None:
        """The drop on the selection split (baseline minus this), as the constraint counts it."""
        change = self.quality_change
        return None if change is None else -change

    @property
    def report_drop(self) -> float | None:
        return (self.report or {}).get("report_drop")

    @property
    def breaks_on_report(self) -> bool:
        """Feasible on the selection split, yet its report-split drop exceeds the allowed drop."""
        return bool((self.report or {}).get("report_breaks_constraint"))

    @property
    def quality(self) -> float | None:
        return self.figures.get("quality")

    @property
    def latency(self) -> float | None:
        return self.figures.get(self.latency_key)

    def latency_at(self, stem: str) -> float | None:
        """latency_p50 / latency_p90 / latency_p99 of this profile (estimates included)."""
        key = find_key(self.figures, stem)
        return self.figures.get(key) if key else None

    @property
    def bytes(self) -> float | None:
        return self.figures.get("bytes")

    @property
    def bytes_compressed(self) -> float | None:
        return self.figures.get("bytes_compressed")

    def versus(self, name: str) -> tuple[str, float] | None:
        """How this trial's metric `name` compares with the baseline's ('faster', 'smaller', 'change')."""
        return versus(name, self.figures.get(name), (self.baseline or {}).get(name))

    @property
    def quality_change(self) -> float | None:
        if self.baseline is None or self.quality is None or self.baseline.get("quality") is None:
            return None
        return self.quality - self.baseline["quality"]

    @property
    def x_faster(self) -> float | None:
        return ratio((self.baseline or {}).get(self.latency_key), self.latency)

    @property
    def x_smaller(self) -> float | None:
        return ratio((self.baseline or {}).get("bytes"), self.bytes)

    @property
    def x_smaller_compressed(self) -> float | None:
        return ratio((self.baseline or {}).get("bytes_compressed"), self.bytes_compressed)

    @property
    def lowbit_simulated_layers(self) -> int:
        """int2/binary layers: no kernel exists, so such a latency is an fp32 kernel's, not a low-bit one's."""
        return int(self.figures.get("lowbit_simulated_layers", 0))

    @property
    def caveats(self) -> dict[str, float]:
        """Estimated or simulated figures of this point other than its latency (which its column labels)."""
        return {k: v for k, v in self.figures.items() if figure_kind(k) and v and k != self.latency_key}

    def to_json(self, quality_name: str) -> dict[str, Any]:
        """The row as `compsearch show --json` prints it under "front" (keys stable)."""
        out: dict[str, Any] = {"trial": self.trial, quality_name: self.quality, "latency_p50_ms": self.latency,
                               "bytes": self.bytes, "recipe": self.recipe,
                               "lowbit_simulated_layers": self.lowbit_simulated_layers}
        if self.baseline is not None:
            out.update(quality_change=self.quality_change, x_faster=self.x_faster, x_smaller=self.x_smaller)
        if self.report is not None:
            out.update(self.report)
        return out

    def as_dict(self) -> dict[str, Any]:
        """The row with the report's column names (front.csv)."""
        return {"trial": self.trial, "quality": self.quality, "quality_change": self.quality_change,
                "latency_p50": self.latency_at("latency_p50"), "latency_p90": self.latency_at("latency_p90"),
                "latency_p99": self.latency_at("latency_p99"), "bytes": self.bytes,
                "bytes_compressed": self.bytes_compressed, "x_faster": self.x_faster, "x_smaller": self.x_smaller,
                "x_smaller_compressed": self.x_smaller_compressed,
                "report_quality": (self.report or {}).get("report_quality"), "report_drop": self.report_drop,
                "report_breaks_constraint": self.breaks_on_report if self.report else None, "recipe": self.recipe}


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
    student: dict[str, Any] | None = None  # key, cached (hit/miss), from: the trained student it started from
    report: dict[str, Any] | None = None  # report-split figures (search/study/report_split.py)
    anchor: str | None = None  # "<technique> <setting>": a standard recipe of the space, run first (search/guide.py)
    variant_of: int | None = None  # the trial whose cached student this one reuses with other quantization (reuse.py)
    longer_of: int | None = None  # the trial whose cut student this one trains twice as long (reuse.py)
    pushed_from: int | None = None  # the trial whose cut this one pushes harder (push.py)
    stepped_back_from: int | None = None  # the failed push whose cut this one moves halfway back (push.py)
    rejected: bool = False  # stopped early by its proxy score (failure_reason says by how much)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase of the trial
    proxy: float | None = None  # the task's cheap quality estimate (search/rejection.py)
    proxy_drop: float | None = None  # the baseline's proxy minus this one (a rejected trial's quality_drop too)
    hopeless_from: int | None = None  # rejected before training: the hopeless student it is harder than (hopeless.py)
    standard_probe: dict[str, Any] | None = None  # the baseline's: int8 timed beside it (search/standard_probe.py)

    def flat_params(self) -> dict[str, Any]:
        out = dict(self.params)
        for step in self.recipe.get("steps", []):
            for k, v in step.items():
                if k == "type":
                    continue
                if isinstance(v, dict):
                    # Per-layer values (quantize's layer_bits, share's layer_clusters): one compact param,
                    # the values in model order under the field's name; the full map is in recipe.json
                    # and layers.json.
                    out[k] = "/".join(str(x) for x in v.values())
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
        for key in ("proxy", "proxy_drop"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        # Numeric knobs as metrics too: the UI's parallel-coordinates chart cuts string labels.
        for k, v in self.params.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"knob.{k}"] = float(v)
        per_layer = [x for step in self.recipe.get("steps", []) for v in step.values() if isinstance(v, dict)
                     for x in v.values()]
        out["knob.int8_layers"] = float(sum(x == "int8" for x in per_layer))
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
        student=None if "student_key" not in attrs else {
            "key": attrs["student_key"], "cached": attrs.get("student_cached"), "from": attrs.get("student_from"),
            "seconds": attrs.get("student_seconds")},
        anchor=attrs.get("anchor"),
        variant_of=attrs.get("variant_of"),
        longer_of=attrs.get("longer_of"),
        pushed_from=attrs.get("pushed_from"),
        stepped_back_from=attrs.get("stepped_back_from"),
        rejected=bool(attrs.get("rejected", False)),
        timings=attrs.get("timings", {}),
        proxy=attrs.get("proxy"),
        proxy_drop=attrs.get("proxy_drop"),
        hopeless_from=attrs.get("hopeless_from"),
        standard_probe=attrs.get("standard_probe"),
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
        trials = [trial_view(t, names) for t in study.get_trials(deepcopy=False)]
        report = (study.user_attrs.get(REPORT_ATTR) or {}).get("trials") or {}
        for t in trials:
            t.report = report.get(str(t.number))
        return cls(study.study_name, dict(study.user_attrs), names, trials)

    @property
    def baseline(self) -> TrialView | None:
        done = [t for t in self.trials if t.baseline and t.state == "COMPLETE"]
        return done[0] if done else None

    def trial(self, number: int) -> TrialView:
        return next(t for t in self.trials if t.number == number)

    def latency_key(self, profile: str) -> str:
        """The p50 metric of `profile` (estimated profiles name theirs with `est`)."""
        done = [t for t in self.trials if t.state == "COMPLETE" and profile in t.metrics]
        return find_key(done[0].metrics[profile] if done else {}, "latency_p50") or "latency_p50_ms"

    def pareto_numbers(self, profile: str | None = None) -> list[int]:
        """The feasible trials on the Pareto front; of the study's own objectives by default, else of
        `profile`'s own quality, p50 latency and bytes (feasibility is the study's constraint)."""
        if profile is None or profile == self.objective_profile:
            points = {t.number: tuple(t.values.values()) for t in self.trials if t.feasible and t.values}
        else:
            key = self.latency_key(profile)
            points = {t.number: (m.get("quality", float("nan")), m[key], m.get("bytes", float("nan")))
                      for t in self.trials if t.feasible and (m := t.metrics.get(profile, {})).get(key) is not None}
        return pareto_front(points, DIRECTIONS)

    @property
    def objective_profile(self) -> str:
        return self.attrs.get("objective_profile") or ""

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out

    def _figures(self, trial: TrialView, profile: str) -> dict[str, float]:
        figures = dict(trial.metrics.get(profile, {}))
        if profile == self.objective_profile and trial.values:
            # What the study optimized (the same numbers as the objective profile's metrics, by construction).
            figures.update(zip(("quality", "latency_p50_ms", "bytes"), trial.values.values(), strict=True))
        return figures

    def row(self, number: int, profile: str | None = None) -> FrontRow:
        """Trial `number`'s figures on `profile` (default: the objective one) against the baseline's."""
        profile = profile or self.objective_profile
        t = self.trial(number)
        figures = self._figures(t, profile)
        base = self.baseline
        base_figures = self._figures(base, profile) if base is not None and base.values else None
        headline = {p: {k: m[k] for k in HEADLINE if k in m} for p, m in t.metrics.items()}
        # Report-split figures come from the objective profile's backend: only its row carries them.
        report = t.report if profile == self.objective_profile else None
        return FrontRow(number, profile, t.summary, figures, base_figures or None,
                        find_key(figures, "latency_p50") or "latency_p50_ms", headline, report)

    def front(self, profile: str | None = None) -> list[FrontRow]:
        """The Pareto front of `profile` (default: the study's own), one row per point, ratios against
        the baseline: the one place these are computed; show --json, the terminal, MLflow, the report
        and the model card format them."""
        return [self.row(n, profile) for n in self.pareto_numbers(profile)]

    def guide_summary(self) -> dict[str, Any]:
        """What guiding did: anchors run, student variants, follow-ups trained longer, cuts pushed, cache hits
        (search/reuse.py), trials rejected early and the time that saved (estimated from the phases
        completed trials spent after the proxy: see search/rejection.py)."""
        anchors = {t.number for t in self.trials if t.anchor}
        variants = {t.number for t in self.trials if t.variant_of is not None and t.state != "WAITING"}
        longer = {t.number for t in self.trials if t.longer_of is not None and t.state != "WAITING"}
        pushed = {t.number for t in self.trials if t.pushed_from is not None and t.state != "WAITING"}
        back = {t.number for t in self.trials if t.stepped_back_from is not None and t.state != "WAITING"}
        front = set(self.pareto_numbers())
        return {"anchors": len(anchors), "anchors_on_front": len(anchors & front),
                "student_variants": len(variants), "student_variants_on_front": len(variants & front),
                "trained_longer": len(longer), "trained_longer_on_front": len(longer & front),
                "cuts_pushed": len(pushed), "cuts_pushed_on_front": len(pushed & front),
                "cuts_stepped_back": len(back), "cuts_stepped_back_on_front": len(back & front),
                "student_cache_hits": sum(1 for t in self.trials if (t.student or {}).get("cached") == "hit"),
                "student_seconds_saved": self._student_seconds_saved(),
                "rejected_early": sum(t.rejected for t in self.trials),
                "rejected_before_training": sum(t.hopeless_from is not None for t in self.trials),
                "time_saved_s_estimated": time_saved_s(self.trials)}

    def _student_seconds_saved(self) -> float:
        """Training the cache hits skipped: per hit, what building its student took in this study (a student
        another study built counts nothing), minus the hit's own loading time."""
        built = {t.student["key"]: t.student.get("seconds") or 0.0 for t in self.trials
                 if t.student and t.student.get("cached") == "miss"}
        return round(sum(max(0.0, built[t.student["key"]] - (t.student.get("seconds") or 0.0)) for t in self.trials
                         if t.student and t.student.get("cached") == "hit" and t.student["key"] in built), 2)

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
                                                   "metrics": base.metrics, "standard_probe": base.standard_probe},
            "pareto": self.pareto_numbers(),
            "remeasured": self.attrs.get("remeasured"),  # end-of-study re-timing of the front (remeasure.py)
            # The baseline and front on the task's report split (report_split.py); None without one.
            "report_split": None if (self.attrs.get(REPORT_ATTR) or {}).get("none") else self.attrs.get(REPORT_ATTR),
            "front": [r.to_json(quality_name) for r in self.front()],
            "trials": [{
                "number": t.number, "state": t.state, "baseline": t.baseline, "recipe": t.recipe,
                "recipe_hash": t.recipe_hash, "summary": t.summary, "params": t.params, "values": t.values,
                "metrics": t.metrics, "quality_drop": t.quality_drop, "feasible": t.feasible,
                "failure_reason": t.failure_reason, "start_ms": t.start_ms, "duration_s": t.duration_s,
                "kernels": t.kernels,
                "artifact_dir": t.artifact_dir, "student": t.student, "report": t.report,
                "anchor": t.anchor, "variant_of": t.variant_of, "longer_of": t.longer_of, "pushed_from": t.pushed_from,
                "stepped_back_from": t.stepped_back_from, "rejected": t.rejected, "hopeless_from": t.hopeless_from,
                "timings": t.timings,
                "proxy": t.proxy, "proxy_drop": t.proxy_drop,
            } for t in self.trials],
            "guide": self.guide_summary(),
        }


SKIPPED_PHASES = ("evaluate", "measure")  # what a trial rejected early (search/rejection.py) does not run
BUILD_PHASES = ("student", "compress", "proxy")  # what one rejected before training (search/hopeless.py) skips too


def time_saved_s(trials: Iterable[Any]) -> float | None:
    """Estimated seconds rejection saved, net: rejected trials x the mean skipped phases of completed
    ones, plus, for each trial rejected before training, what building and scoring the hopeless trial it
    follows took; minus what scoring the proxy cost the trials it did not stop and what scoring rejected
    cut students alone cost (negative when it cost more).

    `trials`: the study view's TrialViews (number, state, baseline, rejected, hopeless_from, timings)."""
    trials = list(trials)
    rejected = sum(t.rejected for t in trials)
    spent = [sum(t.timings.get(p, 0.0) for p in SKIPPED_PHASES) for t in trials
             if t.state == "COMPLETE" and not t.baseline and all(p in t.timings for p in SKIPPED_PHASES)]
    if not rejected:
        return 0.0
    if not spent:
        return None
    timings = {t.number: t.timings for t in trials}
    built = sum(sum(timings.get(t.hopeless_from, {}).get(p, 0.0) for p in BUILD_PHASES) for t in trials
                if getattr(t, "hopeless_from", None) is not None)
    overhead = (sum(t.timings.get("proxy", 0.0) for t in trials if not t.rejected)
                + sum(t.timings.get("student_proxy", 0.0) for t in trials))
    return rejected * mean(spent) + built - overhead
