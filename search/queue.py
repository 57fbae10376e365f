"""Which waiting trial runs next: variants of a cached student first, then the queue in order, and last
the trials that take a quantization the study measured slower than the baseline.

Optuna's `ask` runs the waiting (enqueued) trials in the order they were enqueued. A guided study
enqueues its anchors right after the baseline, and the variants of a promising student (search/reuse.py)
only when that student's trial finishes, so by enqueue order the variants would wait behind every
anchor left, some of which train a student of their own (minutes on MiniLM) while a variant loads the
cached student and costs seconds. `ask_next` pops the variants first: the quantizations of a good
student are tried before another student is trained, and the front they bring arrives trials earlier.

Except where the study measured the space's first standard setting (int8 per-channel) alone no faster
than the baseline (`standard_is_slower`: the digits MLP, where int8 costs 1.3 to 2.2x fp32's time):
a waiting trial whose quantization is exactly that setting (a student's int8 variant) then runs after
every other waiting trial, so the unquantized rungs of a cut pushed harder, which are the latency
candidates, come first, and each int8 variant, a size candidate outside the latency a user came for,
comes when the queue has nothing else.

Only the order changes: what is queued, and so what a budget buys, is the same (a queued trial holds
its place in the budget: search/reuse.py `budget_left`).

On the MiniLM space (12 trials) that moves the 5-of-6-layer student's int8 and int4 variants from the
8th-10th trials run to the 4th-6th, ahead of the distillation-only, FFN and int4 anchors (their trial
numbers, given when enqueued, stay 7-9); int8 is faster there, so nothing is put last.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from search.reuse import VARIANT_ATTR, queued_params, split_params, standard_is_slower, standard_settings

if TYPE_CHECKING:
    from search.space import SearchSpace


def slower_setting(trials: Sequence[FrozenTrial], space: SearchSpace | None) -> dict[str, Any] | None:
    """The space's first standard setting when the study measured it alone no faster than the baseline, else None."""
    if space is None or not standard_is_slower(trials, space):
        return None
    return next(iter(standard_settings(space)), None)


def run_order(waiting: Sequence[FrozenTrial], slower: dict[str, Any] | None) -> list[FrozenTrial]:
    """The waiting trials in the order they should run: variants, the rest, then those quantized as `slower`."""
    def rank(t: FrozenTrial) -> tuple[int, int]:
        if slower is not None and split_params(queued_params(t))[1] == slower:
            return 2, t.number
        return (0 if VARIANT_ATTR in t.user_attrs else 1), t.number
    return sorted(waiting, key=rank)


def ask_next(study: optuna.Study, space: SearchSpace | None = None) -> optuna.Trial:
    """`study.ask()`, except that the waiting trials are taken in `run_order`: a cached student's variants
    first, and, given the study's `space`, a quantization the study measured slower last. Safe beside other
    workers: a trial another worker took first is skipped, as Optuna does."""
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if not waiting:
        return study.ask()
    slower = slower_setting(study.get_trials(deepcopy=False), space)
    storage = study._storage  # noqa: SLF001 - Optuna pops a waiting trial only in enqueue order
    for frozen in run_order(waiting, slower):
        try:
            if not storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):  # noqa: SLF001
                continue
        except UpdateFinishedTrialError:
            continue
        # As `ask` does (`tell` does too): the sampler reads a per-study cache of the trials; start it afresh.
        study._thread_local.cached_all_trials = None  # noqa: SLF001
        return optuna.Trial(study, frozen._trial_id)  # noqa: SLF001 - what `ask` builds for a popped trial
    return study.ask()
