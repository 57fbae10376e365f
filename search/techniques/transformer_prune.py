"""Structured pruning of BERT-style encoders: FFN neurons, attention heads, whole layers.

torch.fx cannot trace Hugging Face models, so the generic structured pruning in `prune.py`
does not apply; this technique knows the encoder's shape instead (a ModuleList of layers with
`attention.self.{query,key,value}`, `attention.output.dense`, `intermediate.dense`,
`output.dense`), which covers BERT, RoBERTa, MiniLM and their relatives.

- `ffn_ratio`: the fraction of FFN neurons removed in every kept layer; a neuron's score is
  the norm of its input row times the norm of its output column (it must both receive and
  pass on strong weights).
- `heads_ratio`: the fraction of attention heads removed in every kept layer, scored the same
  way on the value projection and the output projection of each head.
- `keep_layers`: the encoder layers kept (0 = all). Layers are removed one at a time, each
  time the one whose removal changes the model's output least on a training batch. A removed
  layer becomes a pass-through, so the kept layers keep their names (and their bit-widths).

Every cut shrinks real matrices: the exported ONNX graph gets smaller and faster. The quality
comes back, if at all, through distillation, which runs next in the pipeline.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from torch import nn

from search.errors import UserError
from search.params import Rule
from search.techniques import anchoring as pick
from search.techniques.base import Anchor, CompressionState, SampleContext, Technique, TechniqueConfig, TechniqueSpace
from search.techniques.prune import slice_layer
from search.techniques.registry import register


@dataclass(frozen=True)
class TransformerPruneConfig(TechniqueConfig):
    type = "transformer_prune"
    ffn_ratio: float = 0.0
    heads_ratio: float = 0.0
    keep_layers: int = 0  # 0 keeps every layer

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("ffn_ratio", "heads_ratio"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"transformer_prune {key} must satisfy 0 <= {key} < 1, but got {key}={value}")
        if self.keep_layers < 0:
            raise ValueError(f"transformer_prune keep_layers must be >= 0, but got keep_layers={self.keep_layers}")

    def summary(self) -> str:
        parts = []
        if self.keep_layers:
            parts.append(f"{self.keep_layers} layers")
        if self.ffn_ratio:
            parts.append(f"FFN -{self.ffn_ratio:.0%}")
        if self.heads_ratio:
            parts.append(f"heads -{self.heads_ratio:.0%}")
        return "transformer_prune " + ", ".join(parts)


@register
class TransformerPrune(Technique):
    """FFN neurons, attention heads and whole layers of a BERT-style encoder."""

    name = "transformer_prune"
    config_type = TransformerPruneConfig
    rules = {
        "ffn_ratio": Rule("float", default=0.0, minimum=0.0, maximum=1.0, max_exclusive=True,
                          help="fraction of FFN neurons removed in every layer"),
        "heads_ratio": Rule("float", default=0.0, minimum=0.0, maximum=1.0, max_exclusive=True,
                            help="fraction of attention heads removed in every layer"),
        "keep_layers": Rule("int", default=0, minimum=0, maximum=128, help="encoder layers kept; 0 keeps all"),
    }
    # Whole-structure cuts first: the per-matrix techniques then work on what is left.
    order = 10
    student = True
    severity = {"keep_layers": "down", "ffn_ratio": "up", "heads_ratio": "up"}  # search/push.py

    def sample(self, trial: optuna.Trial, space: TechniqueSpace,
               context: SampleContext | None = None) -> TransformerPruneConfig | None:
        dims = space.dims
        config = TransformerPruneConfig(
            ffn_ratio=float(dims["ffn_ratio"].suggest(trial, "transformer_prune.ffn_ratio")),
            heads_ratio=float(dims["heads_ratio"].suggest(trial, "transformer_prune.heads_ratio")),
            keep_layers=int(dims["keep_layers"].suggest(trial, "transformer_prune.keep_layers")),
        )
        return None if config == TransformerPruneConfig() else config

    def anchors(self, space: TechniqueSpace) -> list[Anchor]:
        # One cut at a time, at its mildest: one layer fewer, then FFN neurons (else heads). Both remove about a
        # sixth of the compute; distilled and int8, MiniLM lost 0.16 points without its 6th layer and 0.83
        # without a quarter of its FFN neurons (python -m search.benchmarks.distill, 2 epochs), so layers first.
        dims, off = space.dims, self.off_params(space)
        out = []
        kept = [k for k in pick.values(dims["keep_layers"]) if k > 0]
        if kept:
            out.append(Anchor(f"transformer_prune keep {max(kept)} layers",
                              {**off, "transformer_prune.keep_layers": max(kept)}))
        for key, label in (("ffn_ratio", "ffn"), ("heads_ratio", "heads")):
            value = pick.mild(dims[key])
            if value is not None:
                out.append(Anchor(f"transformer_prune {label} {value:g}", {**off, f"transformer_prune.{key}": value}))
                break
        return out

    def off_params(self, space: TechniqueSpace) -> dict:
        dims = space.dims
        keep = dims["keep_layers"]
        return {"transformer_prune.ffn_ratio": pick.off_or(dims["ffn_ratio"], 0.0, pick.lowest),
                "transformer_prune.heads_ratio": pick.off_or(dims["heads_ratio"], 0.0, pick.lowest),
                "transformer_prune.keep_layers": pick.off_or(keep, 0, pick.highest)}

    def apply_model(self, state: CompressionState, config: TransformerPruneConfig) -> None:
        batch = state.task.train_batches()[0][0] if state.task is not None else None
        state.model = prune_encoder(state.model, config, batch, state.notes)


class SkipLayer(nn.Module):
    """A removed encoder layer: hands the hidden states on unchanged."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


def encoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The (name, ModuleList) of the encoder's layers, or UserError if the model has none."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and all(
                isinstance(m, SkipLayer) or (hasattr(m, "attention") and hasattr(m, "intermediate")) for m in module):
            return name, module
    raise UserError("transformer_prune needs a BERT-style encoder (a ModuleList of layers with .attention and "
                    ".intermediate); this model has none: use `prune` instead")


def prune_encoder(model: nn.Module, config: TransformerPruneConfig, inputs: tuple[torch.Tensor, ...] | None,
                  notes: dict[str, dict] | None = None) -> nn.Module:
    """A pruned copy of the encoder `model`. `inputs`: a training batch, to choose the layers to
    remove (needed only with keep_layers); `notes` collects what was kept."""
    model = copy.deepcopy(model).eval()
    name, layers = encoder_layers(model)
    notes = notes if notes is not None else {}
    if config.keep_layers:
        if config.keep_layers > len(layers):
            raise UserError(f"transformer_prune: keep_layers={config.keep_layers}, but the encoder has only "
                            f"{len(layers)} layers")
        if inputs is None:
            raise UserError("transformer_prune: keep_layers needs the task's training batches to choose layers")
        _drop_layers(model, layers, config.keep_layers, inputs, name, notes)
    for i, layer in enumerate(layers):
        if isinstance(layer, SkipLayer):
            continue
        prefix = f"{name}.{i}"
        if config.ffn_ratio:
            kept = _prune_ffn(layer, config.ffn_ratio)
            notes.setdefault(f"{prefix}.intermediate.dense", {})["ffn_neurons_kept"] = kept
        if config.heads_ratio:
            kept = _prune_heads(layer, config.heads_ratio)
            notes.setdefault(f"{prefix}.attention.self.query", {})["heads_kept"] = kept
    return model


@torch.no_grad()
def _drop_layers(model: nn.Module, layers: nn.ModuleList, keep: int, inputs: tuple[torch.Tensor, ...],
                 prefix: str, notes: dict[str, dict]) -> None:
    reference = model(*inputs)
    while sum(not isinstance(m, SkipLayer) for m in layers) > keep:
        best = None
        for i, layer in enumerate(layers):
            if isinstance(layer, SkipLayer):
                continue
            layers[i] = SkipLayer()
            change = float((model(*inputs) - reference).pow(2).mean())
            layers[i] = layer
            if best is None or change < best[0]:
                best = (change, i)
        layers[best[1]] = SkipLayer()
        notes.setdefault(f"{prefix}.{best[1]}", {})["transformer_prune"] = "layer removed"


def _keep_count(n: int, ratio: float) -> int:
    return max(1, round(n * (1.0 - ratio)))


@torch.no_grad()
def _prune_ffn(layer: nn.Module, ratio: float) -> int:
    up: nn.Linear = layer.intermediate.dense
    down: nn.Linear = layer.output.dense
    score = up.weight.norm(dim=1) * down.weight.norm(dim=0)
    kept = torch.sort(torch.topk(score, _keep_count(up.out_features, ratio)).indices).values
    layer.intermediate.dense = slice_layer(up, rows=kept)
    layer.output.dense = slice_layer(down, cols=kept)
    return int(len(kept))


@torch.no_grad()
def _prune_heads(layer: nn.Module, ratio: float) -> int:
    attn, out = layer.attention.self, layer.attention.output
    size = attn.attention_head_size
    n_heads = attn.query.out_features // size
    value = attn.value.weight.view(n_heads, size, -1)
    proj = out.dense.weight.view(out.dense.out_features, n_heads, size)
    score = value.flatten(1).norm(dim=1) * proj.transpose(0, 1).flatten(1).norm(dim=1)
    heads = torch.sort(torch.topk(score, _keep_count(n_heads, ratio)).indices).values
    rows = (heads[:, None] * size + torch.arange(size)).flatten()
    for key in ("query", "key", "value"):
        setattr(attn, key, slice_layer(getattr(attn, key), rows=rows))
    out.dense = slice_layer(out.dense, cols=rows)
    # The forward reshapes by head size (-1 heads); keep the bookkeeping attributes true anyway.
    attn.num_attention_heads = int(len(heads))
    attn.all_head_size = int(len(rows))
    return int(len(heads))

