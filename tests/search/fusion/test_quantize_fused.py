"""Quantization after fusion keeps per-layer control: int8 (dynamic and static) and int4 apply to
the attention projections and the FFN of a fused tiny BERT, and layers.json names each kernel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

pytest.importorskip("transformers")

from fusion_tiny_bert import TinyBertTask  # noqa: E402

from hardware.artifact import Artifact  # noqa: E402
from search.compress import build_artifact  # noqa: E402
from search.recipe import Recipe  # noqa: E402
from search.techniques.quantize import QuantizeConfig  # noqa: E402

L0, L1 = "bert.encoder.layer.0", "bert.encoder.layer.1"
QKV = ("attention.self.query", "attention.self.key", "attention.self.value")


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> TinyBertTask:
    return TinyBertTask(tmp_path_factory.mktemp("cache"))


def build(task: TinyBertTask, tmp: Path, bits: dict[str, str], **kw) -> tuple[Artifact, dict, dict, float]:
    artifact = build_artifact(task.build_model(), Recipe((QuantizeConfig(layer_bits=bits, **kw),)), task, tmp)
    artifact.save_records()
    loaded = Artifact.load(tmp)  # what a later reader (report, MLflow, bench) gets back
    session = ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"])
    quality = task.evaluate(lambda f: session.run(None, f)[0])
    return artifact, loaded.layers, loaded.graph["fusion"], quality


def test_int8_dynamic_quantizes_the_packed_attention_and_the_ffn(task, tmp_path) -> None:
    bits = {f"{L0}.{p}": "int8" for p in (*QKV, "intermediate.dense", "output.dense")}
    _, layers, fusion, quality = build(task, tmp_path, bits, activations="dynamic")
    assert fusion["attention_op"] == "Attention" and fusion["complete"]
    assert layers[f"{L0}.attention.self.query"]["kernel"] == "com.microsoft.QAttention"
    assert layers[f"{L0}.attention.self.value"]["packed_with"] == f"{L0}.attention.self.query, {L0}.attention.self.key"
    assert layers[f"{L0}.intermediate.dense"]["kernel"] == "MatMulInteger"
    assert layers[f"{L0}.attention.output.dense"]["kernel"] == "MatMul"  # left fp32
    assert layers[f"{L1}.attention.self.query"]["kernel"] == "com.microsoft.Attention"  # layer 1 stays fp32
    assert quality > 0.99


def test_int4_on_one_projection_keeps_q_k_v_apart_visibly(task, tmp_path) -> None:
    bits = {f"{L0}.attention.self.query": "int4", f"{L1}.output.dense": "int4"}
    _, layers, fusion, quality = build(task, tmp_path, bits, block_size=32)
    # Only layer 0 needs its projections apart: layer 1 keeps the packed Attention kernel.
    assert fusion["attention_op"] == "Attention + MultiHeadAttention" and fusion["complete"]
    assert fusion["counts"]["Attention"] == 1 and fusion["counts"]["MultiHeadAttention"] == 1
    assert "int4" in fusion["attention_reason"] and "differ" in fusion["attention_reason"]
    assert layers[f"{L0}.attention.self.query"]["kernel"] == "com.microsoft.MatMulNBits"
    assert layers[f"{L0}.attention.self.key"]["kernel"] == "MatMul"
    assert layers[f"{L1}.output.dense"]["kernel"] == "com.microsoft.MatMulNBits"
    assert "packed_with" not in layers[f"{L0}.attention.self.key"]
    assert quality > 0.97


def test_int8_static_after_fusion_and_int4_embeddings(task, tmp_path) -> None:
    bits = {f"{layer}.{p}": "int8" for layer in (L0, L1) for p in QKV}
    artifact, layers, fusion, quality = build(task, tmp_path, bits, activations="static", embedding_bits="int4",
                                              block_size=32)
    # Static int8 has no packed-Attention kernel: q/k/v stay MatMuls, each with its own Q/DQ.
    assert fusion["attention_op"] == "MultiHeadAttention" and "are int8" in fusion["attention_reason"]
    assert fusion["counts"]["MultiHeadAttention"] == 2 and fusion["complete"]
    assert fusion["counts"]["EmbedLayerNormalization"] == 0 and "GatherBlockQuantized" in fusion["embeddings_unfused"]
    import onnx

    ops = {n.op_type for n in onnx.load(str(artifact.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "GatherBlockQuantized", "MultiHeadAttention"} <= ops
    assert all(layers[f"{L1}.{p}"]["kernel"] == "MatMul" for p in QKV)  # Q/DQ around it: ORT runs it int8
    assert quality > 0.97
    assert json.loads((tmp_path / "layers.json").read_text())[f"{L0}.attention.self.key"]["bits"] == "int8"


def test_ort_quantizer_knobs_reach_the_quantizer(task, tmp_path) -> None:
    """reduce_range, pre-processing, symmetric activations and the int4 accuracy level each change the
    artifact in the way ONNX Runtime documents (and per-layer control survives pre-processing)."""
    import onnx
    from onnx import numpy_helper

    bits = {f"{L0}.{p}": "int8" for p in (*QKV, "intermediate.dense")}
    plain, layers, _, _ = build(task, tmp_path / "plain", bits, activations="dynamic")
    knobbed, layers_k, _, quality = build(task, tmp_path / "knobs", bits, activations="dynamic", reduce_range=True,
                                          preprocess=True)
    assert layers_k[f"{L0}.attention.self.query"]["kernel"] == "com.microsoft.QAttention" and quality > 0.99
    assert layers_k[f"{L0}.intermediate.dense"]["kernel"] == "MatMulInteger"

    def int8_weights(path: Path) -> list:
        model = onnx.load(str(path))
        return [numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    # reduce_range: 7-bit weights, |w| <= 64, where the full range reaches 127.
    assert max(abs(int(w.min())) for w in int8_weights(plain.path)) > 100
    assert max(max(abs(int(w.min())), int(w.max())) for w in int8_weights(knobbed.path)) <= 64

    static, _, _, quality = build(task, tmp_path / "sym", bits, activations="static", symmetric_activations=True)
    model = onnx.load(str(static.path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    act_zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"
                       and n.input[2] in inits and inits[n.input[2]].dtype == np.uint8]
    assert act_zero_points and all(int(z.flat[0]) == 128 for z in act_zero_points)  # symmetric u8: midpoint
    assert quality > 0.97

    int4, _, _, _ = build(task, tmp_path / "acc", {f"{L1}.output.dense": "int4"}, int4_accuracy_level=4)
    node = next(n for n in onnx.load(str(int4.path)).graph.node if n.op_type == "MatMulNBits")
    assert next(a.i for a in node.attribute if a.name == "accuracy_level") == 4


def test_weight_sharing_on_a_projection_keeps_it_out_of_the_packed_attention(task, tmp_path) -> None:
    from search.techniques.share import ShareConfig

    recipe = Recipe((ShareConfig(layer_clusters={f"{L0}.attention.self.key": 16}),))
    artifact = build_artifact(task.build_model(), recipe, task, tmp_path)
    fusion = artifact.graph["fusion"]
    assert fusion["attention_op"] == "Attention + MultiHeadAttention" and "weight sharing" in fusion["attention_reason"]
    assert artifact.layers[f"{L0}.attention.self.key"]["codebook"] is True
