"""The report split: evaluated for the final front only, stored per trial, shown everywhere, flagged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from search.cli import main
from search.study.report_split import with_drops
from search.tasks.digits import DigitsTask

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_digits_report_split_is_held_out_and_evaluated_apart(tmp_path: Path) -> None:
    task = DigitsTask({"hidden": 16, "epochs": 3}, tmp_path)
    splits = task._splits
    rows = {name: {a.tobytes() for a in x} for name, (x, _) in splits.items()}
    assert len(splits["report"][0]) == 300 and len(splits["test"][0]) == 400
    assert not rows["report"] & rows["train"] and not rows["report"] & rows["calibration"]
    model = task.build_model()

    def predict(feeds):
        import torch

        with torch.no_grad():
            return model(torch.from_numpy(feeds["x"])).numpy()

    report = task.evaluate_report(predict)
    x, y = splits["report"]
    assert report.quality == pytest.approx(float((predict({"x": x}).argmax(1) == y).mean()))
    assert report.per_file == {}

    def constant(feeds):  # always class 0: accuracy = share of zeros in the split
        return np.tile(np.eye(10, dtype=np.float32)[0], (len(feeds["x"]), 1))

    assert task.evaluate_report(constant).quality == pytest.approx(float((y == 0).mean()))


def test_drops_per_file_and_the_flag() -> None:
    entries = {"0": {"report_quality": 80.0, "report_per_file": {"a": 70.0, "b": 90.0}},
               "3": {"report_quality": 79.8, "report_per_file": {"a": 69.9, "b": 89.7}},
               "5": {"report_quality": 78.0, "report_per_file": {"a": 66.0, "b": 90.0}}}
    out = with_drops(entries, "0", 1.0)
    assert out["0"]["report_drop"] == 0.0 and out["0"]["report_breaks_constraint"] is False
    assert out["3"]["report_drop"] == pytest.approx(0.2)
    assert out["3"]["report_drop_per_file"] == pytest.approx({"a": 0.1, "b": 0.3})
    assert out["3"]["report_breaks_constraint"] is False
    assert out["5"]["report_drop"] == pytest.approx(2.0) and out["5"]["report_breaks_constraint"] is True
    assert "report_drop" not in with_drops(entries, None, 1.0)["3"]  # no baseline: no drop to compare


def test_only_tasks_with_a_report_split_start_a_process_for_it() -> None:
    from search.study.report_split import may_have_report_split

    assert may_have_report_split("digits", "x.yaml") and may_have_report_split("minilm-sts", "x.yaml")
    assert may_have_report_split("report_task.py:make_task", str(FIXTURES / "s.yaml"))
    assert not may_have_report_split("user_task.py:make_task", str(FIXTURES / "s.yaml"))


SPACE = {
    "name": "splits",
    "task": {"name": "report_task.py:make_task"},
    "hardware": {"profiles": ["ort-cpu"]},
    "constraints": {"max_quality_drop": 0.05},
    "budget": {"trials": 2},
    "techniques": {"prune": {"structure": "structured", "ratio": 0.5}},
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("splits")
    shutil.copy(FIXTURES / "report_task.py", root / "report_task.py")
    (root / "splits.yaml").write_text(yaml.safe_dump(SPACE))
    results = root / "results"
    assert main(["run", str(root / "splits.yaml"), "--results-dir", str(results), "--seed", "0", "--quiet",
                 "--no-remeasure"]) == 0
    return results


@pytest.mark.slow
def test_a_point_that_breaks_on_the_report_split_is_flagged_everywhere(finished: Path, capsys) -> None:
    results = finished
    capsys.readouterr()
    assert main(["show", "splits", "--json", "--results-dir", str(results)]) == 0
    shown = json.loads(capsys.readouterr().out)
    pruned = next(r for r in shown["front"] if r["trial"] == 1)
    # Half the hidden neurons go: the selection split keeps every answer, the report split loses its signal.
    assert pruned["quality_change"] == pytest.approx(0.0)
    assert pruned["report_quality"] < 0.75 and pruned["report_drop"] > 0.25
    assert pruned["report_breaks_constraint"] is True
    base = next(t for t in shown["trials"] if t["baseline"])
    assert base["report"]["report_quality"] == pytest.approx(1.0)
    assert shown["report_split"]["baseline"] == str(base["number"])

    assert main(["show", "splits", "--results-dir", str(results)]) == 0
    text = capsys.readouterr().out
    assert "report change" in text and " !" in text

    assert main(["report", "splits", "--results-dir", str(results), "--out", str(results / "rep")]) == 0
    markdown = next((results / "rep").glob("*.md")).read_text()
    assert "Selection split vs report split" in markdown and "**BREAKS**" in markdown
    html = next((results / "rep").glob("*.html")).read_text()
    assert "breaks the constraint on the report split" in html

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("splits").experiment_id])
    child = next(r for r in runs if r.data.tags.get("compsearch.trial") == "1")
    assert child.data.metrics["report_drop"] == pytest.approx(pruned["report_drop"])
    assert child.data.tags["report_breaks_constraint"] == "true"

    assert main(["export", "splits", "--trial", "1", "--out", str(results / "m.onnx"),
                 "--results-dir", str(results)]) == 0
    card = (results / "m.md").read_text()
    assert "## Quality on the report split" in card and "**Warning:**" in card
