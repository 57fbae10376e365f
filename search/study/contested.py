"""Which Pareto candidates a longer timing could reorder: the choice behind re-measurement.

Quality and bytes are exact figures; only latency is noisy. So latency can only decide
between two points when one is at least as good as the other on quality and bytes (then the
faster one dominates, or the slower one is dominated); between a point that is more accurate
and one that is smaller, no timing changes anything. Such a *comparable* pair is *contested*
when their latencies are within the noise of each other (their noise bands overlap): a longer
timing may swap their order, and with it the front's membership.

Candidates are the feasible points that no other point dominates beyond the noise: the front
and the points near it that could join it. A point dominated beyond the noise cannot join,
and whatever it could dominate, its own dominator dominates too, so it is left out.

A point's noise band is the confidence interval of its median, widened to at least the spread
of the fresh processes that timed it (the CI covers one process only, and a process now and
then runs slow) and to a floor of a few percent (the host drifts between a figure taken at
the start of a study and one taken at its end).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from search.study.view import StudyView

NOISE_FLOOR = 0.03  # a point that looked 3% faster may not be
CONTENDED_FLOOR = 0.20  # a figure taken while other processes computed: trust it much less


@dataclass(frozen=True)
class Point:
    number: int
    quality: float
    latency: float  # the search-time p50, ms
    bytes: float
    low: float  # the latency's noise band, ms
    high: float


def noise_band(p50: float, metrics: dict[str, Any]) -> tuple[float, float]:
    """(low, high) around the search-time p50 from the figure's own record (see the module doc)."""
    margin = max(NOISE_FLOOR, float(metrics.get("process_spread") or 0.0) / 2)
    if metrics.get("contended"):
        margin = max(margin, CONTENDED_FLOOR)
    low = min(float(metrics.get("latency_p50_ci_low_ms", p50)), p50 * (1 - margin))
    high = max(float(metrics.get("latency_p50_ci_high_ms", p50)), p50 * (1 + margin))
    return low, high


def points_of(view: StudyView, profile: str) -> dict[int, Point]:
    """The feasible trials as points on the study's objectives, with `profile`'s noise bands."""
    out = {}
    for t in view.trials:
        if not (t.feasible and t.values):
            continue
        quality, latency, size = t.values.values()
        low, high = noise_band(latency, t.metrics.get(profile, {}))
        out[t.number] = Point(t.number, quality, latency, size, low, high)
    return out


def weakly_better(a: Point, b: Point) -> bool:
    """At least as good as `b` on quality and bytes: then latency alone decides between them."""
    return a.quality >= b.quality and a.bytes <= b.bytes


def overlap(a: Point, b: Point) -> float:
    """How much the two noise bands overlap, as a share of the narrower one (< 0: apart)."""
    shared = min(a.high, b.high) - max(a.low, b.low)
    return min(1.0, shared / max(min(a.high - a.low, b.high - b.low), 1e-12))


def dominated_beyond_noise(b: Point, a: Point) -> bool:
    """`a` dominates `b` whatever a longer timing finds (within the bands)."""
    return weakly_better(a, b) and a.high < b.low


@dataclass
class Selection:
    front: list[int]
    candidates: list[int]  # the front and the points near it
    pairs: list[tuple[int, int, float]] = field(default_factory=list)  # contested, most contested first
    reasons: dict[int, str] = field(default_factory=dict)  # per candidate: why it is (or is not) contested

    def contested(self) -> list[int]:
        return sorted({n for a, b, _ in self.pairs for n in (a, b)})

    def uncontested_front(self) -> list[int]:
        contested = set(self.contested())
        return [n for n in self.front if n not in contested]


def select(points: dict[int, Point], front: list[int]) -> Selection:
    """The contested pairs among the candidates; pairs touching the front first, then by overlap."""
    candidates = sorted(n for n, p in points.items()
                        if not any(dominated_beyond_noise(p, q) for m, q in points.items() if m != n))
    on_front = set(front)
    pairs = []
    for i, a in enumerate(candidates):
        for b in candidates[i + 1:]:
            pa, pb = points[a], points[b]
            share = overlap(pa, pb)
            if share >= 0 and (weakly_better(pa, pb) or weakly_better(pb, pa)):
                pairs.append((a, b, share))
    pairs.sort(key=lambda pair: (not (pair[0] in on_front or pair[1] in on_front), -pair[2], pair[0], pair[1]))
    rivals: dict[int, list[int]] = {}
    for a, b, _ in pairs:
        rivals.setdefault(a, []).append(b)
        rivals.setdefault(b, []).append(a)
    reasons = {n: f"contested: its latency is within the noise of trial(s) {', '.join(map(str, sorted(others)))}, "
                  f"and on quality and bytes one of each pair is at least as good as the other, so a longer timing "
                  f"may change which dominates" for n, others in rivals.items()}
    for n in front:
        reasons.setdefault(n, "not re-measured: no candidate at least as good on quality and bytes is within its "
                              "latency noise, nor is it within the noise of one it beats on both, so no timing "
                              "changes its membership")
    return Selection(front, candidates, pairs, reasons)
