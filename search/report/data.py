"""What a report shows, computed once from a StudyView (plus each trial's layers.json).

The HTML, Markdown and CSV writers only format what is here, so the three agree.
Per-profile fronts use that profile's own measured quality, p50 latency and bytes, with
feasibility taken from the study's constraint (measured on the objective profile).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hardware.artifact import GRAPH_FILE, LAYERS_FILE
from search.report.hypervolume import progress
from search.study.figures import figure_kind
from search.study.progress import rejection_line
from search.study.view import DIRECTIONS, FrontRow, StudyView, TrialView

LAYER_COLUMNS = ("kind", "shape", "params", "bits", "sparsity", "rank", "clusters")
_CI = re.compile(r"^(?P<stem>.+)_ci_low(?P<unit>_[a-z]+)?$")


@dataclass
class Point:
    trial: int
    quality: float
    latency: float | None
    bytes: float
    feasible: bool
    baseline: bool
    summary: str
    pareto: bool = False
    latency_ci: tuple[float, float] | None = None


@dataclass
class ProfileData:
    name: str
    latency_key: str
    points: list[Point]
    front: list[int]
    baseline: dict[str, float] | None
    rows: list[FrontRow]  # the front with ratios against this profile's baseline
    kinds: dict[str, str]  # metric name -> 'estimate' / 'simulated' for the figures that are not measured
    others: dict[int, FrontRow] = field(default_factory=dict)  # rows of picked trials off this front

    def point(self, trial: int) -> Point | None:
        return next((p for p in self.points if p.trial == trial), None)

    def row(self, trial: int) -> FrontRow | None:
        """The trial's row on this profile (front points, and the picks), None if it was not measured here."""
        return next((r for r in self.rows if r.trial == trial), None) or self.others.get(trial)


@dataclass
class Pick:
    title: str
    rule: str
    trial: TrialView | None
    why_none: str = ""


@dataclass
class SpreadRow:
    trial: int
    profile: str
    metric: str
    value: float
    low: float
    high: float


@dataclass
class SplitRow:
    """One front point (or the baseline) on the selection split and on the report split, side by side."""

    trial: int
    recipe: str
    baseline: bool
    selection_quality: float | None
    selection_drop: float | None  # baseline minus this: what the constraint counts
    report_quality: float | None
    report_drop: float | None
    per_file: dict[str, tuple[float, float | None]]  # file -> (report quality, its drop)
    breaks_on_report: bool  # its report drop exceeds the allowed drop


def split_rows(view: StudyView) -> list[SplitRow]:
    """The baseline and the front with their report-split figures; [] when no report split was evaluated."""
    rows = []
    base = view.baseline
    if base is not None and base.report and base.values:
        quality = next(iter(base.values.values()))
        rows.append(SplitRow(base.number, "baseline", True, quality, 0.0, base.report.get("report_quality"), 0.0,
                             {f: (v, 0.0) for f, v in (base.report.get("report_per_file") or {}).items()}, False))
    for r in view.front():
        if not r.report:
            continue
        drops = r.report.get("report_drop_per_file") or {}
        rows.append(SplitRow(r.trial, r.recipe, False, r.quality, r.quality_drop, r.report.get("report_quality"),
                             r.report_drop, {f: (v, drops.get(f)) for f, v in
                                             (r.report.get("report_per_file") or {}).items()}, r.breaks_on_report))
    return rows if any(not row.baseline for row in rows) else []


@dataclass
class ReportData:
    name: str
    task: dict[str, Any]
    space: dict[str, Any]
    quality_name: str
    objective_profile: str
    max_quality_drop: float | None
    counts: dict[str, int]
    compute_s: float
    wall_s: float
    environment: dict[str, str]
    baseline: TrialView | None
    trials: list[TrialView]
    profiles: dict[str, ProfileData]
    picks: list[Pick]
    latency_budget_ms: float | None
    layers: dict[int, dict[str, dict[str, Any]]]
    cross: list[int]
    hypervolume: list[tuple[int, float]]
    spread: list[SpreadRow]
    failed: list[tuple[int, str, str]]
    splits: list[SplitRow] = field(default_factory=list)  # selection vs report split of the front
    sensitivity: dict[str, Any] | None = None  # the per-layer table of search/sensitivity.py, when measured
    rejection: str | None = None  # trials rejected early and the time that saved (one line), when any

    def trial(self, number: int) -> TrialView:
        return next(t for t in self.trials if t.number == number)


def _profile_data(view: StudyView, profile: str) -> ProfileData:
    done = [t for t in view.trials if t.state == "COMPLETE" and profile in t.metrics]
    lat_key = view.latency_key(profile)
    points = []
    for t in done:
        m = t.metrics[profile]
        ci = None
        low, high = m.get(lat_key.replace("_ms", "_ci_low_ms")), m.get(lat_key.replace("_ms", "_ci_high_ms"))
        if low is not None and high is not None:
            ci = (low, high)
        points.append(Point(t.number, m.get("quality", float("nan")), m.get(lat_key), m.get("bytes", float("nan")),
                            t.feasible, t.baseline, t.summary, latency_ci=ci))
    front = view.pareto_numbers(profile)  # the objective profile's is the study's own: what show --json prints
    for p in points:
        p.pareto = p.trial in front
    base = view.baseline
    base_m = base.metrics.get(profile) if base else None
    # A count such as `lowbit_simulated_layers` = 0 says nothing was simulated: only non-zero figures count.
    kinds = {k: figure_kind(k) for t in done for k, v in t.metrics[profile].items() if figure_kind(k) and v}
    return ProfileData(profile, lat_key, points, front, base_m, view.front(profile), kinds)


def _picks(view: StudyView, profile: ProfileData, budget: float | None, quality_name: str) -> list[Pick]:
    feasible = [p for p in profile.points if p.feasible and p.latency is not None]
    by_trial = {t.number: t for t in view.trials}
    drop = view.attrs.get("max_quality_drop")
    within = f"{quality_name} drop <= {drop} against the baseline"
    picks = []
    fastest = min(feasible, key=lambda p: (p.latency, p.bytes), default=None)
    picks.append(Pick("Fastest within the quality constraint", f"lowest p50 latency with {within}",
                      by_trial[fastest.trial] if fastest else None, "no feasible trial"))
    smallest = min(feasible, key=lambda p: (p.bytes, p.latency), default=None)
    picks.append(Pick("Smallest within the quality constraint", f"fewest artifact bytes with {within}",
                      by_trial[smallest.trial] if smallest else None, "no feasible trial"))
    if budget is not None:
        fits = [p for p in feasible if p.latency <= budget]
        best = max(fits, key=lambda p: (p.quality, -p.latency), default=None)
        picks.append(Pick(f"Best quality within a latency budget of {budget:.4g} ms",
                          f"highest {quality_name} with p50 latency <= {budget:.4g} ms and {within}",
                          by_trial[best.trial] if best else None, "no feasible trial fits the budget"))
    return picks


def grouped_picks(picks: list[Pick]) -> list[list[Pick]]:
    """Picks that chose the same trial, together: one card says 'fastest and smallest' once."""
    groups: list[list[Pick]] = []
    for pick in picks:
        same = next((g for g in groups if pick.trial is not None and g[0].trial is not None
                     and g[0].trial.number == pick.trial.number), None)
        if same is None:
            groups.append([pick])
        else:
            same.append(pick)
    return groups


def read_layers(trial: TrialView) -> dict[str, dict[str, Any]]:
    """The trial's layers.json (what each layer became), or {} when its artifact directory is gone."""
    if not trial.artifact_dir:
        return {}
    path = Path(trial.artifact_dir) / LAYERS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def read_fusion(trial: TrialView) -> dict[str, Any]:
    """What graph fusion did to the trial's artifact (graph.json), or {} when none ran or it is gone."""
    if not trial.artifact_dir:
        return {}
    try:
        return json.loads((Path(trial.artifact_dir) / GRAPH_FILE).read_text()).get("fusion", {})
    except (OSError, ValueError, AttributeError):
        return {}


def fusion_line(fusion: dict[str, Any]) -> str:
    """One line saying what fused (op counts), which attention op and why, and what did not fuse."""
    if not fusion:
        return "no graph fusion (the task is not a transformer, or the artifact predates fusion)"
    counts = ", ".join(f"{n} {op}" for op, n in fusion.get("counts", {}).items() if n) or "nothing"
    line = f"{fusion.get('model_type')}: {counts}; attention as {fusion.get('attention_op')} " \
           f"({fusion.get('attention_reason')})"
    if fusion.get("embeddings_unfused"):
        line += f"; embeddings not fused ({fusion['embeddings_unfused']})"
    if not fusion.get("complete", True):
        line += f"; INCOMPLETE: {'; '.join(fusion.get('missing', []))}"
    return line


def _spread(profiles: dict[str, ProfileData], view: StudyView) -> list[SpreadRow]:
    """Confidence intervals recorded for front trials (`<stem>_ci_low<unit>` / `<stem>_ci_high<unit>`)."""
    rows = []
    by_trial = {t.number: t for t in view.trials}
    for prof in profiles.values():
        for number in prof.front:
            m = by_trial[number].metrics.get(prof.name, {})
            for key in sorted(m):
                match = _CI.match(key)
                if not match:
                    continue
                stem, unit = match["stem"], match["unit"] or ""
                high = m.get(f"{stem}_ci_high{unit}")
                value = m.get(f"{stem}{unit}")
                if high is not None and value is not None:
                    rows.append(SpreadRow(number, prof.name, f"{stem}{unit}", value, m[key], high))
    return rows


def build_report(view: StudyView, latency_budget_ms: float | None = None, with_layers: bool = True) -> ReportData:
    attrs = view.attrs
    objective = attrs.get("objective_profile") or ""
    names = list(attrs.get("profiles") or [])
    for t in view.trials:  # profiles a study recorded beyond those in its attrs
        names += [p for p in t.metrics if p not in names]
    if objective and objective not in names:
        names.insert(0, objective)
    profiles = {p: _profile_data(view, p) for p in names}
    base = view.baseline
    if latency_budget_ms is None and base and objective in profiles and base.metrics.get(objective):
        latency_budget_ms = base.metrics[objective].get(profiles[objective].latency_key)
    quality_name = view.objective_names[0]
    picks = _picks(view, profiles[objective], latency_budget_ms, quality_name) if objective in profiles else []
    layers: dict[int, dict[str, dict[str, Any]]] = {}
    if with_layers:
        for pick in picks:
            if pick.trial is not None and pick.trial.number not in layers:
                layers[pick.trial.number] = read_layers(pick.trial)
    cross = sorted({n for p in profiles.values() for n in p.front} | {p.trial.number for p in picks if p.trial})
    for prof in profiles.values():  # the picks' rows too, where they are not on that profile's front
        prof.others = {n: view.row(n, prof.name) for n in cross
                       if n not in prof.front and prof.name in view.trial(n).metrics}
    feasible_values = {t.number: tuple(t.values.values()) for t in view.trials if t.feasible and t.values}
    starts = [t.start_ms for t in view.trials if t.start_ms]
    ends = [t.start_ms + (t.duration_s or 0) * 1000 for t in view.trials if t.start_ms]
    finished = [t.number for t in view.trials if t.state in ("COMPLETE", "FAIL", "PRUNED")]
    env_source = base or next((t for t in view.trials if t.environment), None)
    return ReportData(
        name=view.name, task=attrs.get("task") or {}, space={k: attrs.get(k) for k in
                                                            ("space_name", "space_file", "space_hash")},
        quality_name=quality_name, objective_profile=objective, max_quality_drop=attrs.get("max_quality_drop"),
        counts=view.counts(), compute_s=sum(t.duration_s or 0 for t in view.trials),
        wall_s=(max(ends) - min(starts)) / 1000 if starts else 0.0,
        environment=dict(env_source.environment) if env_source else {}, baseline=base, trials=view.trials,
        profiles=profiles, picks=picks, latency_budget_ms=latency_budget_ms, layers=layers, cross=cross,
        hypervolume=progress(feasible_values, DIRECTIONS, finished), spread=_spread(profiles, view),
        failed=[(t.number, t.state, t.failure_reason or "no reason recorded") for t in view.trials
                if t.state not in ("COMPLETE", "RUNNING", "WAITING")],
        splits=split_rows(view), sensitivity=attrs.get("sensitivity"), rejection=rejection_line(view),
    )
