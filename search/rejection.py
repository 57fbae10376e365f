"""Early rejection: a cheap proxy score stops a trial that clearly cannot meet the quality constraint.

Right after the artifact is built, before the full evaluation and the latency measurement, the
trial process scores the task's proxy (`Task.proxy_quality`: a few hundred samples, on the
artifact as ONNX Runtime runs it) and compares its drop against the baseline's proxy. A trial is
rejected when

    proxy drop > max_quality_drop * MARGIN + noise

where `noise` is how far the baseline's proxy lies from its full score (what the subset alone can
be off by). MARGIN keeps a trial near the limit for the full evaluation: rejection only takes the
hopeless ones. A rejected trial is told to Optuna as PRUNED with its constraint set to the proxy's
excess (so TPE's constrained split counts it infeasible and learns to avoid its region), with
`failure_reason` "rejected early: proxy drop 4.1 > 1.5 ..." and user attribute `rejected`.

The time rejection saved is an estimate: each rejected trial skipped the phases a completed trial
spent after its proxy (evaluate + measure, from the trials' `timings`), at their mean.
"""

from __future__ import annotations

from collections.abc import Iterable
from statistics import mean
from typing import Any

MARGIN = 1.5
SKIPPED_PHASES = ("evaluate", "measure")  # what a rejected trial does not run
REASON = "rejected early:"


def limit(max_quality_drop: float, baseline_proxy: float, baseline_quality: float) -> float:
    """The proxy drop above which a trial is rejected."""
    return max_quality_drop * MARGIN + abs(baseline_proxy - baseline_quality)


def verdict(proxy: float, spec: dict[str, Any]) -> str | None:
    """The rejection reason for a trial whose proxy scored `proxy`, or None when it goes on.

    `spec`: {"reference": the baseline's proxy, "limit": from `limit`} (empty: score only)."""
    if "reference" not in spec:
        return None
    drop = spec["reference"] - proxy
    if drop > spec["limit"]:
        return (f"{REASON} proxy drop {drop:.4g} > {spec['limit']:.4g} (allowed drop x {MARGIN:g} + the proxy's "
                f"noise {spec.get('noise', 0.0):.2g}); full evaluation and latency skipped")
    return None


def time_saved_s(trials: Iterable[Any]) -> float | None:
    """Estimated seconds rejection saved: rejected trials x the mean skipped phases of completed ones.

    `trials`: the study view's TrialViews (state, baseline, rejected, timings)."""
    trials = list(trials)
    rejected = sum(t.rejected for t in trials)
    spent = [sum(t.timings.get(p, 0.0) for p in SKIPPED_PHASES) for t in trials
             if t.state == "COMPLETE" and not t.baseline and all(p in t.timings for p in SKIPPED_PHASES)]
    if not rejected:
        return 0.0
    return rejected * mean(spent) if spent else None
