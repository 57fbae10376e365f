"""The one registry of techniques, keyed by config class, holding the only order of the stages.

A technique module registers its class with `@register`; `search.techniques` imports every
module of the package, so a new technique is one new file. Recipes resolve their JSON type
tags here, the space loader finds a technique by its YAML key here, and the stage runner
takes both stage orders from here.
"""

from __future__ import annotations

from search.techniques.base import Technique, TechniqueConfig


class Registry:
    def __init__(self) -> None:
        self._by_config: dict[type[TechniqueConfig], Technique] = {}

    def add(self, technique: Technique) -> None:
        cls = type(technique)
        config = cls.config_type
        if config.type != cls.name:
            raise TypeError(f"{cls.__name__}: config {config.__name__} has type tag {config.type!r}, "
                            f"not the technique's name {cls.name!r}")
        for other in self._by_config.values():
            if other.name == cls.name or other.config_type is config:
                raise TypeError(f"{cls.__name__}: technique {cls.name!r} is registered twice")
            if other.order == cls.order:
                raise TypeError(f"{cls.__name__}: order {cls.order} is taken by {other.name!r}")
        self._by_config[config] = technique
        # The student stages must be a prefix of the model stage: what a student cache holds is the
        # model after them, and every other step runs on it.
        seen_other = False
        for t in self.model_order():
            if t.student and seen_other:
                raise TypeError(f"{type(t).__name__}: student technique {t.name!r} is ordered after a technique "
                                "that is not a student")
            seen_other |= not t.student

    def model_order(self) -> list[Technique]:
        """Every technique, in the order of the PyTorch stage."""
        return sorted(self._by_config.values(), key=lambda t: t.order)

    def graph_order(self) -> list[Technique]:
        """Every technique, in the order of the ONNX stage."""
        return sorted(self._by_config.values(),
                      key=lambda t: t.order if t.graph_order is None else t.graph_order)

    def names(self) -> list[str]:
        return [t.name for t in self.model_order()]

    def named(self, name: str) -> Technique:
        for t in self._by_config.values():
            if t.name == name:
                return t
        raise KeyError(name)

    def of(self, config: TechniqueConfig) -> Technique:
        """The technique that applies `config`."""
        return self._by_config[type(config)]

    def config_type(self, tag: str) -> type[TechniqueConfig]:
        """The config class for a JSON type tag; KeyError if none."""
        return type(self.named(tag)).config_type


REGISTRY = Registry()


def register(cls: type[Technique]) -> type[Technique]:
    """Class decorator: add one instance of `cls` to the registry."""
    REGISTRY.add(cls())
    return cls
