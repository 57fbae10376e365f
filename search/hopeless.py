"""Hopeless students: reject, before training, a cut at least as hard as one already seen to fail.

Early rejection (search/rejection.py) stops a trial at its proxy, but only after its student was
trained: for MiniLM that is minutes of distillation per trial. A sampler does not know why a cut
failed (TPE only sees a region marked infeasible): in one 30-trial MiniLM study 11 of 15 sampled
trials were cuts the proxy rejected, each trained in full before its proxy turned it down.

So when a cut trial is rejected, its student's own proxy is scored too (the fp32 student exported
alone, without the later stages: seconds), and recorded as `student_proxy_drop`. A student whose own
proxy drop is over the rejection limit is hopeless: no quantization after it can bring the quality
back. A later recipe whose student is at least as hard (`at_least_as_hard`) is rejected before its
student is built:

- every cut of the hopeless student is in it, each of its severity keys (`Technique.severity`) cut
  at least as hard and every other setting equal;
- it may cut more (another cut technique), never less;
- it recovers no more: the same recovery (distillation) with every setting equal but a training
  length (epochs) no longer, or no recovery at all;
- anything else in its student prefix is the same.

The later stages (quantization, sharing) do not matter: they only take quality away. The
judgement uses the study's limit at the time of asking (the limit only grows, `learn_noise`), and
the trial records `hopeless_from`, the trial whose student it follows, with the reason.
"""

from __future__ import annotations

from typing import Any

import optuna

from search.compress import split_recipe
from search.recipe import Recipe
from search.techniques import REGISTRY, TechniqueConfig

ATTR = "student_proxy_drop"  # a rejected cut trial's student alone: its proxy drop
FROM_ATTR = "hopeless_from"  # a trial rejected before training: the hopeless trial it follows


def cuts(recipe: Recipe) -> bool:
    """Whether `recipe`'s student prefix cuts anything (a student technique with severity keys)."""
    prefix, _ = split_recipe(recipe)
    return any(REGISTRY.of(step).severity for step in prefix.steps)


def _harder_value(value: Any, than: Any, way: str) -> bool:
    """Whether a severity key's `value` cuts at least as hard as `than` (`way` "up" or "down"; 0 or None is off)."""
    if not than:
        return True  # `than` is off: anything cuts at least as hard
    if not value:
        return False
    return value >= than if way == "up" else value <= than


def _settings(config: TechniqueConfig, leave_out: set[str]) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in leave_out}


def _step_at_least_as_hard(step: TechniqueConfig, than: TechniqueConfig) -> bool:
    technique = REGISTRY.of(than)
    if technique.severity:  # a cut: harder or equal on every severity key, the same otherwise
        keys = set(technique.severity)
        harder = all(_harder_value(getattr(step, k), getattr(than, k), way) for k, way in technique.severity.items())
        return harder and _settings(step, keys) == _settings(than, keys)
    if technique.recovers and technique.training_length:  # the same recovery, trained no longer
        length = technique.training_length
        return (_settings(step, {length}) == _settings(than, {length})
                and getattr(step, length) <= getattr(than, length))
    return step == than


def at_least_as_hard(recipe: Recipe, than: Recipe) -> bool:
    """Whether `recipe`'s student is at least as hard to recover as `than`'s: it makes every cut `than`
    makes at least as hard (and may cut more), and recovers no more (see the module docstring)."""
    mine, theirs = split_recipe(recipe)[0], split_recipe(than)[0]
    if not any(REGISTRY.of(s).severity for s in theirs.steps):
        return False  # `than` cuts nothing: its failure says nothing about cuts
    for step in mine.steps:
        other = theirs.get(step.type)
        if other is None:
            if not REGISTRY.of(step).severity:
                return False  # a recovery or another student stage `than` lacks: not comparable
            continue  # one more cut: harder still
        if not _step_at_least_as_hard(step, other):
            return False
    for other in theirs.steps:
        if mine.get(other.type) is None and not REGISTRY.of(other).recovers:
            return False  # `than` makes a cut (or a stage) this one does not
    return True


def hopeless_before(study: optuna.Study, recipe: Recipe, number: int) -> dict[str, Any] | None:
    """A rejected result for `recipe` without building it, when an earlier trial of this study was
    rejected with a hopeless student (its own proxy drop over the study's limit now) and `recipe`'s
    student is at least as hard; None otherwise (and for a recipe that cuts nothing)."""
    spec = study.user_attrs.get("rejection") or {}  # rejection.SPEC_ATTR (rejection.py imports this module)
    if "limit" not in spec or not cuts(recipe):
        return None
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)):
        attrs = t.user_attrs
        drop = attrs.get(ATTR)
        if t.number == number or drop is None or drop <= spec["limit"] or "recipe" not in attrs:
            continue
        if at_least_as_hard(recipe, Recipe.from_dict(attrs["recipe"])):
            return {"rejected": (f"rejected before training: its student is at least as hard as trial {t.number}'s "
                                 f"(cuts as hard or harder, trains no longer), whose student alone had proxy drop "
                                 f"{drop:.4g} > {spec['limit']:.4g}; not built"),
                    "proxy": None, "proxy_drop": drop, ATTR: drop,  # at least what its student alone loses
                    FROM_ATTR: t.number, "timings": {}, "environment": attrs.get("environment")}
    return None
