"""One schema mechanism for every YAML input: spaces, technique settings, task options, hardware profiles.

A schema is a mapping of key -> `Rule`. `validate` checks a whole mapping against one
(unknown keys get a "did you mean", nested mappings are checked by their own schema) and
returns the values with defaults filled in; `check_value` checks one value. Every error is a
`SpaceError` on one line: the file, the key path, what the rule allows and what was given,
in the style of Optuna's errors. `explain` lists each key with what it allows and its help,
for `compsearch validate --explain`.

Searchable keys (a list is a choice, `{low, high}` a range) are parsed on top of this by
`search.params`; this module knows nothing of Optuna. It lives in `hardware` because
hardware profiles use it and `hardware/` never imports `search`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from hardware.errors import SpaceError, allowed_list, did_you_mean

_NAMES = {"bool": "true or false", "str": "a string", "mapping": "a mapping", "list": "a list"}


@dataclass(frozen=True)
class Rule:
    """What one key accepts.

    kind: "bool", "int", "float", "str", "mapping", "list", or any name given a `parse`
    converter (which returns the value to keep, or raises ValueError stating the rule and the
    value). `choices` limits values; `minimum`/`maximum` bound numbers (inclusive unless the
    `*_exclusive` flag is set). A key whose `default` is None is required unless `optional`
    (then it may be left out and reads as None). A "mapping" checks its keys against `fields`
    (a nested schema) when given, else each of its values against `items` (and its keys
    against `keys`, when given); a "list" checks each item against `items`. `searchable` keys
    may take a choice or a range in a search space (see `search.params`). `help` says what the
    key does; `text` replaces the generated "allowed" phrase where kind and bounds do not say it all.
    """

    kind: str
    default: Any = None
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    min_exclusive: bool = False
    max_exclusive: bool = False
    searchable: bool = True
    help: str = ""
    optional: bool = False
    fields: Mapping[str, Rule] | None = None
    items: Rule | None = None
    keys: tuple = ()
    parse: Callable[[Any], Any] | None = None
    text: str = ""

    @property
    def required(self) -> bool:
        return self.default is None and not self.optional

    def allowed(self) -> str:
        """What the rule allows, as the error messages and `--explain` say it."""
        if self.text:
            return self.text
        if self.choices:
            return "one of " + allowed_list(self.choices)
        if self.kind in ("int", "float"):
            noun = "an integer" if self.kind == "int" else "a number"
            lo, hi = self.minimum, self.maximum
            if lo is not None and hi is not None:
                return (f"{noun} in {'(' if self.min_exclusive else '['}{lo}, "
                        f"{hi}{')' if self.max_exclusive else ']'}")
            if lo is not None:
                return f"{noun} {'>' if self.min_exclusive else '>='} {lo}"
            if hi is not None:
                return f"{noun} {'<' if self.max_exclusive else '<='} {hi}"
            return noun
        return _NAMES.get(self.kind, self.kind)


def check_keys(file: str, prefix: str, allowed: Mapping[str, Any] | tuple, raw: Mapping[str, Any]) -> None:
    """Refuse the first key of `raw` that `allowed` does not name, with a "did you mean"."""
    for k in raw:
        if k not in allowed:
            raise SpaceError(file, f"{prefix}.{k}" if prefix else str(k),
                             f"unknown key; allowed: {allowed_list(allowed)}{did_you_mean(str(k), allowed)}", k)


def _number(file: str, key: str, rule: Rule, value: object) -> int | float:
    # YAML gives bool for `true` (an int to Python), and `.nan`/`.inf` slip past every bound check.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpaceError(file, key, f"must be {rule.allowed()}", value)
    if rule.kind == "int" and not float(value).is_integer():
        raise SpaceError(file, key, f"must be {rule.allowed()}", value)
    lo, hi = rule.minimum, rule.maximum
    too_low = lo is not None and (value <= lo if rule.min_exclusive else value < lo)
    too_high = hi is not None and (value >= hi if rule.max_exclusive else value > hi)
    if too_low or too_high:
        raise SpaceError(file, key, f"must be {rule.allowed()}", value)
    return int(value) if rule.kind == "int" else float(value)


def check_value(file: str, key: str, rule: Rule, value: object) -> Any:
    """`value` checked (and converted) against `rule`, or a SpaceError naming `key`."""
    if rule.parse is not None:
        try:
            value = rule.parse(value)
        except ValueError as exc:
            raise SpaceError(file, key, str(exc), None, show_given=False) from None
        if rule.choices and value not in rule.choices:
            raise SpaceError(file, key, f"must be {rule.allowed()}{did_you_mean(str(value), rule.choices)}", value)
        return value
    if rule.kind in ("int", "float"):
        return _number(file, key, rule, value)
    if rule.kind == "bool":
        if not isinstance(value, bool):
            raise SpaceError(file, key, f"must be {rule.allowed()}", value)
        return value
    if rule.kind == "str":
        if not isinstance(value, str):
            raise SpaceError(file, key, f"must be {rule.allowed()}", value)
        if rule.choices and value not in rule.choices:
            raise SpaceError(file, key, f"must be {rule.allowed()}{did_you_mean(value, rule.choices)}", value)
        return value
    if rule.kind == "mapping":
        if not isinstance(value, Mapping):
            raise SpaceError(file, key, f"must be {rule.allowed()}", value)
        if rule.fields is not None:
            return validate(file, key, rule.fields, value)
        if rule.keys:
            check_keys(file, key, rule.keys, value)
        if rule.items is None:
            return dict(value)
        return {k: check_value(file, f"{key}.{k}", rule.items, v) for k, v in value.items()}
    if rule.kind == "list":
        if not isinstance(value, list):
            raise SpaceError(file, key, f"must be {rule.allowed()}", value)
        if rule.items is None:
            return list(value)
        return [check_value(file, f"{key}[{i}]", rule.items, v) for i, v in enumerate(value)]
    raise TypeError(f"rule for {key!r}: kind {rule.kind!r} needs a `parse` converter")


def validate(file: str, prefix: str, schema: Mapping[str, Rule], raw: object) -> dict[str, Any]:
    """Every key of `schema` with its checked value (defaults filled in; None for an absent optional key)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise SpaceError(file, prefix, "must be a mapping of keys to values", raw)
    check_keys(file, prefix, schema, raw)
    out: dict[str, Any] = {}
    for name, rule in schema.items():
        key = f"{prefix}.{name}" if prefix else name
        value = raw.get(name, rule.default)
        if value is None and rule.kind == "mapping" and rule.fields is not None and not rule.optional:
            value = {}  # a section left out takes the defaults of its keys
        if value is None:
            if rule.required:
                raise SpaceError(file, key, f"is required ({rule.allowed()})", None, show_given=False)
            out[name] = None
            continue
        out[name] = check_value(file, key, rule, value)
    return out


def explain(schema: Mapping[str, Rule], prefix: str = "", searched: bool = False) -> Iterator[str]:
    """One line per key (nested mappings included): `key: what it allows (default) - help`.

    `searched`: the keys are a search space's, so say which take a list or a range."""
    for name, rule in schema.items():
        key = f"{prefix}.{name}" if prefix else name
        if rule.kind == "mapping" and rule.fields is not None:
            yield f"{key}: {rule.help}" if rule.help else f"{key}:"
            yield from explain(rule.fields, key, searched)
            continue
        default = "required" if rule.required else (
            "optional" if rule.default is None else f"default {_shown(rule.default)}")
        how = ""
        if searched and rule.searchable:
            how = "; a value, a list or a range" if rule.kind in ("int", "float") else "; a value or a list"
        yield f"{key}: {rule.allowed()}{how} ({default})" + (f" - {rule.help}" if rule.help else "")


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(str, value)) + "]"
    return repr(value) if isinstance(value, str) else str(value)
