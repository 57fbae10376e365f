"""How a trial's per-layer bit-widths are chosen: `assign: per_layer` or `assign: sensitivity`.

per_layer    one categorical per searched layer (`quantize.bits.<layer>`, or one per group): the
             whole space, but 36 independent choices for MiniLM, which TPE cannot learn in a night.
sensitivity  a few numbers instead, and the study's sensitivity table (search/sensitivity.py,
             handed in through the SampleContext) decides which layer gets what:
               quantize.floor         the lowest bit-width used (one of the listed `bits`)
               quantize.keep.<bits>   for each listed bit-width above the floor, how many layers
                                      stay at exactly that precision
             Layers fragile at the floor stay above it: the sum of the keeps most sensitive at the
             floor are kept, the rest go to the floor; among the kept ones, the same rule is applied
             one level up (most sensitive at that level stay higher), and so on up to the highest.

`uniform_params` gives the trial params that put every searched layer at one bit-width in
either mode (the study's anchors enqueue them).
"""

from __future__ import annotations

from typing import Any

import optuna

from search.techniques.base import SampleContext, TechniqueSpace
from search.techniques.quantize.config import BITS

ASSIGN = ("per_layer", "sensitivity")


def levels_above(floor: str, listed: tuple[str, ...]) -> list[str]:
    """The listed bit-widths more precise than `floor`, most precise first (BITS is in that order)."""
    return [b for b in BITS if b in listed and BITS.index(b) < BITS.index(floor)]


def assign_by_ranking(layers: list[str], floor: str, keep: dict[str, int], listed: tuple[str, ...],
                      context: SampleContext | None) -> dict[str, str]:
    """layer -> bits: `keep[b]` layers at each level b above `floor` (clipped to what is left), the
    rest at `floor`. Without a sensitivity table the ranking is model order (the first layers stay high)."""
    context = context or SampleContext()
    bits = {name: floor for name in layers}
    pool = list(layers)  # the layers still to place above the current level, all of them at first
    level = floor
    for higher in reversed(levels_above(floor, listed)):  # from the floor upward
        kept = sum(keep.get(b, 0) for b in levels_above(level, listed))
        pool = context.ranking(level, pool)[:max(0, kept)]  # the most fragile at `level` stay above it
        for name in pool:
            bits[name] = higher
        level = higher
    return bits


def sample_by_sensitivity(trial: optuna.Trial, space: TechniqueSpace, context: SampleContext | None) -> dict[str, str]:
    """The sensitivity mode's few numbers, drawn from `trial`, turned into a bit-width per layer."""
    listed = tuple(space.dims["bits"].choices)
    layers = [layer.name for layer in space.layers]
    floor = space.dims["bits"].suggest(trial, "quantize.floor")
    keep = {b: trial.suggest_int(f"quantize.keep.{b}", 0, len(layers)) for b in levels_above(floor, listed)}
    return assign_by_ranking(layers, floor, keep, listed, context)


def uniform_params(space: TechniqueSpace, bits: str) -> dict[str, Any]:
    """The quantize trial params that put every searched layer at `bits` (for `study.enqueue_trial`).
    Other quantize params (activations, block size, ...) are left to the caller."""
    listed = tuple(space.dims["bits"].choices)
    if bits not in listed:
        raise ValueError(f"quantize: bits must be one of the listed {listed}, but got {bits!r}")
    if len(listed) == 1:
        return {}  # nothing is sampled
    if space.settings.get("assign") == "sensitivity":
        return {"quantize.floor": bits, **{f"quantize.keep.{b}": 0 for b in levels_above(bits, listed)}}
    from search.layers import match_layers

    groups = space.settings.get("groups") or {}
    params: dict[str, Any] = {}
    for layer in space.layers:
        group = next((g for g, patterns in groups.items() if match_layers([layer], patterns)), None)
        params[f"quantize.bits.group.{group}" if group else f"quantize.bits.{layer.name}"] = bits
    return params
