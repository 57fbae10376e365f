"""Recipes: the frozen, JSON-round-trippable description of one compressed candidate.

A recipe is an ordered tuple of technique configs. Each config is a frozen dataclass with a
type tag (torchao style), so any trial can be rebuilt from the JSON logged with it, and the
recipe hash names cached work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, ClassVar

_CONFIG_TYPES: dict[str, type[TechniqueConfig]] = {}


@dataclass(frozen=True)
class TechniqueConfig:
    """Base of every technique config. Subclasses set `type` and register themselves."""

    type: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        for f in dataclasses.fields(self):
            out[f.name] = _jsonable(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TechniqueConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names - {"type"}
        if unknown:
            raise ValueError(f"{cls.type}: unknown fields {sorted(unknown)}; allowed: {sorted(names)}")
        kwargs = {k: _freeze(v) for k, v in data.items() if k != "type"}
        return cls(**kwargs)

    def summary(self) -> str:
        return self.type


def register_config(cls: type[TechniqueConfig]) -> type[TechniqueConfig]:
    if not cls.type:
        raise TypeError(f"{cls.__name__} must set a `type` tag")
    _CONFIG_TYPES[cls.type] = cls
    return cls


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        # Tuples of (key, value) pairs are how frozen configs hold mappings (layer -> bits).
        if value and all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value):
            return {k: _jsonable(v) for k, v in value}
        return [_jsonable(v) for v in value]
    return value


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple((str(k), _freeze(v)) for k, v in value.items())
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


@dataclass(frozen=True)
class Recipe:
    """The steps of one candidate, in pipeline order. An empty recipe is the uncompressed baseline."""

    steps: tuple[TechniqueConfig, ...] = ()

    def get(self, type_: str) -> TechniqueConfig | None:
        return next((s for s in self.steps if s.type == type_), None)

    def to_dict(self) -> dict[str, Any]:
        return {"steps": [s.to_dict() for s in self.steps]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        steps = []
        for raw in data.get("steps", []):
            kind = raw.get("type")
            if kind not in _CONFIG_TYPES:
                raise ValueError(f"unknown technique type {kind!r}; known: {sorted(_CONFIG_TYPES)}")
            steps.append(_CONFIG_TYPES[kind].from_dict(raw))
        return cls(tuple(steps))

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        return cls.from_dict(json.loads(text))

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    @property
    def is_baseline(self) -> bool:
        return not self.steps

    def summary(self) -> str:
        return " + ".join(s.summary() for s in self.steps) or "baseline (fp32, uncompressed)"
