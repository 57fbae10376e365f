"""The search driver: an Optuna study whose trials compress, export and measure one recipe.

Objectives: quality (max), latency p50 on the objective profile (min), artifact bytes (min).
Constraint (set on every completed trial, since Optuna counts a trial without constraint
values as feasible): quality drop against the baseline minus the allowed drop, <= 0.

The loop is ask/tell rather than `study.optimize` so that the budget is exact across
workers and restarts (a trial is only asked for under the study's budget lock), a trial
runs in an isolated child process (search/trial_runner.py), and a worker that died
mid-trial is recognised and its trial retried once (search/recovery.py).
"""

from __future__ import annotations

import math
import os
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from hardware.environment import environment
from hardware.profiles import make_backend
from search import rejection
from search.budget import counts as counts_on_budget
from search.budget import used as budget_used
from search.errors import UserError
from search.hopeless import hopeless_before
from search.options import RunOptions
from search.queue import ask_next
from search.recipe import Recipe
from search.recovery import budget_lock, recover_stale_trials, retry_trial, start_heartbeat, worker_alive
from search.sensitivity import needs_sensitivity
from search.space import SearchSpace
from search.storage import open_storage, storage_takes_parallel_writers
from search.students import cache_cap as student_cache_cap
from search.study.progress import Progress
from search.study.tracking import Tracker
from search.study.view import CONSTRAINT_KEY, DIRECTIONS, OBJECTIVES, StudyView
from search.study_paths import remove_inside, study_dir
from search.tasks import TASKS
from search.techniques import SampleContext
from search.trial_runner import TrialFailure, TrialRunner
from search.workers import launch_workers

FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
WORKER = f"{socket.gethostname()}:{os.getpid()}"


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
    storage = open_storage(options.storage)
    existing = optuna.get_all_study_names(storage=storage)
    n_existing = 0
    if options.study in existing:
        study = optuna.load_study(study_name=options.study, storage=storage)
        old_hash = study.user_attrs.get("space_hash")
        if old_hash and old_hash != space.hash:
            raise UserError(
                f"{space.file}: study {options.study!r} was created from a different version of this space "
                f"(space hash {old_hash}, now {space.hash}); Optuna cannot mix them: pass --study NEW_NAME")
        n_existing = len(study.trials)
    # A fresh seed per restart and per worker: re-seeding identically would replay the same trials.
    seed = None if options.seed is None else options.seed + 1000 * (options.worker_index or 0) + n_existing
    study = optuna.create_study(
        storage=storage, study_name=options.study, directions=list(DIRECTIONS),
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
    if options.worker_index is None:
        study.set_user_attr("budget", options.trials)  # read by `compsearch status` for its ETA
    return study


def ensure_baseline(study: optuna.Study) -> None:
    """Enqueue the uncompressed baseline unless one is done, queued or running."""
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("baseline") and t.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING):
            return
    study.enqueue_trial({}, user_attrs={"baseline": True})


class Objective:
    """Sample a recipe, evaluate it in the trial process, record everything on the trial."""

    def __init__(self, space: SearchSpace, runner: TrialRunner, results_dir: Path):
        self.space, self.runner, self.results_dir = space, runner, results_dir

    def context(self, study: optuna.Study) -> SampleContext | None:
        """What sampling needs beyond the space: the sensitivity table, measured once per study (by the
        first trial that samples; kept as the study's `sensitivity` attribute) when the space asks for it."""
        if not needs_sensitivity(self.space):
            return None
        table = study.user_attrs.get("sensitivity")
        if table is None:
            table = self.runner.sensitivity()
            study.set_user_attr("sensitivity", table)
        return SampleContext(sensitivity=table["error"])

    def trial_dir(self, study: optuna.Study, number: int) -> Path:
        return study_dir(self.results_dir, study.study_name) / f"trial-{number}"

    def __call__(self, trial: optuna.Trial) -> tuple[float, float, float]:
        baseline = bool(trial.user_attrs.get("baseline"))
        recipe = Recipe() if baseline else self.space.sample(trial, self.context(trial.study))
        trial.set_user_attr("recipe", recipe.to_dict())
        trial.set_user_attr("recipe_hash", recipe.hash)
        trial.set_user_attr("summary", recipe.summary())
        workdir = self.trial_dir(trial.study, trial.number)
        remove_inside(self.results_dir, workdir)  # left by an interrupted attempt with the same number
        trial.set_user_attr("artifact_dir", str(workdir))
        cached = _measured_before(trial.study, recipe.hash, trial.number)
        if cached is not None:
            # Same recipe, same task and hardware (same study): reuse, do not recompute.
            result = {k: cached.user_attrs[k] for k in ("metrics", "kernels", "environment", "layers_fallback")
                      if k in cached.user_attrs}
            result["values"] = tuple(cached.values)
            trial.set_user_attr("cached_from", cached.number)
            trial.set_user_attr("artifact_dir", cached.user_attrs.get("artifact_dir"))
        elif (again := rejection.rejected_before(trial.study, recipe.hash, trial.number)) is not None:
            result = again  # rejected before: rejected again without building it
        elif not baseline and self.space.guide.reject_early and (
                hopeless := hopeless_before(trial.study, recipe, trial.number)) is not None:
            result = hopeless  # a student at least as hard as one that failed alone: not trained
        else:
            spec = rejection.trial_spec(trial.study.user_attrs, baseline, self.space.guide.reject_early)
            result = self.runner.evaluate(recipe.to_json(), workdir, spec)
        if baseline and "values" in result:
            result["standard_probe"] = self._probe(trial.study, Path(trial.user_attrs["artifact_dir"]))
        return self._record(trial, result, baseline)

    def _probe(self, study: optuna.Study, baseline_dir: Path) -> dict[str, Any] | None:
        """The space's first standard quantization timed beside the baseline (search/standard_probe.py), when
        the guide orders trials by it and the budget leaves an order to choose (more than one trial after the
        baseline); a probe that fails is recorded and leaves the baseline as it is."""
        from optuna.trial import FixedTrial

        from search.reuse import standard_alone_params
        from search.standard_probe import wanted

        if study.user_attrs.get("budget", 3) <= 2:
            return None
        params = standard_alone_params(self.space) if wanted(self.space) else None
        if params is None:
            return None
        recipe = self.space.sample(FixedTrial(params))
        try:
            return self.runner.probe(recipe.to_json(), baseline_dir / "standard-probe", baseline_dir)
        except TrialFailure as exc:
            return {"failed": str(exc), "recipe": recipe.summary()}

    def _record(self, trial: optuna.Trial, result: dict[str, Any], baseline: bool) -> tuple[float, float, float]:
        if "rejected" in result:  # stopped at its proxy: raises TrialPruned, told as PRUNED
            rejection.tell_rejected(trial, result, self.space.max_quality_drop)
        values = tuple(float(v) for v in result["values"])
        if not all(math.isfinite(v) for v in values):
            raise TrialFailure(f"not a number: the trial produced non-finite objective values {values}")
        for key in ("metrics", "kernels", "environment", "environments", "layers_fallback", "timings", "proxy",
                    "proxy_drop", "standard_probe"):
            if result.get(key) is not None:
                trial.set_user_attr(key, result[key])
        for key, value in (result.get("student") or {}).items():  # student_key, student_cached, student_from
            trial.set_user_attr(key, value)
        quality = values[0]
        study = trial.study
        if baseline:
            rejection.record_baseline(study, result.get("proxy"), quality, self.space.max_quality_drop)
            study.set_user_attr("baseline_quality", quality)
            base_quality = quality
        else:
            base_quality = study.user_attrs.get("baseline_quality")
            if base_quality is None:
                raise TrialFailure("no completed baseline trial to compare against")
        drop = base_quality - quality
        trial.set_user_attr("quality_drop", drop)
        rejection.learn_noise(study, result.get("proxy_drop"), drop, self.space.max_quality_drop)
        trial.set_constraint(CONSTRAINT_KEY, drop - self.space.max_quality_drop)
        return values  # type: ignore[return-value]


def _measured_before(study: optuna.Study, recipe_hash: str, number: int) -> optuna.trial.FrozenTrial | None:
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.number != number and t.user_attrs.get("recipe_hash") == recipe_hash and t.values:
            return t
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def run_one_trial(study: optuna.Study, objective: Objective, options: RunOptions,
                  callbacks: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]]) -> bool:
    """Ask for one trial under the budget lock, evaluate it, tell the result. False when the budget is spent."""
    recover_stale_trials(study)  # a worker that died beside us: its trial is retried
    with budget_lock(options.storage, study.study_name):
        if budget_used(study.get_trials(deepcopy=False)) >= options.trials:  # interrupted trials are free
            return False
        with warnings.catch_warnings():
            # Optuna's heartbeat is meant for Study.optimize; this loop beats itself (start_heartbeat).
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            # Variants first, a quantization the study measured slower last (search/queue.py)
            trial = ask_next(study, objective.space)
        trial.set_user_attr("worker", WORKER)
    heartbeat = start_heartbeat(study, trial)
    try:
        values = objective(trial)
    except KeyboardInterrupt:
        trial.set_user_attr("failure_reason", "interrupted: stopped by Ctrl-C; retried on the next run")
        study.tell(trial, state=TrialState.FAIL)
        retry_trial(study, study.get_trials(deepcopy=False)[trial.number])
        raise
    except optuna.TrialPruned as exc:  # rejected early (search/rejection.py): its record is on the trial
        trial.set_user_attr("failure_reason", str(exc))
        study.tell(trial, state=TrialState.PRUNED)
    except TrialFailure as exc:
        trial.set_user_attr("failure_reason", str(exc))
        study.tell(trial, state=TrialState.FAIL)
    except Exception as exc:  # noqa: BLE001 - a trial that raises is a failed trial, not a failed study
        trial.set_user_attr("failure_reason", _first_line(exc))
        study.tell(trial, state=TrialState.FAIL)
    else:
        study.tell(trial, values)
    finally:
        heartbeat.stop()
    frozen = study.get_trials(deepcopy=False)[trial.number]
    for callback in callbacks:
        callback(study, frozen)
    return True


def _wait_for_baseline(study: optuna.Study, deadline: float | None, say: Callable[[str], None]) -> None:
    """Another worker or machine runs the baseline: every other trial compares against it."""
    told = False
    while study.user_attrs.get("baseline_quality") is None:
        base = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("baseline")]
        if not any(t.state == TrialState.RUNNING for t in base):
            return  # queued or failed, not running elsewhere: this worker runs it
        if not told:
            say("waiting for the baseline trial that another worker is running")
            told = True
        if deadline is not None and time.monotonic() > deadline:
            return
        time.sleep(1.0)
        recover_stale_trials(study)


def _enqueue_anchors(study: optuna.Study, space: SearchSpace, budget: int, say: Callable[[str], None]) -> None:
    """After the baseline, before sampling: the standard recipes of this space (search/guide.py)."""
    from search.anchors import enqueue_anchors

    trials = study.get_trials(deepcopy=False)
    waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
    labels = enqueue_anchors(study, space, budget - budget_used(trials) - waiting)
    if labels:
        say(f"anchors: {len(labels)} standard recipe(s) of this space run first: {'; '.join(labels)}")


def _check_workers(options: RunOptions) -> None:
    if options.workers < 1:
        raise UserError(f"--workers must be >= 1, but got {options.workers}")
    if options.workers > 1 and not storage_takes_parallel_writers(options.storage):
        raise UserError(f"--workers {options.workers} needs a storage that takes parallel writers, not "
                        f"{options.storage.split(':', 1)[0]} (SQLite locks): pass --storage "
                        f"postgresql://HOST/DB or --storage journal:{options.results_dir / 'optuna.journal'}")


def run(space: SearchSpace, options: RunOptions) -> StudyView:
    """Run (or resume) the study to its budget; returns the final view. Raises UserError on bad input."""
    started = time.monotonic()  # the search phase's wall time sizes the re-measurement budget
    for profile in space.profiles:  # fails before anything is written
        make_backend(profile)
    student_cache_cap()  # a malformed COMPSEARCH_STUDENT_CACHE: one line, before anything is written
    _check_workers(options)
    try:
        options.results_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--results-dir {options.results_dir}: cannot create it ({exc.strerror})") from None
    study = open_study(space, options)
    coordinator = options.worker_index is None
    tracker = Tracker(options.tracking_uri, space.name, options.results_dir / "mlartifacts")
    tracker.open_parent(study, {"space_file": space.file, "space_hash": space.hash, "study": study.study_name,
                                "task": f"{space.task_name} {space.task_options}",
                                "objective_profile": space.objective_profile,
                                "max_quality_drop": space.max_quality_drop,
                                **{f"env.{k}": v for k, v in environment().items()}},
                        space.resolved())
    logged = tracker.logged_trials()

    def log_new(frozen: optuna.trial.FrozenTrial) -> None:
        if frozen.number not in logged and frozen.state in FINISHED:
            now = StudyView.load(study)
            pareto = set(now.pareto_numbers())
            view = next(t for t in now.trials if t.number == frozen.number)
            art = Path(view.artifact_dir) if view.artifact_dir else None
            logged[frozen.number] = tracker.log_trial(view, art, pareto=frozen.number in pareto)
            tracker.sync_pareto(pareto, logged)  # re-tags only the children the new trial moved on/off the front

    recovered = recover_stale_trials(study)  # trials of a killed run: failed, and retried once
    for t in study.get_trials(deepcopy=False, states=FINISHED):  # anything a killed run did not log
        if not worker_alive(str(t.user_attrs.get("worker", ""))):  # a live worker logs its own
            log_new(t)

    done_before = sum(1 for t in study.get_trials(deepcopy=False, states=FINISHED) if counts_on_budget(t))
    started_before = budget_used(study.get_trials(deepcopy=False))
    planned = max(0, options.trials - started_before)
    progress = Progress(total=options.trials, done_before=done_before, quiet=options.quiet,
                        timeout_s=options.timeout_s, quality_name=TASKS[space.task_name].quality_name)
    for number in recovered:
        progress.say(f"trial {number} was interrupted when its worker died: marked failed, retried once")
    deadline = None if options.timeout_s is None else time.monotonic() + options.timeout_s
    runner = TrialRunner(space, options.results_dir / "cache" / "models", options.trial_timeout_s,
                         options.trial_memory_bytes)
    objective = Objective(space, runner, options.results_dir)
    callbacks = [lambda s, t: log_new(t), lambda s, t: progress.trial_done(StudyView.load(s), t.number)]
    if space.guide.reuses_students or space.guide.train_longer or space.guide.push_cuts:  # search/follow_ups.py
        from search.follow_ups import after_trial

        callbacks.append(after_trial(space, options.trials, options.storage, progress.say))
    status = "FINISHED"
    workers: list[Any] = []
    try:
        if planned > 0:
            ensure_baseline(study)
            progress.start(study.study_name, planned)
            _wait_for_baseline(study, deadline, progress.say)
            # The baseline goes first: every other trial's constraint compares against it.
            while study.user_attrs.get("baseline_quality") is None:
                if not run_one_trial(study, objective, options, callbacks):
                    break
                base = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("baseline")][-1]
                if base.state == TrialState.FAIL:
                    status = "FAILED"
                    raise RuntimeError(f"the baseline trial failed: {base.user_attrs.get('failure_reason')}")
            if coordinator:
                from search.standard_probe import say_found

                say_found(study, progress.say)
            if coordinator and space.guide.anchors:
                _enqueue_anchors(study, space, options.trials, progress.say)
            if coordinator and options.workers > 1:
                workers = launch_workers(space.file, options, deadline)
            while deadline is None or time.monotonic() < deadline:
                if not run_one_trial(study, objective, options, callbacks):
                    break
            for proc in workers:
                proc.wait()
            logged.update(tracker.logged_trials())  # what the other workers logged themselves
            for t in study.get_trials(deepcopy=False, states=FINISHED):  # anything a dead worker could not log
                log_new(t)
        else:
            progress.say(f"study {study.study_name!r} already has {started_before} of {options.trials} trials; "
                         f"raise --trials to run more")
        if coordinator and options.remeasure:
            from search.study.remeasure import remeasure_front

            backend = make_backend(next(p for p in space.profiles if p.name == space.objective_profile))
            task = TASKS[space.task_name](space.task_options, options.results_dir / "cache" / "models")
            remeasure_front(study, backend, task, progress.say, search_s=time.monotonic() - started)
        from search.study.report_split import evaluate_report_split, may_have_report_split

        if coordinator and may_have_report_split(space.task_name, space.file):
            # The final front on the report split, for reading only: nothing chooses on it.
            evaluate_report_split(study, runner, space.max_quality_drop, progress.say)
    except KeyboardInterrupt:
        status = "KILLED"
        progress.say("interrupted: state saved; run the same command again to resume")
        for proc in workers:
            proc.terminate()
        for t in study.get_trials(deepcopy=False, states=FINISHED):
            log_new(t)
    finally:
        runner.close()
        if coordinator:
            try:
                tracker.log_front(StudyView.load(study), logged)
            except BaseException:  # the parent run is closed whatever logging the front met
                tracker.close_parent("FAILED" if status == "FINISHED" else status)
                raise
            tracker.close_parent(status)
            progress.say(tracker.cost_summary())
    if status == "KILLED":
        raise KeyboardInterrupt
    return StudyView.load(study)


def require_existing_storage(storage: str) -> None:
    """Reading commands must not create an empty SQLite file where the user mistyped a path."""
    if storage.startswith("sqlite:///"):
        path = Path(storage.removeprefix("sqlite:///"))
        if not path.exists():
            raise UserError(f"no Optuna storage at {path} (run a study first, or pass --storage / --results-dir)")
        from search.preflight import check_sqlite_file

        check_sqlite_file(path, "--storage", "an Optuna database", for_writing=False)


def view_from_storage(study_name: str, storage: str) -> StudyView:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    require_existing_storage(storage)
    opened = open_storage(storage)
    names = optuna.get_all_study_names(storage=opened)
    if study_name not in names:
        from search.errors import allowed_list, did_you_mean

        raise UserError(f"study {study_name!r} is not in {storage}; studies there: "
                        f"{allowed_list(names) or '(none)'}{did_you_mean(study_name, names)}")
    return StudyView.load(optuna.load_study(study_name=study_name, storage=opened))

