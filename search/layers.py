"""Layer discovery: the compressible layers of a PyTorch model, found by walking its modules.

A new model needs no YAML edit: quantization, pruning and the reports address layers by
the qualified names found here (e.g. `net.0`, `encoder.layer.3.attention.self.query`).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class LayerInfo:
    name: str
    kind: str  # "linear" or "conv"
    weight_shape: tuple[int, ...]

    @property
    def params(self) -> int:
        n = 1
        for d in self.weight_shape:
            n *= d
        return n


def discover_layers(model: nn.Module) -> list[LayerInfo]:
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            layers.append(LayerInfo(name, "linear", tuple(module.weight.shape)))
        elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
            layers.append(LayerInfo(name, "conv", tuple(module.weight.shape)))
    return layers


def match_layers(layers: list[LayerInfo], patterns: tuple[str, ...]) -> list[LayerInfo]:
    """Layers whose name matches any of the fnmatch patterns, in model order."""
    return [layer for layer in layers if any(fnmatch.fnmatchcase(layer.name, p) for p in patterns)]
