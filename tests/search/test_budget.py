"""The budget counts trials that ended on their own, not those whose worker went away."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from search import budget


def test_interrupted_trials_do_not_use_the_budget() -> None:
    study = optuna.create_study(directions=["maximize"])
    reasons = {
        "interrupted: its worker host:1 died mid-trial; retried once": False,  # SIGKILL of the driver
        "interrupted: stopped by Ctrl-C; retried on the next run": False,
        None: False,  # failed by the storage when the heartbeat stopped
        "crashed: the trial process died of signal SIGABRT": True,  # the recipe's own failures count
        "out of memory: the trial process used 1480 MiB": True,
        "not a number: non-finite objective values": True,
        "timed out: still running after the trial time limit of 45 s": True,
    }
    for reason in reasons:
        trial = study.ask()
        if reason is not None:
            trial.set_user_attr("failure_reason", reason)
        study.tell(trial, state=TrialState.FAIL)
    study.tell(study.ask(), [1.0])
    study.ask()  # running
    study.enqueue_trial({})  # waiting
    trials = study.get_trials()
    assert [budget.counts(t) for t in trials[:len(reasons)]] == list(reasons.values())
    assert budget.used(trials) == 4 + 1 + 1
