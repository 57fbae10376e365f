"""The `guide:` section of a space file: how a study spends its first trials and its time.

A guided study (the default) does not leave the first trials to chance:

- `anchors`: after the baseline, the standard recipes the space itself contains run first, each
  technique alone at its usual setting (`Technique.anchors`), most useful first (quantization
  first: every searched layer at int8, the way `quantize_dynamic` does it; search/anchors.py). They are enqueued as
  the Optuna params `sample` reads, so TPE learns from them like from any trial, and they use the
  budget; with a budget smaller than baseline + anchors the most useful ones run.
- `reuse_students`: quantization variants of a promising new student are tried before another
  student is trained, ahead of the anchors still queued (search/queue.py; search/students.py holds the
  cache; search/reuse.py queues the variants; none for a student that another cut, quantized alike,
  beats on every objective).
- `train_longer`: a promising cut student (pruned, layers removed) that distillation trained back also
  runs once with that training twice as long (search/reuse.py).
- `push_cuts`: a cut anchor that leaves at least half the allowed drop to spare runs again with the cut
  pushed halfway to the hardest the space allows, and again while that (or its follow-up trained longer)
  still leaves quality to spare; a push that goes too far steps back halfway (search/push.py).
- `reject_early`: a trial whose cheap proxy score clearly misses the quality constraint stops
  before its full evaluation and latency measurement (search/rejection.py).

`guide: {anchors: false, reuse_students: false, train_longer: false, push_cuts: false, reject_early: false}` is plain
sampling with the space's sampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hardware.schema import Rule

# `reuse_students: true`: a promising student gets one variant per standard quantization of the space that
# it did not use (its quantize anchors: int8, int4 at the smallest and at the largest block), at least one.
# Those are what an expert tries first; further variants only pin a random param: on digits (one standard
# setting) three variants per student left the sampler 1 of 16 trials (README, "Student reuse").
STANDARD_VARIANTS = None

MAX_VARIANTS = 50


def _variants(raw: object) -> int | None:
    if isinstance(raw, bool):
        return STANDARD_VARIANTS if raw else 0
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
                           help="try this many quantization/sharing variants of a promising cached student before "
                                "training a new one (true = one per standard quantization of the space that the "
                                "student did not use, at least one); false: plain sampling over the joint space"),
    "train_longer": Rule("bool", default=True,
                         help="follow a promising cut student (pruned, layers removed) that distillation trained back "
                              "by the same recipe trained twice as long (distillation's epochs)"),
    "push_cuts": Rule("bool", default=True,
                      help="run a cut anchor that leaves at least half the allowed quality drop to spare again with "
                           "the cut pushed halfway to the hardest the space allows (pruning ratio, layers kept), "
                           "while that still leaves quality to spare, and step a push that goes too far halfway back"),
    "reject_early": Rule("bool", default=True,
                         help="stop a trial whose cheap proxy quality clearly misses the constraint, before its full "
                              "evaluation and latency measurement"),
})


@dataclass(frozen=True)
class Guide:
    anchors: bool = True
    reuse_students: int | None = STANDARD_VARIANTS  # variants per promising student; None = `true`; 0 = off
    train_longer: bool = True  # a promising cut student's follow-up with longer distillation
    push_cuts: bool = True  # a cut anchor with quality to spare runs again cut harder (search/push.py)
    reject_early: bool = True

    @property
    def reuses_students(self) -> bool:
        return self.reuse_students != 0

    def variants_for(self, standard_unused: int) -> int:
        """How many variants a promising student gets: the number the space sets, or (`true`) one per
        standard setting the student did not use, at least one."""
        return max(1, standard_unused) if self.reuse_students is STANDARD_VARIANTS else self.reuse_students

    @classmethod
    def from_validated(cls, values: dict[str, Any]) -> Guide:
        return cls(anchors=values["anchors"], reuse_students=values["reuse_students"],
                   train_longer=values["train_longer"], push_cuts=values["push_cuts"],
                   reject_early=values["reject_early"])
