"""Benchmark: each technique alone, and the combined search, on the digits task.

    python -m search.benchmarks.techniques [--trials 16] [--rounds 2] [--out results/bench]

Every recipe is built into a real ONNX artifact and measured on the ort-cpu profile (quality
from ONNX Runtime's own outputs, latency p50 in a fresh process under the host lock, bytes on
disk and after zlib). Recipes are measured round-robin for `--rounds` rounds and the median
p50 is kept, so all figures come from one run, side by side. The combined search runs
spaces/digits_all.yaml and adds its feasible Pareto points. Writes techniques.md and .json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from hardware.profiles import load_profile, make_backend
from search.compress import build_artifact
from search.recipe import Recipe
from search.tasks.digits import DigitsTask
from search.techniques.distill import DistillConfig
from search.techniques.factorize import FactorizeConfig
from search.techniques.prune import PruneConfig
from search.techniques.quantize import QuantizeConfig
from search.techniques.share import ShareConfig

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("net.0", "net.2", "net.4")


def _bits(bits: str, **kw) -> QuantizeConfig:
    return QuantizeConfig(layer_bits=tuple((layer, bits) for layer in LAYERS), **kw)


def recipes() -> dict[str, Recipe]:
    return {
        "fp32 baseline": Recipe(),
        "fp16 (all layers)": Recipe((_bits("fp16"),)),
        "int8 PTQ minmax per-channel": Recipe((_bits("int8"),)),
        "int8 QAT 2 epochs": Recipe((_bits("int8", mode="qat", qat_epochs=2),)),
        "int4 MatMulNBits": Recipe((_bits("int4"),)),
        "int2 (no kernel: sim)": Recipe((_bits("int2"),)),
        "binary QAT 3 epochs (no kernel: sim)": Recipe((_bits("binary", mode="qat", qat_epochs=3),)),
        "prune unstructured 70% global": Recipe((PruneConfig(ratio=0.7),)),
        "prune structured 50% + distill 5": Recipe((PruneConfig(ratio=0.5, structure="structured"),
                                                    DistillConfig(epochs=5))),
        "factorize energy 0.9 (hidden layers)": Recipe((FactorizeConfig(layers=("net.0", "net.2"), energy=0.9),)),
        "distill drop 1 block, 5 epochs": Recipe((DistillConfig(epochs=5, drop_blocks=1),)),
        "share k=16": Recipe((ShareConfig(layer_clusters=tuple((layer, 16) for layer in LAYERS)),)),
    }


def measure_all(task: DigitsTask, work: Path, rounds: int) -> list[dict]:
    backend = make_backend(load_profile("ort-cpu"))
    model = task.build_model()
    built = {}
    for name, recipe in recipes().items():
        built[name] = build_artifact(model, recipe, task, work / str(len(built)))
    p50s: dict[str, list[float]] = {name: [] for name in built}
    rows: dict[str, dict] = {}
    for r in range(rounds):
        order = list(built) if r % 2 == 0 else list(reversed(built))  # alternate: no position bias
        for name in order:
            art = built[name]
            m = backend.measure(art, task.evaluate, task.query_feeds(1))
            p50s[name].append(m.latency.p50_ms)
            sim = sum(1 for info in art.layers.values() if info.get("simulated"))
            rows[name] = {"recipe": name, "accuracy": m.quality, "bytes": art.bytes,
                          "bytes_compressed": art.bytes_compressed(), "params": art.stats.get("params"),
                          "macs": art.stats.get("macs"), "simulated_layers": sim,
                          "kernels": "/".join(m.kernels.get(layer, "?").split(".")[-1] for layer in m.kernels)}
    for name, row in rows.items():
        row["p50_ms"] = statistics.median(p50s[name])
    return list(rows.values())


def combined_search(trials: int, work: Path) -> list[dict]:
    cmd = [sys.executable, "-m", "search", "run", str(ROOT / "spaces" / "digits_all.yaml"), "--trials", str(trials),
           "--results-dir", str(work / "search"), "--study", "bench-all", "--seed", "0", "--quiet", "--no-remeasure"]
    subprocess.run(cmd, check=True)
    from search.driver import default_storage, view_from_storage

    view = view_from_storage("bench-all", default_storage(work / "search"))
    rows = []
    for row in view.front():
        m = row.figures
        rows.append({"recipe": f"search front, trial {row.trial}: {row.recipe}", "accuracy": row.quality,
                     "p50_ms": row.latency, "bytes": row.bytes,
                     "bytes_compressed": row.bytes_compressed, "params": m.get("params"), "macs": m.get("macs"),
                     "simulated_layers": row.lowbit_simulated_layers, "kernels": ""})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16, help="trials of the combined search (0 skips it)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="compsearch-bench-tech-") as tmp:
        task = DigitsTask({"model": "mlp", "hidden": 256, "epochs": 60, "seed": 0}, Path(tmp) / "cache")
        rows = measure_all(task, Path(tmp), args.rounds)
        if args.trials > 0:
            rows += combined_search(args.trials, Path(tmp))
    base = rows[0]
    lines = ["# Techniques on the digits MLP, ONNX Runtime CPU (1 thread, batch 1)", "",
             "| recipe | accuracy | change | p50 ms | x faster | bytes | x smaller | zlib bytes | params | MACs "
             "| kernels |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        sim = " (sim)" if r["simulated_layers"] else ""
        lines.append(
            f"| {r['recipe']} | {r['accuracy']:.4f} | {r['accuracy'] - base['accuracy']:+.4f} | "
            f"{r['p50_ms']:.4f}{sim} | "
            f"{base['p50_ms'] / r['p50_ms']:.2f}x | {r['bytes']:.0f} | {base['bytes'] / r['bytes']:.2f}x | "
            f"{r['bytes_compressed'] or 0:.0f} | {r['params'] or 0:.0f} | {r['macs'] or 0:.0f} | {r['kernels']} |")
    lines += ["", "(sim): int2/binary layers have no ONNX Runtime kernel; they are decoded to fp32 in the graph, so "
              "that latency is an fp32 kernel's."]
    (out / "techniques.json").write_text(json.dumps(rows, indent=2))
    (out / "techniques.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
