"""Transformer fusion (search/fusion/): a tiny BERT fuses fully, computes what the unfused graph
computes, still fuses after head and layer pruning, and a baseline that does not fuse is an error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

pytest.importorskip("transformers")

from fusion_tiny_bert import TinyBertTask, feeds  # noqa: E402

from hardware.artifact import GRAPH_FILE, LAYERS_FILE  # noqa: E402
from search.compress import build_artifact  # noqa: E402
from search.export import export_onnx  # noqa: E402
from search.fusion import FusionSpec, count_encoder_layers, fuse_model  # noqa: E402
from search.fusion.stage import FusionError  # noqa: E402
from search.recipe import Recipe  # noqa: E402
from search.report.data import fusion_line  # noqa: E402
from search.techniques.transformer_prune import TransformerPruneConfig, prune_encoder  # noqa: E402


def run(path: Path, f: dict) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, f)[0]


def ops(path: Path) -> dict[str, int]:
    import onnx

    out: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        out[node.op_type] = out.get(node.op_type, 0) + 1
    return out


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> TinyBertTask:
    return TinyBertTask(tmp_path_factory.mktemp("cache"))


def _fuse(task: TinyBertTask, model, path: Path, separate: str = ""):
    return fuse_model(model, task.example_inputs(), task.input_names, task.output_names, path,
                      FusionSpec("bert", count_encoder_layers(model)), separate, task.dynamic_shapes())


def test_tiny_bert_fuses_fully_and_matches_the_unfused_graph(task, tmp_path) -> None:
    model = task.build_model()
    artifact, fusions = _fuse(task, model, tmp_path / "fused.onnx")
    assert fusions.complete, fusions.summary()
    assert fusions.counts["Attention"] == 2 and fusions.counts["SkipLayerNormalization"] == 4
    assert fusions.counts["EmbedLayerNormalization"] == 1 and fusions.counts["BiasGelu"] == 2
    assert fusions.heads == [4, 4]
    found = ops(artifact.path)
    assert found["Attention"] == 2 and "Softmax" not in found and "LayerNormalization" not in found
    unfused = export_onnx(model, task.example_inputs(), task.input_names, tmp_path / "plain.onnx",
                          dynamic_shapes=task.dynamic_shapes(), output_names=task.output_names)
    f = feeds(3, seq=24, seed=3)  # another batch and length than the export's example
    assert np.abs(run(artifact.path, f) - run(unfused.path, f)).max() < 1e-4
    # Every Linear maps onto the fused graph by its weight's values; q/k/v share their Attention node.
    assert len(artifact.layer_nodes) == 12
    qkv = {artifact.layer_nodes[f"bert.encoder.layer.0.attention.self.{p}"] for p in ("query", "key", "value")}
    assert len(qkv) == 1 and found and next(iter(qkv)).startswith("Attention")


def test_pruned_heads_and_layers_still_fuse(task, tmp_path) -> None:
    pruned = prune_encoder(task.build_model(), TransformerPruneConfig(heads_ratio=0.25, keep_layers=1),
                           task.train_batches()[0][0])
    artifact, fusions = _fuse(task, pruned, tmp_path / "fused.onnx")
    assert fusions.complete and fusions.counts["Attention"] == 1 and fusions.counts["SkipLayerNormalization"] == 2
    assert fusions.heads == [3]  # 4 heads - 25%: pinned from the graph, not a model-wide number
    import torch

    f = feeds(2, seed=5)
    with torch.no_grad():
        ref = pruned(*(torch.from_numpy(f[n]) for n in task.input_names)).numpy()
    assert np.abs(run(artifact.path, f) - ref).max() < 1e-4
    assert len(artifact.layer_nodes) == 6


def test_multi_head_attention_keeps_projections_apart(task, tmp_path) -> None:
    artifact, fusions = _fuse(task, task.build_model(), tmp_path / "mha.onnx", separate="test: int4 q/k/v")
    assert fusions.counts["MultiHeadAttention"] == 2 and fusions.counts["Attention"] == 0 and fusions.complete
    assert fusions.attention_reason == "test: int4 q/k/v"
    nodes = {artifact.layer_nodes[f"bert.encoder.layer.1.attention.self.{p}"] for p in ("query", "key", "value")}
    assert len(nodes) == 3


def test_baseline_artifact_records_fusions_and_a_baseline_that_does_not_fuse_fails(task, tmp_path) -> None:
    artifact = build_artifact(task.build_model(), Recipe(()), task, tmp_path / "base")
    artifact.save_records()
    graph = json.loads((tmp_path / "base" / GRAPH_FILE).read_text())["fusion"]
    assert graph["complete"] and graph["counts"]["Attention"] == 2 and graph["attention_op"] == "Attention"
    assert "2 Attention, 4 SkipLayerNormalization" in fusion_line(graph) and "INCOMPLETE" not in fusion_line(graph)
    assert artifact.stats["fused_attention"] == 2 and artifact.stats["fusion_complete"] == 1.0  # logged as metrics
    layers = json.loads((tmp_path / "base" / LAYERS_FILE).read_text())
    assert layers["bert.encoder.layer.0.attention.self.key"]["kernel"] == "com.microsoft.Attention"
    assert layers["bert.encoder.layer.0.attention.self.key"]["packed_with"] == (
        "bert.encoder.layer.0.attention.self.query, bert.encoder.layer.0.attention.self.value")
    assert layers["bert.encoder.layer.0.intermediate.dense"]["kernel"] == "MatMul"
    assert task.evaluate(lambda f: run(artifact.path, f)) > 0.9999
    broken = TinyBertTask(tmp_path / "cache2", extra_layers=1)  # expects 3 attention ops from 2 layers
    with pytest.raises(FusionError, match="did not fuse"):
        build_artifact(broken.build_model(), Recipe(()), broken, tmp_path / "broken")


def test_unpacking_one_attention_computes_the_same(task, tmp_path) -> None:
    """A layer re-expressed as q/k/v MatMuls + MultiHeadAttention computes what its packed Attention did."""
    import onnx

    from search.fusion.unpack import unpack_attention
    from search.layer_map import map_layers_by_value

    artifact, _ = _fuse(task, task.build_model(), tmp_path / "fused.onnx")
    proto = onnx.load(str(artifact.path))
    first = next(n.name for n in proto.graph.node if n.op_type == "Attention")
    assert len(unpack_attention(proto, {first})) == 1
    onnx.save(proto, str(tmp_path / "unpacked.onnx"))
    found = ops(tmp_path / "unpacked.onnx")
    assert found["Attention"] == 1 and found["MultiHeadAttention"] == 1
    f = feeds(3, seq=20, seed=9)
    assert np.abs(run(tmp_path / "unpacked.onnx", f) - run(artifact.path, f)).max() < 1e-5
    nodes = map_layers_by_value(proto, task.build_model())
    assert len({nodes[f"bert.encoder.layer.0.attention.self.{p}"] for p in ("query", "key", "value")}) == 3
