"""Magnitude pruning: unstructured (zero single weights) or structured (remove neurons / channels).

Unstructured zeros keep every dense tensor at its full size, so ONNX Runtime's dense kernels
run exactly as fast and the .onnx file is as large: only the compressed size shows the gain.
Its threshold is either global (one magnitude cut over all layers, so layers with many small
weights lose more, as in Han et al.) or per layer (every layer loses the same fraction).

Structured pruning removes whole hidden neurons of a Linear, or output channels of a Conv,
and shrinks everything that depends on them: BatchNorm statistics in between, the next
Linear's or Conv's input channels, and, for Conv -> flatten -> Linear, the block of the
Linear's inputs that each channel's feature map occupies. The dependencies are read from the
model's torch.fx graph, so a layer whose output also feeds a residual add or an unknown op is
left alone; the artifact and the multiplies really get smaller.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import optuna
import torch
from torch import fx, nn

from search.errors import UserError
from search.params import Rule
from search.techniques import anchoring as pick
from search.techniques.base import Anchor, CompressionState, SampleContext, Technique, TechniqueConfig, TechniqueSpace
from search.techniques.factorize import LowRank
from search.techniques.registry import register

STRUCTURES = ("unstructured", "structured")
SCOPES = ("global", "layer")


@dataclass(frozen=True)
class PruneConfig(TechniqueConfig):
    type = "prune"
    ratio: float
    structure: str = "unstructured"  # "unstructured" | "structured"
    scope: str = "global"  # unstructured only: one threshold for all layers, or one per layer

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"prune ratio must satisfy 0 <= ratio < 1 (1.0 would remove every weight), "
                             f"but got ratio={self.ratio}")
        if self.structure not in STRUCTURES:
            raise ValueError(f"prune structure must be one of {STRUCTURES}, but got {self.structure!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"prune scope must be one of {SCOPES}, but got {self.scope!r}")

    def summary(self) -> str:
        scope = f" {self.scope}" if self.structure == "unstructured" else ""
        return f"prune {self.structure}{scope} {self.ratio:.0%}"


@register
class Prune(Technique):
    """Magnitude pruning: unstructured zeros, or structured removal of neurons and channels."""

    name = "prune"
    config_type = PruneConfig
    rules = {
        "ratio": Rule("float", minimum=0.0, maximum=1.0, max_exclusive=True,
                      help="fraction of weights (unstructured) or hidden neurons/channels (structured) removed; "
                           "0 skips pruning"),
        "structure": Rule("str", default="unstructured", choices=STRUCTURES,
                          help="unstructured: zero single weights (only the compressed size drops); structured: "
                               "remove neurons and channels (smaller and faster)"),
        "scope": Rule("str", default="global", choices=SCOPES,
                      help="unstructured only: one magnitude threshold over all layers, or the ratio in every layer"),
    }
    conditions = {"scope": "structure is unstructured and ratio > 0"}
    order = 30
    student = True
    severity = {"ratio": "up"}  # a cut that leaves quality to spare is pushed further (search/push.py)

    def sample(self, trial: optuna.Trial, space: TechniqueSpace,
               context: SampleContext | None = None) -> PruneConfig | None:
        dims = space.dims
        structure = dims["structure"].suggest(trial, "prune.structure")
        ratio = float(dims["ratio"].suggest(trial, "prune.ratio"))
        if ratio <= 0:
            return None
        # Conditional: the scope exists only for unstructured pruning.
        scope = dims["scope"].suggest(trial, "prune.scope") if structure == "unstructured" else "global"
        return PruneConfig(ratio=ratio, structure=structure, scope=scope)

    def anchors(self, space: TechniqueSpace) -> list[Anchor]:
        # Structured first: it is the one that makes the model faster, not only smaller once zipped.
        dims = space.dims
        structure = pick.first(dims["structure"], ("structured",))
        ratio = pick.mild(dims["ratio"])
        if ratio is None:
            return []
        params = {"prune.structure": structure, "prune.ratio": ratio}
        if structure == "unstructured":
            params["prune.scope"] = pick.first(dims["scope"], ("global",))
        return [Anchor(f"prune {structure} {ratio:g}", params)]

    def off_params(self, space: TechniqueSpace) -> dict:
        dims = space.dims
        structure = pick.first(dims["structure"], ("structured",))
        ratio = pick.off_or(dims["ratio"], 0.0, pick.lowest)
        return {"prune.structure": structure, "prune.ratio": ratio, "prune.scope": pick.first(dims["scope"])}

    def apply_model(self, state: CompressionState, config: PruneConfig) -> None:
        state.model = prune_model(state.model, config, state.notes)
        if config.structure == "unstructured":
            state.keep_zeros = True  # later fine-tuning keeps these zeros


def prune_model(model: nn.Module, config: PruneConfig, notes: dict[str, dict] | None = None) -> nn.Module:
    """A pruned copy of `model`; `notes` collects what structured pruning kept per layer."""
    model = copy.deepcopy(model)
    if config.structure == "unstructured":
        _prune_unstructured(model, config.ratio, config.scope)
    else:
        _prune_structured(model, config.ratio, notes if notes is not None else {})
    return model


_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _prunable_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, _LAYERS)]


@torch.no_grad()
def _prune_unstructured(model: nn.Module, ratio: float, scope: str = "global") -> None:
    weights = _prunable_weights(model)
    groups = [weights] if scope == "global" else [[w] for w in weights]
    for group in groups:
        magnitudes = torch.cat([w.abs().flatten() for w in group])
        k = int(ratio * magnitudes.numel())
        if k == 0:
            continue
        threshold = torch.kthvalue(magnitudes, k).values
        for w in group:
            w[w.abs() <= threshold] = 0.0


# Modules and functions that act on each feature/channel on its own: a neuron removed before
# them is removed after them too, so the producer/consumer pair around them can shrink together.
ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Dropout, nn.Identity,
                        nn.LeakyReLU, nn.Hardswish)
_NORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d)
_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
                 nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_ELEMENTWISE_FUNCS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.gelu, torch.tanh,
                      torch.sigmoid, torch.nn.functional.silu, torch.nn.functional.dropout}


@dataclass(frozen=True)
class Chain:
    """A producer layer whose output features reach exactly one consumer layer.

    `between` are the (per-feature) modules in between; `functional` says some op in between
    was a function call rather than a module; `flatten` says the consumer is a Linear reading
    the flattened (channels x spatial) output of a Conv producer.
    """

    producer: str
    consumer: str
    between: tuple[str, ...] = ()
    functional: bool = False
    flatten: bool = False


def _is_flatten(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        m = modules.get(node.target)
        return isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    flat_call = (node.op == "call_function" and node.target is torch.flatten) or (
        node.op == "call_method" and node.target == "flatten")
    return flat_call and start == 1 and end == -1


def chains(model: nn.Module) -> list[Chain]:
    """Every producer -> consumer chain whose features can shrink together, from the fx graph.

    Pairs inside a factorized layer (`LowRank`) are left out: their inner dimension is the
    rank the factorization chose, not a set of neurons.
    """
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as exc:  # noqa: BLE001 - fx cannot trace every model; say so plainly
        raise UserError(f"structured pruning needs a model torch.fx can trace: {exc}") from None
    modules = dict(model.named_modules())
    found = []
    for node in graph.nodes:
        producer = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(producer, _LAYERS) or getattr(producer, "groups", 1) != 1:
            continue
        is_conv = not isinstance(producer, nn.Linear)
        between: list[str] = []
        functional = flatten = False
        current = node
        while len(current.users) == 1:
            (user,) = current.users
            if not user.args or user.args[0] is not current:
                break
            module = modules.get(user.target) if user.op == "call_module" else None
            if isinstance(module, _LAYERS):
                if _consumer_fits(producer, module, flatten):
                    found.append(Chain(node.target, user.target, tuple(between), functional, flatten))
                break
            if is_conv and not flatten and _is_flatten(user, modules):
                flatten = True
                if user.op == "call_module":
                    between.append(user.target)
                else:
                    functional = True
            elif isinstance(module, ELEMENTWISE_MODULES):
                between.append(user.target)
            elif isinstance(module, _NORM_MODULES + _POOL_MODULES) and not flatten and (
                    is_conv or isinstance(module, nn.BatchNorm1d)):
                between.append(user.target)
            elif user.op == "call_function" and user.target in _ELEMENTWISE_FUNCS:
                functional = True
            else:
                break
            current = user
    return [c for c in found if not _inside_low_rank(model, c)]


def _consumer_fits(producer: nn.Module, consumer: nn.Module, flatten: bool) -> bool:
    n = producer.out_features if isinstance(producer, nn.Linear) else producer.out_channels
    if isinstance(consumer, nn.Linear):
        if flatten:
            return consumer.in_features % n == 0
        return isinstance(producer, nn.Linear) and consumer.in_features == n
    return (not isinstance(producer, nn.Linear) and not flatten and consumer.groups == 1
            and type(consumer) is type(producer) and consumer.in_channels == n)


def _inside_low_rank(model: nn.Module, chain: Chain) -> bool:
    parent_p, parent_c = chain.producer.rpartition(".")[0], chain.consumer.rpartition(".")[0]
    return parent_p == parent_c and isinstance(model.get_submodule(parent_p) if parent_p else model, LowRank)


@torch.no_grad()
def _prune_structured(model: nn.Module, ratio: float, notes: dict[str, dict]) -> None:
    found = chains(model)
    if not found:
        raise UserError("structured pruning found no layer -> (elementwise/BatchNorm/pool/flatten) -> layer "
                        "chain to shrink in this model")
    for chain in found:
        producer = model.get_submodule(chain.producer)
        consumer = model.get_submodule(chain.consumer)
        n = producer.weight.shape[0]
        keep = max(1, round(n * (1.0 - ratio)))
        # A neuron/channel matters if it both receives strong weights and feeds strong weights on;
        # a BatchNorm in between rescales it by |gamma| / sqrt(var + eps).
        score = producer.weight.flatten(1).norm(dim=1) * _consumer_norms(consumer, n, chain.flatten)
        for name in chain.between:
            m = model.get_submodule(name)
            if isinstance(m, _NORM_MODULES) and m.affine and m.track_running_stats:
                score = score * (m.weight.abs() / (m.running_var + m.eps).sqrt())
        kept = torch.sort(torch.topk(score, keep).indices).values
        model.set_submodule(chain.producer, slice_layer(producer, rows=kept), strict=True)
        for name in chain.between:
            m = model.get_submodule(name)
            if isinstance(m, _NORM_MODULES):
                model.set_submodule(name, _slice_norm(m, kept), strict=True)
        cols = kept
        if chain.flatten:
            # Flattening (C, H, W) puts channel c at inputs c*H*W .. (c+1)*H*W - 1 of the Linear.
            spatial = consumer.in_features // n
            cols = (kept[:, None] * spatial + torch.arange(spatial)[None, :]).flatten()
        model.set_submodule(chain.consumer, slice_layer(consumer, cols=cols), strict=True)
        notes.setdefault(chain.producer, {})["structured_kept"] = f"{keep}/{n}"


def _consumer_norms(consumer: nn.Module, n: int, flatten: bool) -> torch.Tensor:
    weight = consumer.weight
    if flatten:
        return weight.reshape(weight.shape[0], n, -1).transpose(0, 1).flatten(1).norm(dim=1)
    return weight.transpose(0, 1).flatten(1).norm(dim=1)


def slice_layer(layer: nn.Module, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Module:
    """A new Linear/Conv keeping output `rows` and input `cols` of `layer`."""
    weight = layer.weight
    if rows is not None:
        weight = weight[rows]
    if cols is not None:
        weight = weight[:, cols]
    bias = layer.bias
    if bias is not None and rows is not None:
        bias = bias[rows]
    if isinstance(layer, nn.Linear):
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    else:
        new = type(layer)(weight.shape[1], weight.shape[0], layer.kernel_size, stride=layer.stride,
                          padding=layer.padding, dilation=layer.dilation, bias=bias is not None,
                          padding_mode=layer.padding_mode)
    new = new.to(layer.weight)
    new.weight.copy_(weight)
    if bias is not None:
        new.bias.copy_(bias)
    return new


def _slice_norm(norm: nn.Module, kept: torch.Tensor) -> nn.Module:
    new = type(norm)(len(kept), eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
                     track_running_stats=norm.track_running_stats).to(kept.device)
    if norm.affine:
        new.weight.copy_(norm.weight[kept])
        new.bias.copy_(norm.bias[kept])
    if norm.track_running_stats:
        new.running_mean.copy_(norm.running_mean[kept])
        new.running_var.copy_(norm.running_var[kept])
        new.num_batches_tracked.copy_(norm.num_batches_tracked)
    return new.train(norm.training)  # a fresh module is in training mode; keep the model's mode
