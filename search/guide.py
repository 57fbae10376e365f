"""The `guide:` section of a space file, and the anchors a study runs right after its baseline.

A guided study (the default) does not leave the first trials to chance:

- `anchors`: after the baseline, the standard recipes the space itself contains run first, each
  technique alone at its usual setting (`Technique.anchors`), most useful first (quantization
  first: every searched layer at int8, the way `quantize_dynamic` does it). They are enqueued as
  the Optuna params `sample` reads, so TPE learns from them like from any trial, and they use the
  budget; with a budget smaller than baseline + anchors the most useful ones run.
- `reuse_students`: quantization variants of a promising cached student are tried before a new
  student is trained (search/students.py holds the cache; search/reuse.py picks the student).
- `reject_early`: a trial whose cheap proxy score clearly misses the quality constraint stops
  before its full evaluation and latency measurement (search/rejection.py).

`guide: {anchors: false, reuse_students: false, reject_early: false}` is plain sampling with the
space's sampler.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FixedTrial

from hardware.schema import Rule
from search.techniques import REGISTRY, Anchor

if TYPE_CHECKING:
    from search.space import SearchSpace

DEFAULT_VARIANTS = 2  # quantization variants per promising student when `reuse_students: true`
MAX_VARIANTS = 50


def _variants(raw: object) -> int:
    if isinstance(raw, bool):
        return DEFAULT_VARIANTS if raw else 0
    if isinstance(raw, int) and 0 <= raw <= MAX_VARIANTS:
        return raw
    raise ValueError(f"must be true, false or a number of variants per student in [0, {MAX_VARIANTS}], "
                     f"but got {raw!r}")


GUIDE_SCHEMA = Rule("mapping", help="how the search spends its first trials and its time (all on by default)",
                    fields={
    "anchors": Rule("bool", default=True,
                    help="after the baseline, run the standard recipes the space contains (each technique alone at "
                         "its usual setting; quantization first) before sampling"),
    "reuse_students": Rule("variants", default=True, parse=_variants,
                           text=f"true, false, or a number in [0, {MAX_VARIANTS}]",
                           help=f"try this many quantization/sharing variants of a promising cached student before "
                                f"training a new one (true = {DEFAULT_VARIANTS}); false: plain sampling over the "
                                "joint space"),
    "reject_early": Rule("bool", default=True,
                         help="stop a trial whose cheap proxy quality clearly misses the constraint, before its full "
                              "evaluation and latency measurement"),
})


@dataclass(frozen=True)
class Guide:
    anchors: bool = True
    reuse_students: int = DEFAULT_VARIANTS  # variants per promising student; 0 = off
    reject_early: bool = True

    @classmethod
    def from_validated(cls, values: dict[str, Any]) -> Guide:
        return cls(anchors=values["anchors"], reuse_students=values["reuse_students"],
                   reject_early=values["reject_early"])


def study_anchors(space: SearchSpace) -> list[Anchor]:
    """The space's anchors, most useful first, each as the complete params of one trial.

    Each technique's anchors run alone: every other technique of the space gets its `off_params`.
    Round robin over the techniques (quantization's first), so a short budget still gets each
    technique's best anchor; anchors that give the same recipe, or no compression, are dropped."""
    techniques = sorted(space.techniques, key=lambda t: REGISTRY.named(t.name).anchor_priority)
    own = {t.name: REGISTRY.named(t.name).anchors(t) for t in techniques}
    off = {t.name: REGISTRY.named(t.name).off_params(t) for t in techniques}
    out: list[Anchor] = []
    seen: set[str] = set()
    for rank in range(max((len(a) for a in own.values()), default=0)):
        for tech in techniques:
            if rank >= len(own[tech.name]):
                continue
            anchor = own[tech.name][rank]
            wanted = {k: v for name, params in off.items() if name != tech.name for k, v in params.items()}
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
