"""ONNX Runtime's quantization pre-processing, with each layer's node followed through it.

`quant_pre_process` runs symbolic shape inference and ORT's basic graph optimisation before
quantizing (ORT recommends it). The optimisation may rename or merge nodes, so the layer -> node
map is carried over by each node's weight values (search/layer_map.py), and a layer whose node
cannot be found again fails loudly instead of going unquantized.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from search.layer_map import follow_nodes_by_weight


def infer_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with the type and shape of every tensor, contrib ops included (ORT's symbolic shape
    inference, no graph rewrite): ONNX's own inference stops at a fused transformer's first
    SkipLayerNormalization, and the static quantizer calibrates only tensors whose type it knows
    (without this, static int8 on a fused graph quantizes weights only, silently)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    return SymbolicShapeInference.infer_shapes(model, auto_merge=True)


def preprocess(path: Path, layer_nodes: dict[str, str]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The pre-processed model at `path` and the layer -> node map moved onto it."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    before = onnx.load(str(path))
    with tempfile.TemporaryDirectory(prefix="compsearch-pre-") as tmp:
        out = Path(tmp) / "pre.onnx"
        # auto_merge: a fused transformer's symbolic dims (batch, seq) meet in contrib ops
        quant_pre_process(str(path), str(out), auto_merge=True)
        after = onnx.load(str(out))
    moved = follow_nodes_by_weight(before, after, set(layer_nodes.values()))
    lost = sorted({node for node in layer_nodes.values() if node not in moved})
    if lost:
        raise RuntimeError(f"quantize preprocess: node(s) {lost} cannot be found after ORT's pre-processing")
    return after, {layer: moved[node] for layer, node in layer_nodes.items()}
