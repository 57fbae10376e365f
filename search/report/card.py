"""`compsearch export`: one trial's deployable artifact plus a model card (Markdown beside it).

The card says what the model is (recipe), how it measured on every hardware profile against
the baseline (estimated or simulated figures labelled so), where it was measured
(environment), and what each layer became.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from hardware.artifact import MODEL_FILE
from search.errors import UserError
from search.report.data import LAYER_COLUMNS, fusion_line, read_fusion, read_layers
from search.report.fmt import cell, num, ratio
from search.study.figures import figure_kind
from search.study.view import StudyView, TrialView

CARD_METRICS = ("quality", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "throughput_qps", "bytes",
                "bytes_compressed", "session_init_s")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _figures(view: StudyView, trial: TrialView) -> list[str]:
    """One row per profile and metric, with the baseline's figure and the ratio where it means something."""
    lines = ["| profile | metric | this model | baseline | vs baseline |", "| --- | --- | --- | --- | --- |"]
    for profile, metrics in trial.metrics.items():
        row = view.row(trial.number, profile)
        names = [k for k in CARD_METRICS if k in metrics]
        # Estimates and confidence intervals, labelled; a zero count such as lowbit_simulated_layers says nothing.
        names += sorted(k for k in metrics if (figure_kind(k) and metrics[k]) or "_ci_" in k)
        for name in names:
            kind = figure_kind(name)
            label = f"{name} ({kind})" if kind else name
            vs = row.versus(name)
            text = "" if vs is None else f"{vs[1]:+.4f}" if vs[0] == "change" else f"{ratio(vs[1])} {vs[0]}"
            base = (row.baseline or {}).get(name)
            lines.append(f"| {profile} | {label} | {num(metrics[name], 6)} | {num(base, 6)} | {text} |")
    return lines


def _report_split(view: StudyView, trial: TrialView) -> list[str]:
    """Quality on the task's report split (data the search never chose on), beside the selection figure."""
    if not trial.report:
        return []
    rep, base = trial.report, view.baseline
    drop = view.attrs.get("max_quality_drop")
    lines = ["", "## Quality on the report split", "",
             f"Evaluated on {view.objective_profile} for the final front only; nothing was chosen on it. The "
             f"selection split is what the constraint ({view.objective_names[0]} drop <= {drop}) and the search "
             "used.", "", "| split | file | this model | baseline | drop |", "| --- | --- | --- | --- | --- |"]
    base_values = (base.values or {}) if base else {}
    sel_base = next(iter(base_values.values()), None)
    sel = next(iter((trial.values or {}).values()), None)
    lines.append(f"| selection | (mean) | {num(sel, 6)} | {num(sel_base, 6)} | {num(trial.quality_drop, 4)} |")
    base_rep = (base.report or {}) if base else {}
    lines.append(f"| report | (mean) | {num(rep.get('report_quality'), 6)} | {num(base_rep.get('report_quality'), 6)} "
                 f"| {num(rep.get('report_drop'), 4)} |")
    for f, v in (rep.get("report_per_file") or {}).items():
        lines.append(f"| report | {f} | {num(v, 6)} | {num((base_rep.get('report_per_file') or {}).get(f), 6)} "
                     f"| {num((rep.get('report_drop_per_file') or {}).get(f), 4)} |")
    if rep.get("report_breaks_constraint"):
        lines += ["", f"**Warning:** on the report split this model's drop ({num(rep.get('report_drop'), 4)}) "
                  f"exceeds the allowed {drop}: its quality does not hold on data it was not selected on."]
    return lines


def _layers(trial: TrialView) -> list[str]:
    layers = read_layers(trial)
    if not layers:
        return ["(no layers.json recorded for this trial)"]
    extra = sorted({k for info in layers.values() for k in info} - set(LAYER_COLUMNS) - {"node"})
    columns = [c for c in LAYER_COLUMNS if any(c in info for info in layers.values())] + extra
    profiles = list(trial.kernels)
    header = ["layer", *columns, *(f"kernel on {p}" for p in profiles)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for name, info in layers.items():
        cells = [name, *(cell(info.get(c)) for c in columns), *(trial.kernels[p].get(name, "-") for p in profiles)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def export_paths(out: str, study: str, number: int) -> tuple[Path, Path]:
    """Where `--out` puts the ONNX file and its card; checked before anything is written.

    `--out` names a `.onnx` file (the card goes beside it as `.md`, never over the model) or a
    directory (an existing one, or any path ending in `/`), where both get a name from the study
    and trial. Anything that is not a regular file where a file is to be written is refused."""
    from search.study_paths import study_folder

    path = Path(out)
    if out.endswith(("/", os.sep)) or path.is_dir():
        path = path / f"{study_folder(study)}-trial-{number}.onnx"
    elif path.suffix.lower() != ".onnx":
        raise UserError(f"--out must be a path ending in .onnx (the model card is written beside it as .md) or a "
                        f"directory, but got {out!r}")
    card = path.with_suffix(".md")
    for target in (path, card):
        if target.is_symlink() or (target.exists() and not target.is_file()):
            raise UserError(f"--out: {target} exists and is not a regular file; refusing to write there")
    return path, card


def export_trial(view: StudyView, number: int, out: Path) -> Path:
    trial = next((t for t in view.trials if t.number == number), None)
    if trial is None:
        raise UserError(f"study {view.name!r} has no trial {number}; trials: 0..{len(view.trials) - 1}")
    if trial.state != "COMPLETE" or not trial.artifact_dir:
        raise UserError(f"trial {number} of study {view.name!r} is {trial.state}, not COMPLETE: nothing to export")
    source = Path(trial.artifact_dir) / MODEL_FILE
    if not source.exists():
        raise UserError(f"trial {number}'s model is neither in this machine's results ({source}) nor in the MLflow "
                        "artifact store of --tracking-uri: export on the machine that ran it, or run the search with a "
                        "tracking server (README: Several machines)")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, out)
    on_front = number in view.pareto_numbers()
    drop = view.attrs.get("max_quality_drop")
    task = view.attrs.get("task") or {}
    options = ", ".join(f"{k}={v}" for k, v in (task.get("options") or {}).items())
    lines = [f"# Model card: study {view.name}, trial {number}", "",
             f"- artifact: `{out.name}` ({out.stat().st_size} bytes, sha256 {_sha256(out)})",
             f"- task: {task.get('name', '?')} ({options})",
             f"- space: {view.attrs.get('space_name')} ({view.attrs.get('space_file')}, hash "
             f"{view.attrs.get('space_hash')})",
             f"- recipe: {trial.summary or 'baseline'} (hash {trial.recipe_hash})",
             f"- feasible under the quality constraint ({view.objective_names[0]} drop <= {drop}): {trial.feasible}",
             f"- on the Pareto front of the objective profile ({view.attrs.get('objective_profile')}): {on_front}",
             "- search objectives for this trial: " + ", ".join(f"{k} {num(v, 6)}" for k, v in
                                                                 (trial.values or {}).items()),
             "", "## Figures per hardware profile", "",
             "Measured on the exported artifact by each profile's backend; figures whose names carry `est` or "
             "`sim` are estimates or simulations, labelled so.", ""]
    lines += _figures(view, trial)
    lines += _report_split(view, trial)
    lines += ["", "## Graph fusion", "", f"- {fusion_line(read_fusion(trial))}"]
    lines += ["", "## What each layer became", ""] + _layers(trial)
    lines += ["", "## Environment", ""] + [f"- {k}: {v}" for k, v in trial.environment.items()]
    lines += ["", "## Recipe (JSON)", "", "Rebuild with `search.recipe.Recipe.from_dict`:", "", "```json",
              json.dumps(trial.recipe, indent=2), "```", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    return out
