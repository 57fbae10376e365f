"""How a metric's name says what kind of figure it is, and how it compares with the baseline's."""

from __future__ import annotations

import re


def figure_kind(name: str) -> str:
    """'estimate' or 'simulated' when a metric's name says so (`latency_p50_est_ms`), else ''."""
    tokens = re.split(r"[._]", name.lower())
    if any(t in ("est", "estimate", "estimated") for t in tokens):
        return "estimate"
    if any(t in ("sim", "simulated") for t in tokens):
        return "simulated"
    return ""


def find_key(metrics: dict[str, float], stem: str, unit: str = "_ms") -> str | None:
    """The metric for `stem` (e.g. latency_p50), also when named as an estimate (latency_p50_est_ms)."""
    if stem + unit in metrics:
        return stem + unit
    for key in sorted(metrics):
        if key.startswith(stem + "_") and key.endswith(unit) and "_ci_" not in key:
            return key
    return None


def ratio(base: float | None, value: float | None) -> float | None:
    """base / value (how many times faster or smaller), or None when either is missing or zero."""
    return base / value if base and value else None


def versus(name: str, value: float | None, base: float | None) -> tuple[str, float] | None:
    """How `value` of metric `name` compares with the baseline's: ('faster', x), ('smaller', x),
    ('change', difference) for quality, or None where a comparison means nothing."""
    if value is None or base is None or "_ci_" in name:
        return None
    if name.startswith("latency"):
        x = ratio(base, value)
        return None if x is None else ("faster", x)
    if name.startswith("bytes"):
        x = ratio(base, value)
        return None if x is None else ("smaller", x)
    if name == "quality":
        return "change", value - base
    return None
