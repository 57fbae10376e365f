"""A study over several profiles, end to end: per-profile metrics, estimates, the torch program,
and the re-measured Pareto front."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from search.cli import main

SPACE = {
    "name": "hw_e2e",
    "task": {"name": "digits", "options": {"hidden": 32, "epochs": 10}},
    "hardware": {"profiles": ["fast-cpu", "fast-cpu-2t", "fast-npu", "fast-torch"], "objective": "fast-cpu"},
    "constraints": {"max_quality_drop": 0.5},
    "budget": {"trials": 3},
    "sampler": "random",
    "techniques": {"prune": {"structure": "structured", "ratio": {"low": 0.0, "high": 0.5, "step": 0.25}},
                   "quantize": {"layers": "*", "bits": ["fp32", "int8"], "calibration": ["minmax"]}},
}


@pytest.mark.slow
def test_every_profile_is_recorded_and_the_front_is_remeasured(tmp_path: Path, fast_profiles: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    assert main(["run", str(space), "--results-dir", str(tmp_path / "res"), "--seed", "3", "--quiet"]) == 0
    study = optuna.load_study(study_name="hw_e2e", storage=f"sqlite:///{tmp_path / 'res' / 'optuna.db'}")
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 3
    for t in done:
        metrics = t.user_attrs["metrics"]
        assert set(metrics) == {"fast-cpu", "fast-cpu-2t", "fast-npu", "fast-torch"}
        assert t.values[1] == metrics["fast-cpu"]["latency_p50_ms"]  # the objective profile's p50
        assert "latency_p50_ms" in metrics["fast-cpu-2t"] and "contended" in metrics["fast-cpu-2t"]
        assert metrics["fast-npu"]["latency_est_ms"] > 0 and "latency_p50_ms" not in metrics["fast-npu"]
        assert metrics["fast-torch"]["latency_p50_ms"] > 0
        assert (Path(t.user_attrs["artifact_dir"]) / "model.pt2").exists()
        assert t.user_attrs["environments"]["fast-cpu-2t"]["threads"] == "2"
    remeasured = study.user_attrs["remeasured"]
    front = sorted(t.number for t in study.best_trials)
    assert remeasured["profile"] == "fast-cpu" and remeasured["front"] == front
    assert remeasured["search_s"] > 0 and abs(remeasured["budget_s"] - remeasured["search_s"] / 3) < 1e-2
    for number in front:  # each front point is re-timed (contested) or says why not
        rec = remeasured["trials"][str(number)]
        assert isinstance(rec["survives"], bool) and rec["reason"]
        if rec["remeasured"]:
            assert rec["queries"] >= 100 and rec["ci_low_ms"] <= rec["p50_ms"] <= rec["ci_high_ms"]
    assert any(rec["survives"] for rec in remeasured["trials"].values())  # a front always keeps a point
