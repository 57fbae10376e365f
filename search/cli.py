"""The `compsearch` command line (also `python -m search`).

Bad input prints one line and exits with status 2; nothing is written to Optuna or MLflow
before the space, flags, profiles and backends have all been checked.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from search.errors import UserError

if TYPE_CHECKING:
    from search.options import RunOptions
    from search.space import SearchSpace

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line too (`--help` prints the usage), like every other bad input."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("compsearch").strip()
        if message.endswith("expected one argument"):
            option = message.split()[1].rstrip(":") if message.startswith("argument ") else "--OPTION"
            message += f" (a value that starts with '-' is written {option.split('/')[0]}=VALUE)"
        where = f"{command}: " if command else ""
        line = " ".join(message.split())[:300]
        self.exit(EXIT_USAGE, f"compsearch: error: {where}{line} (see {self.prog} --help)\n")


def _results_dir(args: argparse.Namespace) -> Path:
    return Path(args.results_dir).resolve()


def _storage(args: argparse.Namespace) -> str:
    from search.driver import default_storage

    return args.storage or default_storage(_results_dir(args))


def _tracking(args: argparse.Namespace) -> str:
    from search.driver import default_tracking_uri

    return getattr(args, "tracking_uri", None) or default_tracking_uri(_results_dir(args))


def cmd_validate(args: argparse.Namespace) -> int:
    from search.space import load_space

    space = load_space(args.space, _results_dir(args) / "cache" / "models")
    from search.tasks import TASKS

    quality = TASKS[space.task_name].quality_name
    q_layers = [t for t in space.techniques if t.name == "quantize"]
    n_bits = len(space.technique_layers(q_layers[0])) if q_layers else 0
    dims = space.dimension_lines()
    print(f"{space.file}: valid")
    from search.study_paths import check_study_name, study_dir

    check_study_name(space.name, f"{space.file}: name")
    print(f"  space {space.name!r} (hash {space.hash}); a study of it writes to "
          f"{study_dir(_results_dir(args), space.name)}/")
    print(f"  task {space.task_name} "
          f"({', '.join(f'{k}={v}' for k, v in space.task_options.items())})")
    print("  hardware: " + ", ".join(p.name + (" (objective)" if p.name == space.objective_profile else "")
                                     for p in space.profiles))
    print(f"  objectives: {quality} (max), latency_p50_ms on {space.objective_profile} (min), bytes (min)")
    print(f"  constraint: {quality} drop against the fp32 baseline <= {space.max_quality_drop}")
    timeout = f", timeout {space.timeout_s:.0f}s" if space.timeout_s else ""
    print(f"  budget: {space.trials} trials{timeout}; sampler {space.sampler}")
    print(f"  dimensions ({len(dims)}):")
    for line in dims:
        print(f"    {line}")
    print(f"  bit-widths searched for {n_bits} layer(s)")
    if args.explain:
        print("keys (what each allows, its default, what it does):")
        for line in space.explain():
            print(f"  {line}")
    return 0


def run_options(args: argparse.Namespace, space: SearchSpace) -> RunOptions:
    """The typed options of `compsearch run`: the space's values, overridden by flags."""
    from search.driver import default_tracking_uri
    from search.options import RunOptions
    from search.study_paths import check_study_name
    from search.units import parse_duration, parse_size

    results_dir = _results_dir(args)
    timeout_s = space.timeout_s
    if args.timeout is not None:
        try:
            timeout_s = parse_duration(args.timeout)
        except ValueError as exc:
            raise UserError(f"--timeout: {exc}") from None
    trials = args.trials if args.trials is not None else space.trials
    if trials < 1:
        raise UserError(f"--trials must be >= 1, but got {trials}")
    trial_timeout_s, trial_memory = space.trial_timeout_s, space.trial_memory_bytes
    for flag, value, parse in (("--trial-timeout", args.trial_timeout, parse_duration),
                               ("--trial-memory", args.trial_memory, parse_size)):
        if value is None:
            continue
        try:
            parsed = parse(value)
        except ValueError as exc:
            raise UserError(f"{flag}: {exc}") from None
        if flag == "--trial-timeout":
            trial_timeout_s = parsed
        else:
            trial_memory = parsed
    # A worker started by --workers gets the coordinator's values as numbers (search/workers.py).
    if args.timeout_s is not None:
        timeout_s = args.timeout_s
    if args.trial_timeout_s is not None:
        trial_timeout_s = args.trial_timeout_s
    if args.trial_memory_bytes is not None:
        trial_memory = args.trial_memory_bytes
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise UserError(f"--seed must be in [0, 2**32 - 1], but got {args.seed}")
    study = check_study_name(args.study if args.study is not None else space.name,
                             "--study" if args.study is not None else f"{space.file}: name")
    return RunOptions(study=study, trials=trials, timeout_s=timeout_s,
                      storage=_storage(args), tracking_uri=args.tracking_uri or default_tracking_uri(results_dir),
                      results_dir=results_dir, seed=args.seed, quiet=args.quiet, workers=args.workers,
                      trial_timeout_s=trial_timeout_s, trial_memory_bytes=trial_memory,
                      worker_index=args.worker_index, remeasure=not args.no_remeasure)


def cmd_run(args: argparse.Namespace) -> int:
    from search.driver import run
    from search.preflight import check_run
    from search.space import load_space
    from search.study.progress import front_table, rejection_line
    from search.study.tracking import is_server

    results_dir = _results_dir(args)
    space = load_space(args.space, results_dir / "cache" / "models")
    options = run_options(args, space)
    check_run(results_dir, options.storage, options.tracking_uri)  # before anything is written
    view = run(space, options)
    if not args.quiet and args.worker_index is None:
        print()
        print(front_table(view))
        counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(view.counts().items()))
        if rejection_line(view):
            print(rejection_line(view))
        q = shlex.quote
        where = f"--storage {q(options.storage)}"
        print(f"\nstudy {view.name!r}: {counts}.\n"
              f"  details:     compsearch show {q(view.name)} --json {where}\n"
              f"  report:      compsearch report {q(view.name)} {where} --results-dir {q(str(results_dir))} "
              f"--tracking-uri {q(options.tracking_uri)}   (recommended picks in report.html)\n"
              + (f"  MLflow UI:   {options.tracking_uri}" if is_server(options.tracking_uri) else
                 f"  MLflow UI:   mlflow ui --backend-store-uri {q(options.tracking_uri)}"))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from search.driver import view_from_storage
    from search.study.progress import front_table, rejection_line

    view = view_from_storage(args.study, _storage(args))
    if args.json:
        json.dump(view.to_json(), sys.stdout, indent=2, default=str)
        print()
    else:
        print(f"study {view.name!r}: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(view.counts().items())))
        if rejection_line(view):
            print(rejection_line(view))
        print(front_table(view))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import optuna

    from search.driver import require_existing_storage
    from search.storage import open_storage
    from search.study.status import study_status

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _storage(args)
    require_existing_storage(storage)
    opened = open_storage(storage)
    names = optuna.get_all_study_names(storage=opened)
    if not names:
        print(f"no studies in {storage}")
    for name in names:
        print(study_status(optuna.load_study(study_name=name, storage=opened)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from search.driver import view_from_storage
    from search.fetch import localize
    from search.report.card import export_paths, export_trial

    out, _ = export_paths(args.out, args.study, args.trial)  # before anything is read or written
    view = view_from_storage(args.study, _storage(args))
    # Run on another machine: its files come from the MLflow artifact store.
    localize(view, [args.trial], _tracking(args), _results_dir(args), ("model.onnx", "layers.json"))
    out = export_trial(view, args.trial, out)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from search.driver import view_from_storage
    from search.fetch import localize
    from search.report import default_out_dir, write_report

    if args.latency_budget is not None and not args.latency_budget > 0:
        raise UserError(f"--latency-budget must be > 0 (milliseconds), but got {args.latency_budget}")
    view = view_from_storage(args.study, _storage(args))
    feasible = [t.number for t in view.trials if t.feasible]  # picks come from these; their layer tables
    localize(view, feasible, _tracking(args), _results_dir(args), ("layers.json",))
    out = Path(args.out) if args.out else default_out_dir(_results_dir(args), view.name)
    paths = write_report(view, out, args.latency_budget)
    print(f"wrote {paths['html']} (open it in a browser), {paths['markdown'].name}, "
          f"{paths['trials_csv'].name} and {paths['front_csv'].name}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from search.bench import bench_artifact

    result = bench_artifact(Path(args.artifact), args.hardware, remote=args.remote,
                            say=lambda line: print(line, file=sys.stderr, flush=True))
    waited = float(result.get("host", {}).get("lock_wait_s") or 0.0)
    if waited >= 0.1:
        print(f"waited {waited:.1f} s for the host's timing lock", file=sys.stderr)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        lat, host = result["latency"], result["host"]
        where = f" via {result['command']}" if result.get("remote") else ""
        print(f"{args.artifact} on {args.hardware}{where}: p50 {lat['p50_ms']:.4f} ms "
              f"[{lat['ci_low_ms']:.4f}, {lat['ci_high_ms']:.4f}] ({lat['confidence']:.0%} CI), "
              f"p90 {lat['p90_ms']:.4f} ms, p99 {lat['p99_ms']:.4f} ms over {lat['queries']} queries; "
              f"{result['bytes']} bytes; peak {result['peak_rss_mb']:.0f} MiB; "
              f"{'CONTENDED' if host['contended'] else 'quiet'} host ({host['other_cpu_cores'] or 0:.2f} other "
              f"cores busy, {host['attempts']} attempt(s))")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="compsearch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--results-dir", default="results", help="where runs write (default: results)")
        p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///RESULTS_DIR/optuna.db)")

    def tracking(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///RESULTS_DIR/mlflow.db); "
                                              "export and report fetch a trial's files from it when this "
                                              "machine's results lack them")

    p = sub.add_parser("run", help="run or resume a search over a space")
    p.add_argument("space", help="path to a space YAML file, e.g. spaces/digits.yaml")
    p.add_argument("--study", help="study name (default: the space's name); the same name resumes")
    p.add_argument("--trials", type=int, help="trial budget for the whole study (default: the space's budget)")
    p.add_argument("--timeout", help="stop starting new trials after this long, e.g. 30m, 8h")
    tracking(p)
    p.add_argument("--seed", type=int, help="sampler seed")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--workers", type=int, default=1,
                   help="local worker processes on one storage (needs --storage postgresql://... or journal:PATH)")
    p.add_argument("--trial-timeout", help="kill and fail a trial running longer than this, e.g. 10m")
    p.add_argument("--trial-memory", help="kill and fail a trial whose process exceeds this memory, e.g. 4GB")
    p.add_argument("--no-remeasure", action="store_true",
                   help="skip re-timing the Pareto candidates with a longer run at the end")
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by --workers for its children
    p.add_argument("--timeout-s", type=float, help=argparse.SUPPRESS)  # likewise, typed: seconds
    p.add_argument("--trial-timeout-s", type=float, help=argparse.SUPPRESS)
    p.add_argument("--trial-memory-bytes", type=int, help=argparse.SUPPRESS)
    common(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check a space without running it")
    p.add_argument("space")
    p.add_argument("--explain", action="store_true",
                   help="also print every key the space may hold: what it allows, its default and what it does")
    p.add_argument("--results-dir", default="results")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("show", help="print a study (its Pareto front, or everything with --json)")
    p.add_argument("study")
    p.add_argument("--json", action="store_true", help="machine-readable: trials, front, baseline")
    common(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("status", help="studies in the storage with their progress")
    common(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("export", help="write one trial's deployable artifact and a model card")
    p.add_argument("study")
    p.add_argument("--trial", type=int, required=True)
    p.add_argument("--out", required=True,
                   help="the .onnx file to write (its model card goes beside it as .md), or a directory")
    tracking(p)
    common(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="write an HTML + Markdown + CSV report of a study for hardware teams")
    p.add_argument("study")
    p.add_argument("--out", help="output directory (default: RESULTS_DIR/reports/STUDY)")
    p.add_argument("--latency-budget", type=float, metavar="MS",
                   help="p50 budget in ms for the 'best quality within a latency budget' pick "
                        "(default: the baseline's p50)")
    tracking(p)
    common(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="measure any ONNX file on a hardware profile")
    p.add_argument("artifact")
    p.add_argument("--hardware", required=True, help="profile name, e.g. ort-cpu")
    p.add_argument("--json", action="store_true")
    p.add_argument("--remote", metavar="TEMPLATE",
                   help="run the measuring agent through this shell command template, e.g. "
                        "'ssh board python3 /opt/agent.py /data/{name}' ({agent}, {model}, {name}, {args})")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"compsearch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `compsearch show ... | head`
        sys.stderr.close()
        return 0
    except Exception as exc:  # noqa: BLE001 - a traceback is for developers, on request
        if os.environ.get("COMPSEARCH_DEBUG"):
            traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"compsearch: failed: {type(exc).__name__}: {first} (set COMPSEARCH_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1
