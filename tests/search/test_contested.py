"""Which Pareto candidates re-measurement times again, on hand-made points (no timing)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hardware.base import MeasureSettings
from search.study.contested import Point, noise_band, select
from search.study.pareto import pareto_front
from search.study.remeasure import _factor_that_fits, _front_after, point_cost_s, search_wall_s
from search.study.view import DIRECTIONS


def pt(number: int, quality: float, latency: float, size: float, noise: float = 0.02) -> Point:
    return Point(number, quality, latency, size, latency * (1 - noise), latency * (1 + noise))


def choose(*points: Point):
    by_number = {p.number: p for p in points}
    front = pareto_front({n: (p.quality, p.latency, p.bytes) for n, p in by_number.items()}, DIRECTIONS)
    return front, select(by_number, front)


def test_only_comparable_points_within_the_noise_are_contested() -> None:
    front, chosen = choose(
        pt(0, 0.90, 1.00, 100),  # fastest at its size
        pt(1, 0.95, 1.01, 100),  # more accurate, same bytes, 1% slower: may turn out faster and drop 0
        pt(2, 0.80, 2.00, 50),  # the smallest: quality and bytes trade off against everyone
        pt(3, 0.85, 1.02, 100),  # dominated by 0, but within the noise: could join the front
        pt(4, 0.70, 3.00, 200),  # dominated by 0 far beyond the noise
    )
    assert front == [0, 1, 2]
    assert chosen.candidates == [0, 1, 2, 3]  # 4 can neither join nor matter
    assert chosen.contested() == [0, 1, 3] and chosen.uncontested_front() == [2]
    assert chosen.reasons[2].startswith("not re-measured:")
    assert chosen.reasons[3].startswith("contested: its latency is within the noise of trial(s) 0, 1")
    assert {frozenset(p[:2]) for p in chosen.pairs} == {frozenset({0, 1}), frozenset({0, 3}), frozenset({1, 3})}


def test_a_latency_gap_beyond_the_noise_leaves_the_front_uncontested() -> None:
    front, chosen = choose(pt(0, 0.90, 1.00, 100), pt(1, 0.95, 1.50, 100), pt(2, 0.99, 2.50, 300))
    assert front == [0, 1, 2] and chosen.pairs == [] and chosen.uncontested_front() == [0, 1, 2]


def test_pairs_touching_the_front_come_first_then_by_overlap() -> None:
    _, chosen = choose(pt(0, 0.90, 1.000, 100), pt(1, 0.95, 1.030, 100), pt(2, 0.96, 1.005, 100, noise=0.05),
                       pt(5, 0.50, 0.500, 90), pt(6, 0.40, 0.505, 90), pt(7, 0.30, 0.508, 90))
    # 6 and 7 lie off the front (5 dominates both within the noise): their pair comes last.
    assert chosen.pairs[-1][:2] == (6, 7)
    on_front = [share for a, b, share in chosen.pairs if (a, b) != (6, 7)]
    assert on_front == sorted(on_front, reverse=True)


def test_the_noise_band_widens_with_process_spread_and_contention() -> None:
    assert noise_band(1.0, {"latency_p50_ci_low_ms": 0.99, "latency_p50_ci_high_ms": 1.01}) == (0.97, 1.03)
    assert noise_band(1.0, {"latency_p50_ci_low_ms": 0.8, "latency_p50_ci_high_ms": 1.01}) == (0.8, 1.03)
    assert noise_band(1.0, {"process_spread": 0.2}) == pytest.approx((0.9, 1.1))
    assert noise_band(1.0, {"contended": 1.0}) == pytest.approx((0.8, 1.2))


def test_search_time_counts_parallel_trials_once_and_no_gap_between_runs() -> None:
    trials = [SimpleNamespace(start_ms=0.0, duration_s=10.0), SimpleNamespace(start_ms=5000.0, duration_s=10.0),
              SimpleNamespace(start_ms=3_600_000.0, duration_s=4.0), SimpleNamespace(start_ms=None, duration_s=None)]
    assert search_wall_s(trials) == pytest.approx(19.0)


def test_the_factor_is_lowered_to_fit_the_budget_but_not_below_two() -> None:
    settings = MeasureSettings(min_queries=300, min_duration_s=1.0, warmup_s=0.2, processes=3)
    p = pt(0, 0.9, 0.01, 100)
    cost = point_cost_s(p, {"session_init_s": 0.1}, settings.scaled(5), startup_s=1.0)
    assert cost == pytest.approx(3 * (1.0 + 0.1 + 0.2 + 5.0))
    assert _factor_that_fits(lambda f: 10 * f, 5.0, 60) == 5.0
    assert _factor_that_fits(lambda f: 10 * f, 5.0, 30) == 3.0
    assert _factor_that_fits(lambda f: 10 * f, 5.0, 5) == 2.0
    assert _factor_that_fits(lambda f: 10 * f, 1.5, 5) == 1.5  # a profile that asks for less keeps it


def test_the_front_after_never_sets_a_retimed_figure_against_a_search_figure() -> None:
    points = {p.number: p for p in (pt(0, 0.90, 1.00, 100), pt(1, 0.95, 1.01, 100), pt(2, 0.85, 1.02, 100))}
    # 1 and 2 re-timed on a host that got faster; 0 was skipped: it keeps its place (and beats 2 as searched).
    assert _front_after(points, [0, 1, 2], {1: 0.50, 2: 0.49}) == {0, 1}
    assert _front_after(points, [0, 1, 2], {0: 0.50, 1: 0.49}) == {1}  # 1 faster and better: 0 and 2 go
    # Equal quality and bytes in a ring (search: 1 < 2 < 0, re-timed: 0 < 1): only the re-timed pair decides.
    ring = {p.number: p for p in (pt(0, 0.9, 1.02, 100), pt(1, 0.9, 1.00, 100), pt(2, 0.9, 1.01, 100))}
    assert _front_after(ring, [0, 1, 2], {0: 0.98, 1: 0.99}) == {0, 2}
