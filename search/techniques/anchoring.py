"""Picking an anchor's values out of a space's dimensions, the same way for every technique.

An anchor is a technique's standard setting *as the space allows it*: a value the space can
actually sample (Optuna refuses an enqueued value outside the distribution), so every pick
here comes from the dimension itself: one of its choices, or a point on its range and step.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from search.params import Categorical, Dimension, Range


def values(dim: Dimension) -> list[Any]:
    """The dimension's values in order: its choices, or a range's low and high."""
    return list(dim.choices) if isinstance(dim, Categorical) else [dim.low, dim.high]


def can_be(dim: Dimension, value: Any) -> bool:
    if isinstance(dim, Categorical):
        return value in dim.choices
    return dim.low <= value <= dim.high and _on_step(dim, value)


def _on_step(dim: Range, value: float) -> bool:
    if dim.step is None:
        return True
    steps = (Decimal(repr(float(value))) - Decimal(repr(float(dim.low)))) / Decimal(repr(float(dim.step)))
    return steps == steps.to_integral_value()


def lowest(dim: Dimension) -> Any:
    return min(values(dim))


def highest(dim: Dimension) -> Any:
    return max(values(dim))


def off_or(dim: Dimension, off: Any, mildest: Any) -> Any:
    """`off` when the dimension allows it, else `mildest(dim)` (`lowest` or `highest`)."""
    return off if can_be(dim, off) else mildest(dim)


def first(dim: Dimension, preferred: tuple = ()) -> Any:
    """The first of `preferred` the dimension allows, else its first value."""
    return next((p for p in preferred if can_be(dim, p)), values(dim)[0])


def mild(dim: Dimension, off: float = 0.0) -> Any:
    """The mildest setting that still does something: the choice nearest `off` other than `off`
    itself; on a range that starts at `off`, a quarter of the way along it (on the range's step), so
    that 0..0.9 gives a setting large enough to show an effect, else its end nearest `off`. None when the
    dimension allows nothing but `off`."""
    if isinstance(dim, Categorical):
        others = [c for c in dim.choices if c != off]
        return min(others, key=lambda c: abs(c - off)) if others else None
    if dim.low == dim.high:
        return None if dim.low == off else dim.low
    near, far = (dim.low, dim.high) if abs(dim.low - off) <= abs(dim.high - off) else (dim.high, dim.low)
    if near != off:
        return int(near) if dim.integer else near  # the range cannot reach `off`: its nearest end is mildest
    target = near + (far - near) / 4
    if dim.integer or dim.step is not None:
        step = Decimal(repr(float(dim.step or 1)))
        n = round((Decimal(repr(float(target))) - Decimal(repr(float(dim.low)))) / step)
        if Decimal(repr(float(dim.low))) + n * step == Decimal(repr(float(off))):
            n += 1 if far > near else -1  # a quarter rounds back to nothing: one step in
        value = float(Decimal(repr(float(dim.low))) + n * step)
    else:
        value = target
    value = min(max(value, dim.low), dim.high)
    if value == off:
        return None
    return int(value) if dim.integer else value
