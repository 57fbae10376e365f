"""Searchable dimensions and the rules that parse them from YAML.

In a space file a searchable key takes one of three forms:
  - a scalar: fixed, not searched (`ratio: 0.5`)
  - a list: a categorical choice (`bits: [fp32, int8]`)
  - a mapping with low/high (and optional step, log): a range (`ratio: {low: 0, high: 0.8, step: 0.1}`)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna

from search.errors import SpaceError, allowed_list, did_you_mean


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
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> str:
        kind = "int" if self.integer else "float"
        extra = f", step {self.step}" if self.step else ""
        extra += ", log" if self.log else ""
        return f"{kind} in [{self.low}, {self.high}]{extra}"


Dimension = Categorical | Range


@dataclass(frozen=True)
class Rule:
    """What one key of a technique or task accepts.

    kind: "float", "int", "str" or "bool". `choices` limits str values; `minimum`/`maximum`
    bound numbers (inclusive unless `max_exclusive`). `searchable=False` keys take a scalar only.
    """

    kind: str
    default: Any = None
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    max_exclusive: bool = False
    searchable: bool = True
    help: str = ""

    def allowed(self) -> str:
        if self.choices:
            return "one of " + allowed_list(self.choices)
        if self.kind in ("float", "int"):
            lo = "-inf" if self.minimum is None else self.minimum
            hi = "inf" if self.maximum is None else self.maximum
            close = ")" if self.max_exclusive else "]"
            return f"{'an integer' if self.kind == 'int' else 'a number'} in [{lo}, {hi}{close}"
        return {"bool": "true or false", "str": "a string"}[self.kind]


_RANGE_KEYS = ("low", "high", "step", "log")


def _check_scalar(file: str, key: str, rule: Rule, value: object) -> object:
    if rule.kind == "bool":
        if not isinstance(value, bool):
            raise SpaceError(file, key, "must be true or false", value)
        return value
    if rule.kind == "str":
        if not isinstance(value, str):
            raise SpaceError(file, key, f"must be {rule.allowed()}", value)
        if rule.choices and value not in rule.choices:
            raise SpaceError(file, key, f"must be {rule.allowed()}{did_you_mean(value, rule.choices)}", value)
        return value
    # Numbers. YAML gives bool for `true`, which Python counts as int: refuse it explicitly.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpaceError(file, key, f"must be {rule.allowed()}", value)
    if rule.kind == "int" and not float(value).is_integer():
        raise SpaceError(file, key, f"must be {rule.allowed()}", value)
    too_low = rule.minimum is not None and value < rule.minimum
    too_high = rule.maximum is not None and (
        value >= rule.maximum if rule.max_exclusive else value > rule.maximum
    )
    if too_low or too_high:
        raise SpaceError(file, key, f"must be {rule.allowed()}", value)
    return int(value) if rule.kind == "int" else float(value)


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
        low = _check_scalar(file, f"{key}.low", rule, raw["low"])
        high = _check_scalar(file, f"{key}.high", rule, raw["high"])
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
        values = tuple(_check_scalar(file, f"{key}[{i}]", rule, v) for i, v in enumerate(raw))
        if len(set(values)) != len(values):
            raise SpaceError(file, key, "choices must not repeat", raw)
        return Categorical(values)
    return Categorical((_check_scalar(file, key, rule, raw),))


def parse_options(file: str, prefix: str, rules: dict[str, Rule], raw: object) -> dict[str, Dimension]:
    """Parse a mapping of keys against their rules; unknown keys get a "did you mean"."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpaceError(file, prefix, "must be a mapping of keys to values", raw)
    for k in raw:
        if k not in rules:
            raise SpaceError(
                file, f"{prefix}.{k}",
                f"unknown key; allowed: {allowed_list(rules)}{did_you_mean(str(k), rules)}", k,
            )
    dims: dict[str, Dimension] = {}
    for name, rule in rules.items():
        value = raw.get(name, rule.default)
        if value is None:
            raise SpaceError(file, f"{prefix}.{name}", f"is required ({rule.allowed()})", None, show_given=False)
        dims[name] = parse_dimension(file, f"{prefix}.{name}", rule, value)
    return dims
