"""The anchors a study runs right after its baseline: the standard recipes its own space contains.

Each technique names its standard settings (`Technique.anchors`) and how to leave it out
(`Technique.off_params`); here they become complete trials, in the order a short budget should
run them, and are enqueued once per study (`guide: {anchors: true}`, search/guide.py).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FixedTrial

from search.techniques import REGISTRY, Anchor

if TYPE_CHECKING:
    from search.space import SearchSpace


def study_anchors(space: SearchSpace) -> list[Anchor]:
    """The space's anchors, most useful first, each as the complete params of one trial.

    Each technique's anchors run alone: every other technique of the space gets its `off_params`;
    except that a cut (a student technique: pruning, factorization) runs with the first anchor of a
    technique that `recovers` it (distillation) when the space has one, as a cut is used in practice.
    Round robin over the techniques (quantization's first), so a short budget still gets each
    technique's best anchor; anchors that give the same recipe, or no compression, are dropped."""
    techniques = sorted(space.techniques, key=lambda t: REGISTRY.named(t.name).anchor_priority)
    own = {t.name: REGISTRY.named(t.name).anchors(t) for t in techniques}
    off = {t.name: REGISTRY.named(t.name).off_params(t) for t in techniques}
    recovery = next((own[t.name][0] for t in techniques if REGISTRY.named(t.name).recovers and own[t.name]), None)
    out: list[Anchor] = []
    seen: set[str] = set()
    for rank in range(max((len(a) for a in own.values()), default=0)):
        for tech in techniques:
            if rank >= len(own[tech.name]):
                continue
            anchor = own[tech.name][rank]
            wanted = {k: v for name, params in off.items() if name != tech.name for k, v in params.items()}
            technique = REGISTRY.named(tech.name)
            if recovery is not None and technique.student and not technique.recovers:
                wanted.update(recovery.params)
                anchor = Anchor(f"{anchor.label} + {recovery.label}", anchor.params)
            wanted.update(anchor.params)
            trial = FixedTrial(wanted)
            with warnings.catch_warnings():
                # A value outside the dimension would be replaced by a sampled one when enqueued: a bug here.
                warnings.simplefilter("error")
                recipe = space.sample(trial)
            if not recipe.steps or recipe.hash in seen:
                continue
            seen.add(recipe.hash)
            out.append(Anchor(anchor.label, dict(trial.params)))
    return out


def enqueue_anchors(study: optuna.Study, space: SearchSpace, budget_left: int) -> list[str]:
    """Enqueue the anchors not enqueued before, as many as `budget_left` allows; returns their labels.

    Remembered in the study (`anchors_enqueued`), so a resumed or extended study does not run one twice."""
    done = list(study.user_attrs.get("anchors_enqueued", []))
    todo = [a for a in study_anchors(space) if a.label not in done][:max(0, budget_left)]
    for anchor in todo:
        study.enqueue_trial(anchor.params, user_attrs={"anchor": anchor.label})
    if todo:
        study.set_user_attr("anchors_enqueued", done + [a.label for a in todo])
    return [a.label for a in todo]
