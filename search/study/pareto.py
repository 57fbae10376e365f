"""Pareto fronts over finished trials, with the constraint applied first."""

from __future__ import annotations

from collections.abc import Sequence


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """True if `a` is at least as good as `b` in every objective and better in one."""
    better = False
    for x, y, d in zip(a, b, directions, strict=True):
        if d == "maximize":
            x, y = -x, -y
        if x > y:
            return False
        if x < y:
            better = True
    return better


def pareto_front(points: dict[int, Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Keys of the non-dominated points, in key order. Duplicated points all stay on the front."""
    return sorted(k for k, v in points.items()
                  if not any(dominates(w, v, directions) for j, w in points.items() if j != k))
