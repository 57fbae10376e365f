"""Recipes round-trip through JSON with the same hash, and sampling builds valid recipes."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from search.recipe import Recipe
from search.space import load_space
from search.techniques.distill import DistillConfig
from search.techniques.prune import PruneConfig
from search.techniques.quantize import QuantizeConfig

SPACE = Path(__file__).resolve().parents[2] / "spaces" / "digits.yaml"


def test_json_round_trip_keeps_recipe_and_hash() -> None:
    recipe = Recipe((
        PruneConfig(ratio=0.35, structure="structured"),
        DistillConfig(epochs=3, temperature=2.0, alpha=0.7),
        QuantizeConfig(layer_bits=(("net.0", "int8"), ("net.2", "fp32")), calibration="entropy", per_channel=False),
    ))
    again = Recipe.from_json(recipe.to_json())
    assert again == recipe
    assert again.hash == recipe.hash
    assert again.get("quantize").bits_of("net.0") == "int8"


def test_hash_changes_with_any_setting() -> None:
    a = Recipe((PruneConfig(ratio=0.3),))
    b = Recipe((PruneConfig(ratio=0.35),))
    assert a.hash != b.hash
    assert Recipe().is_baseline and Recipe().hash != a.hash


def test_unknown_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown technique type 'magic'"):
        Recipe.from_dict({"steps": [{"type": "magic"}]})


def test_invalid_config_values_are_refused() -> None:
    with pytest.raises(ValueError, match="0 <= ratio < 1"):
        PruneConfig(ratio=1.0)
    with pytest.raises(ValueError, match="bits must be one of"):
        QuantizeConfig(layer_bits=(("net.0", "int3"),))


def test_sampled_recipes_round_trip(tmp_path: Path) -> None:
    space = load_space(SPACE, tmp_path)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(10):
        trial = study.ask()
        recipe = space.sample(trial)
        assert Recipe.from_json(recipe.to_json()).hash == recipe.hash
        study.tell(trial, [0.0, 0.0, 0.0])
