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


def _mlp(path, sizes):
    """Gemm-Relu-...-Gemm with a dynamic batch: a real ONNX file to time."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
        inits += [numpy_helper.from_array(rng.standard_normal((a, b)).astype(np.float32), f"w{i}")]
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"]))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"]))
        x = f"r{i}"
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", sizes[0]])]
    outputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", sizes[-1]])]
    graph = helper.make_graph(nodes, "mlp", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def test_retiming_times_each_distinct_graph_once_side_by_side(tmp_path):
    import shutil

    import numpy as np

    from hardware.base import Profile
    from search.benchmarks.curves import Step, curve
    from search.benchmarks.retime import retime

    big = _mlp(tmp_path / "big.onnx", (64, 1024, 1024, 8))
    small = _mlp(tmp_path / "small.onnx", (64, 16, 8))
    twin = shutil.copy(small, tmp_path / "twin.onnx")  # the same graph reached again: one timing for both
    run = Run("digits", "guided", 0, trials=[1, 2, 3, 4, 5], seconds=[1, 2, 3, 4, 5])
    run.base = Step((0.0, 1.0), 1.0, big)
    run.steps = [Step(None),                                    # the baseline's own trial
                 Step((0.1, 0.5), 0.9, small),                   # timed unluckily slow by its study
                 Step(None, 0.01, small),                        # infeasible: not timed, adds nothing
                 Step((0.1, 0.5), 0.3, twin),                    # the same graph, timed luckily fast
                 Step((0.2, 0.4), 0.5, tmp_path / "gone.onnx")]  # its file was deleted
    run.hv = run.hv_search = curve(run, lambda s: s.latency_ms)
    assert run.hv_search[3] > run.hv_search[1]  # the study's timings: the twin looks like progress

    profile = Profile(name="t", backend="onnxruntime", threads=1)
    info = retime([run], profile, {"x": np.ones((1, 64), np.float32)}, rounds=3, say=lambda _: None)
    drift = {k: info.pop(k) for k in ("drift_median", "drift_max")}
    assert info == {"graphs": 2, "files": 3, "rounds": 3, "not_retimed": 1}
    assert 0 <= drift["drift_median"] <= drift["drift_max"]
    assert run.retimed and run.hv_search[3] > run.hv_search[1]
    assert run.hv[3] == run.hv[1]  # one latency for one graph: the twin adds no volume
    assert run.hv[0] == pytest.approx(0.1 * 0.1 * 1.1 / 1.1**3)
    assert run.hv[1] > run.hv[0]  # the small graph is faster than the big baseline, side by side
    assert run.hv[4] >= run.hv[3]  # the point whose file is gone keeps its study ratio: 0.5 of the baseline



def test_retiming_rounds_fill_the_time_asked_for_within_bounds():
    from search.benchmarks.retime import MAX_ROUNDS, MIN_ROUNDS, half_drift, retime_rounds

    assert retime_rounds(13, 180) == MAX_ROUNDS  # MiniLM's dozen graphs: many rounds fit
    assert retime_rounds(320, 180) == MIN_ROUNDS  # digits' hundreds: the floor
    assert MIN_ROUNDS < retime_rounds(60, 180) < MAX_ROUNDS
    # The halves are the earlier and the later rounds: a graph that got 20% slower midway reads 0.2.
    assert half_drift([10.0] * 6 + [12.0] * 6) == pytest.approx(2 / 11)
    assert half_drift([10.0, 11.0] * 6) == 0.0


def test_no_run_reports_only_studies_finished_to_their_budget(tmp_path, capsys):
    """`--no-run`: no trial runs; a study is reported only when it ran its whole budget (interrupted trials
    are free), and the ones left out are named in the table's header."""
    from search.benchmarks.efficiency import finished_to_budget, main

    storage = _study(tmp_path, [((0.9, 1.0, 100.0), -0.1, {"baseline": True}, "complete"),
                                ((0.9, 0.8, 80.0), -0.1, {}, "complete")])
    interrupted = optuna.load_study(study_name="s", storage=storage).ask()
    interrupted.set_user_attr("failure_reason", "interrupted: stopped by Ctrl-C; retried on the next run")
    interrupted.study.tell(interrupted, state=optuna.trial.TrialState.FAIL)
    assert finished_to_budget("s", storage, 2) and not finished_to_budget("s", storage, 3)
    assert not finished_to_budget("missing", storage, 1)

    out = tmp_path / "out"
    assert main(["--workloads", "digits", "--methods", "random,guided", "--seeds", "1", "--trials", "digits=2",
                 "--results-dir", str(tmp_path / "results"), "--out", str(out), "--no-run", "--no-retime"]) == 0
    text = (out / "efficiency.md").read_text()
    assert "left out (--no-run: not finished to their budget): digits-random-s0, digits-guided-s0" in text
    assert "digits-random-s0: 2 trials" not in capsys.readouterr().out  # nothing ran
    assert not (tmp_path / "results" / "mlartifacts").exists()


def test_runs_of_an_earlier_sitting_are_taken_from_its_csv_and_not_run_again(tmp_path, capsys):
    """`--earlier efficiency.csv`: a benchmark spread over sittings whose studies are gone."""
    from search.benchmarks.efficiency import earlier_runs, main, write

    first = Run("digits", "guided", 0, trials=[1, 2], seconds=[3.0, 9.5], hv=[0.008, 0.05], rejected=1,
                host="AMD EPYC (avx512_vnni)", hv_search=[0.008, 0.04], retimed=True)
    write([first], {"digits": 2}, tmp_path / "sitting1", {})
    read = earlier_runs(tmp_path / "sitting1" / "efficiency.csv")
    assert read[("digits", "guided", 0)] == first  # every field the tables read comes back

    out = tmp_path / "sitting2"
    assert main(["--workloads", "digits", "--methods", "random,guided", "--seeds", "1", "--trials", "digits=2",
                 "--results-dir", str(tmp_path / "results"), "--out", str(out), "--no-run", "--no-retime",
                 "--earlier", str(tmp_path / "sitting1" / "efficiency.csv")]) == 0
    text = (out / "efficiency.md").read_text()
    assert "runs from an earlier sitting (--earlier, as it timed and re-timed them): digits guided s0" in text
    assert "not finished to their budget): digits-random-s0" in text  # only the study no sitting ran
    assert "| guided | 1 | 0.0500 |" in text and "AMD EPYC (avx512_vnni)" in text
    assert earlier_runs(out / "efficiency.csv")[("digits", "guided", 0)] == first  # a third sitting reads it too

    (tmp_path / "bad.csv").write_text("workload,method\ndigits,guided\n")
    with pytest.raises(SystemExit, match=r"--earlier .*bad.csv: not an efficiency.csv \(missing columns"):
        earlier_runs(tmp_path / "bad.csv")
