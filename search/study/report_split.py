"""The report split: quality of the final front on data it was not chosen on.

Every decision of a study (the quality constraint, the sampler's objective, re-measurement)
uses the task's selection split. Choosing among dozens of trials on the same data that is
reported biases the reported figures upwards, so at the end of a study the baseline and each
point of the final front are evaluated once more on the task's report split
(`Task.evaluate_report`), in the trial process, with the objective profile's backend. Those
figures are never read back by anything that chooses.

Optuna refuses user attributes on finished trials, so the record is the study user
attribute `report_split` (JSON, keyed by trial number as a string), like `remeasured`:
{"profile", "max_quality_drop", "baseline": "0", "trials": {"0": {"report_quality",
"report_per_file", "report_drop", "report_drop_per_file", "report_breaks_constraint"}},
"errors": {"7": "why it could not be evaluated"}}. `StudyView` hands each trial its entry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import optuna

from search.study.view import REPORT_ATTR, StudyView
from search.trial_runner import TrialFailure

ATTR = REPORT_ATTR


class ReportEvaluator(Protocol):
    def evaluate_report(self, artifact_dir: Any) -> dict[str, Any] | None: ...


def with_drops(entries: dict[str, dict[str, Any]], baseline: str | None,
               max_drop: float | None) -> dict[str, dict[str, Any]]:
    """Each entry with its drop against the baseline's report quality (overall and per file) and
    whether that drop breaks the study's quality constraint."""
    base = entries.get(baseline) if baseline is not None else None
    out = {}
    for key, entry in entries.items():
        entry = {k: v for k, v in entry.items() if k in ("report_quality", "report_per_file")}
        if base is not None:
            drop = base["report_quality"] - entry["report_quality"]
            entry["report_drop"] = drop
            entry["report_drop_per_file"] = {f: base["report_per_file"][f] - v
                                              for f, v in entry["report_per_file"].items()
                                              if f in base["report_per_file"]}
            entry["report_breaks_constraint"] = max_drop is not None and drop > max_drop
        out[key] = entry
    return out


def may_have_report_split(task_name: str, space_file: str) -> bool:
    """False when the task's class keeps the base `evaluate_report` (no report split): then no trial
    process is started for it at the end of the study."""
    from search.tasks import TASKS
    from search.tasks.base import Task
    from search.tasks.loader import resolve_task

    return resolve_task(task_name, space_file, TASKS).evaluate_report is not Task.evaluate_report


def evaluate_report_split(study: optuna.Study, runner: ReportEvaluator, max_quality_drop: float | None,
                          say: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Evaluate the baseline and the front points not evaluated yet; store and return the record
    (None when the task has no report split or there is nothing to evaluate)."""
    view = StudyView.load(study)
    base = view.baseline
    numbers = sorted(set(view.pareto_numbers()) | ({base.number} if base is not None else set()))
    record = dict(study.user_attrs.get(ATTR) or {})
    if record.get("none"):
        return None  # asked before: this task has no report split
    entries: dict[str, dict[str, Any]] = dict(record.get("trials") or {})
    errors: dict[str, str] = dict(record.get("errors") or {})
    todo = [n for n in numbers if str(n) not in entries and view.trial(n).artifact_dir]
    if not todo:
        return record or None
    say(f"evaluating {len(todo)} trial(s) (the baseline and the front) on the task's report split")
    for number in todo:
        try:
            result = runner.evaluate_report(view.trial(number).artifact_dir)
        except TrialFailure as exc:
            errors[str(number)] = str(exc)
            say(f"  trial {number}: not evaluated on the report split ({exc})")
            continue
        if result is None:  # the task has no report split (e.g. minilm-sts without report_dir)
            study.set_user_attr(ATTR, {"none": True})
            return None
        entries[str(number)] = {"report_quality": result["quality"], "report_per_file": result["per_file"]}
        errors.pop(str(number), None)
    baseline = str(base.number) if base is not None else None
    entries = with_drops(entries, baseline, max_quality_drop)
    for number in todo:
        entry = entries.get(str(number))
        if entry is not None:
            flag = " BREAKS the quality constraint on the report split" if entry.get("report_breaks_constraint") else ""
            drop = entry.get("report_drop")
            say(f"  trial {number}: report {entry['report_quality']:.4f}"
                + (f" (drop {drop:+.4f}){flag}" if drop is not None else ""))
    record = {"profile": view.objective_profile, "max_quality_drop": max_quality_drop, "baseline": baseline,
              "trials": entries, "errors": errors}
    study.set_user_attr(ATTR, record)
    return record
