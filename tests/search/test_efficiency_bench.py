"""The efficiency benchmark's arithmetic on a real Optuna study, and the spaces it derives."""

from __future__ import annotations

import optuna
import pytest
import yaml

from search.benchmarks.efficiency import (
    METHODS,
    WORKLOADS,
    Run,
    _hosts_line,
    _mean_curve_lines,
    curve_reach,
    hypervolume_curve,
    mean_curve,
    method_space,
    reach,
)
from search.space import load_space
from search.study.view import CONSTRAINT_KEY, DIRECTIONS


def _study(tmp_path, rows):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="s", directions=list(DIRECTIONS))
    for values, excess, attrs, state in rows:
        trial = study.ask()
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if state == "pruned":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        trial.set_constraint(CONSTRAINT_KEY, excess)
        study.tell(trial, values)
    return storage


def test_hypervolume_grows_only_with_feasible_better_points(tmp_path):
    storage = _study(tmp_path, [
        ((0.96, 1.0, 1000.0), -1.0, {"baseline": True, "environment": {"cpu": "EPYC", "cpu_int8": "avx2"}},
         "complete"),
        ((0.80, 0.1, 10.0), 0.14, {}, "complete"),      # infeasible: does not count
        ((0.95, 0.5, 500.0), -0.01, {}, "complete"),    # feasible, twice as fast and small
        (None, None, {}, "pruned"),                     # rejected early
        ((0.95, 0.25, 250.0), -0.01, {}, "complete"),   # better still
    ])
    run = Run("digits", "guided", 0)
    hypervolume_curve("s", storage, max_drop=0.02, run=run)
    assert run.trials == [1, 2, 3, 4, 5]
    assert run.rejected == 1
    assert run.host == "EPYC (avx2)"  # what timed the baseline the latency ratios read against
    assert run.hv[0] == run.hv[1] == pytest.approx(0.1 * 0.1 * 1.1 / 1.1**3)  # the baseline's corner alone:
    # an infeasible point, however fast, adds nothing
    assert run.hv[1] < run.hv[2] == run.hv[3] < run.hv[4] < 1.0
    assert reach(run, run.hv[4]) == (5, run.seconds[4])
    assert reach(run, 1.0) == (None, None)


def test_mean_curve_holds_a_short_runs_last_value():
    a = Run("d", "tpe", 0, trials=[1, 2, 3], seconds=[1, 2, 3], hv=[0.0, 0.2, 0.4])
    b = Run("d", "tpe", 1, trials=[1, 2], seconds=[1, 2], hv=[0.0, 0.6])
    assert mean_curve([a, b], 3) == pytest.approx([0.0, 0.4, 0.5])


def test_mean_curves_target_the_best_methods_final_mean():
    curves = {"random": [0.1, 0.1, 0.2, 0.2, 0.3, 0.3], "tpe": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
              "guided": [0.1, 0.6, 0.7, 0.8, 0.9, 1.0]}
    assert curve_reach(curves["tpe"], 0.9) is None and curve_reach(curves["guided"], 0.9) == 5
    text = "\n".join(_mean_curve_lines(curves, 6))
    # 90% of guided's final 1.0: guided at trial 5, TPE never within 6 - which cannot show "a third".
    assert "(guided, 1.0000): random not within 6, tpe not within 6, guided 5." in text
    assert "a third or more not shown" in text
    curves["guided"] = [0.95] * 6
    curves["tpe"] = [0.1, 0.2, 0.3, 0.4, 0.9, 0.95]
    text = "\n".join(_mean_curve_lines(curves, 6))
    assert "guided needs 0.20 of plain TPE's trials (within a third)" in text


def test_methods_differ_only_in_sampler_guide_and_assignment():
    spaces = {m: method_space("spaces/digits.yaml", m) for m in ("random", "tpe", "guided")}
    assert spaces["random"]["sampler"] == "random" and spaces["tpe"]["sampler"] == "tpe"
    assert not any(spaces["tpe"]["guide"].values()) and all(spaces["guided"]["guide"].values())
    assert spaces["guided"]["techniques"]["quantize"]["assign"] == "sensitivity"
    for data in spaces.values():
        data.pop("sampler"), data.pop("guide"), data["techniques"]["quantize"].pop("assign")
    assert spaces["random"] == spaces["tpe"] == spaces["guided"]


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
@pytest.mark.parametrize("method", METHODS)
def test_each_derived_space_validates(workload, method, tmp_path):
    """What the benchmark runs is a space file a user could run: it passes the same validation."""
    data = method_space(WORKLOADS[workload], method)
    path = tmp_path / f"{workload}-{method}.yaml"
    path.write_text(yaml.safe_dump(data))
    space = load_space(path, tmp_path / "cache")
    assert space.sampler == ("random" if method == "random" else "tpe")
    assert space.guide.anchors is (method == "guided")


def test_runs_from_several_hosts_say_which_ran_where():
    """A benchmark resumed on another machine (a later session) mixes hosts: the summary names them."""
    a = Run("minilm", "tpe", 0, host="EPYC (avx2, avx512_vnni)")
    b = Run("minilm", "guided", 0, host="EPYC (avx2, avx512_vnni)")
    assert _hosts_line([a, b]) == "Timed on: EPYC (avx2, avx512_vnni) (all 2 runs)."
    c = Run("minilm", "tpe", 1, host="Xeon (avx2, amx_int8)")
    assert _hosts_line([a, b, c]) == ("Timed on several hosts: EPYC (avx2, avx512_vnni): tpe s0, guided s0; "
                                      "Xeon (avx2, amx_int8): tpe s1.")
