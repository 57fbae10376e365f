"""`compsearch status`: one line per study, read from the storage alone."""

from __future__ import annotations

import optuna

from search.budget import view_interrupted
from search.study.view import StudyView
from search.units import format_bytes, format_duration


def study_status(study: optuna.Study) -> str:
    view = StudyView.load(study)
    counts = view.counts()
    lost = sum(1 for t in view.trials if view_interrupted(t.state, t.failure_reason))  # not on the budget
    rejected = counts.get("PRUNED", 0)  # rejected early at their proxy (search/rejection.py): they use the budget
    done = counts.get("COMPLETE", 0) + counts.get("FAIL", 0) + rejected - lost
    running = counts.get("RUNNING", 0)
    budget = study.user_attrs.get("budget")
    parts = [f"{view.name}: {counts.get('COMPLETE', 0)} done, {counts.get('FAIL', 0) - lost} failed, "
             + (f"{rejected} rejected early, " if rejected else "") + f"{running} running"]
    if lost:
        parts[0] += f" ({lost} interrupted, not counted)"
    if budget:
        parts[0] += f" of a budget of {budget}"
    front = view.front()
    parts.append(f"front {len(front)} point(s)")
    if front:
        quality = view.objective_names[0]
        best = min(front, key=lambda r: r.latency)
        parts.append(f"fastest feasible: trial {best.trial} ({quality} {best.quality:.4f}, "
                     f"p50 {best.latency:.4f} ms, {format_bytes(best.bytes)})")
    durations = [t.duration_s for t in view.trials if t.duration_s and t.state in ("COMPLETE", "FAIL", "PRUNED")]
    if budget and durations and running:
        left = max(0, budget - done - running)
        eta = sum(durations) / len(durations) * (left / max(1, running) + 0.5)
        parts.append(f"ETA {format_duration(eta)}")
    elif budget and done >= budget:
        parts.append("finished")
    elif running == 0:
        parts.append("not running")
    return "; ".join(parts)
