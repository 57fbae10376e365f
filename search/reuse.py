"""Student reuse: after a trial brings a promising new student, its quantization variants run next.

A trial's student (its structural and training steps: search/students.py) costs minutes; the
rest of its recipe (quantization, sharing) costs seconds on a cached student. So when a trial
completes that

- has a cached student (`student_cached` "miss": it trained it; or "hit": another study
  sharing the results directory did) that no trial of this study took variants of yet,
- is not itself a variant,
- completed, or was rejected early by its proxy (search/rejection.py),
- and is promising: its quality drop is within PROMISING x the allowed drop,
- and is not beaten as it stands by another cut quantized alike (`beaten_by`, checked by the driver's
  callback, search/follow_ups.py; a beaten student gets no follow-up trained longer either),

variants of it are enqueued at once (they run next, ahead of the anchors and follow-ups queued before
them, search/queue.py, and so before another student is trained; except a variant quantized with the
standard setting the study measured slower than the baseline, which runs after every other waiting
trial, `search.queue.run_order`; a cut student over the allowed drop
that is trained longer waits for that follow-up: `trains_longer_first`): as many as
`guide.reuse_students` says, or with `true` one per standard setting the parent did not use, at
least one (`Guide.variants_for`). A variant fixes the Optuna params of the student techniques to the parent's,
so its student prefix, and its cache key, are the parent's: it loads the student instead of
training it. The first variants take the space's standard quantization/sharing settings (the
anchors of those techniques: int8 per-channel, int4, ...) that the parent did not use; further ones
leave the other params to the study's sampler (`enqueue_trial` with partial params: Optuna samples
the missing ones), except a few non-student params per variant, pinned so that a variant differs
from its parent and its siblings wherever the space allows (an identical recipe would only repeat
an earlier result and waste a trial: `variant_params`).

Why PROMISING = 2: the parent's drop includes its own quantization, which a variant changes. A
parent up to twice over the limit may owe the excess to an aggressive quantization that a
milder variant avoids; beyond that the student itself is too weak, and quantizing it further
only loses more.

A promising parent whose student was cut (pruned, factorized, layers removed) and trained back by a
recovering technique (distillation) also gets one follow-up, queued after its variants: the same recipe
with that training twice as long (`Technique.training_length`: distillation's `epochs`; or the longest
the space allows when twice is beyond it), and the parent's quantization, or the space's first standard
setting when the parent quantized nothing, unless the study measured that setting alone no faster than the
baseline (`quantized`, `standard_is_slower`) (`longer_params`; `guide: {train_longer: false}` turns it off).
Why: the sampler rarely draws the same cut twice with more training, and a cut is where more
training pays: on MiniLM a 5-of-6-layer student + int8 distilled 1 epoch lost 0.19 on the selection
split and 1.01 on the held-out sts2012-SMTnews; distilled 2 epochs (its follow-up), it gained 0.08 and
lost 0.66 there, as fast.
A follow-up is marked `longer_of` and is not followed up again; it uses the budget like any trial.

Variants are marked `variant_of` (the parent's number). The budget holds: at most the budget
left minus the trials already waiting are enqueued, under the study's budget lock (so two
workers finishing at once cannot overshoot it), and a student gets its variants once per study. With
the cache off (COMPSEARCH_STUDENT_CACHE=off) no variants are queued: each would train again.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FixedTrial, FrozenTrial, TrialState

from search.budget import used as budget_used
from search.recovery import budget_lock
from search.standard_probe import ATTR as PROBE_ATTR
from search.standard_probe import is_slower
from search.techniques import REGISTRY

if TYPE_CHECKING:
    from search.space import SearchSpace

PROMISING = 2.0  # a parent's quality drop may be up to this many times the allowed drop
VARIANT_ATTR = "variant_of"
LONGER_ATTR = "longer_of"


def is_student_param(name: str) -> bool:
    """Whether an Optuna param belongs to a student technique: params are named `<technique>.<key>...`
    (search/techniques/*), so the part before the first dot names the technique."""
    technique = name.split(".", 1)[0]
    return technique in REGISTRY.names() and REGISTRY.named(technique).student


def split_params(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the student techniques' params, the others) of one trial."""
    student = {k: v for k, v in params.items() if is_student_param(k)}
    return student, {k: v for k, v in params.items() if k not in student}


def is_promising(trial: FrozenTrial, max_quality_drop: float) -> bool:
    """A completed or early-rejected trial, not the baseline, whose quality drop is within PROMISING x the
    allowed drop (a rejected trial's drop is its proxy's, and rejection leaves the drops just over 1.5x)."""
    attrs = trial.user_attrs
    # A trial rejected early (search/rejection.py) has its proxy's drop: its student may still be good.
    finished = trial.state == TrialState.COMPLETE or (trial.state == TrialState.PRUNED and attrs.get("rejected"))
    if not finished or attrs.get("baseline"):
        return False
    drop = attrs.get("quality_drop")
    return drop is not None and drop <= PROMISING * max(0.0, max_quality_drop)


def wants_variants(trial: FrozenTrial, max_quality_drop: float) -> bool:
    """A completed or early-rejected trial (not a variant, not the baseline) with a cached student (trained
    now or by another study: not with the cache off) and student params to fix, that is promising (see
    PROMISING: a rejected trial's drop is its proxy's, and rejection leaves the drops just over 1.5x)."""
    attrs = trial.user_attrs
    if VARIANT_ATTR in attrs or attrs.get("student_cached") not in ("miss", "hit") or not split_params(trial.params)[0]:
        return False
    # Its student alone, unquantized (scored when a cut trial is rejected: search/hopeless.py), already misses:
    # another quantization cannot bring it back.
    if attrs.get("student_proxy_drop", -math.inf) > max(0.0, max_quality_drop):
        return False
    return is_promising(trial, max_quality_drop)


def cut_params(params: dict[str, Any]) -> dict[str, Any]:
    """The params of the cuts among `params` (student techniques that do not train a student back:
    pruning, layers removed, factorization), without the recovery training's (distillation's)."""
    return {k: v for k, v in split_params(params)[0].items() if not REGISTRY.named(k.split(".", 1)[0]).recovers}


def beaten_by(parent: FrozenTrial, trials: Sequence[FrozenTrial],
              directions: Sequence[optuna.study.StudyDirection]) -> FrozenTrial | None:
    """A completed trial of the study whose student is cut differently from `parent`'s, with the same
    quantization and sharing (so like is compared with like), that is at least as good as `parent` on
    every objective and better on one; None when there is none.

    Such a parent's student is beaten as it stands, and its variants and its follow-up trained longer
    would meet the other student's own variants and follow-up, quantized alike: they are not queued. On
    MiniLM the FFN -25% anchor lost 0.80 at 0.84x fp32 latency beside 5 of 6 layers at 0.03 and 0.78x,
    both as large; its 3 variants and follow-up took 4 of 20 trials, none on the front. A longer-trained
    follow-up is not compared with its own parent: the cut is the same (the ladder's business,
    search/push.py)."""
    if parent.values is None or parent.user_attrs.get("baseline") or not split_params(parent.params)[0]:
        return None
    cut, others = cut_params(parent.params), split_params(parent.params)[1]
    signs = [1.0 if d == optuna.study.StudyDirection.MAXIMIZE else -1.0 for d in directions]
    for t in trials:
        if (t.number == parent.number or t.state != TrialState.COMPLETE or t.values is None
                or len(t.values) != len(signs) or t.user_attrs.get("baseline")):
            continue
        if not split_params(t.params)[0] or cut_params(t.params) == cut or split_params(t.params)[1] != others:
            continue
        gains = [s * (a - b) for s, a, b in zip(signs, t.values, parent.values, strict=True)]
        if all(g >= 0 for g in gains) and any(g > 0 for g in gains):
            return t
    return None


def trains_longer_first(parent: FrozenTrial, space: SearchSpace) -> bool:
    """A cut student over the allowed drop whose follow-up trained longer comes (`longer_params`): its
    variants wait for that follow-up, which gets them if it is promising. A weak student's variants only
    repeat its loss with another quantization (MiniLM: 4 of 6 layers lost 1.39 of 0.5 allowed, and its
    variants and follow-up took 4 trials, none on the front); the longer-trained one is the better student."""
    attrs = parent.user_attrs
    drop = attrs.get("quality_drop")
    if drop is None or drop <= max(0.0, space.max_quality_drop) or VARIANT_ATTR in attrs or LONGER_ATTR in attrs:
        return False
    return space.guide.train_longer and longer_params(parent, space) is not None


def value_grid(dist: BaseDistribution) -> list[Any] | None:
    """Every value of a finite distribution (None for a continuous or a very large one)."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution) and (dist.high - dist.low) // dist.step < 10_000:
        return list(range(dist.low, dist.high + 1, dist.step))
    if isinstance(dist, FloatDistribution) and dist.step is not None:
        steps = round((dist.high - dist.low) / dist.step)
        return [min(dist.low + k * dist.step, dist.high) for k in range(steps + 1)]
    return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b)
    return a == b


def _other_value(dist: BaseDistribution, taken: list[Any], rng: random.Random) -> Any:
    """A value of `dist` not in `taken` (the parent's first, then earlier variants' pins); when all are
    taken, one other than the parent's (taken[0]); None when `dist` has no other value."""
    grid = value_grid(dist)
    if grid is not None:
        for avoid in (taken, taken[:1]):
            free = [v for v in grid if not any(_same(v, t) for t in avoid)]
            if free:
                return rng.choice(free)
        return None
    low, high = float(dist.low), float(dist.high)  # type: ignore[attr-defined]
    if low == high:
        return None
    for _ in range(100):
        value = math.exp(rng.uniform(math.log(low), math.log(high))) if dist.log else rng.uniform(low, high)  # type: ignore[attr-defined]
        if isinstance(dist, IntDistribution):
            value = dist.low + round((value - low) / dist.step) * dist.step
        if not any(_same(value, t) for t in taken):
            return value
    return None


def standard_settings(space: SearchSpace) -> list[dict[str, Any]]:
    """The space's anchors of the techniques that act after the student (quantize's one-liners, sharing's
    usual setting), as their non-student params: on a promising student they are what an expert tries
    first, and a variant that takes one quantizes for certain (a pinned param alone may be one the rest
    of the recipe does not read)."""
    from search.anchors import study_anchors

    out = []
    for anchor in study_anchors(space):
        recipe = space.sample(FixedTrial(anchor.params))
        if any(not REGISTRY.named(step.type).student for step in recipe.steps):
            out.append(split_params(anchor.params)[1])
    return out


def standard_alone_params(space: SearchSpace) -> dict[str, Any] | None:
    """The params of the anchor that applies the space's first standard setting alone to the baseline model
    (no student step), or None when the space has no such anchor: what search/standard_probe.py times beside
    the baseline."""
    from search.anchors import study_anchors

    standard = next(iter(standard_settings(space)), None)
    if standard is None:
        return None
    for anchor in study_anchors(space):
        steps = space.sample(FixedTrial(anchor.params)).steps
        if split_params(anchor.params)[1] == standard and not any(REGISTRY.named(s.type).student for s in steps):
            return anchor.params
    return None


def unused_standard(parent: FrozenTrial, standard: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The `standard` settings (`standard_settings`) that differ from `parent`'s own."""
    others = split_params(parent.params)[1]
    return [setting for setting in standard
            if any(k not in others or not _same(others[k], v) for k, v in setting.items())]


def variant_params(parent: FrozenTrial, n: int, rng: random.Random,
                   standard: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """The partial params of `n` variants of `parent`: its student params, then first each of the
    `standard` settings (`standard_settings`) that differs from the parent's own, complete; after them
    variant i sets the i-th of the parent's other params (shuffled) to a value neither the parent nor an
    earlier variant pinned, and the ones before it to the parent's, so each variant differs from the
    parent and from its siblings whatever the sampler draws for the rest. [] when no param outside the
    student can change: the space allows no variant."""
    student, others = split_params(parent.params)
    fixed = [{**student, **setting} for setting in unused_standard(parent, standard)][:n]
    n -= len(fixed)
    candidates = [k for k in others if _other_value(parent.distributions[k], [others[k]], rng) is not None]
    if not candidates or n <= 0:
        return fixed
    rng.shuffle(candidates)
    taken = {k: [others[k]] for k in candidates}
    out = fixed
    for i in range(n):
        name = candidates[i % len(candidates)]
        kept = {k: others[k] for k in candidates[:i % len(candidates)]}
        value = _other_value(parent.distributions[name], taken[name], rng)
        taken[name].append(value)
        out.append({**student, **kept, name: value})
    return out


def budget_left(trials: Sequence[FrozenTrial], budget: int) -> int:
    """Trials the budget still allows beyond those already used and those already queued (read under
    the budget lock, so two workers cannot both take the last one)."""
    return budget - budget_used(trials) - sum(1 for t in trials if t.state == TrialState.WAITING)


def enqueue_variants(study: optuna.Study, parent: FrozenTrial, space: SearchSpace, budget: int,
                     storage: str) -> int:
    """Enqueue `space.guide.variants_for(...)` variants of `parent` if it wants them (`wants_variants`), as
    many as the budget allows; returns how many were enqueued."""
    if (not space.guide.reuses_students or not wants_variants(parent, space.max_quality_drop)
            or trains_longer_first(parent, space)):
        return 0
    standard = standard_settings(space)
    wanted = space.guide.variants_for(len(unused_standard(parent, standard)))
    with budget_lock(storage, study.study_name):
        trials = study.get_trials(deepcopy=False)
        parents = {t.user_attrs.get(VARIANT_ATTR) for t in trials}
        if any(t.number in parents and t.user_attrs.get("student_key") == parent.user_attrs.get("student_key")
               for t in trials):
            return 0  # this student's variants were queued before (after this trial or another with it)
        left = budget_left(trials, budget)
        # Seeded by the study and the parent: a rerun of the same study pins the same params.
        rng = random.Random(f"{study.study_name}:{parent.number}")
        variants = variant_params(parent, max(0, min(wanted, left)), rng, standard)
        for params in variants:
            study.enqueue_trial(params, user_attrs={VARIANT_ATTR: parent.number})
    return len(variants)


def longer_params(parent: FrozenTrial, space: SearchSpace, trials: Sequence[FrozenTrial] = ()) -> dict[str, Any] | None:
    """The complete params of `parent`'s follow-up: its cut student's recovery training twice as long
    (the recovering technique's `training_length`: the smallest allowed value at least twice the parent's,
    else the longest allowed), with the parent's other params, or the space's first standard setting
    (`standard_settings`: int8 per-channel) when the parent quantized nothing and the study's `trials` do
    not show it slower (`quantized`). None when nothing was cut, nothing recovers it, or the training is
    already the longest the space allows."""
    techniques = [REGISTRY.named(step.type) for step in space.sample(FixedTrial(parent.params)).steps]
    if not any(t.student and not t.recovers for t in techniques):
        return None  # nothing cut: nothing for longer training to win back
    for technique in techniques:
        if not (technique.recovers and technique.training_length):
            continue
        name = f"{technique.name}.{technique.training_length}"
        grid = value_grid(parent.distributions[name]) if name in parent.distributions else None
        longer = [v for v in grid or [] if v > parent.params[name]]
        if not longer:
            return None
        doubled = [v for v in longer if v >= 2 * parent.params[name]]
        return quantized({**parent.params, name: min(doubled) if doubled else max(longer)}, techniques, space, trials)
    return None


def quantized(params: dict[str, Any], techniques: Sequence[Any], space: SearchSpace,
              trials: Sequence[FrozenTrial] = ()) -> dict[str, Any]:
    """`params` as they are, or, when their recipe (`techniques`) is a student alone (nothing quantized or
    shared), its student params with the space's first standard setting (`standard_settings`: int8
    per-channel): a follow-up of an unquantized anchor is then itself a candidate for the front. Except
    where the study's `trials` show that setting alone no faster than the baseline (`standard_is_slower`):
    then the follow-up stays as it is, the faster of the two, and the quantized one comes as its variant."""
    student, others = split_params(params)
    if len(techniques) == sum(t.student for t in techniques) and not standard_is_slower(trials, space):
        others = next(iter(standard_settings(space)), others)
    return {**student, **others}


LATENCY = 1  # the objectives' order: quality, latency, bytes (search/study/view.py OBJECTIVES)


def standard_is_slower(trials: Sequence[FrozenTrial], space: SearchSpace) -> bool:
    """Whether the space's first standard setting (int8 per-channel) applied alone to the baseline model (its
    anchor, or a sampled trial with the same recipe) measured no faster than the baseline on the objective
    profile, in this study; until such a trial has run, what the baseline's probe found (timed beside it:
    search/standard_probe.py), and False without either.

    Measured, not assumed: int8 makes MiniLM 1.4 to 2.2x faster, but the digits MLP (a few microseconds a
    query) 1.3 to 2.2x slower on every CPU measured, where its quantize and dequantize cost more than the
    int8 matmuls save. There a cut student's follow-ups and pushes quantized int8 land outside the latency
    a user came for; unquantized they are the latency candidates, and each still gets the int8 variant that
    is the size candidate (`variant_params`: the standard settings the student did not use)."""
    standard = next(iter(standard_settings(space)), None)
    base = next((t for t in trials if t.user_attrs.get("baseline") and t.state == TrialState.COMPLETE
                 and t.values), None)
    if standard is None or base is None:
        return False
    for t in trials:
        if t.state != TrialState.COMPLETE or not t.values or t.user_attrs.get("baseline"):
            continue
        if split_params(t.params)[1] != standard:
            continue
        steps = space.sample(FixedTrial(t.params)).steps
        if steps and not any(REGISTRY.named(step.type).student for step in steps):
            return t.values[LATENCY] >= base.values[LATENCY]
    return bool(is_slower(base.user_attrs.get(PROBE_ATTR)))


def enqueue_longer(study: optuna.Study, parent: FrozenTrial, space: SearchSpace, budget: int, storage: str) -> bool:
    """Enqueue `parent`'s follow-up trained longer (`longer_params`) when `guide.train_longer` is on, the
    parent is promising and not a variant or a follow-up itself, and no trial of the study trained or
    queued that student yet; within the budget left after the trials already waiting."""
    attrs = parent.user_attrs
    if (not space.guide.train_longer or VARIANT_ATTR in attrs or LONGER_ATTR in attrs
            or not is_promising(parent, space.max_quality_drop)):
        return False
    params = longer_params(parent, space, study.get_trials(deepcopy=False))
    return params is not None and enqueue_follow_up(study, parent, params, LONGER_ATTR, budget, storage)


def queued_params(trial: FrozenTrial) -> dict[str, Any]:
    """A trial's params, or for one still waiting in the queue, the params it was enqueued with."""
    if trial.state == TrialState.WAITING:
        return dict(trial.system_attrs.get("fixed_params", {}))
    return trial.params


def enqueue_follow_up(study: optuna.Study, parent: FrozenTrial, params: dict[str, Any], attr: str, budget: int,
                      storage: str) -> bool:
    """Enqueue `params` (a new student: trained longer, or cut harder) marked `attr` = the parent's number,
    unless a trial of the study trained or queued that student already, or this follow-up is queued; within the budget
    left after the trials already waiting, under the budget lock."""
    student = split_params(params)[0]
    with budget_lock(storage, study.study_name):
        trials = study.get_trials(deepcopy=False)
        # A queued trial's params are its fixed ones: a push of a follow-up trained longer can be the
        # follow-up trained longer of that push (prune 0.55 at 4 epochs, both ways).
        if any(split_params(queued_params(t))[0] == student for t in trials) or any(
                t.user_attrs.get(attr) == parent.number for t in trials):
            return False
        if budget_left(trials, budget) < 1:
            return False
        study.enqueue_trial(params, user_attrs={attr: parent.number})
    return True


def variant_label(variant_of: int | None, student: dict[str, Any] | None, longer_of: int | None = None,
                  pushed_from: int | None = None, stepped_back_from: int | None = None) -> str:
    """How progress lines and reports name a variant: "variant of trial 4's student (cached)", or a
    follow-up: "trial 2's student trained longer", "trial 2's cut pushed harder", "trial 6's cut stepped back"."""
    if stepped_back_from is not None:
        return f"trial {stepped_back_from}'s cut stepped back"
    if pushed_from is not None:
        return f"trial {pushed_from}'s cut pushed harder"
    if longer_of is not None:
        return f"trial {longer_of}'s student trained longer"
    if variant_of is None:
        return ""
    cached = (student or {}).get("cached")
    how = {"hit": "cached", "miss": "rebuilt: not in the cache", "off": "rebuilt: the cache is off"}.get(
        str(cached), "same recipe as an earlier trial: its result reused")
    return f"variant of trial {variant_of}'s student ({how})"
