"""Which waiting trial runs next: variants of a cached student first, then the queue in order.

Optuna's `ask` runs the waiting (enqueued) trials in the order they were enqueued. A guided study
enqueues its anchors right after the baseline, and the variants of a promising student (search/reuse.py)
only when that student's trial finishes, so by enqueue order the variants would wait behind every
anchor left, some of which train a student of their own (minutes on MiniLM) while a variant loads the
cached student and costs seconds. `ask_next` pops the variants first: the quantizations of a good
student are tried before another student is trained, and the front they bring arrives trials earlier.
Only the order changes: what is queued, and so what a budget buys, is the same.

On the MiniLM space (12 trials) that moves the 5-of-6-layer student's int8 and int4 variants from the
8th-10th trials run to the 4th-6th, ahead of the distillation-only, FFN and int4 anchors (their trial
numbers, given when enqueued, stay 7-9).
"""

from __future__ import annotations

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from search.reuse import VARIANT_ATTR


def ask_next(study: optuna.Study) -> optuna.Trial:
    """`study.ask()`, except that a waiting variant of a cached student is taken before the other waiting
    trials. Safe beside other workers: a trial another worker took first is skipped, as Optuna does."""
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    storage = study._storage  # noqa: SLF001 - Optuna pops a waiting trial only in enqueue order
    for frozen in sorted((t for t in waiting if VARIANT_ATTR in t.user_attrs), key=lambda t: t.number):
        try:
            if not storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):  # noqa: SLF001
                continue
        except UpdateFinishedTrialError:
            continue
        # As `ask` does (`tell` does too): the sampler reads a per-study cache of the trials; start it afresh.
        study._thread_local.cached_all_trials = None  # noqa: SLF001
        return optuna.Trial(study, frozen._trial_id)  # noqa: SLF001 - what `ask` builds for a popped trial
    return study.ask()
