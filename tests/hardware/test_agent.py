"""The measuring agent's statistics, loop, contention rule and lock."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from hardware import agent
from hardware.lock import compute_slot, let_measurements_through, measurement_lock


def test_median_ci_is_the_order_statistic_interval() -> None:
    x = np.arange(1, 101, dtype=float)  # n=100, z=1.96: j=floor(40.2)=40, k=ceil(60.8)=61 (1-based)
    assert agent.median_ci(x, 0.95) == (40.0, 61.0)
    lo99, hi99 = agent.median_ci(x, 0.99)
    assert lo99 < 40 and hi99 > 61  # wider at higher confidence


def test_median_ci_covers_the_true_median_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(0)
    hits = sum(lo <= 1.0 <= hi for lo, hi in (agent.median_ci(rng.lognormal(0, 1, 200)) for _ in range(400)))
    assert 0.90 <= hits / 400 <= 0.99, hits


def test_summary_has_percentiles_throughput_and_ci() -> None:
    s = agent.summarize(np.array([1_000_000, 2_000_000, 3_000_000, 4_000_000, 100_000_000]), 0.11)
    assert s["p50_ms"] == 3.0 and s["min_ms"] == 1.0 and s["max_ms"] == 100.0
    assert s["ci_low_ms"] <= s["p50_ms"] <= s["ci_high_ms"]
    assert s["throughput_qps"] == pytest.approx(5 / 0.11)


def test_time_queries_meets_both_minima() -> None:
    calls = []
    samples, duration = agent.time_queries(lambda: calls.append(1), 0.0, 3, 50, 0.05, 5.0)
    assert len(samples) >= 50 and duration >= 0.05
    assert len(calls) >= len(samples) + 3  # warm-up runs were not timed


def test_contention_rule() -> None:
    quiet = {"cpu_wall_ratio": 0.99, "other_cpu_cores": 0.05}
    assert not agent.is_contended(quiet, 1, 0.3)
    assert agent.is_contended({**quiet, "other_cpu_cores": 1.2}, 1, 0.3)
    assert agent.is_contended({**quiet, "cpu_wall_ratio": 0.5}, 1, 0.3)  # descheduled
    assert not agent.is_contended({**quiet, "cpu_wall_ratio": 1.7}, 2, 0.3)
    assert not agent.is_contended({**quiet, "cpu_wall_ratio": 0.1}, 1, 0.3, cpu_bound=False)  # waits on a GPU


def test_a_contended_figure_is_timed_again_up_to_the_limit() -> None:
    settings = {"warmup_s": 0, "warmup_queries": 1, "min_queries": 10, "min_duration_s": 0.05, "max_attempts": 2,
                "retry_wait_s": 0, "max_other_cpu": -1.0}  # -1: any figure counts as contended
    out = agent.measure_loop(lambda: None, settings, 1, None)
    assert out["host"]["contended"] and out["host"]["attempts"] == 2
    settings["max_other_cpu"] = 99.0  # nothing counts: one attempt
    assert agent.measure_loop(lambda: None, settings, 2, None)["host"]["attempts"] == 1


def test_compute_slot_waits_while_a_measurement_holds_the_lock() -> None:
    events: list[str] = []

    def worker() -> None:
        with compute_slot():
            events.append("compute")

    with measurement_lock():
        t = threading.Thread(target=worker)
        t.start()
        time.sleep(0.3)
        events.append("measured")
    t.join(5)
    assert events == ["measured", "compute"]


def test_measurement_waits_for_running_compute_slots() -> None:
    events: list[str] = []
    entered = threading.Event()

    def measurer() -> None:
        entered.wait(5)
        with measurement_lock():
            events.append("measured")

    t = threading.Thread(target=measurer)
    t.start()
    with compute_slot(), compute_slot():  # compression beside compression is fine
        entered.set()
        time.sleep(0.3)
        events.append("compute done")
    t.join(5)
    assert events == ["compute done", "measured"]


def test_long_compute_lets_a_waiting_measurement_through_between_epochs() -> None:
    events: list[str] = []
    entered = threading.Event()

    def measurer() -> None:
        entered.wait(5)
        with measurement_lock():
            events.append("measured")
            time.sleep(0.2)
            events.append("measure done")

    t = threading.Thread(target=measurer)
    t.start()
    with compute_slot():
        entered.set()
        for epoch in range(20):  # ~1 s of "training" in 50 ms epochs
            let_measurements_through()
            events.append(f"epoch {epoch}")
            time.sleep(0.05)
    events.append("compute done")
    t.join(5)
    # The timing ran mid-build, and no epoch overlapped it.
    assert events.index("measure done") < events.index("compute done")
    assert events[events.index("measured") + 1] == "measure done"
    let_measurements_through()  # outside a slot: nothing to step out of


def test_timing_inside_a_compute_slot_fails_loudly_instead_of_hanging() -> None:
    from hardware.isolated import run_child

    with compute_slot(), compute_slot():  # re-entrant
        with pytest.raises(RuntimeError, match="inside a compute slot"):
            run_child(["-c", "pass"], 1, 5)


def test_when_every_attempt_is_contended_the_least_disturbed_one_is_kept() -> None:
    calls = [0]
    delays = (0.004, 0.001, 0.003)  # attempt 2 ran undisturbed

    def run_once() -> None:
        time.sleep(delays[min(calls[0] // 6, 2)])  # 1 warm-up + 5 timed queries per attempt
        calls[0] += 1

    settings = {"warmup_s": 0, "warmup_queries": 1, "min_queries": 5, "min_duration_s": 0, "max_attempts": 3,
                "retry_wait_s": 0, "max_other_cpu": -1.0}
    out = agent.measure_loop(run_once, settings, 1, None)
    assert out["host"]["contended"] and len(out["host"]["attempt_p50_ms"]) == 3
    assert out["latency"]["p50_ms"] == min(out["host"]["attempt_p50_ms"]) and out["latency"]["p50_ms"] < 2.5
