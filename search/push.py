"""Pushing a cut that leaves quality to spare: the ladder an expert climbs by hand.

A cut anchor (search/anchors.py) is a cut at its mildest: one layer fewer, a fifth of the neurons.
When it comes back feasible with at least half the allowed quality drop to spare, the cut was
too timid to tell where the limit is, and a sampler finds the harder cuts only by luck (on
digits the pruning ratio is one value of 0.05..0.9 among quantization's dozens). So the same
recipe is queued again with the cut pushed halfway towards the hardest cut the space allows
(`Technique.severity`: which keys cut harder, and which way), on the grid, at least one step:
pruning 0.2 -> 0.55 -> 0.7 -> 0.8 -> 0.85 -> 0.9; layers kept 5 -> 4 -> 3. A push that also leaves
quality to spare is pushed again; the ladder stops at the first push that does not, at the
space's hardest cut, or at the budget. A push of an unquantized anchor takes the space's first
standard quantization (int8 per-channel), like a follow-up trained longer (search/reuse.py), so
every step is itself a candidate for the front; unless the study measured that quantization alone no
faster than the baseline (the digits MLP on every CPU measured): then the ladder climbs unquantized
and each rung's int8 variant is its size point (`search.reuse.standard_is_slower`), run once nothing else
waits (search/queue.py). Its student gets
variants and a follow-up trained longer as any promising student does.

The ladder goes on through training, as an expert's would: a push that fails but is promising gets
its follow-up trained twice as long (search/reuse.py), and when that follow-up leaves quality to spare
it is pushed in turn, with its longer training (digits: prune 0.55 lost 0.015 of 0.02 allowed at 2 and 4
epochs, 0.0075 at 8, so 0.7 at 8 epochs came next; it used to wait for the sampler).

A failed rung steps back: when a push, or a push's follow-up trained longer, comes back over the
allowed drop (or rejected early) and no follow-up of it is coming, the same recipe is queued once with
each cut halfway between the last rung that held and the one that failed, on the grid, strictly
between (`step_back_params`; 0.55 held, 0.7 failed at 10 epochs: 0.6 at 10 epochs). Nothing lies
between layers kept 5 and 4, so a failed 4 is not stepped back. A step back is not pushed or stepped
back again: it marks where the limit is, and its student gets variants and a follow-up as any student
does.

Only anchors, pushes and their follow-ups trained longer are pushed: a sampled trial is the sampler's
to follow. Pushes are marked `pushed_from` (the parent's number), steps back `stepped_back_from` (the
failed rung's number), in the progress line, `show --json` and MLflow tags; they use the budget like
any trial, and are queued under the study's budget lock. `guide: {push_cuts: false}` turns both off.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FixedTrial, FrozenTrial, TrialState

from search.reuse import LONGER_ATTR, enqueue_follow_up, quantized, value_grid
from search.techniques import REGISTRY

if TYPE_CHECKING:
    from search.space import SearchSpace

PUSHED_ATTR = "pushed_from"
BACK_ATTR = "stepped_back_from"
SPARE = 0.5  # pushed when the quality drop is at most this fraction of the allowed drop


def harder(dist: BaseDistribution, value: float, way: str) -> float | None:
    """The value halfway from `value` to the hardest cut `dist` allows (`way`: "up" or "down"; 0 is off),
    on its grid and at least one step harder; None when `value` is off or already the hardest."""
    if not value:
        return None
    grid = value_grid(dist)
    if grid is None:  # a continuous range: halfway to its end
        end = float(dist.high if way == "up" else dist.low)  # type: ignore[attr-defined]
        return None if end == value else (value + end) / 2
    # Grid floats carry rounding (0.05 steps give 0.8500000000000001): compare with a tolerance.
    beyond = [v for v in grid if v and not math.isclose(v, value) and (v > value if way == "up" else v < value)]
    if not beyond:
        return None
    middle = (value + (max(beyond) if way == "up" else min(beyond))) / 2
    # Nearest the middle; between two equally near, the milder (the next push can still go further).
    return min(beyond, key=lambda v: (round(abs(v - middle), 9), v if way == "up" else -v))


def push_params(parent: FrozenTrial, space: SearchSpace, trials: Sequence[FrozenTrial] = ()) -> dict[str, Any] | None:
    """The complete params of `parent` with every cut it makes pushed harder (`harder`), quantized like
    a follow-up (`search.reuse.quantized`, which reads the study's `trials`); None when it cuts nothing or
    every cut is the hardest."""
    techniques = [REGISTRY.named(step.type) for step in space.sample(FixedTrial(parent.params)).steps]
    params, pushed = dict(parent.params), False
    for technique in techniques:
        if not technique.student or technique.recovers:
            continue
        for key, way in technique.severity.items():
            name = f"{technique.name}.{key}"
            if name not in params:
                continue
            value = harder(parent.distributions[name], params[name], way)
            if value is not None:
                params[name], pushed = value, True
    return quantized(params, techniques, space, trials) if pushed else None


def on_ladder(trial: FrozenTrial, trials: Mapping[int, FrozenTrial]) -> bool:
    """An anchor, a push, or the follow-up trained longer of either (`trials`: the study's, by number)."""
    attrs = trial.user_attrs
    if attrs.get("anchor") or PUSHED_ATTR in attrs:
        return True
    parent = trials.get(attrs[LONGER_ATTR]) if LONGER_ATTR in attrs else None
    return parent is not None and bool(parent.user_attrs.get("anchor") or PUSHED_ATTR in parent.user_attrs)


def wants_push(parent: FrozenTrial, max_quality_drop: float, trials: Mapping[int, FrozenTrial] | None = None) -> bool:
    """A rung of the ladder (`on_ladder`), completed and feasible, with at least (1 - SPARE) of the allowed
    drop to spare."""
    attrs = parent.user_attrs
    if parent.state != TrialState.COMPLETE or attrs.get("baseline") or not on_ladder(parent, trials or {}):
        return False
    drop = attrs.get("quality_drop")
    # A tolerance: accuracy drops are multiples of 1/n, and exactly half (0.01 of 0.02) reads 0.010000000000000009.
    return drop is not None and drop <= SPARE * max(0.0, max_quality_drop) + 1e-9


def failed(trial: FrozenTrial, max_quality_drop: float) -> bool:
    """Completed over the allowed drop, or rejected early (by its proxy, or before training)."""
    if trial.state == TrialState.PRUNED:
        return bool(trial.user_attrs.get("rejected"))
    drop = trial.user_attrs.get("quality_drop")
    return trial.state == TrialState.COMPLETE and drop is not None and drop > max(0.0, max_quality_drop)


def held_rung(trial: FrozenTrial, trials: Mapping[int, FrozenTrial]) -> FrozenTrial | None:
    """The rung a push climbed from (for a push's follow-up trained longer: the push's); None when
    `trial` is neither a push nor a push's follow-up."""
    if LONGER_ATTR in trial.user_attrs:
        trial = trials.get(trial.user_attrs[LONGER_ATTR])  # type: ignore[assignment]
        if trial is None:
            return None
    pushed_from = trial.user_attrs.get(PUSHED_ATTR)
    return None if pushed_from is None else trials.get(pushed_from)


def between(dist: BaseDistribution, held: float, failed_value: float) -> float | None:
    """The value of `dist` strictly between `held` and `failed_value` nearest their middle (on its grid;
    between two equally near, the milder); None when the grid has none."""
    low, high = sorted((held, failed_value))
    middle = (low + high) / 2
    grid = value_grid(dist)
    if grid is None:  # a continuous range: the midpoint
        return None if math.isclose(low, high) else middle
    inside = [v for v in grid if low < v < high and not math.isclose(v, low) and not math.isclose(v, high)]
    if not inside:
        return None
    return min(inside, key=lambda v: (round(abs(v - middle), 9), abs(v - held)))


def step_back_params(failed_rung: FrozenTrial, held: FrozenTrial, space: SearchSpace) -> dict[str, Any] | None:
    """The complete params of `failed_rung` with each cut it pushed beyond `held` moved halfway back
    (`between`), its training and quantization kept; None when no cut has a value between the two."""
    techniques = [REGISTRY.named(step.type) for step in space.sample(FixedTrial(failed_rung.params)).steps]
    params, moved = dict(failed_rung.params), False
    for technique in techniques:
        if not technique.student or technique.recovers:
            continue
        for key in technique.severity:
            name = f"{technique.name}.{key}"
            if name not in params or name not in held.params or params[name] == held.params[name]:
                continue
            if not held.params[name]:  # the rung that held did not cut here: no limit to bisect towards
                continue
            value = between(failed_rung.distributions[name], held.params[name], params[name])
            if value is not None:
                params[name], moved = value, True
    return params if moved else None


def enqueue_push(study: optuna.Study, parent: FrozenTrial, space: SearchSpace, budget: int, storage: str) -> bool:
    """Enqueue `parent` pushed harder (`push_params`) when `guide.push_cuts` is on and it wants a push
    (`wants_push`), unless that student was trained or queued already; within the budget left."""
    if not space.guide.push_cuts:
        return False
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if not wants_push(parent, space.max_quality_drop, trials):
        return False
    params = push_params(parent, space, list(trials.values()))
    return params is not None and enqueue_follow_up(study, parent, params, PUSHED_ATTR, budget, storage)


def enqueue_step_back(study: optuna.Study, trial: FrozenTrial, space: SearchSpace, budget: int, storage: str) -> bool:
    """Enqueue the step back (`step_back_params`) of a failed push or push's follow-up when `guide.push_cuts`
    is on and no follow-up of it trained longer is queued or run (that one tells first); once, within the
    budget left, unless that student was trained or queued already."""
    if not space.guide.push_cuts or not failed(trial, space.max_quality_drop):
        return False
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if any(t.user_attrs.get(LONGER_ATTR) == trial.number for t in trials.values()):
        return False
    held = held_rung(trial, trials)
    params = None if held is None else step_back_params(trial, held, space)
    return params is not None and enqueue_follow_up(study, trial, params, BACK_ATTR, budget, storage)
