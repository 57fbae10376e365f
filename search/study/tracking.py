"""MLflow: one experiment per space, one parent run per study, one nested child run per trial.

Uses MlflowClient directly (the optuna-integration callback is deprecated) so that children
attach to the parent by id, also from other processes: the parent id lives in the study's
user attrs. Only `create_run` (which gives the child its id) runs in the search loop; the
rest of a child (one batch of params/metrics/tags, its small artifacts, termination) and
the `pareto` re-tags go to one background writer thread, in order, overlapping the next
trial (which runs in its own process). `flush()` waits for it. The time the loop blocks and
the time the writer works are both measured and logged on the parent (`tracking.*`).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from hardware.artifact import GRAPH_FILE, LAYERS_FILE, MODEL_FILE
from search.mlflow_names import safe_key
from search.study.view import StudyView, TrialView

PARENT_ATTR = "mlflow_parent_run_id"
_PARENT_ATTR = PARENT_ATTR  # the old private name, kept for callers that imported it
PARAM_MAX = 6000  # MLflow 3.x param value limit
TAG_MAX = 5000

F = TypeVar("F", bound=Callable[..., Any])


def _quiet_mlflow() -> None:
    for name in ("mlflow", "alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _timed(method: F) -> F:
    """Add the wall time of a Tracker call to `self.spent_s` (and to the per-trial share when asked)."""

    @functools.wraps(method)
    def wrapper(self: Tracker, *args: Any, **kwargs: Any) -> Any:
        if self._depth:  # called from another timed method: already counted there
            return method(self, *args, **kwargs)
        self._depth += 1
        start = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self._depth -= 1
            elapsed = time.perf_counter() - start
            self.spent_s += elapsed
            if method.__name__ in ("log_trial", "sync_pareto"):
                self.per_trial_spent_s += elapsed

    return wrapper  # type: ignore[return-value]


def layer_bits_param(recipe: dict[str, Any]) -> str:
    """The `layer_bits` param a trial logs: bit-widths in model order, `fp32/int8/int8` (full map in layers.json)."""
    for step in recipe.get("steps", []):
        if isinstance(step.get("layer_bits"), dict):
            return "/".join(str(b) for b in step["layer_bits"].values())
    return ""


class Tracker:
    """Logs a study and its trials to an MLflow tracking store."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path):
        from mlflow.tracking import MlflowClient

        _quiet_mlflow()  # after the import: mlflow sets its own levels when imported

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            if is_server(tracking_uri):  # the server's own artifact store (`--serve-artifacts`), shared by all nodes
                self.experiment_id = self.client.create_experiment(experiment)
            else:
                artifact_root.mkdir(parents=True, exist_ok=True)
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=artifact_root.resolve().as_uri())
        else:
            self.experiment_id = exp.experiment_id
        # A store that other machines read (a server, a database): every trial's model goes there too,
        # so `export` and `report` work from any node. A local SQLite store sits beside the results,
        # which already hold the models.
        self.log_models = not is_local(tracking_uri)
        self.parent_id: str | None = None
        self.space_hash = ""
        self._depth = 0  # nesting of timed calls, so that each second is counted once
        self.spent_s = 0.0  # wall time the caller spent inside Tracker calls, all of them
        self.per_trial_spent_s = 0.0  # of which: the calls made once per trial
        self.background_s = 0.0  # wall time the writer thread spent on MLflow calls
        self.trial_time_s = 0.0  # wall time of the trials this process logged
        self.trials_logged = 0
        self._pareto: dict[int, bool] = {}  # what each child's `pareto` tag says now
        self._incomplete: dict[int, str] = {}  # children a dead process created but did not finish
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-writer")
        self._pending: list[Future[None]] = []
        self._lock = threading.Lock()

    def _submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        def timed() -> None:
            start = time.perf_counter()
            try:
                fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.background_s += time.perf_counter() - start

        self._pending.append(self._writer.submit(timed))

    @_timed
    def flush(self) -> None:
        """Wait for the writer; re-raise the first MLflow error it met."""
        pending, self._pending = self._pending, []
        errors = [f.exception() for f in pending]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first

    def attach(self, study: Any) -> str | None:
        """Log under the parent run the study already has (None if it has none yet); creates nothing."""
        self.space_hash = str(study.user_attrs.get("space_hash", ""))
        self.parent_id = study.user_attrs.get(PARENT_ATTR)
        return self.parent_id

    @_timed
    def open_parent(self, study: Any, params: dict[str, Any], space: dict[str, Any]) -> str:
        """Create the study's parent run, or reopen the one a previous run (or another worker) created."""
        existing = self.attach(study)
        if existing:
            self.parent_id = existing
            self.client.update_run(existing, status="RUNNING")
            return existing
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment_id, run_name=study.study_name,
                                     tags={"compsearch.study": study.study_name, "compsearch.role": "study",
                                           "space_hash": self.space_hash})
        self.parent_id = run.info.run_id
        study.set_user_attr(PARENT_ATTR, self.parent_id)
        self.client.log_batch(self.parent_id, params=[Param(k, str(v)[:PARAM_MAX]) for k, v in params.items()])
        self.client.log_dict(self.parent_id, space, "space.json")
        return self.parent_id

    @_timed
    def logged_trials(self) -> dict[int, str]:
        """Trial number -> child run id, for children already logged under the parent (by any process)."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{self.parent_id}'",
            max_results=50000)
        out = {}
        for r in runs:
            if "compsearch.trial" not in r.data.tags:
                continue
            number = int(r.data.tags["compsearch.trial"])
            if r.info.status == "RUNNING":  # its writer died with its process: log_trial completes it
                self._incomplete[number] = r.info.run_id
                continue
            out[number] = r.info.run_id
            self._pareto[number] = r.data.tags.get("pareto") == "true"
        return out

    @_timed
    def log_trial(self, view: TrialView, artifact_dir: Path | None, pareto: bool = False) -> str:
        """One child run for a finished trial: params, metrics, tags, layers.json and recipe.json."""
        from mlflow.entities import Metric, Param, RunTag

        tags = {
            "state": view.state,
            "baseline": str(view.baseline).lower(),
            "feasible": str(view.feasible).lower(),
            "pareto": str(pareto).lower(),
            "recipe_hash": view.recipe_hash or "",
            "space_hash": self.space_hash,
        }
        if view.anchor:
            tags["anchor"] = view.anchor[:TAG_MAX]
        if view.variant_of is not None:
            tags["variant_of"] = str(view.variant_of)
        if view.longer_of is not None:
            tags["longer_of"] = str(view.longer_of)
        if view.pushed_from is not None:
            tags["pushed_from"] = str(view.pushed_from)
        if view.stepped_back_from is not None:
            tags["stepped_back_from"] = str(view.stepped_back_from)
        if view.rejected:
            tags["rejected"] = "true"
        if view.failure_reason:
            tags["failure_reason"] = view.failure_reason[:TAG_MAX]
        for k, v in view.environment.items():
            tags[f"env.{k}"] = str(v)[:TAG_MAX]
        start = int(view.start_ms) if view.start_ms else None
        run_id = self._incomplete.pop(view.number, None)
        if run_id is None:
            ids = {"mlflow.parentRunId": self.parent_id, "compsearch.trial": str(view.number)}
            run = self.client.create_run(self.experiment_id, run_name=f"trial-{view.number}", start_time=start,
                                         tags=ids)
            run_id = run.info.run_id
        params = {"recipe": view.summary, **view.flat_params()}  # the full recipe is the recipe.json artifact
        ts = int(view.start_ms or 0)
        batch = {"params": [Param(k[:250], str(v)[:PARAM_MAX]) for k, v in params.items()],
                 "metrics": [Metric(safe_key(k), float(v), ts, 0) for k, v in view.flat_metrics().items()],
                 "tags": [RunTag(k, v) for k, v in tags.items() if v is not None]}
        layers = artifact_dir / LAYERS_FILE if artifact_dir is not None else None
        model = artifact_dir / MODEL_FILE if artifact_dir is not None and self.log_models else None
        end = int(view.start_ms + view.duration_s * 1000) if view.start_ms and view.duration_s else None
        # A trial rejected early (PRUNED) was stopped on purpose: KILLED, not FAILED like a crash.
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(view.state, "FAILED")
        self._submit(self._finish_child, run_id, batch, view.recipe, layers, status, end, model)
        self._pareto[view.number] = pareto
        self.trials_logged += 1
        self.trial_time_s += view.duration_s or 0.0
        return run_id

    def _finish_child(self, run_id: str, batch: dict[str, list[Any]], recipe: dict[str, Any],
                      layers: Path | None, status: str, end: int | None, model: Path | None = None) -> None:
        """The writer's part of a child; terminating it last marks it complete (see logged_trials).

        A child is terminated even when logging it failed (FAILED then, with the error re-raised):
        a RUNNING child would otherwise stay behind forever."""
        try:
            self.client.log_batch(run_id, **batch)
            self.client.log_dict(run_id, recipe, "recipe.json")
            graph = layers.parent / GRAPH_FILE if layers is not None else None  # what fused, when fusion ran
            for path in (layers, graph, model):
                if path is not None and path.exists():
                    self.client.log_artifact(run_id, str(path))
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED", end_time=end)
            raise
        self.client.set_terminated(run_id, status=status, end_time=end)

    @_timed
    def sync_pareto(self, pareto_numbers: set[int], children: dict[int, str]) -> int:
        """Re-tag only the children whose front membership changed; returns how many were re-tagged."""
        changed = 0
        for number, run_id in children.items():
            on_front = number in pareto_numbers
            if self._pareto.get(number) != on_front:
                self._submit(self.client.set_tag, run_id, "pareto", str(on_front).lower())
                self._pareto[number] = on_front
                changed += 1
        return changed

    @_timed
    def log_front(self, view: StudyView, children: dict[int, str]) -> None:
        """Parent run at the end of a run: front table and plots, baseline, Pareto artifacts, tracking cost."""
        from mlflow.entities import Metric

        self.flush()
        children = {**children, **self.logged_trials()}  # children logged by other workers too
        pareto = set(view.pareto_numbers())
        self.sync_pareto(pareto, children)
        self.flush()
        self._log_front_table(front_table_rows(view))
        self._log_plots(view)
        by_number = {t.number: t for t in view.trials}
        for number in sorted(pareto):
            art = by_number[number].artifact_dir
            for name in (MODEL_FILE, LAYERS_FILE):
                path = Path(art) / name if art else None
                if path is not None and path.exists():
                    self.client.log_artifact(self.parent_id, str(path), f"pareto/trial-{number}")
        metrics = [Metric(f"trials.{state.lower()}", float(n), 0, 0) for state, n in view.counts().items()]
        metrics.append(Metric("front.size", float(len(pareto)), 0, 0))
        # What guiding did: anchors, student reuse, trials rejected early and the time that saved.
        metrics += [Metric(f"guide.{k}", float(v), 0, 0) for k, v in view.guide_summary().items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)]
        base = view.baseline
        if base and base.values:
            metrics += [Metric(f"baseline.{k}", float(v), 0, 0) for k, v in base.values.items()]
            metrics += [Metric(f"baseline.{p}.{k}", float(v), 0, 0)
                        for p, m in base.metrics.items() for k, v in m.items()]
        metrics += self._cost_metrics()
        if base and base.report:
            metrics += [Metric(f"baseline.{k}", float(v), 0, 0) for k, v in report_metrics(base.report).items()]
        self.client.log_batch(self.parent_id, metrics=[Metric(safe_key(m.key), m.value, m.timestamp, m.step)
                                                       for m in metrics])
        self._log_report_split(view, children)

    def _log_report_split(self, view: StudyView, children: dict[int, str]) -> None:
        """Report-split figures on each evaluated trial's child run: they exist only once the front is final."""
        from mlflow.entities import Metric, RunTag

        for t in view.trials:
            run_id = children.get(t.number)
            if not t.report or run_id is None:
                continue
            metrics = [Metric(safe_key(k), v, 0, 0) for k, v in report_metrics(t.report).items()]
            tags = [RunTag("report_breaks_constraint", str(bool(t.report.get("report_breaks_constraint"))).lower())]
            self.client.log_batch(run_id, metrics=metrics, tags=tags)

    def _log_front_table(self, rows: list[dict[str, Any]]) -> None:
        """The front in MLflow's table format (`log_table`'s "split" JSON), replaced on every run.

        `log_table` itself appends to an existing file, so a resumed study would list its front twice.
        """
        from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

        columns = list(dict.fromkeys(k for row in rows for k in row)) or ["trial"]
        table = {"columns": columns, "data": [[row.get(c) for c in columns] for row in rows]}
        self.client.log_text(self.parent_id, json.dumps(table, default=str), "pareto_front.json")
        tag = self.client.get_run(self.parent_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]")
        entries = json.loads(tag)
        entry = {"path": "pareto_front.json", "type": "table"}  # what makes the UI show it as a table
        if entry not in entries:
            self.client.set_tag(self.parent_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps([*entries, entry]))

    def _log_plots(self, view: StudyView) -> None:
        # SVG from the report's own plotter: no matplotlib import at the end of every run, and
        # MLflow's artifact viewer shows .svg files as images.
        from search.report.data import build_report
        from search.report.plots import scatter_svg

        table = view.attrs.get("sensitivity")
        if table:  # the study's per-layer sensitivity (search/sensitivity.py), for hardware teams
            from search.report.sensitivity import sensitivity_svg

            self.client.log_dict(self.parent_id, table, "sensitivity.json")
            self.client.log_text(self.parent_id, sensitivity_svg(table, f"{view.name}: per-layer sensitivity "
                                                                        "(proxy)"), "plots/sensitivity.svg")
        data = build_report(view, with_layers=False)
        prof = data.profiles.get(data.objective_profile)
        if prof is None:
            return
        for x_key, y_key, name in (("latency", "quality", "quality_vs_latency"),
                                   ("bytes", "quality", "quality_vs_size")):
            svg = scatter_svg(prof, x_key, y_key, title=f"{data.name}: {name.replace('_', ' ')}")
            self.client.log_text(self.parent_id, svg, f"plots/{name}.svg")

    def _cost_metrics(self) -> list[Any]:
        from mlflow.entities import Metric

        out = [Metric("tracking.seconds_total", self.spent_s, 0, 0),
               Metric("tracking.background_seconds_total", self.background_s, 0, 0),
               Metric("tracking.trials_logged", float(self.trials_logged), 0, 0)]
        if self.trials_logged and self.trial_time_s > 0:
            n, t = self.trials_logged, self.trial_time_s
            out += [Metric("tracking.seconds_per_trial", self.per_trial_spent_s / n, 0, 0),
                    Metric("tracking.percent_of_trial_time", 100 * self.per_trial_spent_s / t, 0, 0),
                    Metric("tracking.background_percent_of_trial_time", 100 * self.background_s / t, 0, 0)]
        return out

    def cost_summary(self) -> str:
        """One line for logs: what logging cost against the trials it logged."""
        if not self.trials_logged or self.trial_time_s <= 0:
            return f"MLflow logging: {self.spent_s:.2f} s"
        n, t = self.trials_logged, self.trial_time_s
        return (f"MLflow logging: the search loop waited {self.per_trial_spent_s / n * 1000:.0f} ms per trial "
                f"({100 * self.per_trial_spent_s / t:.1f}% of trial time); the writer thread worked "
                f"{self.background_s / n * 1000:.0f} ms per trial ({100 * self.background_s / t:.1f}%) "
                f"beside the next trial; {self.spent_s:.2f} s in Tracker calls in all")

    @_timed
    def close_parent(self, status: str = "FINISHED") -> None:
        """Finish the writer's queue, then the parent run. The Tracker is done after this."""
        try:
            self.flush()
        finally:
            self._writer.shutdown(wait=True)
            if self.parent_id:
                self.client.set_terminated(self.parent_id, status=status)


def is_server(uri: str) -> bool:
    return uri.split(":", 1)[0].lower() in ("http", "https", "databricks")


def is_local(uri: str) -> bool:
    """A store on this machine's disk: SQLite, a file store, a plain path."""
    kind = uri.split(":", 1)[0].lower()
    return kind in ("sqlite", "file") or "://" not in uri


def report_metrics(report: dict[str, Any]) -> dict[str, float]:
    """A trial's report-split record as flat metrics: report_quality, report_drop, report.<file>, report_drop.<file>."""
    out = {k: float(report[k]) for k in ("report_quality", "report_drop") if report.get(k) is not None}
    out.update({f"report.{f}": float(v) for f, v in (report.get("report_per_file") or {}).items()})
    out.update({f"report_drop.{f}": float(v) for f, v in (report.get("report_drop_per_file") or {}).items()})
    return out


def front_table_rows(view: StudyView) -> list[dict[str, Any]]:
    """The parent's front table: the rows `show --json` prints, plus each profile's headline figures."""
    quality_name = view.objective_names[0]
    rows = []
    for row in view.front():
        out = row.to_json(quality_name)
        if row.report:  # a table cell holds one value: per-file figures become columns
            for key in ("report_per_file", "report_drop_per_file"):
                out.pop(key, None)
            out.update({k: v for k, v in report_metrics(row.report).items() if "." in k})
        for profile, figures in row.per_profile.items():
            out.update({f"{profile}.{k}": v for k, v in figures.items()})
        rows.append(out)
    return rows
