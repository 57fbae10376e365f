"""End-of-study re-measurement of the Pareto candidates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
from optuna.trial import create_trial

from hardware.profiles import load_profile, make_backend
from search.study.remeasure import remeasure_front


class Task:
    def query_feeds(self, batch_size: int) -> dict[str, np.ndarray]:
        return {"x": np.ones((batch_size, 16), np.float32)}


def study_with(tmp_path: Path, points: dict[int, tuple[float, float, float]], write_mlp) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for number, values in points.items():
        d = tmp_path / f"trial-{number}"
        d.mkdir()
        write_mlp(d / "model.onnx", seed=number)
        study.add_trial(create_trial(values=list(values), user_attrs={"artifact_dir": str(d)}))
    return study


def test_front_points_are_timed_again_and_trade_offs_survive(tmp_path: Path, fast_profiles: Path, mlp_writer) -> None:
    # 0 and 1 trade quality for bytes, so neither can dominate the other whatever their latency;
    # 2 is dominated by 0 on every objective and is not re-measured.
    study = study_with(tmp_path, {0: (0.9, 0.01, 100.0), 1: (0.8, 0.01, 50.0), 2: (0.7, 0.02, 200.0)},
                       mlp_writer)
    backend = make_backend(load_profile("fast-cpu"))
    lines: list[str] = []
    record = remeasure_front(study, backend, Task(), lines.append)
    assert record is not None and record["front"] == [0, 1] and set(record["trials"]) == {"0", "1"}
    for rec in record["trials"].values():
        assert rec["survives"] and rec["queries"] >= 100  # remeasure_factor 2 x min_queries 50
        assert rec["ci_low_ms"] <= rec["p50_ms"] <= rec["ci_high_ms"] and rec["search_p50_ms"] == 0.01
    assert study.user_attrs["remeasured"] == record
    assert "re-measuring 2 Pareto candidate(s)" in lines[0]
    # The same front again: nothing is re-timed.
    assert remeasure_front(study, backend, Task(), lines.append) == record and len(lines) == 4
