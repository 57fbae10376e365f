"""What follows a finished trial: the driver's callback that queues the follow-ups guiding asks for.

Variants of a promising student and a follow-up trained longer (search/reuse.py; none for a student
that another, cut differently and quantized alike, beats on every objective), then its cut
pushed harder, or a failed push stepped back (search/push.py, which builds on reuse.py): each decides
on its own whether the trial wants one, within the budget, and this callback says what was queued.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial

from search.push import enqueue_push, enqueue_step_back
from search.reuse import VARIANT_ATTR, beaten_by, enqueue_longer, enqueue_variants, is_promising

if TYPE_CHECKING:
    from search.space import SearchSpace


def after_trial(space: SearchSpace, budget: int, storage: str,
                say: Callable[[str], None]) -> Callable[[optuna.Study, FrozenTrial], None]:
    """The driver's callback after each finished trial: enqueue its variants, its follow-up trained
    longer (not for a student another cut beats as it stands: `beaten_by`), its cut pushed harder and,
    for a failed push, its step back (search/push.py), in that order, and say so."""
    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        drop = trial.user_attrs.get("quality_drop", float("nan"))
        beaten = beaten_by(trial, study.get_trials(deepcopy=False), study.directions)
        if beaten is not None:
            if is_promising(trial, space.max_quality_drop) and VARIANT_ATTR not in trial.user_attrs:
                say(f"trial {trial.number}'s student is beaten by trial {beaten.number}'s (as good or better on "
                    f"every objective, quantized alike): no variants or follow-up trained longer for it")
        else:
            n = enqueue_variants(study, trial, space, budget, storage)
            if n:
                say(f"trial {trial.number}'s student is promising (quality drop {drop:.4g}): {n} variant(s) queued "
                    f"that reuse it, cached, with other quantization/sharing")
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
