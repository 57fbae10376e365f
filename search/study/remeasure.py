"""Re-measure the Pareto candidates at the end of a study, and say which front points survive.

During the search each candidate is timed once, briefly. A front chosen on those figures
can rest on noise: a point that looked 3% faster may not be. So at the end every feasible
front point is timed again on the objective profile with a longer run (the profile's
`measure.remeasure_factor` times the minimum queries and duration, in a fresh process,
under the host lock), and the front is recomputed among them with the new latencies.
A point *survives* if no other re-measured point dominates it.

The result is stored as the study user attribute `remeasured` (JSON, keyed by trial
number as a string) so every reader of the storage sees the same thing:
{"profile", "factor", "front": [...], "trials": {"7": {"p50_ms", "ci_low_ms", "ci_high_ms",
"search_p50_ms", "ratio", "within_ci", "contended", "survives"}}}.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from hardware.artifact import Artifact
from hardware.base import Backend
from search.study.pareto import pareto_front
from search.study.view import DIRECTIONS, StudyView
from search.tasks.base import Task

ATTR = "remeasured"


def remeasure_front(study: optuna.Study, backend: Backend, task: Task,
                    say: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Time each front point again; returns (and stores) the record, or None without a front."""
    view = StudyView.load(study)
    front = sorted(view.pareto_numbers())
    done = study.user_attrs.get(ATTR)
    if not front or (done and done.get("front") == front):
        return done
    factor = backend.profile.measure.remeasure_factor
    settings = backend.profile.measure.scaled(factor)
    query = task.query_feeds(backend.profile.batch_size)
    say(f"re-measuring {len(front)} Pareto candidate(s) on {backend.profile.name} "
        f"({factor:g}x longer: >= {settings.min_queries} queries, >= {settings.min_duration_s:g} s each)")
    by_number = {t.number: t for t in view.trials}
    trials: dict[str, dict[str, Any]] = {}
    for number in front:
        t = by_number[number]
        artifact = Artifact.load(Path(t.artifact_dir or ""))
        if not artifact.path.exists():
            say(f"  trial {number}: artifact {artifact.path} is gone; not re-measured")
            continue
        timing = backend.time(artifact, query, settings)
        lat = timing.latency
        search_p50 = (t.values or {}).get("latency_p50_ms")
        trials[str(number)] = {
            "p50_ms": lat.p50_ms, "ci_low_ms": lat.ci_low_ms, "ci_high_ms": lat.ci_high_ms, "queries": lat.queries,
            "search_p50_ms": search_p50, "ratio": lat.p50_ms / search_p50 if search_p50 else None,
            "within_ci": search_p50 is not None and lat.ci_low_ms <= search_p50 <= lat.ci_high_ms,
            "contended": bool(timing.host.get("contended")),
        }
        rec = trials[str(number)]
        say(f"  trial {number}: p50 {search_p50 or float('nan'):.4f} -> {lat.p50_ms:.4f} ms "
            f"[{lat.ci_low_ms:.4f}, {lat.ci_high_ms:.4f}]{' (contended)' if rec['contended'] else ''}")
    points = {}
    for key, rec in trials.items():
        q, _, size = (by_number[int(key)].values or {}).values()
        points[int(key)] = (q, rec["p50_ms"], size)
    surviving = set(pareto_front(points, DIRECTIONS))
    for key, rec in trials.items():
        rec["survives"] = int(key) in surviving
    dropped = sorted(set(points) - surviving)
    say(f"  front after re-measurement: {len(surviving)} of {len(points)} point(s) survive"
        + (f"; dominated now: trial(s) {', '.join(map(str, dropped))}" if dropped else ""))
    record = {"profile": backend.profile.name, "factor": factor, "front": front, "trials": trials}
    study.set_user_attr(ATTR, record)
    return record
