"""Student reuse (search/reuse.py): which params fix a student, when variants are queued, and a study
whose variant loads its parent's cached student."""

from __future__ import annotations

import json
import random
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import FixedTrial, TrialState

from search.cli import main
from search.compress import split_recipe
from search.guide import Guide
from search.reuse import (
    VARIANT_ATTR,
    enqueue_longer,
    enqueue_variants,
    split_params,
    trains_longer_first,
    variant_params,
    wants_variants,
)
from search.space import load_space

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory):
    return load_space(ROOT / "spaces" / "digits.yaml", tmp_path_factory.mktemp("models"))


def _parent(space, **params) -> optuna.trial.FrozenTrial:
    """A complete trial of `space` with `params` (the rest drawn at random, seeded)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(params)
    trial = study.ask()
    space.sample(trial)
    study.tell(trial, 1.0)
    return study.trials[0]


def _sampled(space) -> optuna.trial.FrozenTrial:
    """One trial of `space` sampled at random, with the prune ratio and distillation drawn nonzero."""
    return _parent(space, **{"prune.ratio": 0.5, "distill.epochs": 2})


def test_student_params_are_the_student_techniques_and_fix_the_student_prefix(digits) -> None:
    parent = _sampled(digits)
    student, others = split_params(parent.params)
    assert set(student) == {"prune.ratio", "distill.epochs", "distill.temperature"}
    assert others and all(k.startswith("quantize.") for k in others)
    prefix = split_recipe(digits.sample(FixedTrial(parent.params)))[0]
    assert [s.type for s in prefix.steps] == ["prune", "distill"]
    recipes = {digits.sample(FixedTrial(parent.params)).hash}
    variants = variant_params(parent, 4, random.Random(0))
    assert len(variants) == 4
    for i, params in enumerate(variants):
        assert {k: params[k] for k in student} == student and len(params) == len(student) + i + 1
        changed = [k for k, v in params.items() if v != parent.params[k]]
        assert len(changed) == 1  # one param pinned to another value, the siblings' ones to the parent's
        # Whatever the sampler draws for the rest (here the parent's values), each variant is a new recipe
        variant = digits.sample(FixedTrial({**parent.params, **params}))
        assert split_recipe(variant)[0].hash == prefix.hash  # the same student: a cache hit
        recipes.add(variant.hash)
    assert len(recipes) == 5
    assert variant_params(parent, 2, random.Random(0)) == variants[:2]  # seeded: a rerun pins the same


def test_variants_of_a_parent_with_one_free_param_take_its_other_values() -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    dists = {"prune.ratio": FloatDistribution(0.0, 0.9, step=0.05), "quantize.floor": CategoricalDistribution(
        ["fp32", "int8", "int4"]), "share.k": IntDistribution(2, 64), "quantize.per_channel": CategoricalDistribution(
        [True])}

    def parent(**params):
        params = {"prune.ratio": 0.5, "quantize.per_channel": True, **params}
        return optuna.trial.create_trial(params=params, distributions={k: dists[k] for k in params}, value=1.0)

    variants = variant_params(parent(**{"quantize.floor": "fp32"}), 3, random.Random(1))
    assert [v["prune.ratio"] for v in variants] == [0.5] * 3
    assert sorted(v["quantize.floor"] for v in variants[:2]) == ["int4", "int8"]  # then one other than fp32
    assert variants[2]["quantize.floor"] != "fp32"
    ks = [v["share.k"] for v in variant_params(parent(**{"share.k": 8}), 5, random.Random(1))]
    assert len(set(ks)) == 5 and 8 not in ks and all(2 <= k <= 64 for k in ks)
    assert variant_params(parent(), 2, random.Random(0)) == []  # nothing outside the student can change


def _study_with_parent(space, tmp_path: Path, drop: float, cached: str = "miss", **attrs) -> optuna.Study:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="s", directions=["maximize", "minimize", "minimize"])
    sampled = _sampled(space)
    study.add_trial(optuna.trial.create_trial(
        params=sampled.params, distributions=sampled.distributions, values=[0.9, 1.0, 100.0],
        user_attrs={"quality_drop": drop, "student_cached": cached, "student_key": "k", **attrs}))
    return study


def _variants(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)) if VARIANT_ATTR in t.user_attrs]


def test_a_promising_new_student_gets_its_variants_within_the_budget(digits, tmp_path: Path) -> None:
    study = _study_with_parent(digits, tmp_path, drop=0.015)  # within the 0.02 allowed
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    parent = study.trials[0]
    assert enqueue_variants(study, parent, digits, budget=2, storage=storage) == 1  # 1 used, 1 left
    assert enqueue_variants(study, parent, digits, budget=10, storage=storage) == 0  # once per parent
    # A later trial with the same student (a cache hit) gets none either: its variants ran; another gets some
    for key, n in (("k", 0), ("k2", 1)):  # `true`: digits has one standard quantization (int8), at least one
        study.add_trial(optuna.trial.create_trial(
            params=parent.params, distributions=parent.distributions, values=[0.9, 1.0, 100.0],
            user_attrs={"quality_drop": 0.0, "student_cached": "hit", "student_key": key}))
        assert enqueue_variants(study, study.trials[-1], digits, budget=10, storage=storage) == n
    variant = _variants(study)[0]
    assert variant.state == TrialState.WAITING and variant.user_attrs[VARIANT_ATTR] == parent.number
    student = split_params(parent.params)[0]
    assert {k: variant.system_attrs["fixed_params"][k] for k in student} == student


def test_a_trial_rejected_early_just_over_the_limit_is_promising(digits) -> None:
    sampled = _sampled(digits)

    def rejected(drop: float) -> optuna.trial.FrozenTrial:
        return optuna.trial.create_trial(params=sampled.params, distributions=sampled.distributions,
                                         state=TrialState.PRUNED, user_attrs={
                                             "rejected": True, "quality_drop": drop, "student_cached": "miss"})

    assert wants_variants(rejected(0.035), 0.02)  # rejection stops at 1.5x + noise; its student may be fine
    assert not wants_variants(rejected(0.05), 0.02)


def test_a_retried_variant_stays_a_variant(digits, tmp_path: Path) -> None:
    from search.recovery import retry_trial

    study = _study_with_parent(digits, tmp_path, drop=0.0)
    parent = study.trials[0]
    study.add_trial(optuna.trial.create_trial(params=parent.params, distributions=parent.distributions,
                                              state=TrialState.FAIL, user_attrs={VARIANT_ATTR: 0}))
    retry_trial(study, study.trials[1])
    (retry,) = _variants(study)
    assert retry.user_attrs == {VARIANT_ATTR: 0, "retry_of": 1}
    # A follow-up trained longer stays one too (so it is not followed up again)
    study.add_trial(optuna.trial.create_trial(params=parent.params, distributions=parent.distributions,
                                              state=TrialState.FAIL, user_attrs={"longer_of": 0}))
    retry_trial(study, study.trials[-1])
    assert study.get_trials(deepcopy=False)[-1].user_attrs == {"longer_of": 0, "retry_of": 3}


@pytest.mark.parametrize(("drop", "attrs", "guide"), [
    (0.05, {}, Guide()),  # more than twice the allowed drop: the student is too weak
    (0.0, {"student_cached": "off"}, Guide()),  # no cache: a variant would train its student again
    (0.0, {VARIANT_ATTR: 0}, Guide()),  # itself a variant
    (0.0, {}, Guide(reuse_students=0)),  # `reuse_students: false`
    (0.0, {"student_proxy_drop": 0.03}, Guide()),  # its student alone, unquantized, misses already
])
def test_no_variants(digits, tmp_path: Path, drop: float, attrs: dict, guide: Guide) -> None:
    from dataclasses import replace

    space = replace(digits, guide=guide)
    study = _study_with_parent(space, tmp_path, drop, **attrs)
    assert not enqueue_variants(study, study.trials[0], space, budget=10, storage=f"sqlite:///{tmp_path}/x.db")
    assert not _variants(study)
    assert wants_variants(study.trials[0], space.max_quality_drop) == (not attrs and drop <= 0.04)


def test_a_cut_student_over_the_limit_waits_for_its_follow_up_trained_longer(digits, tmp_path: Path) -> None:
    """Over the allowed drop but promising: the follow-up trained longer comes first and gets the variants."""
    from dataclasses import replace

    study = _study_with_parent(digits, tmp_path, drop=0.03)  # pruned 0.5, distilled 2 epochs; 0.02 allowed
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    parent = study.trials[0]
    assert wants_variants(parent, digits.max_quality_drop) and trains_longer_first(parent, digits)
    assert enqueue_variants(study, parent, digits, budget=10, storage=storage) == 0
    assert enqueue_longer(study, parent, digits, budget=10, storage=storage)
    # Without follow-ups, or for the follow-up itself (trained longer already), the variants are queued
    no_longer = replace(digits, guide=Guide(train_longer=False))
    assert not trains_longer_first(parent, no_longer)
    assert enqueue_variants(study, parent, no_longer, budget=10, storage=storage) == 1
    def finished(drop: float, epochs: int = 2, **attrs) -> optuna.trial.FrozenTrial:
        cut = _parent(digits, **{"prune.ratio": 0.5, "distill.epochs": epochs})
        return optuna.trial.create_trial(params=cut.params, distributions=cut.distributions,
                                         values=[0.9, 1.0, 100.0], user_attrs={"quality_drop": drop, **attrs})

    assert trains_longer_first(finished(0.03), digits)
    assert not trains_longer_first(finished(0.03, longer_of=0), digits)
    # Within the limit, or with nothing to train longer (the longest distillation of the space): no wait
    assert not trains_longer_first(finished(0.02), digits)
    longest = finished(0.03, epochs=10)
    assert not trains_longer_first(longest, digits)


SPACE = {
    "name": "reuse",
    "task": {"name": "digits", "options": {"hidden": 32, "epochs": 4}},
    "hardware": {"profiles": ["ort-cpu"]},
    "constraints": {"max_quality_drop": 0.5},
    "sampler": "random",
    "guide": {"anchors": False, "reuse_students": 2, "reject_early": False},
    "techniques": {"prune": {"structure": "structured", "ratio": [0.25, 0.5]}, "distill": {"epochs": 1},
                   "quantize": {"bits": ["fp32", "int8", "fp16"], "calibration": ["minmax", "entropy"]}},
}


@pytest.mark.slow  # a 4-trial study with MLflow: ~40 s here
def test_a_study_runs_variants_on_the_cached_student(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = tmp_path / "reuse.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    results = tmp_path / "results"
    assert main(["run", str(space), "--results-dir", str(results), "--trials", "4", "--seed", "1",
                 "--no-remeasure"]) == 0
    out = capsys.readouterr().out
    assert "trial 1's student is promising" in out and "2 variant(s) queued" in out
    assert "[variant of trial 1's student (cached)]" in out
    assert main(["show", "reuse", "--json", "--results-dir", str(results)]) == 0
    shown = json.loads(capsys.readouterr().out)
    trials = shown["trials"]
    parent = trials[1]
    assert parent["student"]["cached"] == "miss" and parent["variant_of"] is None
    for variant in trials[2:]:
        assert variant["variant_of"] == 1 and variant["state"] == "COMPLETE"
        assert variant["student"]["cached"] == "hit" and variant["student"]["key"] == parent["student"]["key"]
        assert variant["params"]["prune.ratio"] == parent["params"]["prune.ratio"]
        assert variant["recipe_hash"] != parent["recipe_hash"]
        assert variant["timings"]["student"] < parent["timings"]["student"]
    assert shown["guide"]["student_variants"] == 2 and shown["guide"]["student_cache_hits"] == 2
    saved = 2 * parent["student"]["seconds"] - sum(v["student"]["seconds"] for v in trials[2:])
    assert shown["guide"]["student_seconds_saved"] == pytest.approx(saved, abs=0.02) and saved > 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("reuse").experiment_id])
    tags = {r.data.tags["compsearch.trial"]: r.data.tags.get("variant_of") for r in runs
            if "compsearch.trial" in r.data.tags}
    assert tags == {"0": None, "1": None, "2": "1", "3": "1"}


def test_first_variants_take_the_standard_quantization_the_parent_did_not_use(digits) -> None:
    from search.reuse import standard_settings

    standard = standard_settings(digits)  # digits: the quantize anchors (int8 per-channel, int4, ...)
    assert standard and all(all(k.startswith("quantize.") for k in s) for s in standard)
    parent = _sampled(digits)
    student = split_params(parent.params)[0]
    new = [s for s in standard if any(k not in parent.params or parent.params[k] != v for k, v in s.items())]
    variants = variant_params(parent, len(new) + 1, random.Random(0), standard)
    assert len(variants) == len(new) + 1
    for params, setting in zip(variants, new, strict=False):
        assert params == {**student, **setting}  # complete: the sampler has nothing left to turn it off
        recipe = digits.sample(FixedTrial({**parent.params, **params}))
        assert "quantize" in [step.type for step in recipe.steps]
    assert len([k for k in variants[-1] if k not in student]) == 1  # then the pinned kind


def test_true_means_one_variant_per_standard_setting_the_student_did_not_use(digits, tmp_path: Path) -> None:
    from search.reuse import standard_settings, unused_standard

    assert Guide().variants_for(3) == 3 and Guide().variants_for(0) == 1  # at least one
    assert Guide(reuse_students=2).variants_for(3) == 2 and not Guide(reuse_students=0).reuses_students
    # A student with nothing quantized: digits' one standard setting (int8) is unused, so one variant, int8.
    bits = {f"quantize.bits.net.{i}": "fp32" for i in (0, 2, 4)}
    parent = _parent(digits, **{"prune.ratio": 0.5, "distill.epochs": 2, **bits})
    assert len(unused_standard(parent, standard_settings(digits))) == 1
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="s", directions=["maximize", "minimize", "minimize"])
    study.add_trial(optuna.trial.create_trial(
        params=parent.params, distributions=parent.distributions, values=[0.9, 1.0, 100.0],
        user_attrs={"quality_drop": 0.0, "student_cached": "miss", "student_key": "k"}))
    assert enqueue_variants(study, study.trials[0], digits, budget=10, storage=storage) == 1
    (variant,) = _variants(study)
    fixed = variant.system_attrs["fixed_params"]
    assert {k: v for k, v in fixed.items() if k.startswith("quantize.")} == standard_settings(digits)[0]


def test_a_cut_students_follow_up_trains_it_twice_as_long(digits) -> None:
    from search.reuse import longer_params, standard_settings

    bits = {f"quantize.bits.net.{i}": "int8" for i in (0, 2, 4)}
    parent = _parent(digits, **{"prune.ratio": 0.5, "distill.epochs": 2, **bits})
    params = longer_params(parent, digits)
    assert params is not None and params["distill.epochs"] == 4  # 0..10 in spaces/digits.yaml
    assert {k: v for k, v in params.items() if k != "distill.epochs"} == {
        k: v for k, v in parent.params.items() if k != "distill.epochs"}  # the parent's quantization kept
    assert longer_params(_parent(digits, **{"prune.ratio": 0.5, "distill.epochs": 7}), digits)["distill.epochs"] == 10
    assert longer_params(_parent(digits, **{"prune.ratio": 0.5, "distill.epochs": 10}), digits) is None  # longest
    assert longer_params(_parent(digits, **{"prune.ratio": 0.0, "distill.epochs": 2}), digits) is None  # no cut
    assert longer_params(_parent(digits, **{"prune.ratio": 0.5, "distill.epochs": 0}), digits) is None  # no recovery
    # A student alone (nothing quantized) comes back with the space's first standard quantization: int8
    alone = _parent(digits, **{"prune.ratio": 0.5, "distill.epochs": 2, **dict.fromkeys(bits, "fp32")})
    assert [s.type for s in digits.sample(FixedTrial(alone.params)).steps] == ["prune", "distill"]
    params = longer_params(alone, digits)
    assert params == {**split_params(params)[0], **standard_settings(digits)[0]}
    assert [s.type for s in digits.sample(FixedTrial(params)).steps] == ["prune", "distill", "quantize"]


def test_a_follow_up_is_queued_once_within_the_budget_and_not_followed_up(digits, tmp_path: Path) -> None:
    from dataclasses import replace

    from search.reuse import LONGER_ATTR, enqueue_longer

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = _study_with_parent(digits, tmp_path, drop=0.03)  # prune 0.5 + distill 2: a promising cut student
    parent = study.trials[0]
    assert not enqueue_longer(study, parent, digits, budget=1, storage=storage)  # no budget left
    assert not enqueue_longer(study, parent, replace(digits, guide=Guide(train_longer=False)), 10, storage)
    assert enqueue_longer(study, parent, digits, budget=10, storage=storage)
    assert not enqueue_longer(study, parent, digits, budget=10, storage=storage)  # once
    (waiting,) = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert waiting.user_attrs == {LONGER_ATTR: 0} and waiting.system_attrs["fixed_params"]["distill.epochs"] == 4
    follow_up = optuna.trial.create_trial(
        params=parent.params, distributions=parent.distributions, values=[0.9, 1.0, 100.0],
        user_attrs={"quality_drop": 0.0, "student_cached": "miss", LONGER_ATTR: 0})
    assert not enqueue_longer(study, follow_up, digits, budget=10, storage=storage)  # no chain
    (tmp_path / "weak").mkdir()
    weak = _study_with_parent(digits, tmp_path / "weak", drop=0.05)  # over 2x the allowed drop
    assert not enqueue_longer(weak, weak.trials[0], digits, budget=10, storage=f"sqlite:///{tmp_path}/weak/optuna.db")


def test_a_student_another_cut_beats_quantized_alike_gets_no_variants_or_follow_up(digits, tmp_path: Path) -> None:
    """MiniLM's FFN -25% anchor beside 5 of 6 layers: worse, slower and no smaller, both unquantized."""
    from search.follow_ups import after_trial
    from search.reuse import LONGER_ATTR, beaten_by

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="s", directions=["maximize", "minimize", "minimize"])
    milder = _parent(digits, **{"prune.ratio": 0.3, "distill.epochs": 2, "quantize.floor": "fp32"})
    rest = {k: v for k, v in milder.params.items() if not k.startswith(("prune.", "distill."))}

    def add(ratio: float, values: list[float], epochs: int = 2, **attrs) -> optuna.trial.FrozenTrial:
        cut = _parent(digits, **{**rest, "prune.ratio": ratio, "distill.epochs": epochs})
        study.add_trial(optuna.trial.create_trial(
            params=cut.params, distributions=cut.distributions, values=values,
            user_attrs={"quality_drop": 0.96 - values[0], "student_cached": "miss", "student_key": str(ratio),
                        **attrs}))
        return study.get_trials(deepcopy=False)[-1]

    better = add(0.5, [0.955, 1.0, 100.0])
    beaten = add(0.3, [0.950, 1.1, 100.0])  # worse and slower, as large
    assert beaten_by(beaten, study.get_trials(deepcopy=False), study.directions).number == better.number
    assert beaten_by(better, study.get_trials(deepcopy=False), study.directions) is None
    said: list[str] = []
    after_trial(digits, budget=20, storage=storage, say=said.append)(study, beaten)
    assert not study.get_trials(deepcopy=False, states=(TrialState.WAITING,))  # no variant, no follow-up
    assert said == [f"trial {beaten.number}'s student is beaten by trial {better.number}'s (as good or better on "
                    "every objective, quantized alike): no variants or follow-up trained longer for it"]
    # Faster on one objective is not beaten; nor is the same cut trained otherwise (the ladder's business)
    faster = add(0.3, [0.950, 0.9, 100.0], epochs=4)
    assert beaten_by(faster, study.get_trials(deepcopy=False), study.directions) is None
    same_cut = add(0.5, [0.952, 1.1, 100.0], epochs=4, **{LONGER_ATTR: better.number})  # beaten by its parent
    assert beaten_by(same_cut, study.get_trials(deepcopy=False), study.directions) is None
    # The better one itself gets them
    after_trial(digits, budget=20, storage=storage, say=said.append)(study, better)
    assert any(VARIANT_ATTR in t.user_attrs for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
