"""Parsing and printing durations and sizes for people."""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def parse_duration(text: str | int | float) -> float:
    """'90s', '30m', '8h', '1h30m' or a number of seconds -> seconds. ValueError if malformed."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if not 0 < text < math.inf:
            raise ValueError(f"a duration must be a finite number > 0, but got {text}")
        return float(text)
    s = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return parse_duration(float(s))
    m = _DURATION.match(s)
    if not s or not m or not any(m.groups()):
        raise ValueError(f"a duration looks like 90s, 30m, 8h or 1h30m, but got {text!r}")
    h, mi, se = (float(g) if g else 0.0 for g in m.groups())
    total = h * 3600 + mi * 60 + se
    if total <= 0:
        raise ValueError(f"a duration must be > 0, but got {text!r}")
    return total


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def format_bytes(n: float) -> str:
    """Binary units, labelled as such (1 KiB = 1024 bytes)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb|kib|mib|gib|tib)?$")
_SIZE_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
               "tib": 2**40}


def parse_size(text: str | int) -> int:
    """'512MB', '4GiB', '2gb' or a number of bytes -> bytes. ValueError if malformed."""
    if isinstance(text, int) and not isinstance(text, bool) and text > 0:
        return text
    if isinstance(text, float) and not math.isfinite(text):
        raise ValueError(f"a memory size must be a finite number, but got {text!r}")
    m = _SIZE.match(str(text).strip().lower())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"a memory size looks like 512MB, 4GB or 2GiB, but got {text!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2) or "b"])
