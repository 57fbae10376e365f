"""Run ONNX Runtime's transformer optimizer on a fusion-ready export and record what fused."""

from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter
from pathlib import Path

import onnx
import torch
from torch import nn

from hardware.artifact import Artifact
from search.fusion.export import export_for_fusion
from search.fusion.spec import ATTENTION_OPS, Fusions, FusionSpec
from search.layer_map import map_layers_by_value

# The ops the optimizer fuses into for encoder models (counted per artifact, recorded in graph.json).
FUSED_OPS = ("EmbedLayerNormalization", *ATTENTION_OPS, "SkipLayerNormalization", "BiasGelu", "FastGelu",
             "Gelu", "LayerNormalization")


@contextlib.contextmanager
def _quiet_optimizer():
    # The optimizer logs every fusion at INFO and warns about head counts it could not detect (those
    # show up in the counts, and `Fusions.missing` says so): a search log has no room for either.
    # Its modules log under their bare names (fusion_attention, onnx_model, ...), so the root level it is.
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def optimize_file(path: Path, model_type: str, multi_head: bool, embed_layer_norm: bool = True) -> onnx.ModelProto:
    """The transformer optimizer on `path`, rewritten in place. Head counts come from the graph (pinned
    per layer at export), so none is passed; opt_level 0: the fusions only, ORT's own graph
    optimisations run in the session later (an offline pass would bake one CPU's choices in)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions(model_type)
    options.use_multi_head_attention = multi_head
    options.enable_embed_layer_norm = embed_layer_norm
    with _quiet_optimizer():
        optimized = optimize_model(str(path), model_type=model_type, num_heads=0, hidden_size=0, opt_level=0,
                                   optimization_options=options)
        optimized.save_model_to_file(str(path))
    return optimized.model


def fuse_model(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], input_names: list[str],
               output_names: list[str], out_path: Path, spec: FusionSpec, separate_projections: str = "",
               dynamic_shapes: tuple | None = None, keep_embedding_gathers: str = "") -> tuple[Artifact, Fusions]:
    """Export `model` for fusion to `out_path`, fuse it, and map its layers onto the fused graph.

    `separate_projections`: why some technique needs q/k/v as their own MatMul nodes (per-projection
    bits, int4, static int8: ORT has no such kernel for the packed Attention op), or "" when none
    does. Then attention fuses as MultiHeadAttention, which leaves the projections as they are.
    `keep_embedding_gathers`: why the embedding lookups must stay Gather nodes, or "" to fuse them."""
    export_for_fusion(model, example_inputs, input_names, output_names, out_path, dynamic_shapes)
    multi_head = bool(separate_projections)
    proto = optimize_file(out_path, spec.model_type, multi_head, embed_layer_norm=not keep_embedding_gathers)
    counts = Counter(n.op_type for n in proto.graph.node)
    heads = [next((a.i for a in n.attribute if a.name == "num_heads"), 0)
             for n in proto.graph.node if n.op_type in ATTENTION_OPS]
    fusions = Fusions(model_type=spec.model_type, attention_op="MultiHeadAttention" if multi_head else "Attention",
                      attention_reason=separate_projections or "q/k/v packed into one weight (the fastest CPU kernel)",
                      embeddings_unfused=keep_embedding_gathers,
                      counts={op: counts.get(op, 0) for op in FUSED_OPS}, expected=spec.expected(), heads=heads,
                      node_ops={n.name: n.op_type for n in proto.graph.node})
    return Artifact(out_path, map_layers_by_value(proto, model)), fusions
