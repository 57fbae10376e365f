"""Export a transformer the way ONNX Runtime's transformer optimizer expects to find it.

Measured on all-MiniLM-L6-v2 (torch 2.13, onnxruntime 1.32): the optimizer's attention and
layer-norm patterns match the TorchScript exporter's graph of an eager-attention model, not the
dynamo exporter's (which fuses only BiasGelu), nor SDPA attention. Two graph details still stop
it, and are fixed here on the exported graph:

- the exporter deduplicates equal constants through Identity nodes (two all-zero biases, two
  unit layer-norm weights): the patterns then see an Identity where they expect a constant;
- the head split reshapes to (batch, seq, -1, head_size), and the optimizer must know the head
  count. After head pruning it differs per layer, so one number for the model is wrong: the -1
  is pinned per reshape to the projection's width / head_size, read from the graph itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from search.export import _quiet_exporter

OPSET = 21  # the highest the TorchScript exporter writes; int4 QuantizeLinear needs >= 21


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Every Hugging Face config in `model` switched to eager attention while the block runs."""
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None
               and hasattr(c, "_attn_implementation")}
    old = {key: c._attn_implementation for key, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = "eager"
        yield
    finally:
        for key, c in configs.items():
            c._attn_implementation = old[key]


def _dynamic_axes(input_names: list[str], output_names: list[str], dynamic_shapes: tuple | None) -> dict:
    """TorchScript's dynamic_axes from the task's torch.export dims (default: the batch of every input)."""
    axes: dict[str, dict[int, str]] = {}
    for i, name in enumerate(input_names):
        dims = dynamic_shapes[i] if dynamic_shapes is not None else {0: None}
        axes[name] = {axis: getattr(dim, "__name__", None) or ("batch" if axis == 0 else f"dim{axis}")
                      for axis, dim in dims.items()}
    for name in output_names:
        axes[name] = {0: "batch"}
    return axes


def export_for_fusion(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], input_names: list[str],
                      output_names: list[str], out_path: Path, dynamic_shapes: tuple | None = None) -> onnx.ModelProto:
    """Export `model` (eval mode) to `out_path` in the form the transformer optimizer fuses; returns it."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with _quiet_exporter(), torch.no_grad(), eager_attention(model):
        torch.onnx.export(model, example_inputs, str(out_path), input_names=input_names,
                          output_names=output_names, dynamic_axes=_dynamic_axes(input_names, output_names,
                                                                                dynamic_shapes),
                          opset_version=OPSET, dynamo=False)
    proto = onnx.load(str(out_path))
    inline_constant_identities(proto)
    pin_head_counts(proto)
    onnx.save(proto, str(out_path))
    return proto


def inline_constant_identities(model: onnx.ModelProto) -> int:
    """Consumers of Identity(initializer) read the initializer itself; returns how many were removed."""
    initializers = {i.name for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    alias = {n.output[0]: n.input[0] for n in model.graph.node
             if n.op_type == "Identity" and n.input[0] in initializers and n.output[0] not in outputs}
    kept = [n for n in model.graph.node if not (n.op_type == "Identity" and n.output and n.output[0] in alias)]
    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = alias.get(name, name)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return len(alias)


def constant_value(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    """The value of an initializer or Constant node output, else None."""
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name and node.attribute[:1] \
                and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def pin_head_counts(model: onnx.ModelProto) -> list[int]:
    """Reshape(x, Concat(b, s, -1, head_size)) after a projection (MatMul + Add(bias)) gets -1 replaced by
    the projection's width / head_size. Returns the head counts pinned, in graph order."""
    producer = {out: n for n in model.graph.node for out in n.output}
    pinned = []
    for node in model.graph.node:
        concat = producer.get(node.input[1]) if node.op_type == "Reshape" else None
        if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
            continue
        heads, size = constant_value(model, concat.input[2]), constant_value(model, concat.input[3])
        if heads is None or size is None or heads.size != 1 or size.size != 1 or int(heads.flat[0]) != -1:
            continue
        width = _bias_width(model, producer.get(node.input[0]))
        if width is None or width % int(size.flat[0]):
            continue
        count = width // int(size.flat[0])
        name = f"{concat.input[2]}_heads{count}"
        if constant_value(model, name) is None:
            model.graph.initializer.append(numpy_helper.from_array(np.full(heads.shape, count, heads.dtype), name))
        concat.input[2] = name
        pinned.append(count)
    return pinned


def _bias_width(model: onnx.ModelProto, add: onnx.NodeProto | None) -> int | None:
    """The width of a projection's output: the length of the 1-D bias its Add takes."""
    if add is None or add.op_type != "Add":
        return None
    for name in add.input:
        value = constant_value(model, name)
        if value is not None and value.ndim == 1:
            return int(value.shape[0])
    return None
