"""Which waiting trial runs next (search/queue.py): a cached student's variants before the anchors
enqueued ahead of them, the rest in enqueue order, and no trial popped twice by two workers."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.queue import ask_next
from search.reuse import VARIANT_ATTR


def _study(storage: str) -> optuna.Study:
    return optuna.create_study(study_name="queue", storage=storage, load_if_exists=True,
                               sampler=optuna.samplers.RandomSampler(seed=0))


def _run(study: optuna.Study) -> tuple[float, dict]:
    trial = ask_next(study)
    x = trial.suggest_float("x", 0.0, 10.0)
    study.tell(trial, x)
    return x, study.trials[trial.number].user_attrs


def test_variants_run_before_the_anchors_enqueued_ahead_of_them(tmp_path: Path) -> None:
    study = _study(f"sqlite:///{tmp_path / 'q.db'}")
    study.enqueue_trial({"x": 1.0}, user_attrs={"anchor": "a"})
    study.enqueue_trial({"x": 2.0}, user_attrs={"anchor": "b"})
    study.enqueue_trial({"x": 3.0}, user_attrs={VARIANT_ATTR: 0})
    study.enqueue_trial({"x": 4.0}, user_attrs={VARIANT_ATTR: 0})
    ran = [_run(study)[0] for _ in range(4)]
    assert ran == [3.0, 4.0, 1.0, 2.0]  # the enqueued params are the ones the trial samples
    assert [t.user_attrs.get(VARIANT_ATTR) for t in study.trials[2:]] == [0, 0]
    x, attrs = _run(study)  # the queue is empty: the sampler draws
    assert x not in ran and not attrs
    assert all(t.state == TrialState.COMPLETE for t in study.trials)


def test_a_variant_another_worker_took_is_not_run_twice(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'q.db'}"
    mine, theirs = _study(storage), _study(storage)
    mine.enqueue_trial({"x": 1.0}, user_attrs={"anchor": "a"})
    mine.enqueue_trial({"x": 3.0}, user_attrs={VARIANT_ATTR: 0})
    first = ask_next(theirs)  # the other worker takes the variant and is still running it
    second = ask_next(mine)
    assert (first.number, second.number) == (1, 0)
    assert first.suggest_float("x", 0.0, 10.0) == 3.0 and second.suggest_float("x", 0.0, 10.0) == 1.0
    states = {t.number: t.state for t in mine.get_trials(deepcopy=False)}
    assert states == {0: TrialState.RUNNING, 1: TrialState.RUNNING}


def _digits_queue(tmp_path: Path, int8_latency: float | None, probe: float | None = None):
    """A digits study whose baseline ran (latency 1.0; its probe's int8 ratio `probe`, if any) and, unless
    `int8_latency` is None, its int8 anchor; then a student's int8 variant queued before an unquantized push.
    Returns a function that pops the next trial (in `ask_next` order) and gives its fixed params."""
    from search.reuse import standard_settings
    from search.space import load_space
    from search.standard_probe import ATTR

    digits = load_space(Path(__file__).resolve().parents[2] / "spaces" / "digits.yaml", tmp_path / "models")
    fp32 = {f"quantize.bits.net.{i}": "fp32" for i in (0, 2, 4)}
    off = {"prune.ratio": 0.0, "distill.epochs": 0}
    cut = {"prune.ratio": 0.2, "distill.epochs": 2, "distill.temperature": 2.0}
    int8 = standard_settings(digits)[0]
    study = optuna.create_study(study_name=f"q{int8_latency}-{probe}", storage=f"sqlite:///{tmp_path / 'q.db'}",
                                directions=["maximize", "minimize", "minimize"])
    base_attrs = {"baseline": True, **({} if probe is None else {ATTR: {"ratio": probe}})}
    for params, latency, attrs in (({**off, **fp32}, 1.0, base_attrs),
                                   ({**off, **int8}, int8_latency, {"anchor": "quantize"})):
        if latency is None:
            continue
        study.enqueue_trial(params, user_attrs=attrs)
        trial = study.ask()
        digits.sample(trial)
        study.tell(trial, [0.95, latency, 1000.0])
    study.enqueue_trial({**cut, **int8}, user_attrs={VARIANT_ATTR: 1})  # the student's size point
    study.enqueue_trial({**cut, "prune.ratio": 0.55, **fp32}, user_attrs={"pushed_from": 1})

    def first_fixed() -> dict:
        trial = ask_next(study, digits)
        return study.trials[trial.number].system_attrs["fixed_params"]
    return first_fixed


def test_where_int8_alone_measured_slower_an_int8_variant_runs_after_the_rest_of_the_queue(tmp_path: Path) -> None:
    """The digits MLP runs slower in int8: a student's int8 variant waits until the unquantized rungs
    queued after it have run; where int8 measured faster (or not yet), variants still go first."""
    slower = _digits_queue(tmp_path, 1.4)
    assert slower()["prune.ratio"] == 0.55  # the unquantized push first
    assert slower()["quantize.bits.net.0"] == "int8"  # the variant when nothing else waits
    for first_fixed in (_digits_queue(tmp_path, 0.6), _digits_queue(tmp_path, None)):
        assert first_fixed()["quantize.bits.net.0"] == "int8"  # faster, or not measured: variants first


def test_before_int8_runs_as_a_trial_the_baseline_probe_decides_and_a_measured_trial_overrides_it(
        tmp_path: Path) -> None:
    """The int8 anchor itself waits where the baseline's probe timed int8 slower (search/standard_probe.py);
    once a trial measured it, the trial's figure is what counts."""
    assert _digits_queue(tmp_path, None, probe=1.4)()["prune.ratio"] == 0.55  # probe: slower, not yet run
    assert _digits_queue(tmp_path, None, probe=0.6)()["quantize.bits.net.0"] == "int8"  # probe: faster
    assert _digits_queue(tmp_path, 0.6, probe=1.4)()["quantize.bits.net.0"] == "int8"  # measured faster wins
    assert _digits_queue(tmp_path, 1.4, probe=0.6)()["prune.ratio"] == 0.55  # measured slower wins
