"""The technique registry: the only list of techniques, the only order, and the shape each one has."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import optuna
import pytest

from search.params import Categorical
from search.recipe import Recipe
from search.techniques import REGISTRY, SampleContext, Technique, TechniqueConfig, TechniqueSpace
from search.techniques.registry import Registry

SEARCH = Path(__file__).resolve().parents[3] / "search"


def test_the_registry_holds_both_stage_orders() -> None:
    assert REGISTRY.names() == ["transformer_prune", "factorize", "prune", "distill", "share", "quantize"]
    graph = [t.name for t in REGISTRY.graph_order()]
    # Sharing stores as a codebook only what quantize left fp32: its ONNX stage runs after quantize's.
    assert graph.index("quantize") < graph.index("share")
    students = [t.student for t in REGISTRY.model_order()]
    assert students == sorted(students, reverse=True), "student stages must come first"
    assert [t.name for t in REGISTRY.model_order() if t.student] == ["transformer_prune", "factorize", "prune",
                                                                     "distill"]


def test_every_technique_has_the_shape_the_contract_states() -> None:
    for technique in REGISTRY.model_order():
        config = type(technique).config_type
        assert issubclass(config, TechniqueConfig) and config.type == technique.name
        assert dataclasses.is_dataclass(config) and config.__dataclass_params__.frozen
        assert REGISTRY.of(config.__new__(config)) is technique
        assert REGISTRY.config_type(technique.name) is config
        for key, rule in {**technique.rules, **technique.settings}.items():
            assert rule.help, f"{technique.name}.{key} has no help (compsearch validate --explain prints it)"
        assert set(technique.conditions) <= set(technique.rules)
        # Every technique says what its standard setting is, and how to leave it out (tests/search/test_guide.py).
        own = type(technique)
        assert own.anchors is not Technique.anchors and own.off_params is not Technique.off_params


def test_recipes_resolve_their_type_tags_through_the_registry() -> None:
    with pytest.raises(ValueError, match="unknown technique type 'magic'; known: .*'quantize'"):
        Recipe.from_dict({"steps": [{"type": "magic"}]})


class _Config(TechniqueConfig):
    type = "toy"


@dataclasses.dataclass(frozen=True)
class ToyConfig(TechniqueConfig):
    type = "toy"
    level: int = 1


class Toy(Technique):
    name = "toy"
    config_type = ToyConfig
    order = 45

    def sample(self, trial: optuna.Trial, space: TechniqueSpace,
               context: SampleContext | None = None) -> ToyConfig | None:
        return ToyConfig(level=space.dims["level"].suggest(trial, "toy.level"))


def test_a_registry_refuses_what_would_break_the_order() -> None:
    registry = Registry()
    registry.add(Toy())
    with pytest.raises(TypeError, match="registered twice"):
        registry.add(Toy())

    class Clash(Toy):
        name = "clash"
        config_type = dataclasses.make_dataclass("ClashConfig", [], bases=(ToyConfig,), frozen=True,
                                                 namespace={"type": "clash"})

    with pytest.raises(TypeError, match="order 45 is taken by 'toy'"):
        registry.add(Clash())

    class LateStudent(Toy):
        name = "late"
        config_type = dataclasses.make_dataclass("LateConfig", [], bases=(ToyConfig,), frozen=True,
                                                 namespace={"type": "late"})
        order = 50
        student = True

    with pytest.raises(TypeError, match="ordered after a technique that is not a student"):
        registry.add(LateStudent())

    class Mislabelled(Toy):
        name = "other"
        order = 60

    with pytest.raises(TypeError, match="type tag 'toy', not the technique's name 'other'"):
        Registry().add(Mislabelled())


def test_a_new_technique_samples_through_its_space() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    config = Toy().sample(trial, TechniqueSpace("toy", {"level": Categorical((1, 2, 3))}))
    assert config.level in (1, 2, 3) and "toy.level" in trial.params


def test_the_stage_runner_names_no_technique() -> None:
    source = (SEARCH / "compress.py").read_text()
    for name in REGISTRY.names():
        assert not re.search(rf"\b{name}\b", source), f"search/compress.py names {name!r}"


def test_one_fine_tuning_loop() -> None:
    """Optimizer, batch order, masks and the lock's let-through are written once, in training.py."""
    for path in (SEARCH / "techniques").rglob("*.py"):
        if path.name == "training.py":
            continue
        text = path.read_text()
        for marker in ("torch.optim.", "let_measurements_through", ".backward()", "def _set_submodule",
                       "def set_submodule"):
            assert marker not in text, f"{path.relative_to(SEARCH)} has its own {marker}"
