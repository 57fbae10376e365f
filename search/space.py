"""Search spaces: YAML -> validated SearchSpace -> Recipe per Optuna trial.

Three steps, kept apart as in lm-evaluation-harness: `parse_yaml` only parses, `validate`
checks every key against its rule (unknown keys get a "did you mean"), and
`SearchSpace.sample` builds recipes. Every error names the file and the key path.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from hardware.base import Profile
from hardware.profiles import load_profile
from search.errors import SpaceError, allowed_list, did_you_mean, one_of
from search.layers import LayerInfo, match_layers
from search.params import Categorical, Dimension, parse_options
from search.recipe import Recipe
from search.safe_yaml import load_file
from search.tasks import TASKS
from search.tasks.loader import resolve_task
from search.techniques import ORDER, PLANNED, TECHNIQUES
from search.units import parse_duration, parse_size

TOP_KEYS = ("name", "description", "task", "hardware", "constraints", "budget", "sampler", "techniques")
SAMPLERS = ("tpe", "random", "nsga2")
CONSTRAINT_KEYS = ("max_quality_drop",)
BUDGET_KEYS = ("trials", "timeout", "trial_timeout", "trial_memory")


@dataclass(frozen=True)
class TechniqueSpace:
    name: str
    dims: dict[str, Dimension]
    layer_patterns: tuple[str, ...] = ("*",)
    # Named groups of layers that share one searched value (quantize: one bit-width per group).
    groups: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class SearchSpace:
    file: str
    name: str
    description: str
    task_name: str
    task_options: dict[str, Any]
    profiles: tuple[Profile, ...]
    objective_profile: str
    max_quality_drop: float
    trials: int
    timeout_s: float | None
    sampler: str
    techniques: tuple[TechniqueSpace, ...]
    layers: tuple[LayerInfo, ...] = field(default=())
    trial_timeout_s: float | None = None  # a trial running longer is killed and recorded as failed
    trial_memory_bytes: int | None = None  # likewise for the trial process's resident memory

    def technique_layers(self, tech: TechniqueSpace) -> list[LayerInfo]:
        return match_layers(list(self.layers), tech.layer_patterns)

    def sample(self, trial: optuna.Trial) -> Recipe:
        steps = []
        for tech in self.techniques:
            extra = {"groups": tech.groups} if tech.groups else {}
            config = TECHNIQUES[tech.name].sample(trial, tech.dims, self.technique_layers(tech), **extra)
            if config is not None:
                steps.append(config)
        return Recipe(tuple(steps))

    def resolved(self) -> dict[str, Any]:
        """The space as validated, with defaults filled in: logged with every study."""
        def dim(d: Dimension) -> Any:
            if isinstance(d, Categorical):
                return list(d.choices) if len(d.choices) > 1 else d.choices[0]
            return {"low": d.low, "high": d.high, "step": d.step, "log": d.log}
        return {
            "name": self.name,
            "task": {"name": self.task_name, "options": self.task_options},
            "hardware": {"profiles": [p.name for p in self.profiles], "objective": self.objective_profile},
            "constraints": {"max_quality_drop": self.max_quality_drop},
            "sampler": self.sampler,
            "techniques": {t.name: {**{k: dim(v) for k, v in t.dims.items()},
                                    **({"layers": list(t.layer_patterns)} if "layers" in TECHNIQUES[t.name].settings
                                       else {}),
                                    **({"groups": {g: list(p) for g, p in t.groups}} if t.groups else {})}
                           for t in self.techniques},
        }

    @property
    def hash(self) -> str:
        """Changes when anything that shapes the Optuna search space changes (not the budget)."""
        return hashlib.sha256(json.dumps(self.resolved(), sort_keys=True).encode()).hexdigest()[:12]

    def dimension_lines(self) -> list[str]:
        lines = []
        for tech in self.techniques:
            for key, d in tech.dims.items():
                when = TECHNIQUES[tech.name].conditions.get(key)
                lines.append(f"{tech.name}.{key}: {d.describe()}" + (f"  (only when {when})" if when else ""))
            if "layers" in TECHNIQUES[tech.name].settings:
                names = [layer.name for layer in self.technique_layers(tech)]
                lines.append(f"{tech.name} layers ({len(names)}): {', '.join(names)}")
            for group, patterns in tech.groups:
                members = [layer.name for layer in match_layers(self.technique_layers(tech), patterns)]
                lines.append(f"{tech.name} group {group!r} shares one value ({len(members)}): {', '.join(members)}")
        return lines


def parse_yaml(path: Path) -> dict[str, Any]:
    file = str(path)
    raw = load_file(path, "space file")  # UTF-8, no duplicate keys, bounded aliases and depth, finite numbers
    if not isinstance(raw, dict):
        raise SpaceError(file, "", "must be a YAML mapping with keys " + allowed_list(TOP_KEYS), raw)
    return raw


def _mapping(file: str, key: str, raw: object, allowed: tuple[str, ...] | dict) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpaceError(file, key, "must be a mapping", raw)
    for k in raw:
        if k not in allowed:
            raise SpaceError(file, f"{key}.{k}" if key else str(k),
                             f"unknown key; allowed: {allowed_list(allowed)}{did_you_mean(str(k), allowed)}", k)
    return raw


def _patterns(file: str, key: str, raw: object) -> tuple[str, ...]:
    if isinstance(raw, str) and raw:
        return (raw,)
    if isinstance(raw, list) and raw and all(isinstance(p, str) and p for p in raw):
        return tuple(raw)
    raise SpaceError(file, key, "must be a layer-name pattern or a list of them (fnmatch, e.g. 'net.*')", raw)


def _groups(file: str, key: str, raw: object, layers: list[LayerInfo]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """`{name: pattern(s)}`: each group must match at least one of the technique's layers."""
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(file, key, "must map group names to layer-name patterns, e.g. {attention: '*.attention.*'}",
                         raw)
    out = []
    for name, value in raw.items():
        patterns = _patterns(file, f"{key}.{name}", value)
        if not match_layers(layers, patterns):
            raise SpaceError(file, f"{key}.{name}", "matches none of the searched layers; they are: "
                             + allowed_list(layer.name for layer in layers), value)
        out.append((str(name), patterns))
    return tuple(out)


def validate(raw: dict[str, Any], file: str, cache_dir: Path) -> SearchSpace:
    top = _mapping(file, "", raw, TOP_KEYS)
    name = top.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SpaceError(file, "name", "is required: a non-empty string naming the space", name)

    task_raw = _mapping(file, "task", top.get("task"), ("name", "options"))
    task_name = task_raw.get("name")
    # A built-in name, or a user task 'module:function' / 'file.py:function' (loaded and registered).
    task_cls = resolve_task(task_name, file, TASKS)
    task_dims = parse_options(file, "task.options", task_cls.OPTIONS, task_raw.get("options"))
    task_options = {k: d.choices[0] for k, d in task_dims.items() if isinstance(d, Categorical)}

    hw = _mapping(file, "hardware", top.get("hardware"), ("profiles", "objective"))
    names = hw.get("profiles", ["ort-cpu"])
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise SpaceError(file, "hardware.profiles", "must be a non-empty list of profile names", names)
    profiles = tuple(load_profile(n, where=file, key=f"hardware.profiles[{i}]") for i, n in enumerate(names))
    objective = hw.get("objective", names[0])
    if objective not in names:
        raise SpaceError(file, "hardware.objective", f"must be one of the listed profiles: {allowed_list(names)}",
                         objective)
    if profiles[names.index(objective)].backend == "estimate":
        raise SpaceError(file, "hardware.objective", "must be a measured profile (an estimated one is recorded "
                         "beside it, never optimized for)", objective)

    constraints = _mapping(file, "constraints", top.get("constraints"), CONSTRAINT_KEYS)
    drop = constraints.get("max_quality_drop", 0.01)
    if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0 <= drop < math.inf:
        raise SpaceError(file, "constraints.max_quality_drop", "must be a number >= 0 (absolute quality drop)", drop)

    budget = _mapping(file, "budget", top.get("budget"), BUDGET_KEYS)
    trials = budget.get("trials", 20)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise SpaceError(file, "budget.trials", "must be an integer >= 1", trials)
    timeout_s = None
    if budget.get("timeout") is not None:
        try:
            timeout_s = parse_duration(budget["timeout"])
        except ValueError as exc:
            raise SpaceError(file, "budget.timeout", str(exc), None, show_given=False) from None

    limits: dict[str, float | int | None] = {"trial_timeout": None, "trial_memory": None}
    for key, parse in (("trial_timeout", parse_duration), ("trial_memory", parse_size)):
        if budget.get(key) is not None:
            try:
                limits[key] = parse(budget[key])
            except ValueError as exc:
                raise SpaceError(file, f"budget.{key}", str(exc), None, show_given=False) from None

    sampler = top.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise SpaceError(file, "sampler", one_of(SAMPLERS, sampler), sampler)

    tech_raw = top.get("techniques") or {}
    if not isinstance(tech_raw, dict):
        raise SpaceError(file, "techniques", "must be a mapping of technique name to its settings", tech_raw)
    for tname in tech_raw:
        if tname in PLANNED:
            raise SpaceError(file, f"techniques.{tname}",
                             f"is not available yet; available: {allowed_list(TECHNIQUES)}", tname)
        if tname not in TECHNIQUES:
            raise SpaceError(file, f"techniques.{tname}",
                             "unknown technique; " + one_of(TECHNIQUES, tname).replace("must be one of", "allowed:"),
                             tname)

    task = task_cls(task_options, cache_dir)
    task.check_data()
    layers = tuple(task.layers())
    techniques = []
    for tname in ORDER:
        if tname not in tech_raw:
            continue
        technique = TECHNIQUES[tname]
        body = tech_raw[tname] if tech_raw[tname] is not None else {}
        if not isinstance(body, dict):
            raise SpaceError(file, f"techniques.{tname}", "must be a mapping of its keys", body)
        settings = {k: body[k] for k in technique.settings if k in body}
        dims = parse_options(file, f"techniques.{tname}", technique.rules,
                             {k: v for k, v in body.items() if k not in technique.settings})
        patterns = ("*",)
        if "layers" in technique.settings:
            patterns = _patterns(file, f"techniques.{tname}.layers", settings.get("layers", "*"))
            if not match_layers(list(layers), patterns):
                raise SpaceError(file, f"techniques.{tname}.layers",
                                 f"matches no layer of task {task_name!r}; its layers: "
                                 f"{allowed_list(layer.name for layer in layers)}", settings.get("layers"))
        groups = ()
        if "groups" in technique.settings and settings.get("groups") is not None:
            groups = _groups(file, f"techniques.{tname}.groups", settings["groups"],
                             match_layers(list(layers), patterns))
        if technique.check is not None:
            technique.check(file, f"techniques.{tname}", dims, match_layers(list(layers), patterns))
        techniques.append(TechniqueSpace(tname, dims, patterns, groups))

    return SearchSpace(
        file=file, name=name, description=str(top.get("description", "")), task_name=task_name,
        task_options=task_options, profiles=profiles, objective_profile=objective, max_quality_drop=float(drop),
        trials=trials, timeout_s=timeout_s, sampler=sampler, techniques=tuple(techniques), layers=layers,
        trial_timeout_s=limits["trial_timeout"], trial_memory_bytes=limits["trial_memory"],
    )


def load_space(path: str | Path, cache_dir: Path) -> SearchSpace:
    """Parse and validate a space file; raises SpaceError (a UserError) on any problem."""
    path = Path(path)
    return validate(parse_yaml(path), str(path), cache_dir)
