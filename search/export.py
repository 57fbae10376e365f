"""PyTorch -> ONNX export (and the torch.export program for the torch backend).

Export is FP32 through torch's dynamo exporter; reduced precision is applied afterwards on
the ONNX graph with ONNX Runtime's own tools (PyTorch-side Q/DQ does not survive the dynamo
exporter reliably).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from hardware.artifact import Artifact

OPSET = 21  # >= 21 for standard int4 QuantizeLinear/DequantizeLinear

@contextlib.contextmanager
def _quiet_exporter():
    # The exporter chats on stdout, logging and warnings; a search log has no room for it.
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, old, strict=True):
            lg.setLevel(level)


def export_onnx(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    input_names: list[str],
    out_path: Path,
    dynamic_shapes: tuple | None = None,
    output_names: list[str] | None = None,
) -> Artifact:
    """Export `model` in eval mode to `out_path` (single file, no external data)."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    if dynamic_shapes is None:
        dynamic_shapes = tuple({0: torch.export.Dim("batch", min=1, max=4096)} for _ in example_inputs)
    with _quiet_exporter(), torch.no_grad():
        torch.onnx.export(
            model, example_inputs, str(out_path),
            input_names=input_names, output_names=output_names or ["output"],
            dynamic_shapes=dynamic_shapes, opset_version=OPSET, external_data=False, verbose=False,
        )
    proto = onnx.load(str(out_path))
    layer_nodes = map_layer_nodes(proto, model)  # reads the exporter's scope metadata: before stripping it
    # The exporter annotates every node with stack traces and scopes (~5 KB on a tiny model):
    # debugging aids, not part of what is deployed, so they do not count in the artifact's bytes.
    for node in proto.graph.node:
        del node.metadata_props[:]
    onnx.save(proto, str(out_path))
    return Artifact(path=out_path, layer_nodes=layer_nodes)


def map_layer_nodes(proto: onnx.ModelProto, model: nn.Module) -> dict[str, str]:
    """Find, for each Linear/Conv layer, the ONNX node that takes `<layer>.weight` as input."""
    consumers: dict[str, str] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, node.name)
    mapping = {}
    scoped = None
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            node = consumers.get(f"{name}.weight")
            if node is None:
                scoped = _nodes_by_scope(proto) if scoped is None else scoped
                node = scoped.get(name)
            if node is not None:
                mapping[name] = node
    return mapping


def _nodes_by_scope(proto: onnx.ModelProto) -> dict[str, str]:
    """Module name -> its MatMul/Gemm/Conv node, from the exporter's `name_scopes` metadata.

    A Linear on a 3-D input (every transformer layer) exports as MatMul on a pre-transposed
    constant with a generated name, so `<layer>.weight` has no consumer; the dynamo exporter
    still records the module path each node came from.
    """
    import ast

    initializers = {i.name for i in proto.graph.initializer}
    out: dict[str, str] = {}
    for node in proto.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        meta = {p.key: p.value for p in node.metadata_props}
        try:
            scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
        except (ValueError, SyntaxError):
            continue
        # The last scope is the op itself ('linear'); the one before it is the module.
        if isinstance(scopes, list) and len(scopes) >= 2:
            out.setdefault(str(scopes[-2]), node.name)
    return out


def export_program(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], out_path: Path,
                   dynamic_shapes: tuple | None = None) -> Path:
    """Save the compressed module as a torch.export program (`model.pt2`) for the torch backend.

    Same graph capture as the ONNX export (dynamic batch), so both artifacts hold one network.
    """
    model = model.eval()
    if dynamic_shapes is None:
        dynamic_shapes = tuple({0: torch.export.Dim("batch", min=1, max=4096)} for _ in example_inputs)
    # A batch of one would be specialised to the constant 1 by torch.export; two keeps it symbolic.
    example_inputs = tuple(torch.cat([t, t]) if t.dim() and t.shape[0] == 1 else t for t in example_inputs)
    with _quiet_exporter(), torch.no_grad():
        program = torch.export.export(model, example_inputs, dynamic_shapes=dynamic_shapes, strict=False)
    torch.export.save(program, str(out_path))
    return out_path
