"""Recipes: the frozen, JSON-round-trippable description of one compressed candidate.

A recipe is an ordered tuple of technique configs. Each config is a frozen dataclass with a
type tag (torchao style), resolved through the technique registry, so any trial can be rebuilt
from the JSON logged with it, and the recipe hash names cached work.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from search.techniques import REGISTRY, TechniqueConfig

__all__ = ["Recipe", "TechniqueConfig"]


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
            try:
                config_type = REGISTRY.config_type(kind)
            except KeyError:
                raise ValueError(f"unknown technique type {kind!r}; known: {sorted(REGISTRY.names())}") from None
            steps.append(config_type.from_dict(raw))
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
