"""The fusion stage of one candidate: export for fusion, fuse, plan the attention op, check the result.

Called by the stage runner (search/compress.py) in place of the plain export when the task
declares a transformer (`Task.fusion`). The plan: attention fuses into ORT's Attention op,
whose q/k/v weights are packed into one matrix, unless the candidate's bit-widths need the
projections apart: a packed weight takes one bit-width, and ORT quantizes it only as int8
with dynamic activations (QAttention). Then attention fuses as MultiHeadAttention, which keeps
q/k/v as their own MatMul nodes (each quantizable as int8 static or dynamic, int4, fp16), and
graph.json says why. A baseline (no model-stage step changed the model) that does not fuse
completely is an error, not a slower baseline that flatters every ratio.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from search.errors import UserError
from search.fusion.optimize import fuse_model
from search.fusion.spec import Fusions, FusionSpec
from search.techniques.base import CompressionState


class FusionError(UserError):
    """A transformer baseline did not fuse: its ratios would flatter every candidate."""


def _packing_conflict(state: CompressionState, layer_nodes: dict[str, str], packed_ops: dict[str, str]) -> str:
    """Why the packed Attention op cannot hold these layers' bit-widths, or "" when it can."""
    members: dict[str, list[str]] = defaultdict(list)
    for layer, node in layer_nodes.items():
        if packed_ops.get(node) == "Attention":
            members[node].append(layer)
    for layers in members.values():
        apart = [layer for layer in layers if layer in state.own_node]
        if apart:
            return f"{apart[0]}: {state.own_node[apart[0]]}"
        bits = {state.bits_of(layer) for layer in layers}
        if len(bits) > 1:
            return (f"q/k/v bit-widths differ ({', '.join(f'{la}={state.bits_of(la)}' for la in layers)}): "
                    "a packed Attention weight takes one")
        (only,) = bits
        if only not in state.packable_bits:
            return (f"{layers[0]} and its q/k/v siblings are {only}, which ORT's packed Attention op cannot take "
                    f"here (it takes {'/'.join(sorted(state.packable_bits))}; int8 only with dynamic activations)")
    return ""


def fuse_stage(state: CompressionState, spec: FusionSpec, path: Path) -> Fusions:
    """Export `state.model` for fusion into `path` and fuse it; sets `state.artifact`."""
    task, model = state.task, state.model
    assert task is not None

    def run(reason: str) -> Fusions:
        state.artifact, fusions = fuse_model(model, task.example_inputs(), task.input_names, task.output_names,
                                             path, spec, reason, task.dynamic_shapes(),
                                             keep_embedding_gathers=state.keep_embedding_gathers)
        return fusions

    fusions = run("")
    conflict = _packing_conflict(state, state.layer_nodes, fusions.node_ops)
    if conflict:
        fusions = run(conflict)
    if not fusions.complete and not state.changed:
        missing = "; ".join(fusions.missing)
        raise FusionError(f"task {task.name}: the uncompressed transformer did not fuse ({missing}); "
                          "every ratio would be against a slow baseline. ONNX Runtime's optimizer did not recognise "
                          "the exported attention/layer-norm patterns (see search/fusion/export.py)")
    return fusions

