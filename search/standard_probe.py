"""At the baseline: is the space's first standard quantization (int8 per-channel) faster here than the baseline?

A guided study orders its queue by that answer (search/queue.py, search/reuse.py `standard_is_slower`):
where int8 is slower than fp32 (the digits MLP, a few microseconds a query, where quantize and
dequantize cost more than the int8 matmuls save) its int8 trials are size points outside the latency a
user came for, and run after everything else. Learnt from the int8 anchor's own trial, the answer would
come only after that trial ran first, where on digits it takes a place early in every budget and adds
nothing to the front's hypervolume. So it is timed at the baseline, in the trial process that already
holds the model: the standard recipe is compressed as its anchor will be (no training: the baseline
model, quantized) and both graphs are run in turns by the objective profile's backend
(hardware/side_by_side.py); a fraction of a second on digits, seconds on MiniLM. No quality is measured:
the anchor still runs as a trial, and its trial is what the front and the report show.

The result is recorded on the baseline trial (`standard_probe`: the ratio, both latencies, the recipe);
a measured trial of the same recipe, when there is one, overrides it.
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    import optuna
    from torch import nn

    from search.space import SearchSpace
    from search.tasks.base import Task

# On the baseline trial: {"ratio", "latency_ms", "baseline_latency_ms", "recipe", "profile", "seconds"}, or
# {"failed", "recipe"} when the probe failed (the baseline stands; the study orders as without a probe).
ATTR = "standard_probe"
ROUNDS = 7  # turns of each graph; a ratio near 2 (digits) or 0.4 (MiniLM) is far outside their spread
ROUND_S = 0.03  # each graph's share of a round: enough fast queries, one slow one


def wanted(space: SearchSpace) -> bool:
    """Whether a study of `space` probes at its baseline: a guide switch that orders trials by the answer is
    on, and the objective profile measures latency (an estimate has nothing to time)."""
    from hardware.profiles import make_backend

    guide = space.guide
    if not (guide.anchors or guide.reuses_students or guide.train_longer or guide.push_cuts):
        return False
    profile = next(p for p in space.profiles if p.name == space.objective_profile)
    return make_backend(profile).measures_latency


def time_beside_baseline(space: SearchSpace, task: Task, model: nn.Module, recipe_json: str, workdir: Path,
                         baseline_dir: Path) -> dict[str, Any]:
    """The standard recipe's latency against the baseline's, both run in turns by the objective profile's
    backend in this process. Its artifact is built in `workdir` and removed afterwards."""
    from hardware.artifact import Artifact
    from hardware.lock import compute_slot
    from hardware.profiles import make_backend
    from hardware.side_by_side import interleaved_samples
    from search.compress import finish, split_recipe
    from search.recipe import Recipe
    from search.students import obtain_student

    started = time.monotonic()
    recipe = Recipe.from_json(recipe_json)
    if split_recipe(recipe)[0].steps:
        raise ValueError("the probe's recipe trains a student; it must quantize the baseline model only")
    profile = next(p for p in space.profiles if p.name == space.objective_profile)
    backend = make_backend(profile)
    try:
        with compute_slot():  # compression runs beside other workers' compression, never beside a timing
            state, _ = obtain_student(model, recipe, task, 0, None)  # no student step: the model, copied
            artifact = finish(state, recipe, workdir, program=getattr(backend, "needs_program", False))
        feeds = task.query_feeds(profile.batch_size)
        prepared = [backend.prepare(Artifact.load(baseline_dir)), backend.prepare(artifact)]
        base, probe = interleaved_samples([lambda p=p: p.run(feeds) for p in prepared], ROUNDS, round_s=ROUND_S)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # timed once: the anchor's trial builds its own
    base_ms, probe_ms = statistics.median(base), statistics.median(probe)
    return {"ratio": probe_ms / base_ms, "latency_ms": probe_ms, "baseline_latency_ms": base_ms,
            "recipe": recipe.summary(), "profile": profile.name, "seconds": round(time.monotonic() - started, 2)}


def is_slower(probe: dict[str, Any] | None) -> bool | None:
    """What a recorded probe says: True when the standard recipe ran no faster than the baseline, None when
    there is no usable probe (none taken, or it failed: its `failed` reason is kept instead)."""
    if not probe or probe.get("ratio") is None:
        return None
    return probe["ratio"] >= 1.0


def describe(probe: dict[str, Any]) -> str:
    """One progress line: what was timed and what the study does with it."""
    if probe.get("ratio") is None:
        return f"standard quantization not timed beside the baseline ({probe.get('failed', 'no result')})"
    then = ("trials quantized so run after the rest of the queue" if is_slower(probe)
            else "trials quantized so keep their place in the queue")
    return (f"timed beside the baseline on {probe['profile']}: {probe['recipe']} at {probe['ratio']:.2f}x the "
            f"baseline's latency ({probe['latency_ms']:.3g} ms against {probe['baseline_latency_ms']:.3g} ms); {then}")


def say_found(study: optuna.Study, say: Callable[[str], None]) -> None:
    """Tell what the baseline's probe found (`describe`), when the study's baseline took one."""
    from optuna.trial import TrialState

    base = next((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("baseline")
                 and t.state == TrialState.COMPLETE), None)
    if base is not None and base.user_attrs.get(ATTR):
        say(describe(base.user_attrs[ATTR]))
