"""MLflow: one parent run per study, one nested child run per Optuna trial.

Uses MlflowClient directly (the optuna-integration callback is deprecated) so that runs
nest by parent id across processes, and logs each trial in one batch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from search.study_view import TrialView

_PARENT_ATTR = "mlflow_parent_run_id"


def _quiet_mlflow() -> None:
    for name in ("mlflow", "alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Tracker:
    """Logs a study and its trials to an MLflow tracking store."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path):
        from mlflow.tracking import MlflowClient

        _quiet_mlflow()  # after the import: mlflow sets its own levels when imported

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            artifact_root.mkdir(parents=True, exist_ok=True)
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=artifact_root.resolve().as_uri())
        else:
            self.experiment_id = exp.experiment_id
        self.parent_id: str | None = None

    def open_parent(self, study: Any, params: dict[str, str], space: dict[str, Any]) -> str:
        """Create the study's parent run, or reopen the one a previous run created."""
        existing = study.user_attrs.get(_PARENT_ATTR)
        if existing:
            self.parent_id = existing
            self.client.update_run(existing, status="RUNNING")
            return existing
        run = self.client.create_run(self.experiment_id, run_name=study.study_name,
                                     tags={"compsearch.study": study.study_name, "compsearch.role": "study"})
        self.parent_id = run.info.run_id
        study.set_user_attr(_PARENT_ATTR, self.parent_id)
        from mlflow.entities import Param

        self.client.log_batch(self.parent_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        self.client.log_dict(self.parent_id, space, "space.json")
        return self.parent_id

    def logged_trials(self) -> dict[int, str]:
        """Trial number -> child run id, for children already logged under the parent."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{self.parent_id}'",
            max_results=50000)
        return {int(r.data.tags["compsearch.trial"]): r.info.run_id for r in runs
                if "compsearch.trial" in r.data.tags}

    def log_trial(self, view: TrialView, artifact_dir: Path | None) -> str:
        from mlflow.entities import Metric, Param, RunTag

        tags = {
            "mlflow.parentRunId": self.parent_id,
            "compsearch.trial": str(view.number),
            "state": view.state,
            "baseline": str(view.baseline).lower(),
            "feasible": str(view.feasible).lower(),
            "recipe_hash": view.recipe_hash or "",
            "pareto": "false",
        }
        if view.failure_reason:
            tags["failure_reason"] = view.failure_reason[:5000]
        for k, v in view.environment.items():
            tags[f"env.{k}"] = str(v)
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{view.number}",
                                     tags={k: v for k, v in tags.items() if v is not None})
        params = {"recipe": view.summary, **view.flat_params()}
        metrics = view.flat_metrics()
        ts = int(view.start_ms or 0)
        self.client.log_batch(
            run.info.run_id,
            params=[Param(k[:250], str(v)[:6000]) for k, v in params.items()],
            metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()],
            tags=[RunTag("recipe_json", json.dumps(view.recipe)[:5000])],
        )
        if artifact_dir is not None and (artifact_dir / "layers.json").exists():
            self.client.log_artifact(run.info.run_id, str(artifact_dir / "layers.json"))
        self.client.set_terminated(run.info.run_id, status="FINISHED" if view.state == "COMPLETE" else "FAILED")
        return run.info.run_id

    def log_front(self, front_rows: list[dict[str, Any]], pareto_numbers: set[int],
                  children: dict[int, str], baseline: dict[str, float] | None) -> None:
        from mlflow.entities import Metric

        for number, run_id in children.items():
            self.client.set_tag(run_id, "pareto", str(number in pareto_numbers).lower())
        columns = sorted({k for row in front_rows for k in row}, key=lambda k: (k != "trial", k))
        table = {c: [row.get(c) for row in front_rows] for c in columns}
        self.client.log_table(self.parent_id, data=table, artifact_file="pareto_front.json")
        if baseline:
            self.client.log_batch(self.parent_id, metrics=[Metric(f"baseline.{k}", float(v), 0, 0)
                                                           for k, v in baseline.items()])

    def close_parent(self, status: str = "FINISHED") -> None:
        if self.parent_id:
            self.client.set_terminated(self.parent_id, status=status)
