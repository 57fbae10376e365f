"""`compsearch run` end to end on real Optuna and MLflow SQLite stores."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from search.cli import main

SPACE = {
    "name": "e2e",
    "task": {"name": "digits", "options": {"hidden": 32, "epochs": 8}},
    "hardware": {"profiles": ["ort-cpu"]},
    "constraints": {"max_quality_drop": 0.05},
    "budget": {"trials": 4},
    "techniques": {
        "prune": {"structure": "structured", "ratio": {"low": 0.0, "high": 0.6, "step": 0.1}},
        "quantize": {"bits": ["fp32", "int8"]},
    },
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("e2e")
    space = root / "e2e.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    results = root / "results"
    assert main(["run", str(space), "--results-dir", str(results), "--seed", "0", "--quiet"]) == 0
    return space, results


def show_json(results: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert main(["show", "e2e", "--json", "--results-dir", str(results)]) == 0
    return json.loads(capsys.readouterr().out)


def mlflow_children(results: Path) -> dict[int, object]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("compsearch.role") == "study"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return {int(r.data.tags["compsearch.trial"]): r for r in children}


@pytest.mark.slow
def test_run_writes_trials_and_matching_mlflow_children(finished, capsys) -> None:
    _, results = finished
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{results / 'optuna.db'}")
    trials = study.get_trials()
    assert len(trials) == 4
    assert trials[0].user_attrs["baseline"] is True
    # PRUNED: rejected early, its proxy clearly missing the constraint (tests/search/test_rejection.py)
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    assert all("quality_drop" in t.constraints for t in trials)  # set on every trial

    children = mlflow_children(results)
    assert sorted(children) == [t.number for t in trials]
    for t in trials:
        run = children[t.number]
        if t.state == optuna.trial.TrialState.PRUNED:
            assert run.info.status == "KILLED" and run.data.tags["rejected"] == "true"
            # by its own proxy (search/rejection.py), or, without being built, as at least as hard as an
            # earlier trial whose student alone missed (search/hopeless.py): which one depends on the CPU's
            # arithmetic, since the proxies land close to the limit
            reason = run.data.tags["failure_reason"]
            assert reason.startswith(("rejected early: proxy drop", "rejected before training: ")), reason
            continue
        assert run.info.status == "FINISHED"
        assert run.data.metrics["accuracy"] == pytest.approx(t.values[0])
        assert run.data.metrics["ort-cpu.latency_p50_ms"] == pytest.approx(t.values[1])

    shown = show_json(results, capsys)
    assert [t["number"] for t in shown["trials"]] == [0, 1, 2, 3]
    assert shown["baseline"]["trial"] == 0
    assert shown["pareto"] and set(shown["pareto"]) <= {0, 1, 2, 3}
    for number in shown["pareto"]:
        assert children[number].data.tags["pareto"] == "true"
    for t in shown["trials"]:
        assert set(t) >= {"number", "state", "recipe", "values", "metrics", "failure_reason", "feasible"}
        if t["state"] == "COMPLETE":
            assert t["values"]["bytes"] == t["metrics"]["ort-cpu"]["bytes"]
    front = {row["trial"]: row for row in shown["front"]}
    base = shown["baseline"]["values"]
    for row in front.values():
        assert row["x_smaller"] == pytest.approx(base["bytes"] / row["bytes"])


@pytest.mark.slow
def test_rerun_resumes_without_a_second_baseline(finished, capsys) -> None:
    space, results = finished
    assert main(["run", str(space), "--results-dir", str(results), "--trials", "5", "--quiet", "--no-remeasure"]) == 0
    shown = show_json(results, capsys)
    assert [t["number"] for t in shown["trials"]] == [0, 1, 2, 3, 4]
    assert sum(t["baseline"] for t in shown["trials"]) == 1
    assert sorted(mlflow_children(results)) == [0, 1, 2, 3, 4]
    # The budget is for the whole study: asking again for 5 runs nothing.
    assert main(["run", str(space), "--results-dir", str(results), "--trials", "5", "--quiet", "--no-remeasure"]) == 0
    assert len(show_json(results, capsys)["trials"]) == 5


@pytest.mark.slow
def test_the_baseline_times_int8_beside_itself_and_the_int8_anchor_runs_where_that_puts_it(finished, capsys) -> None:
    """search/standard_probe.py: the int8 anchor's recipe timed beside the baseline, recorded on the baseline;
    the anchor runs first of the anchors where it timed faster, after the other anchors where it did not."""
    _, results = finished
    shown = show_json(results, capsys)
    probe = shown["baseline"]["standard_probe"]
    int8 = next(t for t in shown["trials"] if (t["anchor"] or "").startswith("quantize"))
    assert probe["recipe"] == int8["summary"] and probe["profile"] == "ort-cpu"
    assert probe["latency_ms"] > 0 and probe["baseline_latency_ms"] > 0
    assert probe["ratio"] == pytest.approx(probe["latency_ms"] / probe["baseline_latency_ms"])
    others = [t for t in shown["trials"] if t["anchor"] and t["number"] != int8["number"]]
    assert others  # the prune anchor
    assert all(int8["start_ms"] < t["start_ms"] for t in others) == (probe["ratio"] < 1.0)
    assert not any(p.name == "standard-probe" for p in results.rglob("*"))  # its graph is not kept


@pytest.mark.slow
def test_failed_trial_is_recorded_and_the_study_goes_on(tmp_path: Path, capsys) -> None:
    # A user task (tests/faults) whose quality evaluation raises on the 2nd evaluation.
    faulty = str(Path(__file__).parent / "faults" / "faulty_task.py") + ":FaultyDigits"
    (tmp_path / "faults").mkdir()
    space = tmp_path / "e2e.yaml"
    data = {**SPACE, "task": {"name": faulty, "options": {"hidden": 32, "epochs": 8, "fault_plan": "ok,raise",
                                                           "fault_dir": str(tmp_path / "faults")}},
            # No early rejection: the third trial (prune's anchor) must complete on any CPU, where a
            # short training run sometimes loses more than the main space's 0.05.
            "constraints": {"max_quality_drop": 1.0}}
    space.write_text(yaml.safe_dump(data))
    args = ["run", str(space), "--results-dir", str(tmp_path / "r"), "--trials", "3", "--quiet", "--no-remeasure"]
    assert main(args) == 0
    shown = show_json(tmp_path / "r", capsys)
    # The second trial to run failed: which anchor that is depends on whether int8 measured slower here
    # (search/standard_probe.py puts the int8 anchor last where it did).
    ran = sorted(shown["trials"], key=lambda t: t["start_ms"])
    assert [t["state"] for t in ran] == ["COMPLETE", "FAIL", "COMPLETE"]
    failed = ran[1]["number"]
    assert ran[1]["failure_reason"] == "RuntimeError: evaluation exploded on purpose"
    children = mlflow_children(tmp_path / "r")
    assert children[failed].info.status == "FAILED"
    assert children[failed].data.tags["failure_reason"] == "RuntimeError: evaluation exploded on purpose"
