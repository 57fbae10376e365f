"""The MiniLM benchmark's table: out-of-sample drops per point and the line that compares the fastest
search point with the fastest expert baseline where neither was chosen (no model needed: points with
given figures and files of given sizes)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from search.benchmarks.minilm import Point, drop_interval, mean_drop_interval, out_of_sample, write


def _point(tmp_path: Path, name: str, method: str, quality: float, report: float, held: tuple[float, float],
           ms: float, size: int, expert: bool = False) -> Point:
    path = tmp_path / f"{name.replace(' ', '_')}.onnx"
    path.write_bytes(b"\0" * size)
    return Point(name, method, path, quality=quality, expert=expert, report=report, samples_ms=[ms] * 3,
                 report_files={"sts2016-plagiarism": report, "heldout:a": held[0], "heldout:b": held[1]})


def test_out_of_sample_drops_are_the_report_mean_and_the_held_out_mean_and_worst(tmp_path: Path) -> None:
    base = _point(tmp_path, "fp32", "fp32", 75.0, 80.0, (70.0, 60.0), 100.0, 1000)
    p = _point(tmp_path, "cut", "search", 74.8, 79.0, (71.0, 59.2), 50.0, 250)
    figures = out_of_sample(p, base)
    assert {k: figures[k] for k in ("report_drop", "heldout_drop", "heldout_worst_drop")} == {
        "report_drop": 1.0, "heldout_drop": -0.1, "heldout_worst_drop": 0.8}
    # no pairs given: no interval, not a made-up one
    assert math.isnan(figures["heldout_worst_low"]) and math.isnan(figures["heldout_low"])
    # A space without a report split: not a number, not zero.
    bare = Point("x", "search", p.path, quality=74.8)
    assert all(math.isnan(v) for v in out_of_sample(bare, base).values())


def test_table_names_the_fastest_search_and_expert_points_out_of_sample(tmp_path: Path) -> None:
    points = [_point(tmp_path, "fp32", "fp32", 75.0, 80.0, (70.0, 60.0), 100.0, 1000),
              _point(tmp_path, "expert int8", "expert", 74.9, 79.9, (69.9, 59.9), 60.0, 250, expert=True),
              _point(tmp_path, "search #2", "search", 74.6, 79.5, (70.5, 59.0), 50.0, 240),  # as fast, worse
              _point(tmp_path, "search #3", "search", 74.7, 79.5, (70.5, 59.0), 50.0, 240),
              _point(tmp_path, "search #4", "search", 73.0, 78.0, (68.0, 58.0), 30.0, 200)]  # 2.0 drop: too much
    text = write(points, tmp_path / "out", {"cpu": "test"})
    assert ("report_drop | heldout_drop | heldout_low | heldout_high | heldout_worst_drop | heldout_worst_low | "
            "heldout_worst_high") in text
    assert "- search, search #3: selection 0.3, report 0.5, held-out mean 0.25 (95% interval" in text
    assert "), worst held-out file 1.0 (" in text
    assert "- best expert, expert int8: selection 0.1, report 0.1, held-out mean 0.1 (95%" in text
    csv_header = (tmp_path / "out" / "minilm.csv").read_text().splitlines()[0]
    assert "heldout_worst_drop" in csv_header and "expert" in csv_header


def test_a_held_out_files_drop_comes_with_its_interval_over_resampled_pairs(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    gold = rng.uniform(0, 5, 400)
    teacher = gold + rng.normal(0, 1.5, 400)  # about 0.7 Spearman, like a hard STS file
    close = teacher + rng.normal(0, 0.3, 400)  # a student that moves a little
    low, high = drop_interval((teacher, gold), (close, gold), resamples=300)
    assert low < 0 < high and 0.5 < high - low < 6  # a real but small file: a few points wide
    same = drop_interval((teacher, gold), (teacher, gold), resamples=50)
    assert same == (0.0, 0.0)  # the same model scored on the same resamples never moves
    base = _point(tmp_path, "fp32", "fp32", 75.0, 80.0, (70.0, 60.0), 100.0, 1000)
    p = _point(tmp_path, "cut", "search", 74.8, 79.0, (71.0, 59.2), 50.0, 250)
    base.heldout_pairs, p.heldout_pairs = {"b": (teacher, gold)}, {"b": (close, gold)}
    figures = out_of_sample(p, base)  # the worst file is b (0.8): its interval
    assert figures["heldout_worst_low"] < figures["heldout_worst_high"]
    assert math.isnan(figures["heldout_low"])  # file a has no pairs: no interval of the mean either


def test_the_held_out_mean_comes_with_its_interval_over_both_files_resampled(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    files = []
    for _ in range(2):
        gold = rng.uniform(0, 5, 400)
        teacher = gold + rng.normal(0, 1.5, 400)
        files.append(((teacher, gold), (teacher + rng.normal(0, 0.3, 400), gold)))
    one = drop_interval(*files[0], resamples=300)
    both = mean_drop_interval(files, resamples=300)
    assert both[0] < both[1] and both[1] - both[0] < one[1] - one[0]  # two files average out some chance
    base = _point(tmp_path, "fp32", "fp32", 75.0, 80.0, (70.0, 60.0), 100.0, 1000)
    p = _point(tmp_path, "cut", "search", 74.8, 79.0, (71.0, 59.2), 50.0, 250)
    base.heldout_pairs = {"a": files[0][0], "b": files[1][0]}
    p.heldout_pairs = {"a": files[0][1], "b": files[1][1]}
    figures = out_of_sample(p, base)
    assert figures["heldout_low"] < figures["heldout_high"]
    assert figures["heldout_worst_low"] < figures["heldout_worst_high"]
