"""Evaluate one recipe: compress, export, measure on every profile. No Optuna, no MLflow.

Runs inside the trial process (see search/trial_runner.py); returns plain data that the
driver records on the Optuna trial.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from hardware.artifact import Artifact
from hardware.base import Backend, Feeds
from hardware.environment import environment
from hardware.lock import compute_slot
from hardware.profiles import make_backend
from search.compress import finish, split_recipe
from search.hopeless import ATTR as STUDENT_DROP
from search.hopeless import cuts
from search.recipe import Recipe
from search.rejection import proxy_drop, verdict
from search.space import SearchSpace
from search.students import StudentCache, obtain_student
from search.tasks.base import Task
from search.techniques import CompressionState

# A reduced-precision layer still running one of these float ops fell back to dequantize + fp32.
FLOAT_OPS = ("Gemm", "MatMul", "Conv", "FusedGemm", "FusedMatMul", "FusedConv", "DequantizeLinear")


def evaluate_recipe(space: SearchSpace, task: Task, model: nn.Module, recipe: Recipe, workdir: Path,
                    students: StudentCache | None = None, rejection: dict[str, Any] | None = None) -> dict[str, Any]:
    """`students`: where trained students are cached (a hit skips the student stages); None trains.

    `rejection`: None skips the task's proxy; {} scores it (the baseline: "proxy" in the result); a spec
    (search/rejection.py: reference, limit, noise) scores it and may stop the trial there, returning
    {"rejected": reason, "proxy", "proxy_drop", "timings", "student"} without evaluation or latency, and
    for a recipe that cuts, "student_proxy_drop": its fp32 student's own (search/hopeless.py)."""
    backends = {p.name: make_backend(p) for p in space.profiles}
    phases: dict[str, float] = {}  # where the trial's time went (seconds), recorded on the trial
    clock = time.monotonic()
    with compute_slot():  # compression runs beside other workers' compression, never beside a timing
        # Who built a student: the study folder and trial folder this artifact goes to.
        state, student = obtain_student(model, recipe, task, 0, students, f"{workdir.parent.name}/{workdir.name}")
        phases["student"] = time.monotonic() - clock
        # The student as trained, for its own proxy should this trial be rejected (finish replaces the model,
        # never changes it in place, but records into the state's maps).
        student_alone = _copy_state(state) if rejection and cuts(recipe) and split_recipe(recipe)[1].steps else None
        artifact = finish(state, recipe, workdir,
                          program=any(getattr(b, "needs_program", False) for b in backends.values()))
    artifact.save_records()
    phases["compress"] = time.monotonic() - clock - phases["student"]
    proxy = None
    if rejection is not None:
        started = time.monotonic()
        proxy = score_proxy(task, backends[space.objective_profile], artifact)
        if proxy is not None:
            phases["proxy"] = time.monotonic() - started
        if proxy is not None and (reason := verdict(proxy, rejection)) is not None:
            result = {}
            if cuts(recipe):  # how much its student alone loses: a hopeless one rejects harder cuts untrained
                alone = proxy if student_alone is None else score_student_alone(
                    task, backends[space.objective_profile], student_alone, workdir, phases)
                result[STUDENT_DROP] = proxy_drop(alone, rejection)
            phases["total"] = time.monotonic() - clock
            return {**result, "rejected": reason, "proxy": proxy, "proxy_drop": proxy_drop(proxy, rejection),
                    "environment": environment(),  # the machine that scored the proxy
                    "student": None if student is None else student.as_attrs(),
                    "timings": {k: round(v, 2) for k, v in phases.items()}}
    measurements = {}
    extras: dict[str, dict[str, float]] = {}  # the task's extra quality figures, per profile
    for profile in space.profiles:
        backend = backends[profile.name]

        def quality(predict, name: str = profile.name) -> float:
            started = time.monotonic()
            value = task.evaluate(predict)
            extras[name] = task.extra_metrics(predict)  # same predict: the task may reuse its outputs
            phases["evaluate"] = phases.get("evaluate", 0.0) + time.monotonic() - started
            return value

        started = time.monotonic()
        measurements[profile.name] = backend.measure(artifact, quality, task.query_feeds(profile.batch_size))
        phases["measure"] = phases.get("measure", 0.0) + time.monotonic() - started
    # backend.measure ran the evaluation too: "measure" is what it leaves (session set-up and timing).
    phases["measure"] -= phases.get("evaluate", 0.0)
    phases["total"] = time.monotonic() - clock
    main = measurements[space.objective_profile]
    if main.latency is None:
        raise RuntimeError(f"profile {main.profile} gave no latency; it cannot be the objective")
    fallback = [layer for layer, info in artifact.layers.items()
                if info.get("bits", "fp32") != "fp32" and main.kernels.get(layer, "").split(".")[-1] in FLOAT_OPS]
    # int2/binary layers have no runtime kernel: their latency is an fp32 kernel's, and this says so.
    simulated = {"lowbit_simulated_layers": float(sum(1 for i in artifact.layers.values() if i.get("simulated")))}
    return {
        "values": (main.quality, main.latency.p50_ms, float(main.bytes)),
        "metrics": {n: {**extras.get(n, {}), **m.metrics(), **simulated, **artifact.stats}
                    for n, m in measurements.items()},
        "kernels": {n: m.kernels for n, m in measurements.items()},
        "environment": main.environment,
        "environments": {n: m.environment for n, m in measurements.items()},
        "layers_fallback": fallback,
        "student": None if student is None else student.as_attrs(),
        "timings": {k: round(v, 2) for k, v in phases.items()},
        "proxy": proxy,
        "proxy_drop": proxy_drop(proxy, rejection),  # beside the full drop: how well the proxy tracks it
    }


def _copy_state(state: CompressionState) -> CompressionState:
    """A copy of `state` that `finish` on the original leaves as it is (the model is shared: stages replace it)."""
    return dataclasses.replace(state, notes=copy.deepcopy(state.notes), layer_bits=dict(state.layer_bits),
                               learned=dict(state.learned), own_node=dict(state.own_node))


def score_student_alone(task: Task, backend: Backend, student: CompressionState, workdir: Path,
                        phases: dict[str, float]) -> float | None:
    """The proxy of the fp32 student exported without the recipe's later stages (in workdir/student-alone)."""
    started = time.monotonic()
    folder = workdir / "student-alone"
    with compute_slot():
        artifact = finish(student, Recipe(), folder)
    try:
        proxy = score_proxy(task, backend, artifact)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # scored once: the trial's artifact is its own
    phases["student_proxy"] = time.monotonic() - started
    return proxy


def score_proxy(task: Task, backend: Backend, artifact: Artifact) -> float | None:
    """The task's proxy quality of `artifact`, run as `backend` runs it (the objective profile's, the one
    whose quality the constraint reads); None when the task has no proxy (nothing is loaded then)."""
    prepared = None

    def predict(feeds: Feeds) -> np.ndarray:
        nonlocal prepared
        if prepared is None:
            prepared = backend.prepare(artifact)
        return prepared.run(feeds)

    with compute_slot():  # evaluation is compute: it must not overlap another worker's timing
        return task.proxy_quality(predict)


def evaluate_report_split(space: SearchSpace, task: Task, artifact_dir: Path) -> dict[str, Any] | None:
    """Quality of a trial's artifact on the task's report split, run by the objective profile's backend
    (the one that measured its selection quality); None when the task has no report split."""
    from hardware.artifact import Artifact

    backend = make_backend(next(p for p in space.profiles if p.name == space.objective_profile))
    artifact = Artifact.load(artifact_dir)
    if not artifact.path.exists():
        raise FileNotFoundError(f"artifact {artifact.path} is gone")
    with compute_slot():  # evaluation is compute: it must not overlap another worker's timing
        result = task.evaluate_report(backend.prepare(artifact).run)
    return None if result is None else {"quality": result.quality, "per_file": dict(result.per_file)}
