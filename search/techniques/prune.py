"""Magnitude pruning: unstructured (zero single weights) or structured (remove whole neurons).

Unstructured zeros keep every dense tensor at its full size, so ONNX Runtime's dense kernels
run exactly as fast and the .onnx file is as large: only the compressed size shows the gain.
Structured pruning removes hidden neurons and shrinks the consumer's inputs to match, so the
artifact and the matrix multiplies really get smaller.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import optuna
import torch
from torch import fx, nn

from search.errors import UserError
from search.layers import LayerInfo
from search.params import Dimension, Rule
from search.recipe import TechniqueConfig, register_config
from search.techniques.base import Context, Technique


@register_config
@dataclass(frozen=True)
class PruneConfig(TechniqueConfig):
    type = "prune"
    ratio: float
    structure: str = "unstructured"  # "unstructured" | "structured"

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"prune ratio must satisfy 0 <= ratio < 1, but got ratio={self.ratio}")
        if self.structure not in STRUCTURES:
            raise ValueError(f"prune structure must be one of {STRUCTURES}, but got {self.structure!r}")

    def summary(self) -> str:
        return f"prune {self.structure} {self.ratio:.0%}"


STRUCTURES = ("unstructured", "structured")

RULES = {
    "ratio": Rule("float", minimum=0.0, maximum=1.0, max_exclusive=True,
                  help="fraction of weights (unstructured) or hidden neurons (structured) removed"),
    "structure": Rule("str", default="unstructured", choices=STRUCTURES),
}


def sample(trial: optuna.Trial, dims: dict[str, Dimension], layers: list[LayerInfo]) -> PruneConfig | None:
    structure = dims["structure"].suggest(trial, "prune.structure")
    ratio = round(float(dims["ratio"].suggest(trial, "prune.ratio")), 6)
    return PruneConfig(ratio=ratio, structure=structure) if ratio > 0 else None


def apply(model: nn.Module, config: PruneConfig, ctx: Context | None = None) -> nn.Module:
    model = copy.deepcopy(model)
    if config.structure == "unstructured":
        _prune_unstructured(model, config.ratio)
    else:
        _prune_structured(model, config.ratio)
    return model


def _prunable_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]


@torch.no_grad()
def _prune_unstructured(model: nn.Module, ratio: float) -> None:
    # Global magnitude threshold: layers with many small weights lose more, as in Han et al.
    weights = _prunable_weights(model)
    magnitudes = torch.cat([w.abs().flatten() for w in weights])
    k = int(ratio * magnitudes.numel())
    if k == 0:
        return
    threshold = torch.kthvalue(magnitudes, k).values
    for w in weights:
        w[w.abs() <= threshold] = 0.0


# Modules and functions that act elementwise on features: a neuron removed before them is
# removed after them too, so the producer/consumer pair around them can shrink together.
_ELEMENTWISE_MODULES = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Dropout, nn.Identity, nn.LeakyReLU)
_ELEMENTWISE_FUNCS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.gelu, torch.tanh,
                      torch.sigmoid, torch.nn.functional.silu, torch.nn.functional.dropout}


def linear_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(producer, consumer) Linear pairs joined only through elementwise ops.

    Found by tracing the model with torch.fx, so the dependency is read from the real graph:
    a hidden layer whose output also feeds a residual add or a reshape is not a pair and is
    left alone.
    """
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as exc:  # noqa: BLE001 - fx cannot trace every model; say so plainly
        raise UserError(f"structured pruning needs a model torch.fx can trace: {exc}") from None
    modules = dict(model.named_modules())

    def is_linear(node: fx.Node) -> bool:
        return node.op == "call_module" and isinstance(modules.get(node.target), nn.Linear)

    def is_elementwise(node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(modules.get(node.target), _ELEMENTWISE_MODULES)
        return node.op == "call_function" and node.target in _ELEMENTWISE_FUNCS

    pairs = []
    for node in graph.nodes:
        if not is_linear(node):
            continue
        current = node
        while len(current.users) == 1:
            (user,) = current.users
            if is_linear(user) and user.args[0] is current:
                pairs.append((node.target, user.target))
                break
            if not is_elementwise(user) or user.args[0] is not current:
                break
            current = user
    return pairs


@torch.no_grad()
def _prune_structured(model: nn.Module, ratio: float) -> None:
    pairs = linear_pairs(model)
    if not pairs:
        raise UserError("structured pruning found no Linear -> elementwise -> Linear pair to shrink in this model")
    for producer_name, consumer_name in pairs:
        producer: nn.Linear = model.get_submodule(producer_name)
        consumer: nn.Linear = model.get_submodule(consumer_name)
        n = producer.out_features
        keep = max(1, round(n * (1.0 - ratio)))
        # A neuron matters if it both receives strong weights and feeds strong weights on.
        score = producer.weight.norm(dim=1) * consumer.weight.norm(dim=0)
        kept = torch.sort(torch.topk(score, keep).indices).values
        _set_submodule(model, producer_name, _slice_linear(producer, rows=kept))
        _set_submodule(model, consumer_name, _slice_linear(consumer, cols=kept))


def _slice_linear(layer: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    weight = layer.weight
    if rows is not None:
        weight = weight[rows]
    if cols is not None:
        weight = weight[:, cols]
    bias = layer.bias
    if bias is not None and rows is not None:
        bias = bias[rows]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    new.weight.copy_(weight)
    if bias is not None:
        new.bias.copy_(bias)
    return new


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


TECHNIQUE = Technique(name="prune", stage="torch", rules=RULES, sample=sample, apply=apply, doc=__doc__ or "")
