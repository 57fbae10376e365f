"""Early rejection: a cheap proxy score stops a trial that clearly cannot meet the quality constraint.

Right after the artifact is built, before the full evaluation and the latency measurement, the
trial process scores the task's proxy (`Task.proxy_quality`: a few hundred samples, on the
artifact as ONNX Runtime runs it) and compares its drop against the baseline's proxy. A trial is
rejected when

    proxy drop > max_quality_drop * MARGIN + noise

where `noise` is how far the baseline's proxy lies from its full score (what the subset alone can
be off by), widened whenever a completed trial's proxy drop lies further from its full drop
(`learn_noise`). MARGIN keeps a trial near the limit for the full evaluation: rejection only takes the
hopeless ones. A rejected trial is told to Optuna as PRUNED with its constraint set to the proxy's
excess (so TPE's constrained split counts it infeasible and learns to avoid its region), with
`failure_reason` "rejected early: proxy drop 4.1 > 1.5 ..." and user attribute `rejected`.

The time rejection saved is an estimate: each rejected trial skipped the phases a completed trial
spent after its proxy (evaluate + measure, from the trials' `timings`), at their mean, less the
proxy's own time on every trial it let through (the baseline's included): `time_saved_s` in
search/study/view.py, which reads studies (this module tells them).
"""

from __future__ import annotations

from typing import Any, NoReturn

import optuna

from search import hopeless
from search.study.view import CONSTRAINT_KEY

MARGIN = 1.5
SPEC_ATTR = "rejection"  # the study attribute holding the spec: {"reference", "limit", "noise"}
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


def proxy_drop(proxy: float | None, spec: dict[str, Any] | None) -> float | None:
    """The baseline's proxy minus this trial's, or None without both."""
    if proxy is None or not spec or "reference" not in spec:
        return None
    return spec["reference"] - proxy


def trial_spec(study_attrs: dict[str, Any], baseline: bool, enabled: bool) -> dict[str, Any] | None:
    """What a trial process gets (TrialRunner.evaluate): None, no proxy (rejection off, or the task has
    none: the baseline recorded no SPEC_ATTR); {} for the baseline, whose proxy is only scored; else the
    study's spec."""
    if not enabled:
        return None
    if baseline:
        return {}
    return study_attrs.get(SPEC_ATTR)


def record_baseline(study: optuna.Study, proxy: float | None, quality: float, max_quality_drop: float) -> None:
    """The spec later trials are judged by, from the baseline's proxy and full score (nothing without a proxy)."""
    if proxy is not None:
        study.set_user_attr(SPEC_ATTR, {"reference": proxy, "limit": limit(max_quality_drop, proxy, quality),
                                        "noise": abs(proxy - quality)})


def learn_noise(study: optuna.Study, proxy_drop: float | None, drop: float, max_quality_drop: float) -> None:
    """Widen the spec's noise to how far a completed trial's proxy drop lay from its full drop, when further
    than any before: the baseline alone is one sample of the proxy's error, and every completed trial
    is another, so the limit only ever grows towards what the proxy has been seen to miss by."""
    spec = study.user_attrs.get(SPEC_ATTR)
    if not spec or proxy_drop is None or abs(proxy_drop - drop) <= spec["noise"]:
        return
    noise = abs(proxy_drop - drop)
    study.set_user_attr(SPEC_ATTR, {**spec, "noise": noise, "limit": max_quality_drop * MARGIN + noise})


def tell_rejected(trial: optuna.Trial, result: dict[str, Any], max_quality_drop: float) -> NoReturn:
    """Record a rejected trial's result and raise TrialPruned with its reason (the driver tells it PRUNED).

    Its `quality_drop` is the proxy's (the full evaluation never ran: `rejected` says so), and its
    constraint the proxy drop's excess over the allowed drop, so TPE counts it infeasible."""
    for key in ("timings", "proxy", "proxy_drop", "environment", "cached_from", hopeless.ATTR, hopeless.FROM_ATTR):
        if result.get(key) is not None:
            trial.set_user_attr(key, result[key])
    for key, value in (result.get("student") or {}).items():  # student_key, student_cached, student_from
        trial.set_user_attr(key, value)
    trial.set_user_attr("rejected", True)
    trial.set_user_attr("quality_drop", result["proxy_drop"])
    trial.set_constraint(CONSTRAINT_KEY, result["proxy_drop"] - max_quality_drop)
    raise optuna.TrialPruned(result["rejected"])


def rejected_before(study: optuna.Study, recipe_hash: str, number: int) -> dict[str, Any] | None:
    """The result of the first trial of this study that had this recipe and was rejected, to reject this one
    again without building it (the spec does not change within a study); None when there is none."""
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)):
        attrs = t.user_attrs
        if t.number != number and attrs.get("rejected") and attrs.get("recipe_hash") == recipe_hash:
            return {"rejected": f"{attrs['failure_reason']}; the same recipe as trial {t.number}, not built again",
                    "proxy": attrs.get("proxy"), "proxy_drop": attrs["proxy_drop"], "timings": {},
                    "environment": attrs.get("environment"), "cached_from": t.number}
    return None
