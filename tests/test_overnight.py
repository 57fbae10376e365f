"""Overnight runs: isolation of failing trials, resume after SIGKILL, workers on PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml

from search.cli import main

FAULTY = str(Path(__file__).parent / "faults" / "faulty_task.py") + ":FaultyDigits"


def space_file(root: Path, name: str, plan: str, trials: int, **budget) -> Path:
    fault_dir = root / f"{name}-faults"
    fault_dir.mkdir(parents=True, exist_ok=True)
    data = {
        "name": name,
        "task": {"name": FAULTY, "options": {"hidden": 32, "epochs": 5, "fault_plan": plan,
                                              "fault_dir": str(fault_dir)}},
        "hardware": {"profiles": ["ort-cpu"]},
        "constraints": {"max_quality_drop": 0.5},
        "budget": {"trials": trials, **budget},
        "techniques": {"prune": {"structure": "structured", "ratio": {"low": 0.0, "high": 0.5, "step": 0.1}},
                       "quantize": {"bits": ["fp32", "int8"]}},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def show(results: Path, study: str, capsys, storage: str | None = None) -> dict:
    capsys.readouterr()
    args = ["show", study, "--json", "--results-dir", str(results)] + (["--storage", storage] if storage else [])
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


def mlflow_children(tracking_uri: str, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    return [r for r in client.search_runs([exp.experiment_id]) if "compsearch.trial" in r.data.tags]


@pytest.mark.slow
def test_each_failure_kind_is_recorded_and_the_study_finishes(tmp_path: Path, capsys) -> None:
    space = space_file(tmp_path, "faults", "ok,crash,memory,nan,timeout", trials=6,
                       trial_timeout="25s", trial_memory="1500MB")
    args = ["run", str(space), "--results-dir", str(tmp_path / "r"), "--seed", "0", "--quiet", "--no-remeasure"]
    assert main(args) == 0
    # In the order they ran (the faults follow the evaluations): which trial number runs second depends on
    # whether int8 timed slower beside the baseline here (search/standard_probe.py).
    trials = sorted(show(tmp_path / "r", "faults", capsys)["trials"], key=lambda t: t["start_ms"])
    assert [t["state"] for t in trials] == ["COMPLETE", "FAIL", "FAIL", "FAIL", "FAIL", "COMPLETE"]
    reasons = [t["failure_reason"] for t in trials[1:5]]
    assert reasons[0].startswith("crashed:") and "SIGABRT" in reasons[0], reasons[0]
    assert reasons[1].startswith("out of memory:") and "limit of 1431 MiB" in reasons[1], reasons[1]
    assert reasons[2].startswith("not a number:"), reasons[2]
    assert reasons[3].startswith("timed out:") and "25 s" in reasons[3], reasons[3]
    children = mlflow_children(f"sqlite:///{tmp_path / 'r' / 'mlflow.db'}", "faults")
    assert sorted(int(r.data.tags["compsearch.trial"]) for r in children) == list(range(6))
    assert {r.info.status for r in children} == {"FINISHED", "FAILED"}


@pytest.mark.slow
def test_sigkill_mid_trial_then_resume(tmp_path: Path, capsys) -> None:
    space = space_file(tmp_path, "killed", "ok,slow", trials=5)
    results = tmp_path / "r"
    cmd = [sys.executable, "-m", "search", "run", str(space), "--results-dir", str(results), "--seed", "0", "--quiet",
           "--no-remeasure"]
    proc = subprocess.Popen(cmd, start_new_session=True)
    storage = f"sqlite:///{results / 'optuna.db'}"
    deadline = time.monotonic() + 240
    victim = None
    evaluations = tmp_path / "killed-faults" / "evaluations"
    while victim is None and time.monotonic() < deadline:  # wait until the second trial (the slow one) runs
        time.sleep(0.5)
        # Open the storage only once the driver has evaluated twice: opening it while the driver
        # creates it would race two schema creations (SQLite: UNIQUE constraint on alembic_version).
        if not evaluations.exists() or evaluations.read_text().strip() != "2":
            continue
        try:
            study = optuna.load_study(study_name="killed", storage=storage)
        except Exception:  # noqa: BLE001 - the storage is not there yet
            continue
        # Which anchor runs second depends on whether int8 timed slower beside the baseline here.
        running = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.RUNNING and t.number > 0]
        if running:
            victim = running[0].number
    assert victim is not None, "the second trial never started"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its trial process, as a crash would
    proc.wait()

    assert main(cmd[3:]) == 0  # the same command again
    shown = show(results, "killed", capsys)
    trials = {t["number"]: t for t in shown["trials"]}
    assert trials[victim]["state"] == "FAIL"
    assert trials[victim]["failure_reason"].startswith("interrupted: its worker"), trials[victim]["failure_reason"]
    retries = [t for t in shown["trials"] if t["params"] == trials[victim]["params"] and t["number"] != victim]
    assert retries and retries[0]["state"] == "COMPLETE"  # the same recipe, retried once
    assert sum(t["baseline"] for t in shown["trials"]) == 1
    # The interrupted trial does not use the budget: `--trials 5` ends with 5 trials of its own.
    assert [t["state"] for t in shown["trials"]].count("COMPLETE") == 5
    assert len(shown["trials"]) == 6
    children = mlflow_children(f"sqlite:///{results / 'mlflow.db'}", "killed")
    assert sorted(int(r.data.tags["compsearch.trial"]) for r in children) == sorted(trials)
    assert "RUNNING" not in {r.info.status for r in children}
    killed = next(r for r in children if r.data.tags["compsearch.trial"] == str(victim))
    assert killed.info.status == "FAILED"


# --- PostgreSQL: a real server on 127.0.0.1:5432 (started before the session and before CI) ---

PG = "postgresql://postgres@127.0.0.1:5432"


@pytest.fixture
def pg_databases():
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG + "/postgres", connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432: {exc}")
    names = [f"compsearch_{uuid.uuid4().hex[:10]}_{kind}" for kind in ("optuna", "mlflow")]
    with admin.cursor() as cur:
        for name in names:
            cur.execute(f'CREATE DATABASE "{name}"')
    yield [f"{PG}/{name}" for name in names]
    with admin.cursor() as cur:
        for name in names:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.mark.slow
def test_two_workers_on_postgres_finish_exactly_the_budget(tmp_path: Path, pg_databases, capsys) -> None:
    storage, tracking = pg_databases
    space = space_file(tmp_path, "pg", "ok", trials=6)
    args = ["run", str(space), "--results-dir", str(tmp_path / "r"), "--storage", storage, "--tracking-uri", tracking,
            "--workers", "2", "--seed", "0", "--quiet", "--no-remeasure"]
    assert main(args) == 0
    shown = show(tmp_path / "r", "pg", capsys, storage)
    assert len(shown["trials"]) == 6
    states = [(t["number"], t["state"], t["failure_reason"]) for t in shown["trials"]]
    assert all(state == "COMPLETE" for _, state, _ in states), states
    assert sum(t["baseline"] for t in shown["trials"]) == 1
    study = optuna.load_study(study_name="pg", storage=storage)
    workers = {t.user_attrs["worker"] for t in study.get_trials()}
    assert len(workers) == 2, workers  # both workers ran trials
    children = mlflow_children(tracking, "pg")
    numbers = [int(r.data.tags["compsearch.trial"]) for r in children]
    assert sorted(numbers) == list(range(6))  # one child per trial, none twice


@pytest.mark.slow
def test_worker_killed_on_postgres_has_its_trial_retried(tmp_path: Path, pg_databases, capsys) -> None:
    storage, tracking = pg_databases
    space = space_file(tmp_path, "pgkill", "ok,slow", trials=5)
    base = [sys.executable, "-m", "search", "run", str(space), "--results-dir", str(tmp_path / "r"),
            "--storage", storage, "--tracking-uri", tracking, "--seed", "0", "--quiet", "--no-remeasure"]
    first = subprocess.Popen(base, start_new_session=True)
    deadline = time.monotonic() + 240
    counter = tmp_path / "pgkill-faults" / "evaluations"
    while time.monotonic() < deadline and not (counter.exists() and counter.read_text().strip() == "2"):
        time.sleep(0.5)
    assert counter.read_text().strip() == "2", "the slow trial never started"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    second = subprocess.run(base + ["--worker-index", "1"], timeout=400)  # the other worker
    assert second.returncode == 0
    shown = show(tmp_path / "r", "pgkill", capsys, storage)
    failed = [t for t in shown["trials"] if t["state"] == "FAIL"]
    assert len(failed) == 1 and failed[0]["failure_reason"].startswith("interrupted: its worker")
    retried = [t for t in shown["trials"] if t["params"] == failed[0]["params"] and t["state"] == "COMPLETE"]
    assert retried, "the killed worker's recipe was not retried"
    assert len(shown["trials"]) == 6 and sum(t["state"] == "COMPLETE" for t in shown["trials"]) == 5
