"""Hypervolume of a set of objective vectors: how much of the objective space a front dominates.

Exact for two and three objectives (slab decomposition, O(n^2 log n): fine for the hundreds of
trials a study holds). Objectives are normalised first, so the figure is comparable across
trials of one study: 0 is nothing dominated, 1 would be the ideal point on every axis.
"""

from __future__ import annotations

from collections.abc import Sequence

REF = 1.1  # reference point per normalised loss axis: just past the worst value seen


def normalise(points: dict[int, Sequence[float]], directions: Sequence[str]) -> dict[int, tuple[float, ...]]:
    """Map each objective to a loss in [0, 1] over the range of `points` (0 = best value seen)."""
    if not points:
        return {}
    dims = len(directions)
    lo = [min(p[i] for p in points.values()) for i in range(dims)]
    hi = [max(p[i] for p in points.values()) for i in range(dims)]
    out = {}
    for key, p in points.items():
        loss = []
        for i, d in enumerate(directions):
            span = hi[i] - lo[i]
            if span <= 0:
                loss.append(0.0)
            elif d == "maximize":
                loss.append((hi[i] - p[i]) / span)
            else:
                loss.append((p[i] - lo[i]) / span)
        out[key] = tuple(loss)
    return out


def _hv2d(points: list[tuple[float, float]], rx: float, ry: float) -> float:
    area, best_y = 0.0, ry
    for x, y in sorted(points):
        if y < best_y:
            area += (rx - x) * (best_y - y)
            best_y = y
    return area


def hypervolume(losses: Sequence[Sequence[float]], ref: float = REF) -> float:
    """Volume dominated by `losses` (all minimised) inside the box up to `ref` on every axis."""
    pts = [tuple(p) for p in losses if all(v < ref for v in p)]
    if not pts:
        return 0.0
    if len(pts[0]) == 2:
        return _hv2d([(p[0], p[1]) for p in pts], ref, ref)
    if len(pts[0]) != 3:
        raise ValueError(f"hypervolume supports 2 or 3 objectives, but got {len(pts[0])}")
    zs = sorted({p[2] for p in pts})
    total = 0.0
    for i, z in enumerate(zs):
        next_z = zs[i + 1] if i + 1 < len(zs) else ref
        slab = [(p[0], p[1]) for p in pts if p[2] <= z]
        total += _hv2d(slab, ref, ref) * (next_z - z)
    return total


def progress(points: dict[int, Sequence[float]], directions: Sequence[str],
             trials: Sequence[int] | None = None) -> list[tuple[int, float]]:
    """(trial number, hypervolume of the points up to it) for each of `trials` (default: the points' keys),
    as a share of the reference box. A trial without a point (failed, infeasible) repeats the last value."""
    losses = normalise(points, directions)
    box = REF ** len(directions)
    out = []
    seen: list[tuple[float, ...]] = []
    for key in sorted(trials if trials is not None else losses):
        if key in losses:
            seen.append(losses[key])
        out.append((key, hypervolume(seen) / box))
    return out
