"""`compsearch report` and `compsearch export` on a real finished 4-trial digits study.

The study runs once (module fixture; other report/tracking test modules in the same session
reuse it) on two ONNX Runtime CPU profiles, so the cross-hardware table has two columns.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
from pathlib import Path

import pytest
import yaml

from search.cli import main
from search.driver import default_storage, view_from_storage
from search.report import build_report, write_report
from search.report.hypervolume import hypervolume, normalise, progress

ROOT = Path(__file__).resolve().parents[2]
STUDY = "report-digits"
LOCK_VAR = "COMPSEARCH_MEASURE_LOCK"


def run_small_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 4-trial digits study on two profiles; made once per session, reused by later modules."""
    results = tmp_path_factory.getbasetemp() / "report-study"
    if (results / "done").exists():
        return results
    results.mkdir(parents=True, exist_ok=True)
    space = yaml.safe_load((ROOT / "spaces" / "digits.yaml").read_text())
    space["hardware"] = {"profiles": ["ort-cpu", "ort-cpu-2t"], "objective": "ort-cpu"}
    path = results / "digits-2hw.yaml"
    path.write_text(yaml.safe_dump(space))
    # A private measurement lock: these tests check content, not timing, and must not queue
    # behind other test sessions measuring on the same host.
    old_lock = os.environ.get(LOCK_VAR)
    os.environ[LOCK_VAR] = str(results / "measure.lock")
    try:
        assert main(["run", str(path), "--study", STUDY, "--trials", "4", "--seed", "0", "--quiet", "--no-remeasure",
                     "--results-dir", str(results)]) == 0
    finally:
        if old_lock is None:
            os.environ.pop(LOCK_VAR, None)
        else:
            os.environ[LOCK_VAR] = old_lock
    (results / "done").touch()
    return results


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_small_study(tmp_path_factory)


def show_json(results: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert main(["show", STUDY, "--json", "--results-dir", str(results)]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def report(study_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[dict, Path]:
    shown = show_json(study_dir, capsys)
    assert main(["report", STUDY, "--results-dir", str(study_dir)]) == 0
    out = study_dir / "reports" / STUDY
    return shown, out


@pytest.mark.slow
def test_report_files_and_every_pareto_trial(report: tuple[dict, Path]) -> None:
    shown, out = report
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    assert shown["pareto"], "a finished study always has a front (the baseline at least)"
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html
    assert "<script" not in html  # self-contained and static
    with (out / "front.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    objective_rows = [r for r in rows if r["profile"] == "ort-cpu"]
    assert [int(r["trial"]) for r in objective_rows] == shown["pareto"]
    assert {r["profile"] for r in rows} == {"ort-cpu", "ort-cpu-2t"}
    for t in shown["trials"]:
        if t["number"] in shown["pareto"]:
            assert f'id="trial-{t["number"]}"' in html
            assert t["summary"] in html and t["summary"] in md
    with (out / "trials.csv").open() as fh:
        trials = list(csv.DictReader(fh))
    assert len(trials) == len(shown["trials"])
    assert {int(r["trial"]) for r in trials if r["ort-cpu.pareto"] == "True"} == set(shown["pareto"])


@pytest.mark.slow
def test_ratios_agree_with_show_json(report: tuple[dict, Path]) -> None:
    shown, out = report
    with (out / "front.csv").open() as fh:
        rows = {int(r["trial"]): r for r in csv.DictReader(fh) if r["profile"] == "ort-cpu"}
    html = (out / "report.html").read_text()
    base = shown["baseline"]["metrics"]["ort-cpu"]
    for front in shown["front"]:
        row = rows[front["trial"]]
        assert float(row["x_faster"]) == pytest.approx(front["x_faster"], rel=1e-9)
        assert float(row["x_smaller"]) == pytest.approx(front["x_smaller"], rel=1e-9)
        assert float(row["quality_change"]) == pytest.approx(front["quality_change"], abs=1e-12)
        assert f"{front['x_faster']:.2f}x" in html and f"{front['x_smaller']:.2f}x" in html
        trial = next(t for t in shown["trials"] if t["number"] == front["trial"])
        compressed = base["bytes_compressed"] / trial["metrics"]["ort-cpu"]["bytes_compressed"]
        assert float(row["x_smaller_compressed"]) == pytest.approx(compressed, rel=1e-9)


@pytest.mark.slow
def test_picks_follow_their_rules_and_show_each_layer(study_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shown = show_json(study_dir, capsys)
    feasible = [t for t in shown["trials"] if t["feasible"]]
    lat = {t["number"]: t["metrics"]["ort-cpu"]["latency_p50_ms"] for t in feasible}
    size = {t["number"]: t["metrics"]["ort-cpu"]["bytes"] for t in feasible}
    budget = sorted(lat.values())[len(lat) // 2]
    data = build_report(view_from_storage(STUDY, default_storage(study_dir)), latency_budget_ms=budget)
    fastest, smallest, best = data.picks
    assert lat[fastest.trial.number] == min(lat.values())
    assert size[smallest.trial.number] == min(size.values())
    quality = {t["number"]: t["values"]["accuracy"] for t in feasible if lat[t["number"]] <= budget}
    assert quality[best.trial.number] == max(quality.values())
    for pick in data.picks:
        layers = json.loads((Path(pick.trial.artifact_dir) / "layers.json").read_text())
        assert data.layers[pick.trial.number] == layers
    out = study_dir / "budget-report"
    write_report(view_from_storage(STUDY, default_storage(study_dir)), out, budget)
    html = (out / "report.html").read_text()
    assert f"latency budget of {budget:.4g} ms" in html
    assert "What each layer became" in html and "<code>net.0</code>" in html


@pytest.mark.slow
def test_user_strings_are_escaped_and_figures_labelled(study_dir: Path, tmp_path: Path) -> None:
    view = copy.deepcopy(view_from_storage(STUDY, default_storage(study_dir)))
    view.name = "<script>alert('study')</script>"
    evil = tmp_path / "trial"
    evil.mkdir()
    (evil / "layers.json").write_text(json.dumps(
        {"<script>alert('layer')</script>": {"kind": "linear", "shape": [4, 4], "bits": "int8", "sparsity": 0.5}}))
    for t in view.trials:
        t.artifact_dir = str(evil)
        # What the estimator and repeated-measurement helpers add: an estimated latency and a CI.
        m = t.metrics["ort-cpu-2t"]
        m["latency_p50_est_ms"] = m.pop("latency_p50_ms")
        p50 = t.metrics["ort-cpu"]["latency_p50_ms"]
        t.metrics["ort-cpu"]["latency_p50_ci_low_ms"] = p50 * 0.9
        t.metrics["ort-cpu"]["latency_p50_ci_high_ms"] = p50 * 1.1
        t.metrics["ort-cpu"]["lowbit_simulated_layers"] = 2.0  # int2 layers that ran an fp32 kernel
    paths = write_report(view, tmp_path / "out")
    html = paths["html"].read_text()
    md = paths["markdown"].read_text()
    assert "<script" not in html and "<script" not in md
    assert "&lt;script&gt;alert(&#x27;study&#x27;)&lt;/script&gt;" in html
    assert "&lt;script&gt;alert(&#x27;layer&#x27;)&lt;/script&gt;" in html
    assert "p50 ms (estimate)" in html and "(estimate)" in md
    assert "simulated: lowbit_simulated_layers = 2" in html and "simulated: lowbit_simulated_layers = 2" in md
    assert "CI low" in html and "&plusmn;10%" in html
    assert "<line x1=" in html  # CI drawn as error bars on the latency axis


@pytest.mark.slow
def test_export_model_card_is_complete(study_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    shown = show_json(study_dir, capsys)
    number = shown["pareto"][-1]
    out = tmp_path / "model.onnx"
    assert main(["export", STUDY, "--trial", str(number), "--out", str(out), "--results-dir", str(study_dir)]) == 0
    card = out.with_suffix(".md").read_text()
    trial = next(t for t in shown["trials"] if t["number"] == number)
    assert out.stat().st_size == trial["metrics"]["ort-cpu"]["bytes"]
    for profile in ("ort-cpu", "ort-cpu-2t"):
        assert f"| {profile} |" in card
    layers = json.loads((Path(trial["artifact_dir"]) / "layers.json").read_text())
    for name, info in layers.items():
        assert f"| {name} |" in card and info["bits"] in card
    assert "## Environment" in card and "onnxruntime" in card
    assert json.dumps(trial["recipe"], indent=2) in card


def test_report_of_unknown_study_and_bad_budget_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "nope", "--results-dir", str(tmp_path)]) == 2
    assert main(["report", "nope", "--latency-budget", "-1", "--results-dir", str(tmp_path)]) == 2
    assert "--latency-budget must be > 0" in capsys.readouterr().err


def test_hypervolume_known_values() -> None:
    assert hypervolume([(0.0, 0.0)], ref=1.0) == pytest.approx(1.0)
    assert hypervolume([(0.0, 0.5), (0.5, 0.0)], ref=1.0) == pytest.approx(0.75)
    assert hypervolume([(0.0, 0.0, 0.5), (0.5, 0.5, 0.0)], ref=1.0) == pytest.approx(0.5 + 0.25 * 0.5)
    assert hypervolume([(1.0, 1.0, 1.0)], ref=1.0) == 0.0
    losses = normalise({1: (0.9, 2.0, 10.0), 2: (0.8, 1.0, 5.0)}, ("maximize", "minimize", "minimize"))
    assert losses == {1: (0.0, 1.0, 1.0), 2: (1.0, 0.0, 0.0)}
    steps = progress({1: (0.9, 2.0, 10.0), 2: (0.8, 1.0, 5.0)}, ("maximize", "minimize", "minimize"), [0, 1, 2])
    assert [n for n, _ in steps] == [0, 1, 2] and steps[0][1] == 0.0
    assert 0 < steps[1][1] < steps[2][1] <= 1 and math.isfinite(steps[2][1])
