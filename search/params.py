"""Searchable dimensions, parsed from YAML by the schema's rules (`hardware.schema.Rule`).

In a space file a searchable key takes one of three forms:
  - a scalar: fixed, not searched (`ratio: 0.5`)
  - a list: a categorical choice (`bits: [fp32, int8]`)
  - a mapping with low/high (and optional step, log): a range (`ratio: {low: 0, high: 0.8, step: 0.1}`)
Every scalar in them is checked by the same `check_value` that checks the rest of a space,
task options and hardware profiles, so the errors read alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import optuna

from hardware.errors import SpaceError, allowed_list, did_you_mean
from hardware.schema import Rule, check_keys, check_value

__all__ = ["Categorical", "Dimension", "Range", "Rule", "parse_dimension", "parse_options"]


@dataclass(frozen=True)
class Categorical:
    choices: tuple

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if len(self.choices) == 1:
            return self.choices[0]
        return trial.suggest_categorical(name, list(self.choices))

    def describe(self) -> str:
        if len(self.choices) == 1:
            return f"fixed {self.choices[0]!r}"
        return "one of " + allowed_list(self.choices)


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    step: float | None = None
    log: bool = False
    integer: bool = False

    def suggest(self, trial: optuna.Trial, name: str) -> float | int:
        if self.low == self.high:
            return self.low
        if self.integer:
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        value = trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)
        if self.step is None:
            return value
        # On a stepped range the value is a decimal the space wrote (0.35, not 0.35000000000000003):
        # count the steps, then add them up in decimal, so nothing has to round it to some digits later.
        steps = round((value - self.low) / self.step)
        return min(float(Decimal(repr(self.low)) + steps * Decimal(repr(self.step))), self.high)

    def describe(self) -> str:
        kind = "int" if self.integer else "float"
        extra = f", step {self.step}" if self.step else ""
        extra += ", log" if self.log else ""
        return f"{kind} in [{self.low}, {self.high}]{extra}"


Dimension = Categorical | Range

_RANGE_KEYS = ("low", "high", "step", "log")


def parse_dimension(file: str, key: str, rule: Rule, raw: object) -> Dimension:
    """Turn the YAML value of one key into a Dimension, or raise SpaceError naming the key."""
    if isinstance(raw, dict):
        if not rule.searchable or rule.kind not in ("float", "int"):
            raise SpaceError(file, key, f"takes a single value or a list ({rule.allowed()}), not a range", raw)
        unknown = [k for k in raw if k not in _RANGE_KEYS]
        if unknown:
            raise SpaceError(
                file, f"{key}.{unknown[0]}",
                f"unknown range key; allowed: {allowed_list(_RANGE_KEYS)}{did_you_mean(unknown[0], _RANGE_KEYS)}",
                unknown[0],
            )
        for need in ("low", "high"):
            if need not in raw:
                raise SpaceError(file, f"{key}.{need}", "is required in a range", None, show_given=False)
        low = check_value(file, f"{key}.low", rule, raw["low"])
        high = check_value(file, f"{key}.high", rule, raw["high"])
        if low > high:
            raise SpaceError(file, key, f"low <= high must hold, but got (low={low}, high={high})", show_given=False)
        step = raw.get("step")
        if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0
                                 or not math.isfinite(step)):
            raise SpaceError(file, f"{key}.step", "must be a number > 0", step)
        log = raw.get("log", False)
        if not isinstance(log, bool):
            raise SpaceError(file, f"{key}.log", "must be true or false", log)
        if log and (low <= 0 or step is not None):
            raise SpaceError(file, key, "a log range needs low > 0 and no step", raw)
        return Range(low, high, None if step is None else float(step), log, integer=rule.kind == "int")
    if isinstance(raw, list):
        if not rule.searchable:
            raise SpaceError(file, key, f"takes a single value ({rule.allowed()}), not a list", raw)
        if not raw:
            raise SpaceError(file, key, f"an empty list has nothing to choose; give {rule.allowed()}", raw)
        values = tuple(check_value(file, f"{key}[{i}]", rule, v) for i, v in enumerate(raw))
        if len(set(values)) != len(values):
            raise SpaceError(file, key, "choices must not repeat", raw)
        return Categorical(values)
    return Categorical((check_value(file, key, rule, raw),))


def parse_options(file: str, prefix: str, rules: dict[str, Rule], raw: object,
                  also: tuple[str, ...] = ()) -> dict[str, Dimension]:
    """Parse a mapping of searchable keys against their rules; unknown keys get a "did you mean".

    `also`: further keys the mapping may hold that other rules check (a technique's settings)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpaceError(file, prefix, "must be a mapping of keys to values", raw)
    check_keys(file, prefix, (*rules, *also), raw)
    dims: dict[str, Dimension] = {}
    for name, rule in rules.items():
        value = raw.get(name, rule.default)
        if value is None:
            raise SpaceError(file, f"{prefix}.{name}", f"is required ({rule.allowed()})", None, show_given=False)
        dims[name] = parse_dimension(file, f"{prefix}.{name}", rule, value)
    return dims
