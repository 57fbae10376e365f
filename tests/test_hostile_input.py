"""End to end with hostile names and paths: a study name is never a path, `export --out` never
overwrites or escapes, the report reads as plain text."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from search.cli import main
from search.study_paths import study_folder

SPACE = {
    "name": "../../space-name-victim",
    "task": {"name": "digits", "options": {"hidden": 32, "epochs": 3}},
    "hardware": {"profiles": ["ort-cpu"]},
    "constraints": {"max_quality_drop": 0.05},
    "budget": {"trials": 2},
    "techniques": {"quantize": {"bits": ["fp32", "int8"]}},
}
STUDY = "../../victim"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    (root / "victim" / "trial-0").mkdir(parents=True)
    (root / "victim" / "trial-0" / "keep.txt").write_text("the user's files")
    (root / "work").mkdir()
    space = root / "work" / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    assert main(["validate", str(space)]) == 0  # any name is a valid study name ...
    args = ["run", str(space), "--study", STUDY, "--results-dir", str(root / "work" / "results"), "--seed", "0",
            "--quiet", "--no-remeasure"]
    assert main(args) == 0
    return root


@pytest.mark.slow
def test_a_study_name_never_writes_or_removes_outside_the_results(hostile: Path) -> None:
    assert (hostile / "victim" / "trial-0" / "keep.txt").read_text() == "the user's files"
    assert sorted(p.name for p in (hostile / "victim").rglob("*")) == ["keep.txt", "trial-0"]
    folder = hostile / "work" / "results" / "studies" / study_folder(STUDY)
    assert (folder / "trial-0" / "model.onnx").exists() and (folder / "trial-1" / "model.onnx").exists()
    outside = [p for p in hostile.rglob("model.onnx") if "results" not in p.parts]
    assert outside == []


@pytest.mark.slow
def test_export_out_is_an_onnx_file_or_a_folder(hostile: Path, capsys) -> None:
    common = ["--results-dir", str(hostile / "work" / "results")]
    for bad in (str(hostile / "card.md"), "/dev/null", str(hostile / "model")):
        capsys.readouterr()
        assert main(["export", STUDY, "--trial", "1", "--out", bad, *common]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "--out" in err, err
    assert not Path("/dev/null.md").exists() and not (hostile / "card.md").exists()
    assert main(["export", STUDY, "--trial", "1", "--out", str(hostile / "out") + "/", *common]) == 0
    written = sorted(p.name for p in (hostile / "out").iterdir())
    assert written == [f"{study_folder(STUDY)}-trial-1.md", f"{study_folder(STUDY)}-trial-1.onnx"]
    assert main(["export", STUDY, "--trial", "1", "--out", str(hostile / "m.onnx"), *common]) == 0
    assert (hostile / "m.onnx").read_bytes()[:2] != b"# " and (hostile / "m.md").read_text().startswith("# Model card")
    # An existing folder without a trailing slash is a folder too.
    assert main(["export", STUDY, "--trial", "0", "--out", str(hostile / "out"), *common]) == 0
    assert (hostile / "out" / f"{study_folder(STUDY)}-trial-0.onnx").exists()


@pytest.mark.slow
def test_report_lands_in_the_safe_folder_and_reads_as_text(hostile: Path, capsys) -> None:
    results = hostile / "work" / "results"
    assert main(["report", STUDY, "--results-dir", str(results)]) == 0
    md = (results / "reports" / study_folder(STUDY) / "report.md").read_text()
    assert "&lt;" not in md and "drop <= 0.05" in md
