"""Which waiting trial runs next (search/queue.py): a cached student's variants before the anchors
enqueued ahead of them, the rest in enqueue order, and no trial popped twice by two workers."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.queue import ask_next
from search.reuse import VARIANT_ATTR


def _study(storage: str) -> optuna.Study:
    return optuna.create_study(study_name="queue", storage=storage, load_if_exists=True,
                               sampler=optuna.samplers.RandomSampler(seed=0))


def _run(study: optuna.Study) -> tuple[float, dict]:
    trial = ask_next(study)
    x = trial.suggest_float("x", 0.0, 10.0)
    study.tell(trial, x)
    return x, study.trials[trial.number].user_attrs


def test_variants_run_before_the_anchors_enqueued_ahead_of_them(tmp_path: Path) -> None:
    study = _study(f"sqlite:///{tmp_path / 'q.db'}")
    study.enqueue_trial({"x": 1.0}, user_attrs={"anchor": "a"})
    study.enqueue_trial({"x": 2.0}, user_attrs={"anchor": "b"})
    study.enqueue_trial({"x": 3.0}, user_attrs={VARIANT_ATTR: 0})
    study.enqueue_trial({"x": 4.0}, user_attrs={VARIANT_ATTR: 0})
    ran = [_run(study)[0] for _ in range(4)]
    assert ran == [3.0, 4.0, 1.0, 2.0]  # the enqueued params are the ones the trial samples
    assert [t.user_attrs.get(VARIANT_ATTR) for t in study.trials[2:]] == [0, 0]
    x, attrs = _run(study)  # the queue is empty: the sampler draws
    assert x not in ran and not attrs
    assert all(t.state == TrialState.COMPLETE for t in study.trials)


def test_a_variant_another_worker_took_is_not_run_twice(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'q.db'}"
    mine, theirs = _study(storage), _study(storage)
    mine.enqueue_trial({"x": 1.0}, user_attrs={"anchor": "a"})
    mine.enqueue_trial({"x": 3.0}, user_attrs={VARIANT_ATTR: 0})
    first = ask_next(theirs)  # the other worker takes the variant and is still running it
    second = ask_next(mine)
    assert (first.number, second.number) == (1, 0)
    assert first.suggest_float("x", 0.0, 10.0) == 3.0 and second.suggest_float("x", 0.0, 10.0) == 1.0
    states = {t.number: t.state for t in mine.get_trials(deepcopy=False)}
    assert states == {0: TrialState.RUNNING, 1: TrialState.RUNNING}
