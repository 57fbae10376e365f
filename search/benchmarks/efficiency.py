"""How fast each search finds a good front: random vs plain TPE vs the guided search.

    python -m search.benchmarks.efficiency [--workloads digits,minilm] [--trials digits=40,minilm=12]
        [--seeds 3] [--methods random,tpe,guided] [--results-dir results/efficiency-bench] [--out results/bench]
        [--retime-seconds 180 | --no-retime] [--no-run] [--earlier efficiency.csv ...]

Each workload's own space file is run unchanged except for what the method is:

    random   Optuna's RandomSampler; no anchors, no student reuse, no early rejection,
             one independent bit-width per layer
    tpe      plain TPE over the joint space, the same switches off
    guided   TPE with the guide on (anchors derived from the space, reuse of promising cached
             students, follow-ups trained longer, cuts pushed, early rejection, before training
             too for cuts harder than a hopeless student) and sensitivity-ranked bit-widths
             (`quantize.assign`)

Nothing is seeded with recipes: the sampler seed (0, 1, 2, ...) is the only difference between
the runs of one method. Every run is a real study (its own name in one results directory, so a
rerun resumes instead of starting over), with re-measurement off: the benchmark compares how
the searches spend their trials, not the re-measurement. Each study starts with an empty
student cache, so that none loads what another run trained.

Each study times each trial once, when it runs; hours apart on a shared host, one graph's two
timings can differ by 10-20%, and a curve would jump on a lucky timing. So after a workload's
studies, every distinct graph behind its curves (each baseline and each feasible trial; identical
files once) is timed again side by side, in one process, interleaved over as many rounds as
--retime-seconds (default 180) allows, at least 7 (`retime`), the baselines again after every 16
graphs of a round, and the curves use those latencies, each graph divided by its own baseline timed
seconds before and after it. How far the graphs' ratios moved between the first and the second half
of the rounds is reported beside them: the noise left in the re-timing itself. The
curves as the studies timed them stay in the CSV and in the table's last column; --no-retime
skips the re-timing. --no-run runs no trial: the tables, curves and re-timing of the studies already
finished to their budget in --results-dir, the others left out and named (a run stopped in the morning,
or one method given fewer seeds than the rest). --earlier reads the efficiency.csv of an earlier sitting
whose studies are gone (another machine, a fresh checkout): each run in it (workload, method, seed) is
taken as that sitting computed it, timings and re-timing included, and that study is not run again; so
nine MiniLM studies (about 3 to 4 hours on 2 cores) can be spread over sittings. efficiency.md names
the runs taken so, and which host timed each.

Hypervolume uses the normalisation of the MiniLM benchmark: quality drop / (10 x the space's
allowed drop), latency / the study's own baseline latency, bytes / baseline bytes, reference
1.1 on each axis; only feasible trials count, and the baseline (the corner 0, 1, 1) is part of
every front (the baseline alone scores 0.1 x 0.1 x 1.1 / 1.1^3 = 0.0083). Writes efficiency.md, .csv and .png
under --out: hypervolume against trial count and against wall time, and per method the trials
and the time each needed to reach 90% of the best final hypervolume any run reached, and the
trials each method's mean curve needs to reach 90% of the best method's final mean.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
from pathlib import Path

import yaml

from search.benchmarks.curves import Run, Step, curve
from search.benchmarks.retime import MAX_ROUNDS, MIN_ROUNDS, RETIME_SECONDS, objective_timing, retime

WORKLOADS = {"digits": "spaces/digits.yaml", "minilm": "spaces/minilm_sts.yaml"}
DEFAULT_TRIALS = {"digits": 40, "minilm": 12}
METHODS = ("random", "tpe", "guided")
DROP_SCALE = 10.0  # x the allowed drop: the far edge of the box, as in the MiniLM benchmark
TARGET = 0.9       # share of the best final hypervolume a method must reach


def method_space(base_file: str, method: str) -> dict:
    """The space file's data with the method's sampler and guide switches applied."""
    data = yaml.safe_load(Path(base_file).read_text())
    guided = method == "guided"
    data["sampler"] = "random" if method == "random" else "tpe"
    data["guide"] = {"anchors": guided, "reuse_students": guided, "train_longer": guided, "push_cuts": guided,
                     "reject_early": guided}
    quantize = (data.get("techniques") or {}).get("quantize")
    if isinstance(quantize, dict):
        quantize["assign"] = "sensitivity" if guided else "per_layer"
    return data


def host_of(environment: dict[str, str]) -> str:
    """'AMD EPYC (avx2, avx512f, avx512_vnni)': what a run's latency ratios read against. A study resumed
    on another machine (a benchmark continued in a later session) keeps the host of its baseline."""
    cpu = environment.get("cpu", "unknown CPU")
    return f"{cpu} ({environment['cpu_int8']})" if environment.get("cpu_int8") else cpu


def run_study(space_file: Path, study: str, trials: int, seed: int, results_dir: Path) -> None:
    """One study, starting from an empty student cache: students are trained with one fixed seed, so a
    study would otherwise load the students an earlier study (another method or seed) trained, and its
    wall time would depend on the order the runs went in."""
    from search.cli import main

    shutil.rmtree(results_dir / "cache" / "students", ignore_errors=True)
    code = main(["run", str(space_file), "--study", study, "--trials", str(trials), "--seed", str(seed),
                 "--results-dir", str(results_dir), "--no-remeasure", "--quiet"])
    if code != 0:
        raise SystemExit(f"study {study} failed with exit status {code}")


CSV_COLUMNS = ["workload", "method", "seed", "trials", "seconds", "hypervolume", "hypervolume_study_timing",
               "retimed", "host", "rejected"]


def earlier_runs(path: Path) -> dict[tuple[str, str, int], Run]:
    """The runs an earlier sitting wrote to `path` (its efficiency.csv), keyed (workload, method, seed),
    their curves as that sitting computed them."""
    runs: dict[tuple[str, str, int], Run] = {}
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise SystemExit(f"--earlier {path}: not an efficiency.csv (missing columns {missing})")
            for row in reader:
                key = (row["workload"], row["method"], int(row["seed"]))
                run = runs.setdefault(key, Run(*key, host=row["host"], retimed=row["retimed"] == "True",
                                               rejected=int(row["rejected"])))
                run.trials.append(int(row["trials"]))
                run.seconds.append(float(row["seconds"]))
                run.hv.append(float(row["hypervolume"]))
                run.hv_search.append(float(row["hypervolume_study_timing"]))
    except OSError as exc:
        raise SystemExit(f"--earlier {path}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:
        raise SystemExit(f"--earlier {path}: a row is not a number where one is expected ({exc})") from None
    return runs


def finished_to_budget(study_name: str, storage: str, budget: int) -> bool:
    """Whether the study exists and has run its whole budget (search/budget.py: interrupted trials are free)."""
    import optuna

    from search.budget import counts

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return False
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished() and counts(t)) >= budget


def hypervolume_curve(study_name: str, storage: str, max_drop: float, run: Run) -> None:
    """Fill `run` with the hypervolume after each finished trial, in the order they finished."""
    import optuna
    from optuna.trial import TrialState

    from search.study.view import CONSTRAINT_KEY

    study = optuna.load_study(study_name=study_name, storage=storage)
    finished = [t for t in study.get_trials(deepcopy=False)
                if t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED) and t.datetime_complete]
    finished.sort(key=lambda t: t.datetime_complete)
    base = next(t for t in finished if t.user_attrs.get("baseline") and t.values)
    start = min(t.datetime_start for t in finished if t.datetime_start)
    quality0, latency0, bytes0 = base.values
    run.host = host_of(base.user_attrs.get("environment") or {})
    run.base = Step((0.0, 1.0), latency0, _model_file(base.user_attrs.get("artifact_dir")))
    for count, t in enumerate(finished, start=1):
        if t.state == TrialState.PRUNED:
            run.rejected += 1
        excess = (t.constraints or {}).get(CONSTRAINT_KEY)  # drop minus the allowed drop
        feasible = t.state == TrialState.COMPLETE and t.values and (excess is None or excess <= 0)
        if feasible and t is not base:
            quality, latency, size = t.values
            run.steps.append(Step((max(0.0, quality0 - quality) / (DROP_SCALE * max_drop), size / bytes0), latency,
                                  _model_file(t.user_attrs.get("artifact_dir"))))
        else:
            run.steps.append(Step(None))
        run.trials.append(count)
        run.seconds.append((t.datetime_complete - start).total_seconds())
    run.hv = run.hv_search = curve(run, lambda step: step.latency_ms)


def _model_file(artifact_dir: str | None) -> Path | None:
    if not artifact_dir:
        return None
    from hardware.artifact import Artifact

    return Artifact.load(Path(artifact_dir)).path


def reach(run: Run, target: float) -> tuple[int | None, float | None]:
    """(trials, seconds) at which `run` first reached `target` hypervolume; None if never."""
    for count, seconds, hv in zip(run.trials, run.seconds, run.hv, strict=True):
        if hv >= target:
            return count, seconds
    return None, None


def _median(values: list[float | int | None], digits: int = 0) -> str:
    """Median over the runs that reached the target; 'not reached' when half or more did not."""
    known = [v for v in values if v is not None]
    if len(known) < len(values) / 2 or not known:
        return "not reached"
    return f"{statistics.median(known):.{digits}f}"


def mean_curve(runs: list[Run], budget: int) -> list[float]:
    """Mean hypervolume over seeds after 1..budget trials (a short run holds its last value)."""
    out = []
    for k in range(1, budget + 1):
        out.append(statistics.fmean(r.hv[min(k, len(r.hv)) - 1] for r in runs if r.hv))
    return out


def curve_reach(curve: list[float], target: float) -> int | None:
    """The first trial count at which a mean curve reaches `target`; None within its budget."""
    return next((k + 1 for k, hv in enumerate(curve) if hv >= target), None)


def _mean_curve_lines(curves: dict[str, list[float]], budget: int) -> list[str]:
    """Trials each method's mean curve needs to reach 90% of the best method's final mean: a target set by
    the methods' averages (the per-run column above takes the best single run, which one lucky seed sets)."""
    if not curves:
        return []
    best_method = max(curves, key=lambda m: curves[m][-1])
    target = TARGET * curves[best_method][-1]
    needed = {m: curve_reach(c, target) for m, c in curves.items()}
    words = ", ".join(f"{m} {n if n is not None else f'not within {budget}'}" for m, n in needed.items())
    lines = [f"Mean curves: trials to reach 90% of the best final mean hypervolume ({best_method}, "
             f"{curves[best_method][-1]:.4f}): {words}."]
    if "guided" in needed and "tpe" in needed and needed["guided"] is not None:
        tpe = needed["tpe"]
        if tpe is None:
            # TPE needs more than the budget: a third of it bounds the answer only when guided is within it.
            third = "within a third" if needed["guided"] * 3 <= budget else "a third or more not shown"
            verdict = (f"guided needs {needed['guided']}, plain TPE more than {budget} (not reached): {third} "
                       f"of TPE's trials")
        else:
            verdict = (f"guided needs {needed['guided'] / tpe:.2f} of plain TPE's trials "
                       f"({'within' if needed['guided'] * 3 <= tpe else 'more than'} a third)")
        lines.append(f"Guided against plain TPE: {verdict}.")
    return lines


def _hosts_line(runs: list[Run]) -> str:
    """Which machine timed which runs: one line when all ran on one host, else each host with its runs
    (hypervolumes stay comparable, each run's latencies being ratios to its own baseline, but int8's
    gain differs by host)."""
    hosts: dict[str, list[str]] = {}
    for r in runs:
        hosts.setdefault(r.host or "not recorded", []).append(f"{r.method} s{r.seed}")
    if len(hosts) == 1:
        return f"Timed on: {next(iter(hosts))} (all {len(runs)} runs)."
    return "Timed on several hosts: " + "; ".join(f"{h}: {', '.join(names)}" for h, names in hosts.items()) + "."


def write(runs: list[Run], budgets: dict[str, int], out: Path, context: dict[str, str]) -> str:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "efficiency.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for r in runs:
            for count, seconds, hv, hv_search in zip(r.trials, r.seconds, r.hv, r.hv_search or r.hv, strict=True):
                writer.writerow([r.workload, r.method, r.seed, count, round(seconds, 1), round(hv, 5),
                                 round(hv_search, 5), r.retimed, r.host, r.rejected])
    lines = ["# Search efficiency: random vs plain TPE vs guided", "",
             *[f"- {k}: {v}" for k, v in context.items()], ""]
    for workload, budget in budgets.items():
        mine = [r for r in runs if r.workload == workload and r.hv]
        if not mine:
            continue
        best = max(r.hv[-1] for r in mine)
        target = TARGET * best
        lines += [f"## {workload} ({budget} trials per run, best final hypervolume {best:.4f})", "",
                  "| method | runs | final HV mean | min | max | trials to 90% (median) | minutes to 90% (median) "
                  "| rejected early | wall minutes (mean) | final HV mean, study timings |", "|" + " --- |" * 10]
        curves = {}
        for method in METHODS:
            rs = [r for r in mine if r.method == method]
            if not rs:
                continue
            finals = [r.hv[-1] for r in rs]
            reached = [reach(r, target) for r in rs]
            minutes = [None if s is None else s / 60 for _, s in reached]
            curves[method] = mean_curve(rs, budget)
            lines.append(f"| {method} | {len(rs)} | {statistics.fmean(finals):.4f} | {min(finals):.4f} | "
                         f"{max(finals):.4f} | {_median([c for c, _ in reached])} | "
                         f"{_median(minutes, 1)} | "
                         f"{sum(r.rejected for r in rs)} | {statistics.fmean(r.seconds[-1] for r in rs) / 60:.1f} | "
                         f"{statistics.fmean((r.hv_search or r.hv)[-1] for r in rs):.4f} |")
        lines += ["", *_mean_curve_lines(curves, budget)]
        if "guided" in curves and "random" in curves:
            ahead = [k + 1 for k, (g, r) in enumerate(zip(curves["guided"], curves["random"], strict=True)) if g < r]
            lines += ["", "Guided mean hypervolume >= random's at every trial count: "
                      + ("yes" if not ahead else f"no (behind after {', '.join(map(str, ahead[:10]))} trials)")]
        lines += ["", _hosts_line(mine), ""]
    lines += ["Hypervolume: share of the box (drop / (10 x allowed drop), latency / baseline, bytes / baseline; "
              "reference 1.1), feasible trials plus the baseline. Each run's latency ratios come from its own "
              "baseline on the same host; wall minutes move with whatever else the host ran.",
              "",
              "Latencies: unless the runs say otherwise above, every distinct graph behind a curve (each baseline and "
              "each feasible trial, identical files once) was timed again after the studies, side by side in one "
              "process, interleaved, median over the rounds; the curves and the first columns use those. The last "
              "column keeps the curves as each study timed its trials, once each, at different times."]
    _plot(runs, budgets, out / "efficiency.png")
    text = "\n".join(lines) + "\n"
    (out / "efficiency.md").write_text(text)
    return text


def _plot(runs: list[Run], budgets: dict[str, int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [w for w in budgets if any(r.workload == w and r.hv for r in runs)]
    if not names:
        return
    fig, axes = plt.subplots(len(names), 2, figsize=(11, 3.8 * len(names)), squeeze=False)
    for row, workload in enumerate(names):
        for i, method in enumerate(METHODS):
            for r in (r for r in runs if r.workload == workload and r.method == method and r.hv):
                kw = {"color": f"C{i}", "alpha": 0.8, "label": method if r.seed == 0 else None}
                axes[row][0].step(r.trials, r.hv, where="post", **kw)
                axes[row][1].step([s / 60 for s in r.seconds], r.hv, where="post", **kw)
        for col, xlabel in enumerate(("trials", "wall minutes")):
            axes[row][col].set_xlabel(xlabel)
            axes[row][col].set_ylabel("hypervolume")
            axes[row][col].set_title(workload)
        axes[row][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _budgets(text: str, workloads: list[str]) -> dict[str, int]:
    budgets = {w: DEFAULT_TRIALS[w] for w in workloads}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        if name not in WORKLOADS or not value.isdigit():
            raise SystemExit(f"--trials: expected WORKLOAD=N with WORKLOAD in {sorted(WORKLOADS)}, got {part!r}")
        budgets[name] = int(value)
    return {w: budgets[w] for w in workloads}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="digits,minilm")
    parser.add_argument("--trials", default="", help="per-workload budget, e.g. digits=40,minilm=12")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--results-dir", default="results/efficiency-bench")
    parser.add_argument("--out", default="results/bench")
    parser.add_argument("--retime-seconds", type=float, default=RETIME_SECONDS,
                        help=f"about how long the side-by-side re-timing of each workload's graphs runs (at least "
                             f"{MIN_ROUNDS} rounds, at most {MAX_ROUNDS}); default %(default)s")
    parser.add_argument("--no-retime", dest="retime", action="store_false",
                        help="keep each study's own single timings instead of timing every point again side by side")
    parser.add_argument("--earlier", type=Path, action="append", default=[], metavar="CSV",
                        help="an efficiency.csv of an earlier sitting: its runs are taken as they are and their "
                             "studies not run again (repeatable)")
    parser.add_argument("--no-run", dest="run", action="store_false",
                        help="run no trial: report the studies already finished to their budget in --results-dir "
                             "and name the ones left out")
    args = parser.parse_args(argv)
    workloads = [w for w in args.workloads.split(",") if w]
    methods = [m for m in args.methods.split(",") if m]
    bad = [w for w in workloads if w not in WORKLOADS] + [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"unknown workload or method {bad}; workloads: {sorted(WORKLOADS)}, methods: {list(METHODS)}")
    budgets = _budgets(args.trials, workloads)

    from hardware.environment import environment, int8_features
    from search.driver import default_storage

    results_dir = Path(args.results_dir).resolve()
    spaces_dir = results_dir / "spaces"
    spaces_dir.mkdir(parents=True, exist_ok=True)
    storage = default_storage(results_dir)
    earlier: dict[tuple[str, str, int], Run] = {}
    for path in args.earlier:
        earlier.update(earlier_runs(path))
    runs = []
    retimings = {}
    left_out = []  # --no-run: studies not finished to their budget
    taken = []  # runs read from --earlier
    for workload in workloads:
        # Seed by seed, every method in turn: a run stopped early holds whole seeds of every method
        # (the same command again resumes each study where it stopped and skips finished ones), and
        # drift of a shared host during the run falls on all methods alike.
        for seed in range(args.seeds):
            for method in methods:
                data = method_space(WORKLOADS[workload], method)
                space_file = spaces_dir / f"{workload}-{method}.yaml"
                space_file.write_text(yaml.safe_dump(data, sort_keys=False))
                study = f"{workload}-{method}-s{seed}"
                if (workload, method, seed) in earlier:
                    taken.append(earlier[(workload, method, seed)])
                    continue
                if not args.run:
                    if not finished_to_budget(study, storage, budgets[workload]):
                        left_out.append(study)
                        continue
                else:
                    print(f"{study}: {budgets[workload]} trials", flush=True)
                    run_study(space_file, study, budgets[workload], seed, results_dir)
                run = Run(workload, method, seed)
                hypervolume_curve(study, storage, float(data["constraints"]["max_quality_drop"]), run)
                runs.append(run)
        mine = [r for r in runs if r.workload == workload]
        if args.retime and mine:
            info = retime(mine, *objective_timing(spaces_dir / f"{workload}-{methods[0]}.yaml", results_dir),
                          seconds=args.retime_seconds)
            retimings[workload] = (f"{info['graphs']} distinct graphs ({info['files']} files) timed side by side, "
                                   f"{info['rounds']} rounds; a graph's ratio to its baseline moved "
                                   f"{100 * info['drift_median']:.1f}% (median over graphs; at most "
                                   f"{100 * info['drift_max']:.1f}%) between the first and the second half of the "
                                   f"rounds; {info['not_retimed']} feasible points whose file was gone kept their "
                                   "study timing")
    runs += taken  # after the re-timing: their graphs are gone, their curves are as their sitting wrote them
    env = environment()
    context = {"seeds per method": str(args.seeds), "methods": ", ".join(methods),
               **{k: str(env[k]) for k in ("cpu", "onnxruntime", "torch", "optuna") if k in env},
               "cpu int8 features": int8_features(),
               **{f"re-timed ({w})": text for w, text in retimings.items()}}
    if not args.retime:
        context["re-timed"] = "no (--no-retime): the curves use each study's own single timings"
    if taken:
        context["runs from an earlier sitting (--earlier, as it timed and re-timed them)"] = ", ".join(
            f"{r.workload} {r.method} s{r.seed}" for r in taken)
    if left_out:
        context["left out (--no-run: not finished to their budget)"] = ", ".join(left_out)
    print(write(runs, budgets, Path(args.out), context))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
