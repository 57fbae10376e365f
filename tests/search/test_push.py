"""Pushing a cut with quality to spare (search/push.py): the next harder cut, when a trial is pushed,
and the queue."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FixedTrial, TrialState

from search.guide import Guide
from search.push import (
    BACK_ATTR,
    PUSHED_ATTR,
    between,
    enqueue_push,
    enqueue_step_back,
    failed,
    harder,
    push_params,
    step_back_params,
    wants_push,
)
from search.reuse import split_params, standard_settings
from search.space import load_space

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory):
    return load_space(ROOT / "spaces" / "digits.yaml", tmp_path_factory.mktemp("models"))


def _trial(space, drop: float | None, state=TrialState.COMPLETE, **attrs_and_params) -> optuna.trial.FrozenTrial:
    """A trial of `space` with the given params (the rest drawn at random, seeded) and user attrs."""
    params = {k: v for k, v in attrs_and_params.items() if "." in k}
    attrs = {k: v for k, v in attrs_and_params.items() if "." not in k}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(params)
    trial = study.ask()
    space.sample(trial)
    study.tell(trial, 1.0)
    t = study.trials[0]
    return optuna.trial.create_trial(
        state=state, params=t.params, distributions=t.distributions,
        values=[0.9, 1.0, 100.0] if state == TrialState.COMPLETE else None,
        user_attrs={**({} if drop is None else {"quality_drop": drop}), **attrs})


def test_the_next_cut_is_halfway_to_the_hardest_on_the_grid() -> None:
    ratio = FloatDistribution(0.0, 0.9, step=0.05)
    assert harder(ratio, 0.2, "up") == pytest.approx(0.55)
    assert harder(ratio, 0.55, "up") == pytest.approx(0.7)  # 0.725 lies between 0.7 and 0.75: the milder
    assert harder(ratio, 0.85, "up") == pytest.approx(0.9)  # at least one step
    assert harder(ratio, 0.9, "up") is None and harder(ratio, 0.0, "up") is None  # the hardest; off
    layers = CategoricalDistribution([0, 5, 4, 3])
    assert harder(layers, 5, "down") == 4 and harder(layers, 4, "down") == 3 and harder(layers, 3, "down") is None
    assert harder(layers, 0, "down") is None  # 0 keeps every layer: nothing cut to push
    assert harder(IntDistribution(0, 64), 32, "down") == 17  # halfway to 1 (0 is off): 16.5, the milder
    assert harder(FloatDistribution(0.0, 1.0), 0.5, "down") == pytest.approx(0.25)  # continuous: the midpoint


def test_a_pushed_anchor_keeps_its_recipe_cut_harder_and_int8_when_it_quantized_nothing(digits) -> None:
    bits = {f"quantize.bits.net.{i}": "fp32" for i in (0, 2, 4)}
    anchor = _trial(digits, 0.0, anchor="prune", **{"prune.ratio": 0.2, "distill.epochs": 2, **bits})
    params = push_params(anchor, digits)
    assert params is not None and params["prune.ratio"] == pytest.approx(0.55)
    student = split_params(params)[0]
    assert {k: v for k, v in student.items() if k != "prune.ratio"} == {
        k: v for k, v in split_params(anchor.params)[0].items() if k != "prune.ratio"}  # same distillation
    assert {k: v for k, v in params.items() if k not in student} == standard_settings(digits)[0]
    assert [s.type for s in digits.sample(FixedTrial(params)).steps] == ["prune", "distill", "quantize"]
    # Quantized already: its quantization is kept
    int8 = _trial(digits, 0.0, anchor="x", **{"prune.ratio": 0.2, "distill.epochs": 2, **dict.fromkeys(bits, "int8")})
    assert split_params(push_params(int8, digits))[1] == split_params(int8.params)[1]
    # Nothing cut, or cut the hardest already: no push
    assert push_params(_trial(digits, 0.0, **{"prune.ratio": 0.0, "distill.epochs": 2}), digits) is None
    assert push_params(_trial(digits, 0.0, **{"prune.ratio": 0.9, "distill.epochs": 2}), digits) is None


def test_the_ladder_stays_unquantized_where_the_study_measured_int8_alone_slower(digits) -> None:
    """The digits MLP runs 1.3-1.7x slower in int8 on every CPU measured: a push (and a follow-up trained
    longer) of an unquantized rung then stays unquantized; where int8 measured faster it takes int8."""
    from search.reuse import longer_params, standard_is_slower

    def measured(trial, latency: float, **attrs):
        return optuna.trial.create_trial(params=trial.params, distributions=trial.distributions,
                                         values=[0.9, latency, 100.0], user_attrs={**trial.user_attrs, **attrs})

    fp32 = {f"quantize.bits.net.{i}": "fp32" for i in (0, 2, 4)}
    off = {"prune.ratio": 0.0, "distill.epochs": 0}
    base = measured(_trial(digits, 0.0, **off, **fp32), 1.0, baseline=True)
    int8_alone = _trial(digits, 0.0, anchor="quantize", **off, **standard_settings(digits)[0])
    anchor = _trial(digits, 0.0, anchor="prune", **{"prune.ratio": 0.2, "distill.epochs": 2, **fp32})
    slower = [base, measured(int8_alone, 1.3), anchor]
    faster = [base, measured(int8_alone, 0.5), anchor]
    assert standard_is_slower(slower, digits) and not standard_is_slower(faster, digits)
    assert not standard_is_slower([base, anchor], digits)  # not measured yet: int8, as before
    # A cut that also quantizes is not quantization alone: it tells nothing about int8's own speed.
    cut_int8 = _trial(digits, 0.0, **{"prune.ratio": 0.2, "distill.epochs": 2}, **standard_settings(digits)[0])
    assert not standard_is_slower([base, measured(cut_int8, 1.3)], digits)

    for follow_up in (push_params(anchor, digits, slower), longer_params(anchor, digits, slower)):
        assert split_params(follow_up)[1] == split_params(anchor.params)[1]  # fp32, as the rung was
        assert [s.type for s in digits.sample(FixedTrial(follow_up)).steps] == ["prune", "distill"]
    for follow_up in (push_params(anchor, digits, faster), longer_params(anchor, digits, faster)):
        assert split_params(follow_up)[1] == standard_settings(digits)[0]


def test_only_a_feasible_anchor_or_push_with_half_the_drop_to_spare_is_pushed(digits) -> None:
    cut = {"prune.ratio": 0.2, "distill.epochs": 2}
    assert wants_push(_trial(digits, 0.97 - 0.96, anchor="prune", **cut), 0.02)  # half spare (0.010000000000000009)
    assert wants_push(_trial(digits, -0.01, **{PUSHED_ATTR: 3}, **cut), 0.02)  # a push is pushed again
    assert not wants_push(_trial(digits, 0.011, anchor="prune", **cut), 0.02)  # less than half spare
    assert not wants_push(_trial(digits, 0.0, **cut), 0.02)  # sampled: the sampler's to follow
    assert not wants_push(_trial(digits, 0.0, TrialState.PRUNED, anchor="prune", rejected=True, **cut), 0.02)
    assert not wants_push(_trial(digits, None, anchor="prune", **cut), 0.02)  # no drop recorded


def test_a_push_is_queued_once_within_the_budget_and_switchable(digits, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="s", directions=["maximize", "minimize", "minimize"])
    study.add_trial(_trial(digits, 0.0, anchor="prune", **{"prune.ratio": 0.2, "distill.epochs": 2}))
    parent = study.trials[0]
    assert not enqueue_push(study, parent, digits, budget=1, storage=storage)  # no budget left
    assert not enqueue_push(study, parent, replace(digits, guide=Guide(push_cuts=False)), 10, storage)
    assert enqueue_push(study, parent, digits, budget=10, storage=storage)
    assert not enqueue_push(study, parent, digits, budget=10, storage=storage)  # once
    (waiting,) = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert waiting.user_attrs == {PUSHED_ATTR: 0}
    assert waiting.system_attrs["fixed_params"]["prune.ratio"] == pytest.approx(0.55)


def test_a_push_is_named_in_progress_lines() -> None:
    from search.reuse import variant_label

    assert variant_label(None, None, None, 2) == "trial 2's cut pushed harder"


def test_a_follow_up_trained_longer_of_a_rung_is_a_rung(digits) -> None:
    """The ladder goes on through training: prune 0.55 at 2 epochs failed, at 4 epochs it held with half to spare."""
    anchor = _trial(digits, 0.0, anchor="prune", **{"prune.ratio": 0.2, "distill.epochs": 2})
    push = _trial(digits, 0.0225, **{PUSHED_ATTR: 0}, **{"prune.ratio": 0.55, "distill.epochs": 2})
    sampled = _trial(digits, 0.0, **{"prune.ratio": 0.55, "distill.epochs": 2})
    trials = {0: anchor, 1: push, 2: sampled}
    longer = _trial(digits, 0.01, longer_of=1, **{"prune.ratio": 0.55, "distill.epochs": 4})
    assert wants_push(longer, 0.02, trials)
    params = push_params(longer, digits)
    assert params is not None and params["prune.ratio"] == pytest.approx(0.7) and params["distill.epochs"] == 4
    assert not wants_push(longer, 0.02)  # its parent unknown: not known to be a rung
    assert not wants_push(_trial(digits, 0.0, longer_of=2, **{"prune.ratio": 0.55, "distill.epochs": 4}), 0.02, trials)


def test_a_failed_rung_steps_back_halfway_to_the_last_that_held(digits) -> None:
    ratio = FloatDistribution(0.0, 0.9, step=0.05)
    assert between(ratio, 0.2, 0.55) == pytest.approx(0.35)  # 0.35 and 0.4 equally near 0.375: the milder
    assert between(ratio, 0.55, 0.7) == pytest.approx(0.6) and between(ratio, 0.85, 0.9) is None
    assert between(CategoricalDistribution([0, 5, 4, 3]), 5, 4) is None  # no layer count between 5 and 4
    assert between(CategoricalDistribution([0, 5, 4, 3]), 5, 3) == 4
    assert between(FloatDistribution(0.0, 1.0), 0.2, 0.6) == pytest.approx(0.4)
    held = _trial(digits, 0.0, anchor="prune", **{"prune.ratio": 0.2, "distill.epochs": 2})
    bits = {f"quantize.bits.net.{i}": "int8" for i in (0, 2, 4)}
    gone_too_far = _trial(digits, 0.03, longer_of=1, **{"prune.ratio": 0.55, "distill.epochs": 4, **bits})
    params = step_back_params(gone_too_far, held, digits)
    assert params is not None and params["prune.ratio"] == pytest.approx(0.35)
    assert {k: v for k, v in params.items() if k != "prune.ratio"} == {
        k: v for k, v in gone_too_far.params.items() if k != "prune.ratio"}  # its training and quantization kept
    one_step = _trial(digits, 0.03, **{"prune.ratio": 0.25, "distill.epochs": 2})
    assert step_back_params(one_step, held, digits) is None  # nothing between 0.2 and 0.25
    assert failed(gone_too_far, 0.02) and not failed(held, 0.02)
    assert failed(_trial(digits, None, TrialState.PRUNED, rejected=True), 0.02)
    assert not failed(_trial(digits, None, TrialState.FAIL), 0.02)


def test_a_step_back_is_queued_once_after_the_last_follow_up_and_switchable(digits, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="s", directions=["maximize", "minimize", "minimize"])
    cut = {"distill.epochs": 2, "distill.temperature": 2.0}
    study.add_trial(_trial(digits, 0.0, anchor="prune", **{"prune.ratio": 0.2, **cut}))
    study.add_trial(_trial(digits, 0.03, **{PUSHED_ATTR: 0}, **{"prune.ratio": 0.55, **cut}))
    study.add_trial(_trial(digits, 0.03, **{"prune.ratio": 0.7, **cut}))  # sampled: not a rung
    push, sampled = study.trials[1], study.trials[2]
    assert not enqueue_step_back(study, sampled, digits, budget=10, storage=storage)
    assert not enqueue_step_back(study, push, replace(digits, guide=Guide(push_cuts=False)), 10, storage)
    study.enqueue_trial({"prune.ratio": 0.55, "distill.epochs": 4}, user_attrs={"longer_of": 1})
    assert not enqueue_step_back(study, push, digits, budget=10, storage=storage)  # its follow-up tells first
    # The follow-up, run: over the limit too
    study.add_trial(_trial(digits, 0.025, longer_of=1, **{**cut, "prune.ratio": 0.55, "distill.epochs": 4}))
    longer = study.trials[-1]
    assert enqueue_step_back(study, longer, digits, budget=10, storage=storage)
    assert not enqueue_step_back(study, longer, digits, budget=10, storage=storage)  # once
    (back,) = [t for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)) if BACK_ATTR in t.user_attrs]
    assert back.user_attrs == {BACK_ATTR: longer.number}
    assert back.system_attrs["fixed_params"]["prune.ratio"] == pytest.approx(0.35)
    assert back.system_attrs["fixed_params"]["distill.epochs"] == 4
    from search.reuse import variant_label

    assert variant_label(None, None, None, None, 6) == "trial 6's cut stepped back"


def test_a_student_already_queued_is_not_queued_again_by_another_follow_up(digits, tmp_path: Path) -> None:
    """Prune 0.55 at 4 epochs is both the push's follow-up trained longer and the longer anchor's push."""
    from search.reuse import enqueue_longer

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="s", directions=["maximize", "minimize", "minimize"])
    cut = {"distill.temperature": 2.0, **{f"quantize.bits.net.{i}": "int8" for i in (0, 2, 4)}}
    study.add_trial(_trial(digits, 0.0, anchor="prune", **{**cut, "prune.ratio": 0.2, "distill.epochs": 2}))
    study.add_trial(_trial(digits, 0.03, **{PUSHED_ATTR: 0}, **{**cut, "prune.ratio": 0.55, "distill.epochs": 2}))
    study.add_trial(_trial(digits, 0.0, longer_of=0, **{**cut, "prune.ratio": 0.2, "distill.epochs": 4}))
    assert enqueue_longer(study, study.trials[1], digits, budget=10, storage=storage)  # 0.55 at 4 epochs, queued
    assert push_params(study.trials[2], digits)["distill.epochs"] == 4  # the same student...
    assert not enqueue_push(study, study.trials[2], digits, budget=10, storage=storage)  # ...is not queued twice
    assert len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) == 1
