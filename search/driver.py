"""The search driver: an Optuna study whose trials compress, export and measure one recipe.

Objectives: quality (max), latency p50 on the objective profile (min), artifact bytes (min).
Constraint (set on every completed trial, since Optuna counts a trial without constraint
values as feasible): quality drop against the baseline minus the allowed drop, <= 0.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from hardware.base import Backend
from hardware.environment import environment
from hardware.profiles import make_backend
from search.errors import UserError
from search.progress import Progress
from search.recipe import Recipe
from search.space import SearchSpace
from search.study_view import CONSTRAINT_KEY, DIRECTIONS, OBJECTIVES, StudyView, trial_view
from search.tasks import TASKS, Task
from search.techniques.pipeline import build_artifact
from search.tracking import Tracker

FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)


@dataclass
class RunOptions:
    study: str
    trials: int
    timeout_s: float | None
    storage: str
    tracking_uri: str
    results_dir: Path
    seed: int | None = None
    quiet: bool = False


def default_storage(results_dir: Path) -> str:
    return f"sqlite:///{(results_dir / 'optuna.db').resolve()}"


def default_tracking_uri(results_dir: Path) -> str:
    return f"sqlite:///{(results_dir / 'mlflow.db').resolve()}"


def make_sampler(name: str, seed: int | None, budget: int) -> optuna.samplers.BaseSampler:
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, budget // 4)))
    # Fewer random start-up trials than TPE's default 10 for small budgets.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, min(10, budget // 3)))


def open_study(space: SearchSpace, options: RunOptions) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        existing = optuna.get_all_study_names(storage=options.storage)
    except Exception as exc:  # noqa: BLE001 - any storage failure is the user's URL or server
        raise UserError(f"--storage {options.storage}: cannot open ({type(exc).__name__}: {str(exc).splitlines()[0]})")\
            from None
    n_existing = 0
    if options.study in existing:
        study = optuna.load_study(study_name=options.study, storage=options.storage)
        old_hash = study.user_attrs.get("space_hash")
        if old_hash and old_hash != space.hash:
            raise UserError(
                f"{space.file}: study {options.study!r} was created from a different version of this space "
                f"(space hash {old_hash}, now {space.hash}); Optuna cannot mix them: pass --study NEW_NAME")
        n_existing = len(study.trials)
    # A fresh seed per restart: re-seeding identically would replay the same start-up trials.
    seed = None if options.seed is None else options.seed + n_existing
    study = optuna.create_study(
        storage=options.storage, study_name=options.study, directions=list(DIRECTIONS),
        sampler=make_sampler(space.sampler, seed, options.trials), load_if_exists=True)
    if "space_hash" not in study.user_attrs:
        task_desc = {"name": space.task_name, "options": space.task_options}
        for key, value in {"space_hash": space.hash, "space_file": space.file, "space_name": space.name,
                           "task": task_desc, "objective_profile": space.objective_profile,
                           "quality_name": TASKS[space.task_name].quality_name,
                           "max_quality_drop": space.max_quality_drop,
                           "profiles": [p.name for p in space.profiles]}.items():
            study.set_user_attr(key, value)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # set_metric_names is experimental
            study.set_metric_names([TASKS[space.task_name].quality_name, *OBJECTIVES[1:]])
    return study


def ensure_baseline(study: optuna.Study) -> None:
    """Enqueue the uncompressed baseline unless one is done, queued or running."""
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("baseline") and t.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING):
            return
    study.enqueue_trial({}, user_attrs={"baseline": True})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


class Objective:
    """compress -> export -> measure one recipe; records everything on the trial."""

    def __init__(self, space: SearchSpace, task: Task, backends: dict[str, Backend], results_dir: Path):
        self.space, self.task, self.backends = space, task, backends
        self.results_dir = results_dir
        self.model = task.build_model()

    def trial_dir(self, study: optuna.Study, number: int) -> Path:
        return self.results_dir / "studies" / study.study_name / f"trial-{number}"

    def __call__(self, trial: optuna.Trial) -> tuple[float, float, float]:
        baseline = bool(trial.user_attrs.get("baseline"))
        recipe = Recipe() if baseline else self.space.sample(trial)
        trial.set_user_attr("recipe", recipe.to_dict())
        trial.set_user_attr("recipe_hash", recipe.hash)
        trial.set_user_attr("summary", recipe.summary())
        workdir = self.trial_dir(trial.study, trial.number)
        if workdir.exists():
            shutil.rmtree(workdir)  # left by an interrupted attempt with the same number
        trial.set_user_attr("artifact_dir", str(workdir))
        try:
            values = self._evaluate(trial, recipe, workdir, baseline)
        except Exception as exc:
            trial.set_user_attr("failure_reason", _first_line(exc))
            raise
        return values

    def _evaluate(self, trial: optuna.Trial, recipe: Recipe, workdir: Path, baseline: bool) -> tuple[float, ...]:
        artifact = build_artifact(self.model, recipe, self.task, workdir)
        (workdir / "layers.json").write_text(json.dumps(artifact.layers, indent=1))
        measurements = {}
        for name, backend in self.backends.items():
            measurements[name] = backend.measure(artifact.path, artifact.layer_nodes, self.task.evaluate,
                                                 self.task.query_feeds(backend.profile.batch_size))
        main = measurements[self.space.objective_profile]
        if main.latency is None:
            raise RuntimeError(f"profile {main.profile} gave no latency; it cannot be the objective")
        values = (main.quality, main.latency.p50_ms, float(main.bytes))
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"non-finite objective values {values}")
        trial.set_user_attr("metrics", {n: m.metrics() for n, m in measurements.items()})
        trial.set_user_attr("kernels", {n: m.kernels for n, m in measurements.items()})
        trial.set_user_attr("environment", main.environment)
        # A reduced-precision layer still running a float op fell back to dequantize + fp32.
        float_ops = ("Gemm", "MatMul", "Conv", "FusedGemm", "FusedMatMul", "FusedConv")
        fallback = [layer for layer, info in artifact.layers.items()
                    if info["bits"] != "fp32" and main.kernels.get(layer, "").split(".")[-1] in float_ops]
        trial.set_user_attr("layers_fallback", fallback)

        study = trial.study
        if baseline:
            study.set_user_attr("baseline_quality", main.quality)
            base_quality = main.quality
        else:
            base_quality = study.user_attrs.get("baseline_quality")
            if base_quality is None:
                raise RuntimeError("no completed baseline trial to compare against")
        drop = base_quality - main.quality
        trial.set_user_attr("quality_drop", drop)
        trial.set_constraint(CONSTRAINT_KEY, drop - self.space.max_quality_drop)
        return values


def _finished(study: optuna.Study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False, states=FINISHED))


def run(space: SearchSpace, options: RunOptions) -> StudyView:
    """Run (or resume) the study to its budget; returns the final view. Raises UserError on bad input."""
    backends = {p.name: make_backend(p) for p in space.profiles}  # fails before anything is written
    options.results_dir.mkdir(parents=True, exist_ok=True)
    study = open_study(space, options)
    task = TASKS[space.task_name](space.task_options, options.results_dir / "cache" / "models")
    tracker = Tracker(options.tracking_uri, space.name, options.results_dir / "mlartifacts")
    tracker.open_parent(study, {"space_file": space.file, "space_hash": space.hash, "study": study.study_name,
                                "task": task.describe(), "objective_profile": space.objective_profile,
                                "max_quality_drop": space.max_quality_drop, **{f"env.{k}": v for k, v in
                                                                                environment().items()}},
                        space.resolved())
    logged = tracker.logged_trials()

    def log_new(frozen: optuna.trial.FrozenTrial) -> None:
        if frozen.number not in logged and frozen.state in FINISHED:
            view = trial_view(frozen, StudyView.load(study).objective_names)
            art = Path(view.artifact_dir) if view.artifact_dir else None
            logged[frozen.number] = tracker.log_trial(view, art)

    for t in study.get_trials(deepcopy=False, states=FINISHED):  # anything a killed run did not log
        log_new(t)

    done_before = _finished(study)
    remaining = options.trials - done_before
    progress = Progress(total=options.trials, done_before=done_before, quiet=options.quiet,
                        timeout_s=options.timeout_s, quality_name=TASKS[space.task_name].quality_name)
    objective = Objective(space, task, backends, options.results_dir)
    status = "FINISHED"
    try:
        if remaining > 0:
            ensure_baseline(study)
            progress.start(study.study_name, remaining)
            deadline = None if options.timeout_s is None else time.monotonic() + options.timeout_s
            callbacks = [lambda s, t: log_new(t), lambda s, t: progress.trial_done(StudyView.load(s), t.number)]
            # The baseline must finish first: every other trial's constraint compares against it.
            if study.user_attrs.get("baseline_quality") is None:
                study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=callbacks)
                if study.user_attrs.get("baseline_quality") is None:
                    base = [t for t in study.trials if t.user_attrs.get("baseline")][-1]
                    status = "FAILED"
                    raise RuntimeError(f"the baseline trial failed: {base.user_attrs.get('failure_reason')}")
                remaining -= 1
            if remaining > 0:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                study.optimize(objective, n_trials=remaining, timeout=left, catch=(Exception,), callbacks=callbacks)
        else:
            progress.say(f"study {study.study_name!r} already has {done_before} of {options.trials} trials; "
                         f"raise --trials to run more")
    except KeyboardInterrupt:
        status = "KILLED"
        progress.say("interrupted: state saved; run the same command again to resume")
        for t in study.get_trials(deepcopy=False, states=FINISHED):
            log_new(t)
    finally:
        view = StudyView.load(study)
        front = view.front_rows()
        base = view.baseline
        tracker.log_front(front, set(view.pareto_numbers()), logged,
                          base.values if base else None)
        tracker.close_parent(status)
    if status == "KILLED":
        raise KeyboardInterrupt
    return view


def view_from_storage(study_name: str, storage: str) -> StudyView:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        names = optuna.get_all_study_names(storage=storage)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"--storage {storage}: cannot open ({type(exc).__name__})") from None
    if study_name not in names:
        from search.errors import allowed_list, did_you_mean

        raise UserError(f"study {study_name!r} is not in {storage}; studies there: "
                        f"{allowed_list(names) or '(none)'}{did_you_mean(study_name, names)}")
    return StudyView.load(optuna.load_study(study_name=study_name, storage=storage))


def summarize(view: StudyView) -> dict[str, Any]:
    return {"study": view.name, **view.counts()}
