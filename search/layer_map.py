"""Which ONNX node computes each Linear layer, found by the weight's values rather than node names.

Graph fusion renames nodes and moves weights: ONNX Runtime's transformer optimizer packs a
layer's query, key and value weights into one Attention weight (their transposes side by side)
and leaves the other projections as MatMul with a transposed initializer. Names are no guide
there, values are: a layer's node is the one whose constant weight equals the layer's weight
(transposed for MatMul; one column block of a packed Attention weight). Exact equality holds
because export and fusion copy weights without arithmetic.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

__all__ = ["map_layers_by_value"]


def _key(array: np.ndarray) -> tuple[tuple[int, ...], str]:
    array = np.ascontiguousarray(array, dtype=np.float32)
    return array.shape, hashlib.sha1(array.tobytes()).hexdigest()


def _weight_blocks(node: onnx.NodeProto, weight: np.ndarray) -> list[np.ndarray]:
    """The [out, in] matrices a node's weight holds (PyTorch's Linear layout)."""
    if node.op_type == "MatMul" and weight.ndim == 2:
        return [weight.T]
    if node.op_type == "Gemm" and weight.ndim == 2:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return [weight if trans_b else weight.T]
    if node.op_type == "Attention" and weight.ndim == 2:
        sizes = next((list(a.ints) for a in node.attribute if a.name == "qkv_hidden_sizes"), None)
        sizes = sizes or [weight.shape[1] // 3] * 3
        bounds = np.cumsum([0, *sizes])
        return [weight[:, bounds[i]:bounds[i + 1]].T for i in range(3)]
    return []


def map_layers_by_value(proto: onnx.ModelProto, model: nn.Module) -> dict[str, str]:
    """Linear layer name -> the node whose constant weight equals the layer's weight."""
    initializers = {i.name: i for i in proto.graph.initializer}
    index: dict[tuple[tuple[int, ...], str], str] = {}
    for node in proto.graph.node:
        if len(node.input) < 2 or node.input[1] not in initializers:
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        if weight.dtype != np.float32:
            continue
        for block in _weight_blocks(node, weight):
            index.setdefault(_key(block), node.name)
    out = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear):
                node = index.get(_key(module.weight.detach().cpu().numpy()))
                if node is not None:
                    out[name] = node
    return out


def _node_weights(proto: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...], str]]:
    """Node name -> the value key of its constant weight (second input), for nodes that have one."""
    initializers = {i.name: i for i in proto.graph.initializer}
    out = {}
    for node in proto.graph.node:
        if len(node.input) >= 2 and node.input[1] in initializers:
            weight = numpy_helper.to_array(initializers[node.input[1]])
            if weight.dtype == np.float32:
                out[node.name] = _key(weight)
    return out


def follow_nodes_by_weight(before: onnx.ModelProto, after: onnx.ModelProto, nodes: set[str]) -> dict[str, str]:
    """For `nodes` of `before`, the node of `after` with the same constant weight (a graph rewrite such as
    ORT's pre-processing may rename nodes or turn MatMul + Add into Gemm, but keeps weights as they are)."""
    keys = _node_weights(before)
    index: dict[tuple[tuple[int, ...], str], str] = {}
    for name, key in _node_weights(after).items():
        index.setdefault(key, name)
    return {node: index[keys[node]] for node in nodes if node in keys and keys[node] in index}
