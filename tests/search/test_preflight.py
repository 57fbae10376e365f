"""Storage, tracking and the results directory are checked before anything is written."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search.cli import main

ROOT = Path(__file__).resolve().parents[2]
SPACE = str(ROOT / "spaces" / "digits.yaml")


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_tracking_server_stops_at_once_and_writes_nothing(tmp_path: Path, capsys) -> None:
    results = tmp_path / "results"
    started = time.monotonic()
    uri = f"http://127.0.0.1:{closed_port()}"
    assert main(["run", SPACE, "--results-dir", str(results), "--tracking-uri", uri]) == 2
    assert time.monotonic() - started < 20
    err = one_line(capsys)
    assert f"--tracking-uri {uri}: no MLflow server answered within 5 s" in err, err
    assert not results.exists()


def test_an_empty_optuna_db_is_refused_not_started_over(tmp_path: Path, capsys) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "optuna.db").touch()
    assert main(["run", SPACE, "--results-dir", str(results)]) == 2
    assert "optuna.db is empty (0 bytes)" in one_line(capsys)
    for command in (["show", "digits"], ["status"], ["report", "digits"]):
        assert main([*command, "--results-dir", str(results)]) == 2
        assert "is empty (0 bytes)" in one_line(capsys)
    assert sorted(p.name for p in results.iterdir()) == ["optuna.db"]
    assert (results / "optuna.db").stat().st_size == 0


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "mlflow.db").write_text("not a database")
    assert main(["run", SPACE, "--results-dir", str(tmp_path)]) == 2
    assert "mlflow.db is not a SQLite database" in one_line(capsys)
    assert not (tmp_path / "optuna.db").exists()


def test_results_dir_under_a_file_is_named(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("")
    assert main(["run", SPACE, "--results-dir", str(tmp_path / "file" / "results")]) == 2
    assert "--results-dir: cannot create the results directory" in one_line(capsys)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) for a read-only mount")
def test_read_only_results_dir_is_blamed_on_the_results_dir(tmp_path: Path) -> None:
    mount = tmp_path / "ro"
    mount.mkdir()
    cmd = (f"mount -t tmpfs -o ro tmpfs {mount} && exec {sys.executable} -m search run {SPACE} "
           f"--results-dir {mount}/results")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True, text=True, timeout=120, cwd=ROOT)
    if "mount" in proc.stderr and proc.returncode != 2:
        pytest.skip(f"cannot mount a read-only file system here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 2, proc.stderr
    assert "--results-dir" in proc.stderr and "not writable" in proc.stderr and "--storage" not in proc.stderr


def test_missing_postgres_database_says_create_it(capsys) -> None:
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432: {exc}")
    url = "postgresql://postgres@127.0.0.1:5432/compsearch_no_such_db"
    assert main(["run", SPACE, "--storage", url, "--tracking-uri", url]) == 2
    err = one_line(capsys)
    assert f"--storage {url}: cannot connect" in err and "create it first" in err, err
