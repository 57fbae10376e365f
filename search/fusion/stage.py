"""The fusion stage of one candidate: export for fusion, fuse, plan the attention op per layer, check.

Called by the stage runner (search/compress.py) in place of the plain export when the task
declares a transformer (`Task.fusion`). Attention fuses into ORT's Attention op, whose q/k/v
weights are packed into one matrix. A packed weight takes one bit-width, and ORT quantizes it
only as int8 with dynamic activations (QAttention); a layer whose q/k/v bits differ, fall
outside that, or need a node of their own (weight sharing) is re-expressed as q/k/v MatMuls +
MultiHeadAttention (unpack.py), only that layer, and graph.json says why. A baseline (no
model-stage step changed the model) that does not fuse completely is an error, not a slower
baseline that flatters every ratio.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import onnx

from search.errors import UserError
from search.fusion.optimize import fuse_model
from search.fusion.spec import Fusions, FusionSpec
from search.fusion.unpack import unpack_attention
from search.layer_map import map_layers_by_value
from search.techniques.base import CompressionState


class FusionError(UserError):
    """A transformer baseline did not fuse: its ratios would flatter every candidate."""


def _why_apart(state: CompressionState, layers: list[str]) -> str:
    """Why these layers (packed into one Attention node) need their projections apart, or ""."""
    apart = [layer for layer in layers if layer in state.own_node]
    if apart:
        return f"{apart[0]}: {state.own_node[apart[0]]}"
    bits = {state.bits_of(layer) for layer in layers}
    if len(bits) > 1:
        each = ", ".join(f"{layer}={state.bits_of(layer)}" for layer in layers)
        return f"q/k/v bit-widths differ ({each}): a packed Attention weight takes one"
    (only,) = bits
    if only not in state.packable_bits:
        return (f"q/k/v are {only}, which ORT's packed Attention op cannot take here (it takes "
                f"{'/'.join(sorted(state.packable_bits))}; int8 only with dynamic activations)")
    return ""


def _plan(state: CompressionState, node_ops: dict[str, str]) -> dict[str, str]:
    """Attention node -> why it must be unpacked, for the nodes that must."""
    members: dict[str, list[str]] = defaultdict(list)
    for layer, node in state.layer_nodes.items():
        if node_ops.get(node) == "Attention":
            members[node].append(layer)
    reasons = {node: _why_apart(state, layers) for node, layers in members.items()}
    return {node: why for node, why in reasons.items() if why}


def fuse_stage(state: CompressionState, spec: FusionSpec, path: Path) -> Fusions:
    """Export `state.model` for fusion into `path` and fuse it; sets `state.artifact`."""
    task, model = state.task, state.model
    assert task is not None
    state.artifact, fusions = fuse_model(model, task.example_inputs(), task.input_names, task.output_names, path,
                                         spec, dynamic_shapes=task.dynamic_shapes(),
                                         keep_embedding_gathers=state.keep_embedding_gathers)
    plan = _plan(state, fusions.node_ops)
    if plan:
        proto = onnx.load(str(path))
        unpack_attention(proto, set(plan))
        onnx.save(proto, str(path))
        state.artifact.layer_nodes = map_layers_by_value(proto, model)
        fusions.counts["Attention"] -= len(plan)
        fusions.counts["MultiHeadAttention"] += len(plan)
        fusions.attention_op = ("MultiHeadAttention" if not fusions.counts["Attention"]
                                else "Attention + MultiHeadAttention")
        # One line per distinct reason, with the layers it applies to (node names follow the graph order).
        by_reason: dict[str, list[str]] = defaultdict(list)
        for node, why in plan.items():
            by_reason[why].append(node)
        fusions.attention_reason = "; ".join(f"{', '.join(nodes)} unpacked: {why}"
                                             for why, nodes in by_reason.items())
    if not fusions.complete and not state.changed:
        missing = "; ".join(fusions.missing)
        raise FusionError(f"task {task.name}: the uncompressed transformer did not fuse ({missing}); "
                          "every ratio would be against a slow baseline. ONNX Runtime's optimizer did not recognise "
                          "the exported attention/layer-norm patterns (see search/fusion/export.py)")
    return fusions
