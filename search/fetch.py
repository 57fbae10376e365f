"""A trial's files from the MLflow artifact store, when this machine's results do not hold them.

On several machines each trial's `model.onnx` and `layers.json` are written on the node that
ran it. The search also logs them to the trial's MLflow child run (a tracking server with
`--serve-artifacts`, or any shared store), so `export` and `report` on another node fetch them
from there into `RESULTS_DIR/cache/artifacts/STUDY/trial-N/`. A single machine never gets here:
its local copies are found first.
"""

from __future__ import annotations

from pathlib import Path

from search.errors import UserError
from search.study.tracking import PARENT_ATTR
from search.study.view import StudyView, TrialView
from search.study_paths import inside, study_folder


def _has(trial: TrialView, names: tuple[str, ...]) -> bool:
    return bool(trial.artifact_dir) and all((Path(trial.artifact_dir) / n).exists() for n in names)


def _usable(tracking_uri: str) -> bool:
    """A default SQLite store that does not exist is not opened (that would create it)."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        return path.is_file() and path.stat().st_size > 0
    return True


def localize(view: StudyView, numbers: list[int], tracking_uri: str, results_dir: Path,
             names: tuple[str, ...]) -> list[int]:
    """Point each listed trial lacking `names` locally at a copy fetched from its MLflow run.

    Returns the trials that still lack them. Fetching is best effort for reports (a missing
    layer table is not fatal); `export` checks the result itself."""
    missing = [t for t in view.trials if t.number in numbers and t.state == "COMPLETE" and not _has(t, names)]
    parent = view.attrs.get(PARENT_ATTR)
    if not missing or not parent or not _usable(tracking_uri):
        return [t.number for t in missing]
    from mlflow.tracking import MlflowClient

    from search.study.tracking import _quiet_mlflow

    _quiet_mlflow()
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        experiment = client.get_run(parent).info.experiment_id
        runs = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent}'",
                                  max_results=50000)
    except Exception as exc:  # noqa: BLE001 - unreachable, or the run is gone: say so below
        raise UserError(f"--tracking-uri {tracking_uri}: cannot read the study's MLflow runs "
                        f"({type(exc).__name__}: {str(exc).strip()[:200]})") from None
    by_number = {r.data.tags.get("compsearch.trial"): r.info.run_id for r in runs}
    still = []
    for trial in missing:
        run_id = by_number.get(str(trial.number))
        dest = inside(results_dir, results_dir / "cache" / "artifacts" / study_folder(view.name)
                      / f"trial-{trial.number}")
        if run_id is not None:
            dest.mkdir(parents=True, exist_ok=True)
            for name in names:
                if not (dest / name).exists():
                    try:
                        client.download_artifacts(run_id, name, str(dest))
                    except Exception:  # noqa: BLE001 - not logged for this run (a local store keeps none)
                        break
        if all((dest / n).exists() for n in names):
            trial.artifact_dir = str(dest)
        else:
            still.append(trial.number)
    return still
