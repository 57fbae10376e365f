"""A user task (loaded as 'file.py:FaultyDigits') that misbehaves on chosen evaluations.

`fault_plan` lists what the 1st, 2nd, ... evaluation does (ok, raise, crash, memory, nan,
timeout, slow); a counter file in `fault_dir` numbers evaluations across trial processes, so a
crashed process does not reset it. These are real faults in a real trial process: the
interpreter aborts, memory really grows, time really passes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from search.params import Rule
from search.tasks.base import Predict
from search.tasks.digits import DigitsTask


class FaultyDigits(DigitsTask):
    name = "faulty-digits"
    OPTIONS = {
        **DigitsTask.OPTIONS,
        "fault_plan": Rule("str", default="ok", searchable=False),
        "fault_dir": Rule("str", default="/tmp", searchable=False),
    }

    def _next_action(self) -> str:
        counter = Path(self.options["fault_dir"]) / "evaluations"
        n = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(n))
        plan = str(self.options["fault_plan"]).split(",")
        return plan[n - 1] if n <= len(plan) else "ok"

    def evaluate(self, predict: Predict) -> float:
        action = self._next_action()
        if action == "crash":
            os.abort()
        if action == "memory":
            hog = []
            for _ in range(200):  # up to 12.8 GB, 64 MB at a time, every page touched
                hog.append(np.ones(8 * 2**20))
                time.sleep(0.01)
        if action == "timeout":
            time.sleep(3600)
        if action == "slow":
            time.sleep(30)
        if action == "raise":
            raise RuntimeError("evaluation exploded on purpose")
        if action == "nan":
            return float("nan")
        return super().evaluate(predict)
