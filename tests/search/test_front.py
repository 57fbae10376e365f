"""The front row: built once by StudyView, the same figures in every format."""

from __future__ import annotations

import pytest

from search.study.tracking import front_table_rows
from search.study.view import StudyView, TrialView


def trial(number: int, q: float, lat: float, size: float, *, baseline: bool = False, est: float = 1.0) -> TrialView:
    metrics = {"cpu": {"quality": q, "latency_p50_ms": lat, "latency_p90_ms": lat * 1.1, "bytes": size,
                       "bytes_compressed": size / 2},
               "npu": {"quality": q, "latency_est_ms": est, "bytes": size, "bytes_compressed": size / 2}}
    return TrialView(number, "COMPLETE", baseline, {"steps": []}, None, f"recipe {number}", {},
                     {"accuracy": q, "latency_p50_ms": lat, "bytes": size}, metrics, 0.0, True, None, 1.0, 0.0)


@pytest.fixture()
def view() -> StudyView:
    trials = [trial(0, 0.97, 0.010, 200_000, baseline=True, est=2.0), trial(1, 0.96, 0.005, 50_000, est=0.5),
              trial(2, 0.90, 0.020, 300_000)]
    return StudyView("s", {"objective_profile": "cpu", "profiles": ["cpu", "npu"]},
                     ("accuracy", "latency_p50_ms", "bytes"), trials)


def test_front_rows_carry_ratios_against_the_baseline(view: StudyView) -> None:
    rows = view.front()
    assert [r.trial for r in rows] == [0, 1]  # trial 2 is dominated by the baseline
    r = rows[1]
    assert r.quality_change == pytest.approx(-0.01) and r.x_faster == pytest.approx(2.0)
    assert r.x_smaller == pytest.approx(4.0) and r.x_smaller_compressed == pytest.approx(4.0)
    assert r.latency_at("latency_p90") == pytest.approx(0.0055)
    assert r.per_profile["npu"] == {"quality": 0.96, "bytes": 50_000, "bytes_compressed": 25_000}
    npu = view.row(1, "npu")
    assert npu.latency_key == "latency_p50_ms" and npu.latency is None  # an estimate has no p50 (see figures)
    assert npu.versus("latency_est_ms") == ("faster", pytest.approx(4.0))
    assert npu.versus("quality") == ("change", pytest.approx(-0.01))


def test_every_format_prints_the_same_row(view: StudyView) -> None:
    shown = view.to_json()["front"]
    assert shown[1] == {"trial": 1, "accuracy": 0.96, "latency_p50_ms": 0.005, "bytes": 50_000,
                        "recipe": "recipe 1", "lowbit_simulated_layers": 0, "quality_change": pytest.approx(-0.01),
                        "x_faster": pytest.approx(2.0), "x_smaller": pytest.approx(4.0)}
    table = front_table_rows(view)
    assert table[1]["x_faster"] == shown[1]["x_faster"] and table[1]["cpu.latency_p90_ms"] == pytest.approx(0.0055)
    assert view.front()[1].as_dict()["x_smaller_compressed"] == pytest.approx(4.0)


def test_without_a_baseline_there_are_no_ratios() -> None:
    lone = StudyView("s", {"objective_profile": "cpu"}, ("accuracy", "latency_p50_ms", "bytes"),
                     [trial(1, 0.96, 0.005, 50_000)])
    (row,) = lone.front()
    assert row.baseline is None and row.x_faster is None and row.quality_change is None
    assert set(row.to_json("accuracy")) == {"trial", "accuracy", "latency_p50_ms", "bytes", "recipe",
                                            "lowbit_simulated_layers"}


def test_the_terminal_front_names_a_point_that_re_measurement_dominated(view: StudyView) -> None:
    from search.study.progress import front_table

    assert "re-measured" not in front_table(view)  # nothing re-timed: nothing to say
    view.attrs["remeasured"] = {"trials": {"0": {"remeasured": True, "survives": True, "p50_ms": 0.010},
                                           "1": {"remeasured": True, "survives": False, "p50_ms": 0.0125}}}
    table = front_table(view)
    assert "trial 1: dominated after re-measurement (p50 0.0125 ms" in table
    assert "trial 0: dominated" not in table
