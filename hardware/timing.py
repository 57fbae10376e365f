"""Single-stream latency for code that holds MeasureSettings: the loop of `hardware.agent`.

The loop itself lives in the agent so that a board measured remotely and this host run
exactly the same code; backends time through `hardware.isolated` (fresh process, host lock,
contention watch).
"""

from __future__ import annotations

from dataclasses import asdict

from hardware.base import MeasureSettings


def agent_settings_args(settings: MeasureSettings) -> list[str]:
    """The agent's command-line flags for these settings."""
    args = []
    for key, value in asdict(settings).items():
        if key not in ("remeasure_factor", "processes"):  # not the agent's business
            args += [f"--{key.replace('_', '-')}", str(value)]
    return args
