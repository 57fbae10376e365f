"""End-of-study re-measurement: only the contested Pareto candidates, within a third of the search."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import create_trial

from hardware.profiles import load_profile, make_backend
from search.study.remeasure import remeasure_front

START = datetime(2026, 1, 1, 12, 0, 0)


class Task:
    def query_feeds(self, batch_size: int) -> dict[str, np.ndarray]:
        return {"x": np.ones((batch_size, 16), np.float32)}


def study_with(tmp_path: Path, points: dict[int, tuple[float, float, float]], write_mlp,
               trial_s: float) -> optuna.Study:
    """Finished trials with these (quality, p50 ms, bytes), `trial_s` seconds each one after another,
    a 2% CI around each p50 on fast-cpu, and a real tiny ONNX artifact each."""
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for number, values in points.items():
        d = tmp_path / f"trial-{number}"
        d.mkdir()
        write_mlp(d / "model.onnx", seed=number)
        p50 = values[1]
        metrics = {"fast-cpu": {"latency_p50_ms": p50, "latency_p50_ci_low_ms": p50 * 0.98,
                                "latency_p50_ci_high_ms": p50 * 1.02}}
        start = START + timedelta(seconds=number * trial_s)
        trial = create_trial(values=list(values), user_attrs={"artifact_dir": str(d), "metrics": metrics})
        trial.datetime_start, trial.datetime_complete = start, start + timedelta(seconds=trial_s)
        study.add_trial(trial)
    return study


POINTS = {0: (0.90, 1.00, 100.0),  # fastest at its size
          1: (0.95, 1.01, 100.0),  # more accurate at the same size, 1% slower: within the noise of 0
          2: (0.80, 2.00, 50.0),  # the smallest: trades quality and bytes against everyone, uncontested
          3: (0.70, 3.00, 200.0)}  # dominated by 0 beyond the noise: not a candidate


def test_contested_pair_is_retimed_within_a_quarter_of_the_wall_time(tmp_path: Path, fast_profiles: Path,
                                                                    mlp_writer) -> None:
    study = study_with(tmp_path, POINTS, mlp_writer, trial_s=10.0)  # a 40 s search: a 13 s budget
    backend = make_backend(load_profile("fast-cpu"))
    lines: list[str] = []
    record = remeasure_front(study, backend, Task(), lines.append)
    assert record is not None and record["front"] == [0, 1, 2] and record["candidates"] == [0, 1, 2]
    assert record["search_s"] == 40.0 and abs(record["budget_s"] - 40.0 / 3) < 1e-3
    assert record["spent_s"] <= (record["search_s"] + record["spent_s"]) / 4  # of the study's wall time
    assert set(record["trials"]) == {"0", "1", "2"} and record["skipped_for_time"] == []
    for key in ("0", "1"):  # the contested pair, timed again 2x longer (the profile's remeasure_factor)
        rec = record["trials"][key]
        assert rec["remeasured"] and rec["reason"].startswith("contested:") and rec["factor"] == 2
        assert rec["queries"] >= 100 and rec["ci_low_ms"] <= rec["p50_ms"] <= rec["ci_high_ms"]
        assert isinstance(rec["survives"], bool)
    assert record["trials"]["0"]["survives"] or record["trials"]["1"]["survives"]  # one of them dominates
    rec = record["trials"]["2"]
    assert not rec["remeasured"] and rec["reason"].startswith("not re-measured:") and "p50_ms" not in rec
    assert rec["survives"] and rec["search_p50_ms"] == 2.0
    assert study.user_attrs["remeasured"] == record
    assert lines[0].startswith("re-measuring 2 of 3 front point(s) whose order is within the noise (budget 13 s")
    # The same front again: nothing is re-timed.
    assert remeasure_front(study, backend, Task(), lines.append) == record


def test_past_the_budget_contested_points_are_skipped_and_said_so(tmp_path: Path, fast_profiles: Path,
                                                                  mlp_writer) -> None:
    study = study_with(tmp_path, POINTS, mlp_writer, trial_s=0.5)  # a 2 s search: no room for a timing
    backend = make_backend(load_profile("fast-cpu"))
    lines: list[str] = []
    record = remeasure_front(study, backend, Task(), lines.append)
    assert record is not None and record["skipped_for_time"] == [0, 1] and record["spent_s"] < 0.5
    for key in ("0", "1"):
        rec = record["trials"][key]
        assert not rec["remeasured"] and rec["reason"].startswith("skipped for time: contested")
        assert rec["survives"]  # on their search figures
    assert any("skipped for time: trial(s) 0, 1" in line for line in lines)


class BusyHost:
    """The real backend on a host where every timing costs 2 s more than its settings say (as
    contended timings retried on a busy machine do)."""

    def __init__(self, backend) -> None:
        self.backend, self.profile = backend, backend.profile

    def time(self, *args):
        time.sleep(2.0)
        return self.backend.time(*args)


def test_timings_that_run_long_lower_the_factor_for_the_rest(tmp_path: Path, fast_profiles: Path,
                                                             mlp_writer) -> None:
    import yaml

    profile = yaml.safe_load((fast_profiles / "fast-cpu.yaml").read_text())
    profile["measure"]["remeasure_factor"] = 5
    (fast_profiles / "fast-cpu.yaml").write_text(yaml.safe_dump(profile))
    # Four points of one size within the noise of each other: every pair is contested.
    points = {0: (0.90, 1.00, 100.0), 1: (0.95, 1.01, 100.0), 2: (0.85, 1.02, 100.0), 3: (0.97, 1.015, 100.0)}
    study = study_with(tmp_path, points, mlp_writer, trial_s=6.75)  # a 27 s search: a 9 s budget
    backend = BusyHost(make_backend(load_profile("fast-cpu")))
    lines: list[str] = []
    record = remeasure_front(study, backend, Task(), lines.append)
    first = record["pairs"][0][:2]
    assert record["factor"] == 5  # all four fit at 5x, as estimated
    assert all(record["trials"][str(n)]["factor"] == 5 for n in first)  # the most contested pair, timed first
    assert any(line.startswith("  timings take") and "the rest 2x longer" in line for line in lines)
    later = [r for k, r in record["trials"].items() if int(k) not in first and r["remeasured"]]
    assert all(r["factor"] == 2 for r in later)
    assert record["spent_s"] <= record["budget_s"] + 5.0  # over by less than one point's cost, if at all
    timed = {int(k) for k, r in record["trials"].items() if r["remeasured"]}
    assert timed | set(record["skipped_for_time"]) == {0, 1, 2, 3}
