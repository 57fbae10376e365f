"""Lock files live in a private per-user folder and are never opened through a link; bench says when it waits."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import pytest

from hardware.agent import open_lock_file
from hardware.lock import lock_path, measurement_lock, user_lock_dir


@pytest.fixture
def tmpdir_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_default_locks_are_in_a_private_folder_of_the_user(tmpdir_only: Path, monkeypatch) -> None:
    monkeypatch.delenv("COMPSEARCH_MEASURE_LOCK")
    folder = tmpdir_only / f"compsearch-{os.getuid()}"
    assert lock_path() == folder / "measure.lock"
    assert folder.stat().st_mode & 0o777 == 0o700


def test_a_planted_link_or_a_shared_folder_is_refused(tmpdir_only: Path) -> None:
    elsewhere = tmpdir_only / "elsewhere"
    elsewhere.mkdir()
    (tmpdir_only / f"compsearch-{os.getuid()}").symlink_to(elsewhere)
    with pytest.raises(RuntimeError, match="not a private folder"):
        user_lock_dir()
    (tmpdir_only / f"compsearch-{os.getuid()}").unlink()
    shared = tmpdir_only / f"compsearch-{os.getuid()}"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(RuntimeError, match="not a private folder"):
        user_lock_dir()


def test_a_lock_file_is_never_opened_through_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "measure.lock").symlink_to(victim)
    with pytest.raises(OSError, match="never followed"):
        open_lock_file(str(tmp_path / "measure.lock"))
    assert victim.read_text() == "precious"
    with open_lock_file(str(tmp_path / "fresh.lock")):
        pass
    assert (tmp_path / "fresh.lock").stat().st_mode & 0o777 == 0o600


def test_bench_says_it_waits_for_the_timing_lock_and_how_long(mlp: Path, fast_profiles: Path, capsys) -> None:
    from search.cli import main

    held = threading.Event()

    def hold() -> None:
        with measurement_lock():
            held.set()
            time.sleep(2.0)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    assert main(["bench", str(mlp), "--hardware", "fast-cpu"]) == 0
    t.join()
    err = capsys.readouterr().err
    assert "waiting for the host's timing lock" in err, err
    waited = float(err.split("waited ")[1].split(" s")[0])
    assert 0.5 <= waited <= 10, err
