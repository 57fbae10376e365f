"""MLflow: children, their `pareto` tags and the parent's front table agree with `compsearch show --json`.

Reads the real MLflow SQLite store a real 4-trial study wrote (the study is shared with
test_report.py when both run in one session), then resumes it from another process to check
that children attach to the same parent by id.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from search.cli import main
from search.study.tracking import PARENT_ATTR, Tracker, layer_bits_param

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_report import LOCK_VAR, STUDY, run_small_study  # noqa: E402


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_small_study(tmp_path_factory)


def show_json(results: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert main(["show", STUDY, "--json", "--results-dir", str(results)]) == 0
    return json.loads(capsys.readouterr().out)


def runs_of(results: Path) -> tuple[MlflowClient, object, list]:
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("digits")  # one experiment per space
    parents = client.search_runs([exp.experiment_id], f"tags.`compsearch.study` = '{STUDY}'")
    assert len(parents) == 1
    parent = parents[0]
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  max_results=1000)
    return client, parent, children


def check_agreement(results: Path, shown: dict) -> None:
    client, parent, children = runs_of(results)
    finished = [t for t in shown["trials"] if t["state"] in ("COMPLETE", "FAIL", "PRUNED")]  # PRUNED: rejected early
    by_number = {int(r.data.tags["compsearch.trial"]): r for r in children}
    assert sorted(by_number) == [t["number"] for t in finished]  # one child per trial, none twice
    for t in finished:
        run = by_number[t["number"]]
        assert run.data.tags["pareto"] == str(t["number"] in shown["pareto"]).lower()
        assert run.data.tags["feasible"] == str(t["feasible"]).lower()
        assert run.data.tags["state"] == t["state"]
        assert run.data.tags["space_hash"] == shown["space"]["space_hash"]
        assert "env.onnxruntime" in run.data.tags
        assert run.data.params["recipe"] == t["summary"]
        for profile, metrics in t["metrics"].items():
            assert run.data.metrics[f"{profile}.latency_p50_ms"] == pytest.approx(metrics["latency_p50_ms"])
        if layer_bits_param(t["recipe"]):
            assert run.data.params["layer_bits"] == layer_bits_param(t["recipe"])
            assert "knob.int8_layers" in run.data.metrics
    # The parent's front table: the same trials and figures as show --json.
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, "pareto_front.json")).read_text())
    trial_col = table["columns"].index("trial")
    assert [row[trial_col] for row in table["data"]] == shown["pareto"]
    ratio_col = table["columns"].index("x_faster")
    assert [row[ratio_col] for row in table["data"]] == pytest.approx([r["x_faster"] for r in shown["front"]])


@pytest.mark.slow
def test_children_tags_and_front_table_agree_with_show(study_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shown = show_json(study_dir, capsys)
    check_agreement(study_dir, shown)
    client, parent, _ = runs_of(study_dir)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"space.json", "pareto_front.json", "plots", "pareto"} <= artifacts
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/quality_vs_latency.svg", "plots/quality_vs_size.svg"}
    svg = Path(client.download_artifacts(parent.info.run_id, "plots/quality_vs_latency.svg")).read_text()
    assert svg.startswith("<svg") and svg.count('fill="#d9480f"') >= len(shown["pareto"]) - 1
    for number in shown["pareto"]:
        files = {a.path for a in client.list_artifacts(parent.info.run_id, f"pareto/trial-{number}")}
        assert files == {f"pareto/trial-{number}/model.onnx", f"pareto/trial-{number}/layers.json"}
    # MLflow's own table format (what log_table writes and load_table reads), tagged so the UI shows a table.
    assert {"path": "pareto_front.json", "type": "table"} in json.loads(parent.data.tags["mlflow.loggedArtifacts"])
    path = client.download_artifacts(parent.info.run_id, "pareto_front.json")
    assert list(pd.read_json(path, orient="split")["trial"]) == shown["pareto"]
    m = parent.data.metrics
    assert m["baseline.accuracy"] == shown["baseline"]["values"]["accuracy"]
    assert m["front.size"] == len(shown["pareto"])
    assert 0 < m["tracking.percent_of_trial_time"] < 100  # measured, and stated in the report to the lead


@pytest.mark.slow
def test_resume_in_another_process_attaches_to_the_same_parent(study_dir: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    _, parent_before, children_before = runs_of(study_dir)
    proc = subprocess.run([sys.executable, "-m", "search", "run", str(study_dir / "digits-2hw.yaml"), "--study",
                           STUDY, "--trials", "5", "--seed", "0", "--quiet", "--results-dir", str(study_dir)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, LOCK_VAR: str(study_dir / "measure.lock")})
    assert proc.returncode == 0, proc.stderr
    _, parent_after, children_after = runs_of(study_dir)
    assert parent_after.info.run_id == parent_before.info.run_id
    assert len(children_after) == len(children_before) + 1
    check_agreement(study_dir, show_json(study_dir, capsys))


@pytest.mark.slow
def test_sync_pareto_retags_only_changed_children(study_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import optuna

    shown = show_json(study_dir, capsys)
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{study_dir / 'optuna.db'}")
    tracker = Tracker(f"sqlite:///{study_dir / 'mlflow.db'}", "digits", study_dir / "mlartifacts")
    assert tracker.attach(study) == study.user_attrs[PARENT_ATTR]
    children = tracker.logged_trials()
    front = set(shown["pareto"])
    assert tracker.sync_pareto(front, children) == 0  # already in agreement: no calls
    moved = min(front)
    assert tracker.sync_pareto(front - {moved}, children) == 1
    tracker.flush()
    assert tracker.client.get_run(children[moved]).data.tags["pareto"] == "false"
    assert tracker.sync_pareto(front, children) == 1
    tracker.close_parent()  # flushes the writer; the parent goes back to FINISHED
    assert tracker.client.get_run(children[moved]).data.tags["pareto"] == "true"
    assert tracker.spent_s > 0 and tracker.background_s > 0


@pytest.mark.slow
def test_a_child_left_running_by_a_dead_process_is_completed_not_duplicated(
        study_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import optuna

    from search.study.view import StudyView

    shown = show_json(study_dir, capsys)
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{study_dir / 'optuna.db'}")
    tracker = Tracker(f"sqlite:///{study_dir / 'mlflow.db'}", "digits", study_dir / "mlartifacts")
    assert tracker.attach(study) == study.user_attrs[PARENT_ATTR]
    victim = shown["pareto"][-1]
    run_id = tracker.logged_trials()[victim]
    tracker.client.update_run(run_id, status="RUNNING")  # as if its writer died before terminating it
    children = tracker.logged_trials()
    assert victim not in children
    view = next(t for t in StudyView.load(study).trials if t.number == victim)
    assert tracker.log_trial(view, Path(view.artifact_dir), pareto=True) == run_id
    tracker.close_parent()
    assert tracker.client.get_run(run_id).info.status == "FINISHED"
    check_agreement(study_dir, show_json(study_dir, capsys))
