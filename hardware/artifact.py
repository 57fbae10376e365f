"""The Artifact: everything a backend is handed to measure, named explicitly.

A search writes it (search/techniques/pipeline.py) and a backend receives it whole: the
deployable ONNX file, which ONNX node computes each layer, what each layer became, and any
sidecar a backend needs (the torch.export program of the compressed module). No backend
looks for files beside `path` by name.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from hardware.sizes import artifact_bytes, compressed_bytes

# An artifact directory (a trial's) holds the deployable model, what each layer became, and, when
# a backend needs it, the compressed module's torch.export program. Only `Artifact.load` reads
# them back by these names.
MODEL_FILE, LAYERS_FILE, PROGRAM_FILE = "model.onnx", "layers.json", "model.pt2"
GRAPH_FILE = "graph.json"  # what graph optimisation did to the whole model (fusions), when it ran


@dataclass
class Artifact:
    """A deployable ONNX model on disk plus what each compressible layer became.

    `layer_nodes` maps a PyTorch layer name to the ONNX node that consumes its weight, which
    is how quantization picks nodes and how backends report the kernel each layer ran on.
    `layers` is the per-layer record (shape, parameters, bits, sparsity, node, ...) written as
    layers.json; the estimate backend reads it. `program` is the torch.export program of the
    compressed module (before ONNX-stage quantization), for backends with `needs_program`.
    """

    path: Path
    layer_nodes: dict[str, str] = field(default_factory=dict)
    layers: dict[str, dict] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)  # params, MACs of the compressed model
    program: Path | None = None
    graph: dict = field(default_factory=dict)  # graph-level record (fusions); empty when none ran

    @property
    def bytes(self) -> int:
        return artifact_bytes(self.path)

    def bytes_compressed(self) -> int:
        return compressed_bytes(self.path)

    def save_records(self) -> None:
        """Write the layer records beside the model (reports, MLflow and `load` read them)."""
        (self.path.parent / LAYERS_FILE).write_text(json.dumps(self.layers, indent=1))
        if self.graph:
            (self.path.parent / GRAPH_FILE).write_text(json.dumps(self.graph, indent=1))

    @classmethod
    def load(cls, directory: Path) -> Artifact:
        """The artifact an earlier run left in `directory`, sidecars included (to measure it again)."""
        layers: dict[str, dict] = {}
        with contextlib.suppress(OSError, ValueError):
            layers = json.loads((directory / LAYERS_FILE).read_text())
        nodes = {name: info["node"] for name, info in layers.items() if info.get("node")}
        graph: dict = {}
        with contextlib.suppress(OSError, ValueError):
            graph = json.loads((directory / GRAPH_FILE).read_text())
        program = directory / PROGRAM_FILE
        return cls(directory / MODEL_FILE, nodes, layers, program=program if program.exists() else None, graph=graph)
