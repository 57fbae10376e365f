"""Proof that the measurement protocol gives figures that survive a rerun.

    python -m search.benchmarks.measurement [--out results/bench] [--runs 5] [--profiles ort-cpu,ort-cpu-2t]

1. Spread: one artifact timed `--runs` times (each figure the median of the profile's
   `processes` fresh agent processes, as in the search) on each profile; the coefficient of
   variation of their p50 (aim: under 5%).
2. Contention: the same artifact timed while a second process trains another model
   (torch, 2 threads, in epochs), once with the host-wide lock (the trainer holds a shared
   compute slot per epoch, so it pauses while a timing runs) and once with locking off
   (COMPSEARCH_MEASURE_LOCK=none for both). With the lock the p50 should sit inside the quiet
   spread; without it, it should not, and the contention watch should flag it. The three
   conditions are interleaved round by round, so slow drift of the host hits all of them.

Writes `measurement.json` and `measurement.md` under --out. On a shared host, processes
that are not ours still run: every figure carries `other_cpu_cores`, which says how busy
the rest of the host was while it was taken.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hardware.base import Timing
from hardware.isolated import time_onnx
from hardware.profiles import load_profile

TASK_OPTIONS = {"hidden": 2048, "epochs": 5, "seed": 0}  # ~2.2 M MACs per query: a few hundred microseconds


def build_model(workdir: Path) -> Path:
    from search.compress import build_artifact
    from search.recipe import Recipe
    from search.tasks import TASKS

    task = TASKS["digits"](TASK_OPTIONS, workdir / "cache")
    return build_artifact(task.build_model(), Recipe(), task, workdir / "artifact").path


def train_load(seconds: float, ready: Path) -> None:
    """The second process: trains a digits MLP from scratch, epoch after epoch, in compute slots."""
    import torch

    from hardware.lock import compute_slot
    from search.tasks import TASKS

    torch.set_num_threads(2)
    task = TASKS["digits"]({"hidden": 512, "epochs": 1, "seed": 1}, Path(tempfile.mkdtemp()))
    model = task.build_model(trained=False).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = task.train_batches()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with compute_slot():
            for (x,), y in batches:
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
        ready.touch()


def _figure(t: Timing) -> dict[str, Any]:
    lat = t.latency
    return {"p50_ms": lat.p50_ms, "ci_low_ms": lat.ci_low_ms, "ci_high_ms": lat.ci_high_ms, "p99_ms": lat.p99_ms,
            "queries": lat.queries, "contended": bool(t.host["contended"]), "attempts": t.host["attempts"],
            "other_cpu_cores": t.host["other_cpu_cores"], "cpu_wall_ratio": t.host["cpu_wall_ratio"],
            "loadavg_1m": t.host["loadavg_1m"], "process_p50_ms": t.host.get("process_p50_ms", [lat.p50_ms]),
            "process_spread": t.host.get("process_spread", 0.0)}


@contextlib.contextmanager
def lock_setting(locked: bool) -> Iterator[None]:
    """Locking on (the default lock file) or off, for this process and the children it starts."""
    old = os.environ.pop("COMPSEARCH_MEASURE_LOCK", None)
    if not locked:
        os.environ["COMPSEARCH_MEASURE_LOCK"] = "none"
    try:
        yield
    finally:
        os.environ.pop("COMPSEARCH_MEASURE_LOCK", None)
        if old is not None:
            os.environ["COMPSEARCH_MEASURE_LOCK"] = old


def timed_under_load(model: Path, profile_name: str, runs: int, locked: bool) -> list[dict[str, Any]]:
    with lock_setting(locked), tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready"
        trainer = subprocess.Popen([sys.executable, "-m", "search.benchmarks.measurement", "--train-for", "600",
                                    "--ready", str(ready)])
        try:
            while not ready.exists():
                if trainer.poll() is not None:
                    raise RuntimeError("the training process exited early")
                time.sleep(0.2)
            profile = load_profile(profile_name)
            return [_figure(time_onnx(model, profile, None, profile.measure)) for _ in range(runs)]
        finally:
            trainer.terminate()
            trainer.wait()


def summary(figures: list[dict[str, Any]]) -> dict[str, Any]:
    p50 = [f["p50_ms"] for f in figures]
    mean = statistics.fmean(p50)
    return {"p50_mean_ms": mean, "p50_min_ms": min(p50), "p50_max_ms": max(p50),
            "cv": statistics.stdev(p50) / mean if len(p50) > 1 else 0.0,
            "contended": sum(f["contended"] for f in figures), "runs": len(figures)}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Measurement protocol check ({result['date']})", "",
             f"Artifact: digits MLP 64-{TASK_OPTIONS['hidden']}-{TASK_OPTIONS['hidden'] // 2}-10 fp32. Host: "
             f"{result['environment']}. `other cores busy` is the CPU that every other process on the host used "
             "while the figure was taken (this host is shared with other work that the lock does not cover).", "",
             f"Each figure is the median of {result['processes']} fresh processes (the profile's `processes`); "
             "`process spread` is the largest max/min - 1 of those p50s within one figure.", "",
             "| profile | condition | runs | p50 mean ms | p50 min..max ms | CV | contended | process spread | "
             "other cores busy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for profile, conditions in result["profiles"].items():
        for key, block in conditions.items():
            s, figs = block["summary"], block["figures"]
            other = ", ".join(f"{f['other_cpu_cores']:.2f}" if f["other_cpu_cores"] is not None else "?" for f in figs)
            lines.append(f"| {profile} | {key.replace('_', ' ')} | {s['runs']} | {s['p50_mean_ms']:.4f} | "
                         f"{s['p50_min_ms']:.4f}..{s['p50_max_ms']:.4f} | {s['cv']:.1%} | "
                         f"{s['contended']}/{s['runs']} | {max(f['process_spread'] for f in figs):.1%} | {other} |")
    lines.append("")
    for profile, conditions in result["profiles"].items():
        lo, hi = conditions["quiet"]["summary"]["p50_min_ms"], conditions["quiet"]["summary"]["p50_max_ms"]
        for key in ("load_with_lock", "load_without_lock"):
            figs = conditions[key]["figures"]
            inside = sum(lo <= f["p50_ms"] <= hi for f in figs)
            worst = max(abs(f["p50_ms"] / statistics.fmean([lo, hi]) - 1) for f in figs)
            shift = conditions[key]["summary"]["p50_mean_ms"] / conditions["quiet"]["summary"]["p50_mean_ms"] - 1
            quiet = conditions["quiet"]["summary"]
            band = 2 * quiet["cv"] * quiet["p50_mean_ms"]
            in_band = sum(abs(f["p50_ms"] - quiet["p50_mean_ms"]) <= band for f in figs)
            lines.append(f"- {profile}, {key.replace('_', ' ')}: {inside}/{len(figs)} p50 inside the quiet range "
                         f"[{lo:.4f}, {hi:.4f}] ms, {in_band}/{len(figs)} within the quiet mean +- 2 standard "
                         f"deviations; worst deviation from the range's middle {worst:.1%}; "
                         f"mean {shift:+.1%} against the quiet mean.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/bench")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--load-runs", type=int, default=5)
    parser.add_argument("--profiles", default="ort-cpu,ort-cpu-2t")
    parser.add_argument("--train-for", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--ready", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_for:
        train_load(args.train_for, Path(args.ready))
        return 0
    from hardware.environment import environment

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(out / "work")
    results: dict[str, dict[str, Any]] = {}
    for name in args.profiles.split(","):
        profile = load_profile(name)
        # Interleaved, one figure of each condition per round: the host drifts over minutes
        # (frequency, neighbours), and that drift must not pass for an effect of the lock.
        runs: dict[str, list[dict[str, Any]]] = {"quiet": [], "load_with_lock": [], "load_without_lock": []}
        for i in range(max(args.runs, args.load_runs)):
            if i < args.runs:
                runs["quiet"].append(_figure(time_onnx(model, profile, None, profile.measure)))
            if i < args.load_runs:
                runs["load_with_lock"] += timed_under_load(model, name, 1, locked=True)
                runs["load_without_lock"] += timed_under_load(model, name, 1, locked=False)
        results[name] = {k: {"figures": v, "summary": summary(v)} for k, v in runs.items()}
        for k, v in results[name].items():
            print(f"{name} {k}: {v['summary']}", flush=True)
    env = environment()
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "environment": f"{env['cpu']}, {env['cores']} cores, onnxruntime {env['onnxruntime']}",
              "settings": {n: load_profile(n).measure.__dict__ for n in results}, "profiles": results,
              "processes": ", ".join(sorted({str(load_profile(n).measure.processes) for n in results}))}
    (out / "measurement.json").write_text(json.dumps(result, indent=1))
    (out / "measurement.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
