"""`compsearch export`: one trial's deployable artifact plus a short model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from search.errors import UserError
from search.study_view import StudyView


def export_trial(view: StudyView, number: int, out: Path) -> Path:
    trial = next((t for t in view.trials if t.number == number), None)
    if trial is None:
        raise UserError(f"study {view.name!r} has no trial {number}; trials: 0..{len(view.trials) - 1}")
    if trial.state != "COMPLETE" or not trial.artifact_dir:
        raise UserError(f"trial {number} of study {view.name!r} is {trial.state}, not COMPLETE: nothing to export")
    source = Path(trial.artifact_dir) / "model.onnx"
    if not source.exists():
        raise UserError(f"{source}: the trial's artifact is gone (was the results directory cleaned?)")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, out)
    base = view.baseline
    lines = [f"# Model card: study {view.name}, trial {number}", "",
             f"- recipe: {trial.summary or 'baseline'} (hash {trial.recipe_hash})",
             f"- feasible under the quality constraint: {trial.feasible}", ""]
    lines += ["| metric | this model | baseline |", "| --- | --- | --- |"]
    for name, value in (trial.values or {}).items():
        b = base.values.get(name) if base and base.values else None
        lines.append(f"| {name} | {value:.6g} | {'' if b is None else f'{b:.6g}'} |")
    for profile, metrics in trial.metrics.items():
        for k in ("latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "bytes_compressed"):
            if k in metrics:
                lines.append(f"| {profile}.{k} | {metrics[k]:.6g} | |")
    lines += ["", "## Environment", ""] + [f"- {k}: {v}" for k, v in trial.environment.items()]
    lines += ["", "## Recipe (JSON)", "", "```json", json.dumps(trial.recipe, indent=2), "```", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    return out
