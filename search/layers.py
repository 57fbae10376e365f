"""Layer discovery: the compressible layers of a PyTorch model, found by walking its modules.

A new model needs no YAML edit: quantization, pruning and the reports address layers by
the qualified names found here (e.g. `net.0`, `encoder.layer.3.attention.self.query`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from torch import nn

V = TypeVar("V")


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


def carry_over(values: Mapping[str, V], model: nn.Module) -> dict[str, V]:
    """Per-layer values keyed by the uncompressed model's layers, moved onto the layers of `model`.

    A layer that still exists keeps its value; a layer replaced by a container (factorize
    turns `net.0` into `net.0.0` and `net.0.1`) gives its value to every layer inside it; a
    layer that no longer exists (merged away by a shallower distillation student) is dropped.
    """
    names = [info.name for info in discover_layers(model)]
    out: dict[str, V] = {}
    for layer, value in values.items():
        if layer in names:
            out[layer] = value
        else:
            out.update((name, value) for name in names if name.startswith(layer + "."))
    return out


def layer_patterns(raw: object) -> tuple[str, ...]:
    """A `layers:` value: one fnmatch pattern or a non-empty list of them (ValueError otherwise)."""
    if isinstance(raw, str) and raw:
        return (raw,)
    if isinstance(raw, (list, tuple)) and raw and all(isinstance(p, str) and p for p in raw):
        return tuple(raw)
    raise ValueError(f"must be a layer-name pattern or a list of them (fnmatch, e.g. 'net.*'), but got {raw!r}")
