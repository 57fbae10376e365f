"""Time several models side by side: one process, interleaved rounds, under the host lock.

A latency ratio between two models is only as good as the conditions they were timed under. Timed
minutes apart, in separate processes, two runs of one graph can differ by 10-20% on a shared host;
timed in turns within one process, round after round, slow drift of the host falls on every model
alike. The benchmarks that compare points (minilm, efficiency) time their points this way, and a guided
study its first standard quantization beside its baseline (search/standard_probe.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

ROUND_S = 0.1  # each model's share of one round, at least: many fast queries, or one slow one


def interleaved_samples(run_once: Sequence[Callable[[], object]], rounds: int, per_round: int | None = None,
                        warmup: int = 3, round_s: float = ROUND_S) -> list[list[float]]:
    """Milliseconds per query of each callable, `rounds` rounds of `per_round` queries in turn.

    `per_round` None sizes each callable's turn from its warm-up (about `round_s` of queries), so that a
    0.05 ms model is timed over many queries and a 50 ms one over a few. Each turn holds the host-wide
    measurement lock, so that nothing else of ours computes during it."""
    from hardware.lock import measurement_lock

    counts = []
    for fn in run_once:  # warm-up, untimed; its last query sizes the turn
        for _ in range(warmup):
            t0 = time.perf_counter()
            fn()
            last_s = time.perf_counter() - t0
        counts.append(per_round or max(1, min(10_000, round(round_s / max(last_s, 1e-6)))))
    samples: list[list[float]] = [[] for _ in run_once]
    for _ in range(rounds):
        for fn, n, out in zip(run_once, counts, samples, strict=True):
            with measurement_lock():
                for _ in range(n):
                    t0 = time.perf_counter()
                    fn()
                    out.append((time.perf_counter() - t0) * 1e3)
    return samples
