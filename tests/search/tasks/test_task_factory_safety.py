"""`task.name: module:function` never calls arbitrary callables, and a task's names suit MLflow."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

from search.cli import main
from search.mlflow_names import key_problem, safe_key

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def space(folder: Path, task: str) -> Path:
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "task": {"name": task}, "hardware": {"profiles": ["ort-cpu"]},
                                    "techniques": {"quantize": {"bits": ["fp32", "int8"]}}}))
    return path


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("user_task.py", "hostile_tasks.py"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    (tmp_path / "exits_on_import.py").write_text("import sys\nsys.exit(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(("spec", "expected"), [
    ("sys:exit", "exit is not a task factory (it is a builtin_function_or_method"),
    ("os:abort", "abort is not a task factory (it is a builtin_function_or_method"),
    ("os:getcwd", "not a task factory"),
    ("shutil:rmtree", "rmtree is not a task factory (it takes arguments: path)"),
    ("tempfile:mkdtemp", "mkdtemp is not a task factory (its module has no search.tasks.Task class)"),
    ("json:JSONDecoder", "it is the class JSONDecoder, not a subclass of search.tasks.Task"),
    ("hostile_tasks:sys", "it is a module"),
    ("hostile_tasks:make_with_args", "it takes arguments: path"),
    ("hostile_tasks:make_exits", "make_exits() raised SystemExit"),
    ("exits_on_import:x", "cannot import module 'exits_on_import' (SystemExit"),
    ("hostile_tasks.py:BadQuality", "quality_name 'top-1 acc (%)' may only contain letters"),
    ("hostile_tasks.py:Shadowing", "quality_name 'latency_p50_ms' is one of compsearch's own metric names"),
])
def test_validate_refuses_without_calling_anything(folder: Path, spec: str, expected: str, capsys) -> None:
    path = space(folder, spec)
    results = folder / "results"
    assert main(["validate", str(path), "--results-dir", str(results)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"compsearch: error: {path}: task.name: ") and expected in err, err
    assert not results.exists()


def test_the_interpreter_survives_os_abort(folder: Path) -> None:
    import subprocess

    path = space(folder, "os:abort")
    proc = subprocess.run([sys.executable, "-m", "search", "validate", str(path)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[3], timeout=120)
    assert proc.returncode == 2 and "not a task factory" in proc.stderr, proc.stderr


@pytest.mark.parametrize("name", ["accuracy", "sts/b:1", "top 1", "a.b-c"])
def test_good_keys(name: str) -> None:
    assert key_problem(name) is None and safe_key(name) == name


@pytest.mark.parametrize("name", ["top-1 acc (%)", "a//b", "../x", "/x", "x/", "", "é\n", "a" * 300])
def test_bad_keys_are_named_and_made_acceptable(name: str) -> None:
    assert key_problem(name) is not None
    assert key_problem(safe_key(name)) is None


def test_a_child_with_odd_metric_names_is_logged_and_finished(tmp_path: Path) -> None:
    import optuna
    from mlflow.tracking import MlflowClient

    from search.study.tracking import Tracker
    from search.study.view import TrialView

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = optuna.create_study(study_name="odd", directions=["maximize", "minimize", "minimize"])
    tracker = Tracker(uri, "odd", tmp_path / "mlartifacts")
    tracker.open_parent(study, {}, {})
    view = TrialView(number=0, state="COMPLETE", baseline=True, recipe={"steps": []}, recipe_hash="h", summary="",
                     params={}, values={"accuracy": 0.9, "latency_p50_ms": 1.0, "bytes": 10.0},
                     metrics={"ort-cpu": {"top-1 acc (%)": 0.5, "sts//x": 0.1}}, quality_drop=0.0, feasible=True,
                     failure_reason=None, duration_s=1.0, start_ms=1.0)
    tracker.log_trial(view, None)
    tracker.close_parent()
    runs = MlflowClient(uri).search_runs([tracker.experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"}
    child = next(r for r in runs if "compsearch.trial" in r.data.tags)
    assert child.data.metrics["ort-cpu.top-1 acc ___"] == 0.5
