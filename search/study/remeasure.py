"""Re-measure the Pareto candidates whose order is within the noise, in proportion to the study.

During the search each candidate is timed once, briefly. A front chosen on those figures can
rest on noise: a point that looked 3% faster may not be. But only latency is noisy, and it only
decides between points where one is at least as good as the other on quality and bytes; the
pairs of such points whose latencies are within the noise are *contested* (search/study/contested.py,
which also brings in the points near the front that could join it). Those are timed again on the
objective profile with a longer run (in a fresh process, under the host lock) and the front is
recomputed with the new latencies; every other front point keeps its search figure and its reason.

Proportion: re-measurement gets a budget of a third of the search phase's wall time (so it stays
under a quarter of the study's), less what earlier runs of the same study spent. The profile's
`measure.remeasure_factor` is lowered (down to MIN_FACTOR) until the contested points fit; if
they still do not, pairs are timed most contested first while their estimated cost fits, and the
rest are recorded as skipped for time. Estimates follow what timings took so far (a busy host
retries contended ones), lowering the factor again for the points left. A point starts only if
its estimate fits what is left, so the budget is exceeded, if ever, by less than one point's cost.

The report needs nothing beyond this: it prints the search figures with their confidence intervals;
re-measurement decides which front points `survive`, which `show --json` lists.

The record is the study user attribute `remeasured` (JSON, keyed by trial number as a string):
{"profile", "factor", "front", "candidates", "pairs", "search_s", "budget_s", "spent_s",
"spent_total_s", "skipped_for_time", "joined", "trials": {"7": {"remeasured": true, "reason", "p50_ms",
"ci_low_ms", "ci_high_ms", "queries", "duration_s", "factor", "search_p50_ms", "ratio", "within_ci", "contended",
"survives"}, "9": {"remeasured": false, "reason", "search_p50_ms", "survives"}}}.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from hardware.artifact import Artifact
from hardware.base import Backend, MeasureSettings
from search.study.contested import Point, points_of, select
from search.study.pareto import dominates
from search.study.view import DIRECTIONS, StudyView, TrialView
from search.tasks.base import Task

ATTR = "remeasured"
BUDGET_SHARE = 1 / 3  # of the search phase: re-measurement then stays under 1/4 of the study's wall time
MIN_FACTOR = 2.0  # below this a re-measurement is hardly longer than the search's own timing
TIMING_KEYS = ("p50_ms", "ci_low_ms", "ci_high_ms", "queries", "duration_s", "ratio", "within_ci", "contended",
               "factor")
STARTUP_S = 1.0  # a fresh timing process: interpreter, runtime import (then corrected by what timings took)


def search_wall_s(trials: list[TrialView]) -> float:
    """Seconds during which at least one trial ran: the union of the trials' intervals, so that
    parallel workers are not counted twice and the gaps between resumed runs not at all."""
    spans = sorted((t.start_ms / 1000, t.start_ms / 1000 + t.duration_s) for t in trials
                   if t.start_ms is not None and t.duration_s is not None)
    total, end = 0.0, float("-inf")
    for a, b in spans:
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def point_cost_s(point: Point, metrics: dict[str, Any], settings: MeasureSettings, startup_s: float) -> float:
    """What timing `point` with `settings` should take: per process, start-up and session
    creation (as seen when it was searched), warm-up and the timed run."""
    per_query = point.latency / 1000
    timed = min(settings.max_duration_s, max(settings.min_duration_s, settings.min_queries * per_query))
    warm = max(settings.warmup_s, settings.warmup_queries * per_query)
    session = float(metrics.get("session_init_s") or 0.0)
    return max(1, settings.processes) * (startup_s + session + warm + timed)


def _factor_that_fits(cost: Callable[[float], float], full: float, budget_s: float) -> float:
    """The longest factor (full, then down in steps to MIN_FACTOR) at which `cost` fits the budget."""
    floor = min(full, MIN_FACTOR)
    factor = full
    while factor > floor and cost(factor) > budget_s:
        factor = max(floor, factor - 0.5)
    return factor


def remeasure_front(study: optuna.Study, backend: Backend, task: Task, say: Callable[[str], None] = print,
                    search_s: float | None = None) -> dict[str, Any] | None:
    """Time the contested candidates again within the budget; returns (and stores) the record, or
    None without a front. `search_s`: this run's search phase as the driver saw it (the trials'
    own intervals are used when longer, e.g. for a resumed study)."""
    view = StudyView.load(study)
    front = sorted(view.pareto_numbers())
    done = study.user_attrs.get(ATTR)
    if not front:
        return done
    profile = backend.profile
    points = points_of(view, profile.name)
    chosen = select(points, front)
    if done and done.get("front") == front and done.get("candidates") == chosen.candidates:
        return done
    by_number = {t.number: t for t in view.trials}
    metrics = {n: by_number[n].metrics.get(profile.name, {}) for n in points}
    search_s = max(search_s or 0.0, search_wall_s(view.trials))
    earlier_s = float((done or {}).get("spent_total_s") or 0.0)
    budget_s = max(0.0, search_s * BUDGET_SHARE - earlier_s)
    contested = chosen.contested()
    # A point re-timed by an earlier run of this study keeps that figure: the same artifact.
    reused = {int(k): {f: r[f] for f in TIMING_KEYS if f in r}
              for k, r in ((done or {}).get("trials") or {}).items() if r.get("p50_ms") is not None}
    full = profile.measure.remeasure_factor
    factor = _factor_that_fits(lambda f: sum(point_cost_s(points[n], metrics[n], profile.measure.scaled(f),
                                                          STARTUP_S) for n in contested if n not in reused),
                               full, budget_s)
    settings = profile.measure.scaled(factor)
    first_factor = factor  # the record's; each point records its own (lowered if timings run long)
    budget = (f"budget {budget_s:.0f} s = 1/3 of the {search_s:.0f} s search"
              + (f" less {earlier_s:.0f} s spent before" if earlier_s else ""))
    if contested:
        on_front = [n for n in front if n in set(contested)]
        say(f"re-measuring {len(on_front)} of {len(front)} front point(s) whose order is within the noise"
            f"{f' and {len(contested) - len(on_front)} near the front' if len(contested) > len(on_front) else ''}"
            f" ({budget}) on {profile.name}, {factor:g}x longer: >= {settings.min_queries} queries, "
            f">= {settings.min_duration_s:g} s each")
    else:
        say(f"no front point's membership is within the latency noise: none of {len(front)} re-measured")
    query = task.query_feeds(profile.batch_size) if contested else None
    timed: dict[int, dict[str, Any]] = {n: r for n, r in reused.items() if n in points}
    tried: set[int] = set(timed)
    ratios: list[float] = []  # what each timing took against its estimate (contention retries, start-up)

    def cost(n: int, f: float) -> float:
        """Estimated seconds to time point `n` at factor `f`, corrected by what timings took so far."""
        guess = point_cost_s(points[n], metrics[n], profile.measure.scaled(f), STARTUP_S)
        return guess * (sum(ratios) / len(ratios) if ratios else 1.0)

    started = time.monotonic()
    for a, b, _ in chosen.pairs:
        new = [n for n in (a, b) if n not in tried]
        left_s = budget_s - (time.monotonic() - started)
        if ratios and new:  # timings cost more (or less) than thought: re-fit the factor for what is left
            rest = [n for n in contested if n not in tried]
            lower = _factor_that_fits(lambda f, rest=rest: sum(cost(n, f) for n in rest), factor, left_s)
            if lower < factor:
                factor, settings = lower, profile.measure.scaled(lower)
                say(f"  timings take {sum(ratios) / len(ratios):.1f}x their estimate here: "
                    f"the rest {factor:g}x longer (>= {settings.min_duration_s:g} s each)")
        if sum(cost(n, factor) for n in new) > left_s:
            continue  # a later pair may share a point already timed, or cost less
        for n in new:
            tried.add(n)
            t0 = time.monotonic()
            rec = _time_point(backend, by_number[n], query, settings, factor, say)
            if rec is not None:
                timed[n] = rec
                ratios.append((time.monotonic() - t0) / point_cost_s(points[n], metrics[n], settings, STARTUP_S))
    spent_s = time.monotonic() - started
    skipped = [n for n in contested if n not in tried]
    surviving = _front_after(points, chosen.candidates, {n: r["p50_ms"] for n, r in timed.items()})
    trials: dict[str, dict[str, Any]] = {}
    for n in sorted(set(front) | set(contested)):
        if n in timed:
            why = chosen.reasons[n] if n in set(contested) else "no longer contested"
            rec = {"remeasured": True, "reason": why + ("; timed by an earlier run" if n in reused else ""),
                   **timed[n]}
        elif n in skipped:
            rec = {"remeasured": False, "reason": f"skipped for time: {chosen.reasons[n]}"}
        elif n in tried:
            rec = {"remeasured": False, "reason": "not re-measured: its artifact is gone"}
        else:
            rec = {"remeasured": False, "reason": chosen.reasons[n]}
        rec.update(search_p50_ms=points[n].latency, survives=n in surviving)
        trials[str(n)] = rec
    dropped = sorted(n for n in front if n not in surviving)
    joined = sorted(surviving - set(front))
    if skipped:
        say(f"  skipped for time: trial(s) {', '.join(map(str, skipped))} (contested, but past the budget)")
    say(f"  re-measurement took {spent_s:.0f} s of a {budget_s:.0f} s budget; front after it: "
        f"{len(front) - len(dropped)} of {len(front)} point(s) survive"
        + (f"; dominated now: trial(s) {', '.join(map(str, dropped))}" if dropped else "")
        + (f"; joined: trial(s) {', '.join(map(str, joined))}" if joined else ""))
    record = {"profile": profile.name, "factor": first_factor, "front": front, "candidates": chosen.candidates,
              "pairs": [[a, b, round(share, 4)] for a, b, share in chosen.pairs], "search_s": round(search_s, 3),
              "budget_s": round(budget_s, 3), "spent_s": round(spent_s, 3),
              "spent_total_s": round(earlier_s + spent_s, 3), "skipped_for_time": skipped, "joined": joined,
              "trials": trials}
    study.set_user_attr(ATTR, record)
    return record


def _front_after(points: dict[int, Point], candidates: list[int], retimed: dict[int, float]) -> set[int]:
    """The candidates no other dominates, two points compared on their re-timed latencies when both
    have one and on their search figures otherwise (a re-timed figure is never set against a
    search figure: the host may have drifted in between)."""
    def values(n: int, both: bool) -> tuple[float, float, float]:
        p = points[n]
        return p.quality, retimed[n] if both else p.latency, p.bytes

    def beats(m: int, n: int) -> bool:
        both = m in retimed and n in retimed
        return dominates(values(m, both), values(n, both), DIRECTIONS)

    kept = {n for n in candidates if not any(beats(m, n) for m in candidates if m != n)}
    if kept:
        return kept
    # Mixed comparisons need not be transitive: points of equal quality and bytes can beat each other in
    # a ring. Then only what the re-timed figures settle among themselves drops a point.
    return {n for n in candidates if not any(m in retimed and n in retimed and beats(m, n) for m in candidates)}


def _time_point(backend: Backend, trial: TrialView, query: Any, settings: MeasureSettings, factor: float,
                say: Callable[[str], None]) -> dict[str, Any] | None:
    """One longer timing of `trial`'s artifact; None (and a line) when the artifact is gone."""
    artifact = Artifact.load(Path(trial.artifact_dir or ""))
    if not artifact.path.exists():
        say(f"  trial {trial.number}: artifact {artifact.path} is gone; not re-measured")
        return None
    timing = backend.time(artifact, query, settings)
    lat = timing.latency
    search_p50 = (trial.values or {}).get("latency_p50_ms")
    contended = bool(timing.host.get("contended"))
    say(f"  trial {trial.number}: p50 {search_p50 or float('nan'):.4f} -> {lat.p50_ms:.4f} ms "
        f"[{lat.ci_low_ms:.4f}, {lat.ci_high_ms:.4f}]{' (contended)' if contended else ''}")
    return {"p50_ms": lat.p50_ms, "ci_low_ms": lat.ci_low_ms, "ci_high_ms": lat.ci_high_ms, "queries": lat.queries,
            "duration_s": lat.duration_s, "ratio": lat.p50_ms / search_p50 if search_p50 else None,
            "within_ci": search_p50 is not None and lat.ci_low_ms <= search_p50 <= lat.ci_high_ms,
            "contended": contended, "factor": factor}
