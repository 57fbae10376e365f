"""Small promises from issue 14: binary size labels, no run stores in the repository, runs always closed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from search.units import format_bytes

ROOT = Path(__file__).resolve().parents[2]


def test_sizes_are_labelled_in_binary_units() -> None:
    assert format_bytes(1000) == "1000 B"
    assert format_bytes(201.3 * 1024) == "201.3 KiB"
    assert format_bytes(3 * 2**20) == "3.0 MiB" and format_bytes(5 * 2**30) == "5.0 GiB"


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout")
def test_no_run_store_is_committed_and_all_are_ignored() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert not [f for f in tracked if Path(f).name in ("mlflow.db", "optuna.db") or f.startswith(("mlruns/",
                                                                                                  "mlartifacts/"))]
    for path in ("mlflow.db", "sub/optuna.db", "x/mlruns/1/meta.yaml", "mlartifacts/a"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0, path


def test_the_parent_run_is_closed_even_when_logging_failed(tmp_path: Path) -> None:
    import optuna
    from mlflow.tracking import MlflowClient

    from search.study.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = optuna.create_study(study_name="s", directions=["maximize"])
    tracker = Tracker(uri, "s", tmp_path / "mlartifacts")
    parent = tracker.open_parent(study, {}, {})

    def explode() -> None:
        raise RuntimeError("MLflow refused something")

    tracker._submit(explode)  # noqa: SLF001 - a writer job that fails, as a refused batch would
    with pytest.raises(RuntimeError):
        tracker.close_parent("FINISHED")
    assert MlflowClient(uri).get_run(parent).info.status != "RUNNING"
