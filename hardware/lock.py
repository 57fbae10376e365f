"""A host-wide measurement lock.

Timing taken while anything else computes on the host is wrong, and not only in absolute
terms (ratios between candidates flip). Every worker on a host takes this lock around its
latency loop, so compression may run in parallel but timing never overlaps.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def lock_path() -> Path:
    return Path(os.environ.get("COMPSEARCH_MEASURE_LOCK", Path(tempfile.gettempdir()) / "compsearch-measure.lock"))


@contextlib.contextmanager
def measurement_lock() -> Iterator[None]:
    path = lock_path()
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released by the kernel if the holder dies
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
