"""What a study's trial budget counts.

`--trials N` buys N trials that ran to an end of their own: completed, or failed because of
their recipe (a crash, out of memory, NaN, a time limit). A trial cut short because the driver
or its machine went away (SIGKILL, Ctrl-C, a lost heartbeat) says nothing about its recipe, so
it does not use the budget: it stays in the study as failed ("interrupted: ..."), its recipe
is retried once, and the run still ends with N trials of its own.
"""

from __future__ import annotations

from collections.abc import Iterable

from optuna.trial import FrozenTrial, TrialState

INTERRUPTED = "interrupted:"


def interrupted(trial: FrozenTrial) -> bool:
    """Failed because its worker went away: a reason that says so, or none at all (the storage
    failed it when its heartbeat stopped; workers always record a reason themselves)."""
    if trial.state != TrialState.FAIL:
        return False
    reason = trial.user_attrs.get("failure_reason")
    return reason is None or str(reason).startswith(INTERRUPTED)


def counts(trial: FrozenTrial) -> bool:
    """Whether `trial` uses the budget: started (running or finished), and not interrupted."""
    return trial.state != TrialState.WAITING and not interrupted(trial)


def used(trials: Iterable[FrozenTrial]) -> int:
    return sum(1 for t in trials if counts(t))


def view_interrupted(state: str, failure_reason: str | None) -> bool:
    """The same rule on a TrialView (whose reason is already filled in for heartbeat failures)."""
    return state == "FAIL" and (failure_reason or "").startswith(INTERRUPTED)
