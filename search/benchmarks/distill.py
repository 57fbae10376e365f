"""The distillation benchmark for minilm-sts: old vs new distillation, per student, on three splits.

    python -m search.benchmarks.distill [--students keep5,keep4,ffn25] [--methods old,new]
        [--epochs 2] [--sentences 4096] [--max-pairs 0] [--holdout sts2014-tweet-news,sts2012-SMTnews]
        [--no-int8] [--out results/bench] [--cache results/cache/models]

Students: `keep5` / `keep4` (5 or 4 of the 6 encoder layers kept, chosen by transformer_prune)
and `ffn25` (every layer, 25% of the FFN neurons removed). Methods:
- `old`: cosine + similarity-matrix loss on the STS training sentences only, lr 1e-4 constant;
- `new`: the same loss plus hidden-state matching (each kept layer against the teacher's layer
  of the same index, relative MSE, weight 1) on the STS training sentences plus the unlabeled
  text of `../shared/data/text`, lr 2e-4 with linear decay, embedding tables frozen.
Both draw `--sentences` per epoch from their pool; `--holdout` train/ files are kept out of
both pools and stand for STS sets in neither split.

Every student is exported to ONNX and, unless `--no-int8`, quantized with ONNX Runtime's
`quantize_dynamic` int8, per-channel, with 7-bit weights (reduce_range) where the host's int8 kernels
saturate (AVX2 without VNNI): the search's own int8 anchor, the most accurate int8 dynamic on the
host; the teacher gets the same. Quality is Spearman x100 as ONNX Runtime runs the artifact, on the
selection split (the evaluation files), the report split (`sts_dir/test/`) and the held-out
files, each as a drop against the fp32 teacher on the same split. Minutes per epoch time the
student's training only: the teacher's targets are computed before the clock starts (they are
cached on disk once per study in a search). Writes distill.md and distill.csv under `--out`.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search.errors import UserError

STUDENTS = {"keep5": {"keep_layers": 5}, "keep4": {"keep_layers": 4}, "ffn25": {"ffn_ratio": 0.25}}
METHODS = ("old", "new")
DEFAULT_HOLDOUT = "sts2014-tweet-news,sts2012-SMTnews"
SPLITS = ("selection", "report", "heldout")
INT8 = "int8 dynamic per-channel"  # the quantization every int8 row has (int8_per_channel)


@dataclass
class Row:
    name: str
    student: str
    method: str
    minutes_per_epoch: float | None
    quality: dict[str, float]  # split -> mean Spearman x100
    per_file: dict[str, float] = field(default_factory=dict)  # file -> Spearman x100 (report and held-out)
    drop: dict[str, float] = field(default_factory=dict)  # split -> teacher minus this
    heldout_pairs: dict[str, Any] = field(default_factory=dict)  # held-out file -> (pair cosines, gold scores)
    heldout_interval: tuple[float, float] | None = None  # 95% interval of the held-out drop over resampled pairs


def method_options(method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(task options, distill config fields) of a method."""
    if method == "old":
        return {}, {"lr": 1e-4}
    return {"text_dir": "text"}, {"lr": 2e-4, "hidden_weight": 1.0, "schedule": "linear", "freeze_embeddings": True}


def evaluate(task: Any, path: Path) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    from search.benchmarks.minilm import session

    sess = session(path)

    def predict(feeds: dict) -> Any:
        return sess.run(None, feeds)[0]

    quality = {"selection": task.evaluate(predict)}
    per_file = {}
    for split, sets in (("report", task.report_sets), ("heldout", task.holdout_sets)):
        if sets:
            result = task.evaluate_sets(predict, sets)
            quality[split] = result.quality
            per_file.update(result.per_file)
    return quality, per_file, task.heldout_cosines(predict)  # the pairs: the held-out drop's interval


def int8_per_channel(fp32: Path, out: Path) -> Path:
    """`quantize_dynamic` int8 per-channel, reduce_range where this host's int8 kernels saturate."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from hardware.environment import int8_saturates
    from search.benchmarks.baselines import quiet_ort

    with quiet_ort():  # always written: a file left by an earlier run is another student's
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=int8_saturates())
    return out


def export(task: Any, model: Any, out: Path, int8: bool) -> Path:
    from search.export import export_onnx

    fp32 = out / "model.fp32.onnx"
    out.mkdir(parents=True, exist_ok=True)
    export_onnx(model, task.example_inputs(), task.input_names, fp32, dynamic_shapes=task.dynamic_shapes(),
                output_names=task.output_names)
    return int8_per_channel(fp32, out / "model.int8.onnx") if int8 else fp32


def train(task: Any, student_key: str, method: str, epochs: int) -> tuple[Any, float]:
    """The student of `student_key` distilled by `method`; and minutes per epoch of its training."""
    from search.techniques.base import CompressionState
    from search.techniques.distill import Distill, DistillConfig
    from search.techniques.distill_targets import TeacherTargets, kept_layers
    from search.techniques.transformer_prune import TransformerPruneConfig, prune_encoder

    teacher = task.build_model()
    batches = task.train_batches()
    student = prune_encoder(teacher, TransformerPruneConfig(**STUDENTS[student_key]), batches[0][0])
    _, fields = method_options(method)
    config = DistillConfig(epochs=epochs, temperature=1.0, alpha=1.0, **fields)
    hidden = bool(config.hidden_weight and kept_layers(student))
    targets = TeacherTargets(teacher, Path(task.cache_dir) / "teacher", hidden)
    for i, (inputs, _) in enumerate(batches):  # the teacher's targets, before the clock starts
        targets(i, inputs)
    state = CompressionState(model=student, task=task, teacher=teacher)
    started = time.perf_counter()
    Distill().apply_model(state, config)
    return state.model, (time.perf_counter() - started) / 60.0 / epochs


def make_task(method: str, args: argparse.Namespace, cache: Path) -> Any:
    from search.tasks import TASKS

    options = {"sts_dir": args.sts_dir, "report_dir": "test", "holdout_files": args.holdout,
               "train_sentences": args.sentences, "max_pairs": args.max_pairs, **method_options(method)[0]}
    task = TASKS["minilm-sts"](options, cache)
    task.check_data()
    return task


def write(rows: list[Row], out: Path, context: dict[str, str]) -> str:
    out.mkdir(parents=True, exist_ok=True)
    files = list(dict.fromkeys(f for r in rows for f in r.per_file))
    with (out / "distill.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "student", "method", "minutes_per_epoch", *(f"{s}_{k}" for s in SPLITS
                                                                          for k in ("quality", "drop")),
                    "heldout_low", "heldout_high", *files])
        for r in rows:
            w.writerow([r.name, r.student, r.method, r.minutes_per_epoch,
                        *(v for s in SPLITS for v in (r.quality.get(s), r.drop.get(s))),
                        *(r.heldout_interval or (None, None)), *(r.per_file.get(f) for f in files)])

    def num(x: float | None, fmt: str = ".2f") -> str:
        return "-" if x is None else format(x, fmt)

    lines = ["# Distillation benchmark (minilm-sts)", "", *(f"- {k}: {v}" for k, v in context.items()), "",
             "Spearman x100 as ONNX Runtime runs each artifact; drop = fp32 teacher minus this, per split "
             "(selection: the evaluation files; report: sts_dir/test/; held-out: train/ files kept out of all "
             "training text). Minutes per epoch: student training only (teacher targets precomputed). "
             "Held-out 95%: the interval of the held-out drop over resampled pairs (each file's pairs drawn "
             "with replacement, teacher and artifact scored on the same draw): what chance alone moves.", "",
             "| artifact | min/epoch | selection | drop | report | drop | held-out | drop | held-out 95% |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        interval = f"{r.heldout_interval[0]:.2f} to {r.heldout_interval[1]:.2f}" if r.heldout_interval else "-"
        lines.append(f"| {r.name} | {num(r.minutes_per_epoch, '.1f')} | "
                     + " | ".join(f"{num(r.quality.get(s))} | {num(r.drop.get(s))}" for s in SPLITS)
                     + f" | {interval} |")
    lines += ["", "Per file (Spearman x100):", "", "| artifact | " + " | ".join(files) + " |",
              "|" + " --- |" * (len(files) + 1)]
    lines += [f"| {r.name} | " + " | ".join(num(r.per_file.get(f)) for f in files) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    (out / "distill.md").write_text(text)
    return text


def _choices(raw: str, allowed: tuple[str, ...] | dict, flag: str) -> list[str]:
    picked = [s.strip() for s in raw.split(",") if s.strip()]
    bad = [s for s in picked if s not in allowed]
    if bad or not picked:
        raise UserError(f"{flag}: {', '.join(bad) or '(none)'} not allowed; choose from {', '.join(allowed)}")
    return picked


def run(args: argparse.Namespace) -> str:
    from hardware.environment import int8_features, int8_saturates
    from search.benchmarks.minilm import mean_drop_interval

    students = _choices(args.students, STUDENTS, "--students")
    methods = _choices(args.methods, METHODS, "--methods")
    cache = Path(args.cache)
    work = Path(args.out) / "distill-artifacts"
    work.mkdir(parents=True, exist_ok=True)
    tasks = {m: make_task(m, args, cache) for m in methods}
    reference = tasks[methods[0]]  # the evaluation data are the same for both methods
    fp32 = reference.fp32_onnx().path
    rows = []
    teacher_quality, teacher_files, teacher_pairs = evaluate(reference, fp32)
    rows.append(Row("teacher fp32", "teacher", "-", None, teacher_quality, teacher_files, heldout_pairs=teacher_pairs))
    if not args.no_int8:
        q, f, pairs = evaluate(reference, int8_per_channel(fp32, work / "teacher.int8.onnx"))
        rows.append(Row(f"teacher {INT8}", "teacher", "-", None, q, f, heldout_pairs=pairs))
    for student in students:
        for method in methods:
            name = f"{student} {method}" + ("" if args.no_int8 else f" + {INT8}")
            print(f"[distill bench] {name}: training {args.epochs} epoch(s) on {args.sentences} sentences", flush=True)
            model, minutes = train(tasks[method], student, method, args.epochs)
            q, f, pairs = evaluate(reference, export(reference, model, work / f"{student}-{method}", not args.no_int8))
            rows.append(Row(name, student, method, minutes, q, f, heldout_pairs=pairs))
            print(f"[distill bench] {name}: {minutes:.1f} min/epoch, "
                  + ", ".join(f"{s} {v:.2f}" for s, v in q.items()), flush=True)
    for r in rows:
        r.drop = {s: teacher_quality[s] - v for s, v in r.quality.items() if s in teacher_quality}
        if teacher_pairs and r is not rows[0]:
            r.heldout_interval = mean_drop_interval([(teacher_pairs[f], r.heldout_pairs[f]) for f in teacher_pairs])
    context = {"command": "python -m search.benchmarks.distill " + " ".join(args.argv),
               "epochs": str(args.epochs), "sentences per epoch": str(args.sentences),
               "pairs per file": str(args.max_pairs or "all"), "held-out files": args.holdout,
               "cpu int8 features": int8_features(), "int8 weights": "7-bit (reduce_range)" if int8_saturates()
               else "8-bit", "load average at the end": " ".join(
                   f"{x:.2f}" for x in os.getloadavg())}
    return write(rows, Path(args.out), context)


def main(argv: list[str] | None = None) -> int:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", default=",".join(STUDENTS), help="comma-separated: keep5, keep4, ffn25")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated: old, new")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--sentences", type=int, default=4096, help="training sentences per epoch")
    parser.add_argument("--max-pairs", type=int, default=0, help="seeded subsample of pairs per file; 0 = all")
    parser.add_argument("--holdout", default=DEFAULT_HOLDOUT, help="train/ files kept out of all training text")
    parser.add_argument("--sts-dir", default="", help="default: $COMPSEARCH_STS_DIR or ../shared/data/sts")
    parser.add_argument("--no-int8", action="store_true", help="measure the fp32 students (no quantize_dynamic)")
    parser.add_argument("--out", default="results/bench")
    parser.add_argument("--cache", default="results/cache/models", help="fp32 export and teacher targets")
    raw = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(raw)
    args.argv = raw
    if args.epochs < 1 or args.sentences < 8:
        print("distill bench: error: --epochs must be >= 1 and --sentences >= 8", file=sys.stderr)
        return 2
    try:
        print(run(args))
    except UserError as exc:
        print(f"distill bench: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
