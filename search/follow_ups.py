"""What follows a finished trial: the driver's callback that queues the follow-ups guiding asks for.

Variants of a promising student and a follow-up trained longer (search/reuse.py), then its cut
pushed harder, or a failed push stepped back (search/push.py, which builds on reuse.py): each decides
on its own whether the trial wants one, within the budget, and this callback says what was queued.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial

from search.push import enqueue_push, enqueue_step_back
from search.reuse import enqueue_longer, enqueue_variants

if TYPE_CHECKING:
    from search.space import SearchSpace


def after_trial(space: SearchSpace, budget: int, storage: str,
                say: Callable[[str], None]) -> Callable[[optuna.Study, FrozenTrial], None]:
    """The driver's callback after each finished trial: enqueue its variants, its follow-up trained
    longer, its cut pushed harder and, for a failed push, its step back (search/push.py), in that order,
    and say so."""
    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        drop = trial.user_attrs.get("quality_drop", float("nan"))
        n = enqueue_variants(study, trial, space, budget, storage)
        if n:
            say(f"trial {trial.number}'s student is promising (quality drop {drop:.4g}): {n} variant(s) queued that "
                f"reuse it, cached, with other quantization/sharing")
        if enqueue_longer(study, trial, space, budget, storage):
            say(f"trial {trial.number}'s cut student is promising (quality drop {drop:.4g}): a follow-up queued "
                f"that trains it twice as long")
        if enqueue_push(study, trial, space, budget, storage):
            say(f"trial {trial.number}'s cut leaves quality to spare (quality drop {drop:.4g}): the same recipe queued "
                f"with the cut pushed harder")
        if enqueue_step_back(study, trial, space, budget, storage):
            say(f"trial {trial.number}'s pushed cut went too far (quality drop {drop:.4g}): the same recipe queued "
                f"with the cut halfway back to the last one that held")
    return callback
