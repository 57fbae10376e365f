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
every step is itself a candidate for the front; its student gets variants and a follow-up
trained longer as any promising student does.

Only anchors and pushes are pushed: a sampled trial is the sampler's to follow. Pushes are
marked `pushed_from` (the parent's number: progress line, `show --json`, MLflow tag), use the
budget like any trial, and are queued under the study's budget lock.
`guide: {push_cuts: false}` turns it off.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FixedTrial, FrozenTrial, TrialState

from search.reuse import enqueue_follow_up, quantized, value_grid
from search.techniques import REGISTRY

if TYPE_CHECKING:
    from search.space import SearchSpace

PUSHED_ATTR = "pushed_from"
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


def push_params(parent: FrozenTrial, space: SearchSpace) -> dict[str, Any] | None:
    """The complete params of `parent` with every cut it makes pushed harder (`harder`), quantized like
    a follow-up (`search.reuse.quantized`); None when it cuts nothing or every cut is the hardest."""
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
    return quantized(params, techniques, space) if pushed else None


def wants_push(parent: FrozenTrial, max_quality_drop: float) -> bool:
    """An anchor or a push, completed and feasible, with at least (1 - SPARE) of the allowed drop to spare."""
    attrs = parent.user_attrs
    if parent.state != TrialState.COMPLETE or attrs.get("baseline"):
        return False
    if not (attrs.get("anchor") or PUSHED_ATTR in attrs):
        return False
    drop = attrs.get("quality_drop")
    # A tolerance: accuracy drops are multiples of 1/n, and exactly half (0.01 of 0.02) reads 0.010000000000000009.
    return drop is not None and drop <= SPARE * max(0.0, max_quality_drop) + 1e-9


def enqueue_push(study: optuna.Study, parent: FrozenTrial, space: SearchSpace, budget: int, storage: str) -> bool:
    """Enqueue `parent` pushed harder (`push_params`) when `guide.push_cuts` is on and it wants a push
    (`wants_push`), unless that student was trained or queued already; within the budget left."""
    if not space.guide.push_cuts or not wants_push(parent, space.max_quality_drop):
        return False
    params = push_params(parent, space)
    return params is not None and enqueue_follow_up(study, parent, params, PUSHED_ATTR, budget, storage)
