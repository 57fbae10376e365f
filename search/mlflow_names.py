"""Names MLflow accepts as metric keys, checked without importing MLflow (validate stays fast).

MLflow 3.x refuses a metric, param or tag key with characters outside `/ \\w . - space :`, one
that is not a normalised relative path (`a//b`, `../x`, `/x`), or one over 250 characters. A
refused key fails a whole `log_batch`, so a task's `quality_name` is checked when the task
loads, and other keys (a task's extra metrics, known only after a trial) are made acceptable.
"""

from __future__ import annotations

import posixpath
import re

MAX_KEY = 250
_ALLOWED = re.compile(r"[/\w.\- :]*")
RESERVED = ("latency_p50_ms", "bytes", "quality_drop")  # compsearch's own metric names beside the quality


def key_problem(name: object) -> str | None:
    """Why MLflow would refuse `name` as a metric key, or None."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if len(name) > MAX_KEY:
        return f"must be at most {MAX_KEY} characters (MLflow's limit)"
    if not _ALLOWED.fullmatch(name):
        return "may only contain letters, digits, '_', '-', '.', ' ', ':' and '/' (MLflow's rule for metric names)"
    norm = posixpath.normpath(name)
    if norm != name or norm == "." or norm.startswith("..") or norm.startswith("/"):
        return "must be a plain relative name (no '//', '..', leading '/' or trailing '/'; MLflow's rule)"
    return None


def safe_key(name: str) -> str:
    """`name` changed as little as possible into a key MLflow accepts."""
    if key_problem(name) is None:
        return name
    text = re.sub(r"[^/\w.\- :]", "_", str(name))
    parts = [p if p not in ("", ".", "..") else "_" for p in text.split("/")]
    key = "/".join(parts)[:MAX_KEY]
    return key if key_problem(key) is None else "_"
