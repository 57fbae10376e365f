"""Timing the efficiency benchmark's points again, side by side, after its studies.

A study times each trial once, when it runs; hours apart on a shared host, one graph's two timings can
differ by 10-20%, and a hypervolume curve would jump on a lucky timing. `retime` times every distinct graph
behind the curves again in one process, interleaved (hardware/side_by_side.py), each divided by
its own baseline timed seconds around it, and recomputes the curves (search/benchmarks/curves.py).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

from hardware.base import Feeds, Profile
from search.benchmarks.curves import Run, Step, curve

RETIME_SECONDS = 180.0  # the side-by-side re-timing's time: as many rounds as fit, each graph's latency the
MIN_ROUNDS, MAX_ROUNDS = 7, 101  # median over them; a few hundred graphs (digits) still get 7 rounds
REFERENCE_EVERY = 16  # graphs between two timings of the baselines within a round of the re-timing


def objective_timing(space_file: Path, results_dir: Path) -> tuple[Profile, Feeds]:
    """The space's objective profile and one query of its batch size: what `retime` times."""
    from search.space import load_space
    from search.tasks import TASKS

    space = load_space(str(space_file), results_dir / "cache" / "models")
    profile = next(p for p in space.profiles if p.name == space.objective_profile)
    if profile.backend != "onnxruntime":
        raise SystemExit(f"{space_file}: re-timing needs an onnxruntime objective profile, not {profile.backend}")
    task = TASKS[space.task_name](space.task_options, results_dir / "cache" / "models")
    return profile, task.query_feeds(profile.batch_size)


def retime_rounds(graphs: int, seconds: float) -> int:
    """Rounds of the re-timing: as many as `seconds` holds at about ROUND_S per graph and round, within
    [MIN_ROUNDS, MAX_ROUNDS]. MiniLM's dozen graphs get the maximum (each about 10 s of queries); digits'
    few hundred get the minimum."""
    from hardware.side_by_side import ROUND_S

    return max(MIN_ROUNDS, min(MAX_ROUNDS, int(seconds / (max(1, graphs) * ROUND_S))))


def half_drift(samples: list[float]) -> float:
    """|median of the first half of `samples` - median of the second half| / their median: how far a graph's
    figure (its ratio to its baseline, one per round) moved during the re-timing. The samples are in round
    order, the same count per round, so the halves are the earlier and the later rounds."""
    half = len(samples) // 2
    if half == 0:
        return 0.0
    return abs(statistics.median(samples[:half]) - statistics.median(samples[half:])) / statistics.median(samples)


def retime(runs: list[Run], profile: Profile, feeds: Feeds, seconds: float = RETIME_SECONDS,
           rounds: int | None = None, say: Callable[[str], None] = print) -> dict[str, float]:
    """Time every distinct graph behind the runs' hypervolumes (each baseline and each feasible trial)
    side by side, in one process, interleaved, on the space's objective profile; then recompute each
    run's curve with those latencies, each run's ratios still against its own baseline.

    Why: the studies time each trial once, minutes or hours apart, and a single timing on a shared host
    is off by 10-20% now and then; a curve then jumps when a lucky timing of an earlier graph comes up
    again. Identical files (the same student and quantization reached twice) are timed once, so they
    get one latency. Within a round the baselines are timed again after every REFERENCE_EVERY graphs, and
    a graph's ratio to its baseline is taken per round against the baseline turns just before and after
    it, then the median over rounds: with hundreds of graphs a round lasts half a minute, and a ratio of
    two timings that far apart carries the host's drift. A point whose file is gone keeps its study
    timing, scaled by its baseline's ratio of re-timed to study latency; `retime` counts those."""
    import hashlib

    from hardware.agent import ort_session
    from hardware.side_by_side import interleaved_samples
    from hardware.sizes import artifact_files

    def digest(path: Path) -> str:
        # The external-data file too, where the exporter wrote one: two students can share a graph file
        # whose weights live beside it.
        h = hashlib.sha256()
        for part in artifact_files(path):
            with part.open("rb") as fh:
                h.update(hashlib.file_digest(fh, "sha256").digest())
        return h.hexdigest()

    by_hash: dict[str, Path] = {}
    hash_of: dict[Path, str] = {}
    for r in runs:
        for step in [r.base, *r.steps]:
            if step is not None and step.model is not None and step.model not in hash_of and step.model.exists():
                hash_of[step.model] = h = digest(step.model)
                by_hash.setdefault(h, step.model)
    rounds = rounds or retime_rounds(len(by_hash), seconds)
    bases = list(dict.fromkeys(hash_of[r.base.model] for r in runs if r.base is not None and r.base.model in hash_of))
    others = [h for h in by_hash if h not in bases]
    # One round's turns: the baselines, REFERENCE_EVERY graphs, the baselines again, ... and the baselines
    # last. Each graph is then divided by baseline timings taken seconds before and after it in the same
    # round, not up to a whole round away (half a minute with a few hundred digits graphs, where a graph's
    # median moved 12% between the halves of a 7-round re-timing).
    order: list[str] = []
    for i in range(0, len(others), REFERENCE_EVERY):
        order += bases + others[i:i + REFERENCE_EVERY]
    order += bases
    say(f"re-timing {len(by_hash)} distinct graphs ({len(hash_of)} files) side by side, {rounds} rounds, "
        f"the {len(bases)} baseline(s) again after every {REFERENCE_EVERY} graphs")
    sessions = {h: ort_session(str(by_hash[h]), profile.provider, profile.options, profile.threads,
                               profile.graph_optimization) for h in by_hash}
    samples = interleaved_samples([lambda s=sessions[h]: s.run(None, feeds) for h in order], rounds)
    per_round = [_round_medians(ms, rounds) for ms in samples]  # per turn of `order`: one median per round
    p50 = {h: statistics.median([m for k, turn in enumerate(order) if turn == h for m in per_round[k]])
           for h in by_hash}

    def ratio_to(base: str) -> dict[str, float]:
        """Every graph's latency / `base`'s, per round against the mean of the two baseline turns around it,
        the median over rounds (and over groups, for another baseline); with each graph's drift."""
        ratios: dict[str, list[float]] = {h: [] for h in by_hash}
        refs = [k for k, turn in enumerate(order) if turn == base]
        for k, turn in enumerate(order):
            before = max((j for j in refs if j <= k), default=refs[0])
            after = min((j for j in refs if j >= k), default=refs[-1])
            for r in range(rounds):
                ratios[turn].append(per_round[k][r] / ((per_round[before][r] + per_round[after][r]) / 2))
        for h, values in ratios.items():
            drift[(base, h)] = half_drift(values)
        return {h: statistics.median(values) for h, values in ratios.items()}

    drift: dict[tuple[str, str], float] = {}
    ratios = {b: ratio_to(b) for b in bases}
    drifts = [d for (b, h), d in drift.items() if h != b]
    missing = 0
    for r in runs:
        if r.base is None or r.base.model not in hash_of:
            continue  # no baseline file: the run keeps its study timings
        base = hash_of[r.base.model]
        scale = p50[base] / r.base.latency_ms

        def latency_of(step: Step, scale=scale, base=base) -> float:
            if step.model in hash_of:
                return p50[base] * ratios[base][hash_of[step.model]]
            return step.latency_ms * scale

        missing += sum(1 for s in r.steps if s.loss is not None and s.model not in hash_of)
        r.hv, r.retimed = curve(r, latency_of), True
    return {"graphs": len(by_hash), "files": len(hash_of), "rounds": rounds, "not_retimed": missing,
            "drift_median": statistics.median(drifts) if drifts else 0.0, "drift_max": max(drifts, default=0.0)}


def _round_medians(samples: list[float], rounds: int) -> list[float]:
    """The median of each round's queries: `samples` holds the same count per round, in round order."""
    n = len(samples) // rounds
    return [statistics.median(samples[r * n:(r + 1) * n]) for r in range(rounds)]
