"""Replaying the part of a forward pass that runs before a layer, instead of computing it again.

The sensitivity table (search/sensitivity.py) runs the model once per (layer, bit-width) with only
that layer changed. Everything that finishes before the layer starts gives the same outputs as in
the reference pass, so those modules can hand back their recorded outputs: for the fourth encoder
block of a transformer, the embeddings and the first three blocks are not computed again. On
average this halves the work, for any model, without knowing its structure:

- the reference pass records, for every module, when it starts and ends and how often it is called;
- for a layer L, the modules replayed are the children of L's ancestors (the largest pieces) that
  were called once and ended before L started, and that do not hold L's weight (a tied weight
  changes their output too);
- their recorded outputs are handed back as copies (a parent may change a child's output in
  place, e.g. ReLU(inplace=True)).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def _copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(_copy(v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_copy(v) for v in value)
    if isinstance(value, dict):  # also transformers' ModelOutput (an OrderedDict)
        out = value.__class__(**{k: _copy(v) for k, v in value.items()}) if hasattr(value, "to_tuple") else \
            {k: _copy(v) for k, v in value.items()}
        return out
    return value


class PrefixReplay:
    """Recorded module outputs per batch, and which of them each layer may replay."""

    def __init__(self, model: nn.Module, batches: list[tuple[torch.Tensor, ...]], layers: list[str]):
        self.model = model
        modules = dict(model.named_modules())
        start: dict[str, int] = {}
        end: dict[str, int] = {}
        calls: dict[str, int] = {}
        clock = [0]
        hooks = []

        def before(name: str):
            def hook(_m: nn.Module, _args: Any) -> None:
                start.setdefault(name, clock[0])
                calls[name] = calls.get(name, 0) + 1
                clock[0] += 1
            return hook

        def after(name: str):
            def hook(_m: nn.Module, _args: Any, _out: Any) -> None:
                end[name] = clock[0]
                clock[0] += 1
            return hook

        for name, module in modules.items():
            if name:
                hooks += [module.register_forward_pre_hook(before(name)), module.register_forward_hook(after(name))]
        try:
            with torch.no_grad():
                model(*batches[0])
        finally:
            for h in hooks:
                h.remove()

        self.skip: dict[str, list[str]] = {}
        for layer in layers:
            weight = modules[layer].weight
            parts = layer.split(".")
            ancestors = [""] + [".".join(parts[:i]) for i in range(1, len(parts))]
            chosen = []
            for parent in ancestors:
                for child_name, child in modules[parent].named_children():
                    name = f"{parent}.{child_name}" if parent else child_name
                    if (name in ancestors or name == layer or calls.get(name) != 1 or name not in start
                            or layer not in start or end[name] >= start[layer]
                            or any(p is weight for p in child.parameters())):
                        continue
                    chosen.append(name)
            self.skip[layer] = chosen
        wanted = sorted({name for names in self.skip.values() for name in names})
        self.outputs: dict[str, list[Any]] = {name: [] for name in wanted}
        hooks = [modules[name].register_forward_hook(
            lambda _m, _a, out, name=name: self.outputs[name].append(_copy(out))) for name in wanted]
        try:
            with torch.no_grad():
                self.reference = [model(*b) for b in batches]
        finally:
            for h in hooks:
                h.remove()

    @contextlib.contextmanager
    def replaying(self, layer: str, batch: int) -> Iterator[None]:
        """Inside: the modules before `layer` return their recorded outputs for `batch`."""
        replaced = []
        try:
            for name in self.skip.get(layer, []):
                module = self.model.get_submodule(name)
                recorded = self.outputs[name][batch]
                module.forward = lambda *_a, _r=recorded, **_k: _copy(_r)  # an instance attribute: __call__ uses it
                replaced.append(module)
            yield
        finally:
            for module in replaced:
                del module.forward
