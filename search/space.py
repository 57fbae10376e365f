"""Search spaces: YAML -> validated SearchSpace -> Recipe per Optuna trial.

Three steps, kept apart as in lm-evaluation-harness: `parse_yaml` only parses, `validate`
checks every key against its rule (unknown keys get a "did you mean"), and
`SearchSpace.sample` builds recipes. Every error names the file and the key path.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from hardware.base import Profile
from hardware.profiles import load_profile
from hardware.safe_yaml import load_file
from hardware.schema import Rule, explain
from hardware.schema import validate as validate_schema
from search.errors import SpaceError, UserError, allowed_list
from search.guide import GUIDE_SCHEMA, Guide
from search.layers import LayerInfo, match_layers
from search.params import Categorical, Dimension, parse_options
from search.recipe import Recipe
from search.tasks import TASKS
from search.tasks.loader import resolve_task
from search.techniques import REGISTRY, SampleContext, TechniqueSpace
from search.units import parse_duration, parse_size

SAMPLERS = ("tpe", "random", "nsga2")


def _non_empty(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"is required: a non-empty string naming the space, but got {raw!r}")
    return raw


def _profile_names(raw: object) -> list[str]:
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"must be a non-empty list of profile names, but got {raw!r}")
    return names


_DURATION = "a duration (90s, 30m, 8h, 1h30m) or seconds"

# The top-level sections of a space file. Technique bodies are checked by each technique's own
# rules and settings, task options by the task's OPTIONS: the same Rule, the same errors.
SPACE_SCHEMA: dict[str, Rule] = {
    "name": Rule("str", parse=_non_empty, text="a non-empty string naming the space",
                 help="the space's name: the default study name and the MLflow experiment"),
    "description": Rule("str", default="", help="what the space is for (free text)"),
    "task": Rule("mapping", help="the model, its data and its quality metric", fields={
        "name": Rule("str", text=f"a built-in task ({allowed_list(TASKS)}) or 'module:function' / "
                                 "'path/to/file.py:function'",
                     help="a built-in task or your own Task (a file relative to the space, or a module)"),
        "options": Rule("mapping", default={}, help="the task's own options (its OPTIONS; see below)"),
    }),
    "hardware": Rule("mapping", help="where each candidate is measured", fields={
        "profiles": Rule("names", default=["ort-cpu"], parse=_profile_names,
                         text="a profile name or a non-empty list of them",
                         help="hardware profiles (hardware/profiles/*.yaml or $COMPSEARCH_PROFILE_PATH); every "
                              "trial is measured on each"),
        "objective": Rule("str", optional=True,
                          help="the profile whose p50 latency is an objective (default: the first); must be measured, "
                               "not estimated"),
    }),
    "constraints": Rule("mapping", help="what a feasible candidate must keep", fields={
        "max_quality_drop": Rule("float", default=0.01, minimum=0, text="a number >= 0 (absolute quality drop)",
                                 help="the largest quality drop against the uncompressed baseline (absolute)"),
    }),
    "budget": Rule("mapping", help="how much to run (changing it does not change the space's hash)", fields={
        "trials": Rule("int", default=20, minimum=1, help="trials of the whole study, baseline included"),
        "timeout": Rule("duration", optional=True, parse=parse_duration, text=_DURATION,
                        help="stop starting trials after this long (90s, 30m, 8h, 1h30m)"),
        "trial_timeout": Rule("duration", optional=True, parse=parse_duration, text=_DURATION,
                              help="a trial running longer is killed and recorded as failed"),
        "trial_memory": Rule("size", optional=True, parse=parse_size, text="a size (512MB, 4GB, 2GiB) or bytes",
                             help="a trial whose process uses more memory (512MB, 4GB, 2GiB) is killed and failed"),
    }),
    "sampler": Rule("str", default="tpe", choices=SAMPLERS, help="Optuna's sampler"),
    "guide": GUIDE_SCHEMA,  # anchors, student reuse, early rejection (search/guide.py)
    "techniques": Rule("mapping", default={}, keys=tuple(REGISTRY.names()),
                       text="a mapping of technique name to its settings",
                       help="the techniques searched, each with its keys (see below); a technique left out never "
                            "runs"),
}
TOP_KEYS = tuple(SPACE_SCHEMA)


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
    guide: Guide = field(default_factory=Guide)  # how the sampler is guided; not in the hash (no distribution changes)

    def technique_layers(self, tech: TechniqueSpace) -> list[LayerInfo]:
        return list(tech.layers)

    def sample(self, trial: optuna.Trial, context: SampleContext | None = None) -> Recipe:
        """One recipe for `trial`; `context` carries what the study measured (the sensitivity table)."""
        steps = []
        for tech in self.techniques:  # in the registry's model-stage order
            config = REGISTRY.named(tech.name).sample(trial, tech, context)
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
                                    **{k: _plain(v) for k, v in t.settings.items() if v is not None}}
                           for t in self.techniques},
        }

    @property
    def hash(self) -> str:
        """Changes when anything that shapes the Optuna search space changes (not the budget)."""
        return hashlib.sha256(json.dumps(self.resolved(), sort_keys=True).encode()).hexdigest()[:12]

    def dimension_lines(self) -> list[str]:
        lines = []
        for tech in self.techniques:
            technique = REGISTRY.named(tech.name)
            for key, d in tech.dims.items():
                when = technique.conditions.get(key)
                lines.append(f"{tech.name}.{key}: {d.describe()}" + (f"  (only when {when})" if when else ""))
            if "layers" in technique.settings:
                names = [layer.name for layer in tech.layers]
                lines.append(f"{tech.name} layers ({len(names)}): {', '.join(names)}")
            lines += technique.describe(tech)
        return lines

    def explain(self) -> list[str]:
        """Every key this space may hold, with what it allows and what it does (`validate --explain`)."""
        lines = ["space file:", *(f"  {line}" for line in explain(SPACE_SCHEMA))]
        options = TASKS[self.task_name].OPTIONS
        lines.append(f"task.options of {self.task_name!r}:" if options else f"task {self.task_name!r} takes no options")
        lines += [f"  {line}" for line in explain(options, "task.options")]
        for tech in self.techniques:
            technique = REGISTRY.named(tech.name)
            lines.append(f"techniques.{tech.name}: {_first_line(type(technique).__doc__)}")
            for line in explain(technique.rules, f"techniques.{tech.name}", searched=True):
                key = line.split(":", 1)[0].rsplit(".", 1)[-1]
                when = technique.conditions.get(key)
                lines.append(f"  {line}" + (f" [only when {when}]" if when else ""))
            lines += [f"  {line}" for line in explain(technique.settings, f"techniques.{tech.name}")]
        unused = [name for name in REGISTRY.names() if name not in {t.name for t in self.techniques}]
        if unused:
            lines.append(f"other techniques (not in this space): {', '.join(unused)}")
        return lines


def _plain(value: Any) -> Any:
    """A validated setting as JSON: tuples as lists, mappings of them likewise."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return list(value)
    return value


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if text else ""


def parse_yaml(path: Path) -> dict[str, Any]:
    file = str(path)
    raw = load_file(path, "space file")  # UTF-8, no duplicate keys, bounded aliases and depth, finite numbers
    if not isinstance(raw, dict):
        raise SpaceError(file, "", "must be a YAML mapping with keys " + allowed_list(TOP_KEYS), raw)
    return raw


def validate(raw: dict[str, Any], file: str, cache_dir: Path) -> SearchSpace:
    top = validate_schema(file, "", SPACE_SCHEMA, raw)
    task_name = top["task"]["name"]
    # A built-in name, or a user task 'module:function' / 'file.py:function' (loaded and registered).
    task_cls = resolve_task(task_name, file, TASKS)
    task_options = validate_schema(file, "task.options", task_cls.OPTIONS, top["task"]["options"])

    names = top["hardware"]["profiles"]
    profiles = tuple(load_profile(n, where=file, key=f"hardware.profiles[{i}]") for i, n in enumerate(names))
    objective = top["hardware"]["objective"] or names[0]
    if objective not in names:
        raise SpaceError(file, "hardware.objective", f"must be one of the listed profiles: {allowed_list(names)}",
                         objective)
    if profiles[names.index(objective)].backend == "estimate":
        raise SpaceError(file, "hardware.objective", "must be a measured profile (an estimated one is recorded "
                         "beside it, never optimized for)", objective)

    task = task_cls(task_options, cache_dir)
    try:
        task.check_data()
    except SpaceError:
        raise
    except UserError as exc:  # the task names the option; say which space file set it
        raise UserError(f"{file}: {exc}") from None
    layers = list(task.layers())
    techniques = []
    for technique in REGISTRY.model_order():
        if technique.name not in top["techniques"]:
            continue
        key = f"techniques.{technique.name}"
        body = top["techniques"][technique.name]
        body = {} if body is None else body
        dims = parse_options(file, key, technique.rules, body, also=tuple(technique.settings))
        settings = validate_schema(file, key, technique.settings, {k: v for k, v in body.items()
                                                                  if k in technique.settings})
        matched = layers
        if "layers" in settings:
            matched = match_layers(layers, settings["layers"])
            if not matched:
                raise SpaceError(file, f"{key}.layers", f"matches no layer of task {task_name!r}; its layers: "
                                 f"{allowed_list(layer.name for layer in layers)}", body.get("layers"))
        tech = TechniqueSpace(technique.name, dims, tuple(matched), settings)
        technique.check(file, key, tech)
        techniques.append(tech)

    budget = top["budget"]
    return SearchSpace(
        file=file, name=top["name"], description=top["description"], task_name=task_name,
        task_options=task_options, profiles=profiles, objective_profile=objective,
        max_quality_drop=top["constraints"]["max_quality_drop"], trials=budget["trials"], timeout_s=budget["timeout"],
        sampler=top["sampler"], techniques=tuple(techniques), layers=tuple(layers),
        trial_timeout_s=budget["trial_timeout"], trial_memory_bytes=budget["trial_memory"],
        guide=Guide.from_validated(top["guide"]),
    )


def load_space(path: str | Path, cache_dir: Path) -> SearchSpace:
    """Parse and validate a space file; raises SpaceError (a UserError) on any problem."""
    path = Path(path)
    return validate(parse_yaml(path), str(path), cache_dir)
