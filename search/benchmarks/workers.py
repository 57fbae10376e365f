"""Benchmark: trials per hour with 1 vs 2 local workers on the digits space.

    python -m search.benchmarks.workers [--trials 12] [--out results/bench]

Runs the same space twice, side by side in one invocation (1 worker, then 2 workers on a
journal storage), each worker with 1 intra-op thread (the ort-cpu profile), and writes
results/bench/workers.md and .json: wall time, trials per hour, failures, and the spread of
the baseline's latency (p50 with its confidence interval, p90, p99) in each run. The
host-wide lock serializes timing, so 2 workers overlap only their compression work.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[2]


def run_once(space: Path, trials: int, workers: int, work: Path) -> dict:
    results = work / f"w{workers}"
    storage = f"journal:{results / 'optuna.journal'}"
    results.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "search", "run", str(space), "--study", f"bench-w{workers}", "--trials", str(trials),
           "--results-dir", str(results), "--storage", storage, "--workers", str(workers), "--seed", "0",
           "--quiet", "--no-remeasure"]
    started = time.monotonic()
    subprocess.run(cmd, check=True)
    wall = time.monotonic() - started
    from search.storage import open_storage

    study = optuna.load_study(study_name=f"bench-w{workers}", storage=open_storage(storage))
    trials_done = [t for t in study.trials if t.state.name in ("COMPLETE", "FAIL")]
    base = next(t for t in study.trials if t.user_attrs.get("baseline") and t.state.name == "COMPLETE")
    m = base.user_attrs["metrics"][study.user_attrs["objective_profile"]]
    return {
        "workers": workers, "trials": len(trials_done), "failed": sum(t.state.name == "FAIL" for t in trials_done),
        "wall_s": wall, "trials_per_hour": len(trials_done) / wall * 3600,
        "baseline_p50_ms": m["latency_p50_ms"], "baseline_p90_ms": m["latency_p90_ms"],
        "baseline_p99_ms": m["latency_p99_ms"],
        "baseline_p50_ci_ms": [m.get("latency_p50_ci_low_ms"), m.get("latency_p50_ci_high_ms")],
        "baseline_contended": m.get("contended"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default=str(ROOT / "spaces" / "digits.yaml"))
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="compsearch-bench-workers-") as tmp:
        rows = [run_once(Path(args.space), args.trials, w, Path(tmp)) for w in (1, 2)]
    (out / "workers.json").write_text(json.dumps(rows, indent=2))
    lines = ["# Trials per hour, 1 vs 2 workers", "", f"space: {args.space}, {args.trials} trials per run", "",
             "| workers | trials | failed | wall s | trials/hour | baseline p50 ms [CI] | p90 ms | p99 ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ci = r["baseline_p50_ci_ms"]
        ci_text = f" [{ci[0]:.4f}, {ci[1]:.4f}]" if None not in ci else ""
        lines.append(f"| {r['workers']} | {r['trials']} | {r['failed']} | {r['wall_s']:.0f} | "
                     f"{r['trials_per_hour']:.0f} | {r['baseline_p50_ms']:.4f}{ci_text} | {r['baseline_p90_ms']:.4f} | "
                     f"{r['baseline_p99_ms']:.4f} |")
    lines += ["", f"speed-up with 2 workers: {rows[1]['trials_per_hour'] / rows[0]['trials_per_hour']:.2f}x"]
    (out / "workers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
