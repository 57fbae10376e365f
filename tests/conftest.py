"""Suite-wide settings: shorter timing loops and a private measurement lock.

The tests check that latency is measured and recorded, not how fast anything is (speed
claims live in the benchmarks under search/benchmarks/, which use the real profiles).
So the built-in CPU profiles are shadowed, through COMPSEARCH_PROFILE_PATH, by copies with
shorter measurement settings; set in os.environ so that trial processes, workers and the
measuring agent inherit them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml

from hardware.profiles import PROFILE_DIR

FAST_MEASURE = {"warmup_s": 0.05, "warmup_queries": 10, "min_queries": 100, "min_duration_s": 0.25,
                "max_duration_s": 10, "max_attempts": 2, "retry_wait_s": 0.2, "remeasure_factor": 2,
                "processes": 1}


def _fast_profiles() -> Path:
    out = Path(tempfile.mkdtemp(prefix="compsearch-test-profiles-"))
    for name in ("ort-cpu", "ort-cpu-2t", "ort-cpu-2t-b8"):
        data = yaml.safe_load((PROFILE_DIR / f"{name}.yaml").read_text())
        own = data.get("measure", {})
        # Never more queries than the profile itself asks for (the batch-8 MiniLM one takes ~40).
        data["measure"] = {**own, **FAST_MEASURE,
                           "min_queries": min(FAST_MEASURE["min_queries"], own.get("min_queries", 10**9))}
        (out / f"{name}.yaml").write_text(yaml.safe_dump(data))
    return out


if "COMPSEARCH_PROFILE_PATH" not in os.environ:
    os.environ["COMPSEARCH_PROFILE_PATH"] = str(_fast_profiles())
if "COMPSEARCH_MEASURE_LOCK" not in os.environ:
    # Private to this test session: tests never queue behind another session's timings.
    os.environ["COMPSEARCH_MEASURE_LOCK"] = str(Path(tempfile.mkdtemp(prefix="compsearch-test-lock-")) / "lock")
