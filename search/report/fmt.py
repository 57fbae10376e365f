"""Number formatting shared by the HTML and Markdown reports, so both print the same figures."""

from __future__ import annotations

import math
from typing import Any

from search.units import format_bytes, format_duration


def num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.{digits}g}"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}"


def size(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else format_bytes(value)


def duration(seconds: float) -> str:
    return format_duration(seconds)


def kind_note(kind: str) -> str:
    """The label an estimated or simulated figure carries everywhere it is printed."""
    return f" ({kind})" if kind else ""


def cell(value: Any) -> str:
    """A layers.json value as text: shapes as 64x256, fractions as percentages-free decimals."""
    if value is None:
        return "-"
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
