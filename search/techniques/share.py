"""Weight sharing: k-means clustering of each layer's weights (Han et al., Deep Compression).

Every weight of a layer is replaced by the nearest of k shared values (centroids, initialised
evenly between the layer's min and max), optionally fine-tuned: the gradient of a centroid is
the sum of the gradients of the weights that share it. The ONNX artifact then stores each shared
layer as a k-entry fp32 codebook plus packed indices (1, 2, 4 or 8 bits each by k) decoded
in the graph, so the bytes on disk really drop; ONNX Runtime folds the decoder into a dense
weight at session start, so inference runs the usual fp32 kernel.

With quantization: quantize wins on a layer it gives a bit-width other than fp32 (its kernel
is what runs); sharing still shaped the values it quantizes. Only fp32 layers are stored as
codebook + indices. Weights pruned to exactly zero stay zero (a pinned zero centroid).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import optuna
import torch
from torch import nn

from hardware.artifact import Artifact
from search.errors import SpaceError, UserError
from search.layers import carry_over
from search.params import Categorical, Rule
from search.techniques import anchoring as pick
from search.techniques import graph as rw
from search.techniques.base import (
    Anchor,
    CompressionState,
    FrozenMap,
    SampleContext,
    Technique,
    TechniqueConfig,
    TechniqueSpace,
    layers_setting,
)
from search.techniques.registry import register
from search.techniques.training import fine_tune, task_or_teacher_loss

MAX_K = 256  # indices are stored in at most one byte
KMEANS_ITERS = 30


@dataclass(frozen=True)
class ShareConfig(TechniqueConfig):
    type = "share"
    layer_clusters: FrozenMap[str, int]  # layer of the uncompressed model -> k
    finetune_epochs: int = 0
    lr: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        for layer, k in self.layer_clusters.items():
            if not 2 <= k <= MAX_K:
                raise ValueError(f"share: layer {layer!r} k must satisfy 2 <= k <= {MAX_K}, but got k={k}")
        if self.finetune_epochs < 0:
            raise ValueError(f"share: finetune_epochs must be >= 0, but got {self.finetune_epochs}")

    def summary(self) -> str:
        ks = sorted(set(self.layer_clusters.values()))
        k = f"k={ks[0]}" if len(ks) == 1 else f"k={ks[0]}..{ks[-1]}"
        ft = f" ft {self.finetune_epochs}ep" if self.finetune_epochs else ""
        return f"share {k} ({len(self.layer_clusters)} layers){ft}"


@register
class Share(Technique):
    """k-means weight sharing per layer; fp32 layers are stored as a codebook plus packed indices."""

    name = "share"
    config_type = ShareConfig
    rules = {
        "enabled": Rule("bool", default=True, help="whether sharing runs; k and finetune_epochs only when it does"),
        "k": Rule("int", default=16, minimum=2, maximum=MAX_K, help="clusters (shared values) per layer"),
        "per_layer": Rule("bool", default=False, searchable=False, help="search k for each layer, not one k for all"),
        "finetune_epochs": Rule("int", default=0, minimum=0, maximum=1000, help="epochs fine-tuning the centroids"),
    }
    settings = {"layers": layers_setting("fnmatch pattern(s) of the layers that share weights")}
    conditions = {"k": "enabled is true", "finetune_epochs": "enabled is true"}
    order = 50
    # The codebook encoding runs after quantize: it stores only the layers quantize left fp32.
    graph_order = 70

    def check(self, file: str, key: str, space: TechniqueSpace) -> None:
        """The largest k the space can pick must fit every matched layer."""
        k_dim = space.dims["k"]
        k_max = max(k_dim.choices) if isinstance(k_dim, Categorical) else k_dim.high
        for layer in space.layers:
            if k_max > layer.params:
                raise SpaceError(file, f"{key}.k", f"must be <= the weight count of every shared layer "
                                 f"({layer.name!r} has {layer.params})", k_max)

    def sample(self, trial: optuna.Trial, space: TechniqueSpace,
               context: SampleContext | None = None) -> ShareConfig | None:
        dims = space.dims
        if not dims["enabled"].suggest(trial, "share.enabled"):
            return None
        # Conditional: k and the fine-tuning epochs exist only when sharing is on.
        if dims["per_layer"].suggest(trial, "share.per_layer"):
            clusters = {layer.name: int(dims["k"].suggest(trial, f"share.k.{layer.name}")) for layer in space.layers}
        else:
            k = int(dims["k"].suggest(trial, "share.k"))
            clusters = {layer.name: k for layer in space.layers}
        epochs = int(dims["finetune_epochs"].suggest(trial, "share.finetune_epochs"))
        return ShareConfig(layer_clusters=clusters, finetune_epochs=epochs)

    def anchors(self, space: TechniqueSpace) -> list[Anchor]:
        # The mildest sharing keeps the most values: the largest k, with the fewest fine-tuning epochs.
        dims = space.dims
        if not pick.can_be(dims["enabled"], True) or not space.layers:
            return []
        k = int(pick.highest(dims["k"]))
        params: dict = {"share.enabled": True, "share.finetune_epochs": pick.lowest(dims["finetune_epochs"])}
        if pick.first(dims["per_layer"]):
            params.update({f"share.k.{layer.name}": k for layer in space.layers})
        else:
            params["share.k"] = k
        return [Anchor(f"share k={k}", params)]

    def off_params(self, space: TechniqueSpace) -> dict:
        if pick.can_be(space.dims["enabled"], False):
            return {"share.enabled": False}
        anchors = self.anchors(space)
        return anchors[0].params if anchors else {}

    def apply_model(self, state: CompressionState, config: ShareConfig) -> None:
        model = copy.deepcopy(state.model)
        shared: dict[str, _Shared] = {}
        for layer, k in carry_over(config.layer_clusters, model).items():  # a factorized layer shares inside it
            weight = model.get_submodule(layer).weight
            if k > weight.numel():
                raise UserError(f"share: k={k} is larger than the {weight.numel()} weights of layer {layer!r}; "
                                f"k must be <= the weight count")
            shared[layer] = _Shared(weight, k, state.keep_zeros)
            state.note(layer, clusters=k)
            # The codebook rewrite replaces one node's weight: a fused graph must not pack this layer.
            state.own_node[layer] = "weight sharing stores its codebook on the layer's own node"
        if config.finetune_epochs:
            # Train only the centroids, through `weight = centroids[index]` (torch.func).
            def forward(inputs: tuple) -> torch.Tensor:
                weights = {f"{layer}.weight": s.weight() for layer, s in shared.items()}
                return torch.func.functional_call(model, weights, inputs)

            fine_tune(state, model, [s.centroids for s in shared.values()], epochs=config.finetune_epochs,
                      lr=config.lr, loss=task_or_teacher_loss(state), forward=forward)
        with torch.no_grad():
            for layer, s in shared.items():
                model.get_submodule(layer).weight.copy_(s.weight())
        state.model = model.eval()

    def apply_graph(self, state: CompressionState, config: ShareConfig) -> None:
        assert state.artifact is not None
        shared = carry_over(config.layer_clusters, state.model)
        # Quantize wins on a layer it gave other bits: only fp32 layers store codebook + indices.
        stored = {layer: k for layer, k in shared.items() if state.bits_of(layer) == "fp32"}
        encode(state.artifact, stored)
        for layer in shared:
            state.note(layer, codebook=layer in stored)


@torch.no_grad()
def kmeans_1d(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids, index of each value): Lloyd's algorithm on scalars from a linear init."""
    centroids = torch.linspace(float(values.min()), float(values.max()), k)
    idx = torch.zeros(values.numel(), dtype=torch.long)
    for _ in range(KMEANS_ITERS):
        centroids, _ = torch.sort(centroids)
        idx = torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)
        sums = torch.zeros(k).index_add_(0, idx, values)
        counts = torch.zeros(k).index_add_(0, idx, torch.ones_like(values))
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)  # an empty cluster stays put
    return centroids, idx


class _Shared:
    """One layer's codebook: trainable centroids, fixed assignment, and a pinned zero."""

    def __init__(self, weight: torch.Tensor, k: int, keep_zeros: bool):
        flat = weight.detach().flatten()
        self.shape = weight.shape
        self.zero = (flat == 0) if keep_zeros and bool((flat == 0).any()) else None
        values = flat if self.zero is None else flat[~self.zero]
        n_free = k - 1 if self.zero is not None else k
        if n_free < 1 or values.numel() == 0:
            centroids, idx = torch.zeros(1), torch.zeros(values.numel(), dtype=torch.long)
        else:
            centroids, idx = kmeans_1d(values, min(n_free, values.numel()))
        self.centroids = nn.Parameter(centroids)
        self.idx = idx

    def weight(self) -> torch.Tensor:
        if self.zero is None:
            return self.centroids[self.idx].view(self.shape)
        flat = torch.zeros(self.zero.numel(), dtype=self.centroids.dtype)
        flat = flat.masked_scatter(~self.zero, self.centroids[self.idx])
        return flat.view(self.shape)


def _index_bits(k: int) -> int:
    return next(b for b in (1, 2, 4, 8) if k <= 1 << b)


def encode(artifact: Artifact, layers: Mapping[str, int]) -> None:
    """Store each listed layer's weight as codebook + packed indices, rewriting the artifact's file."""
    model = onnx.load(str(artifact.path))
    for layer, k in layers.items():
        node_name = artifact.layer_nodes.get(layer)
        if node_name is None:
            raise UserError(f"share: layer {layer!r} has no node in the exported ONNX graph")
        _, weight, _ = rw.weighted_node(model, node_name)
        table, codes = np.unique(weight, return_inverse=True)
        if len(table) > k:
            raise RuntimeError(f"share: layer {layer!r} has {len(table)} distinct weights after clustering to k={k}")
        rw.replace_weight_codebook(model, node_name, codes.reshape(weight.shape), table, _index_bits(len(table)))
    onnx.save(model, str(artifact.path))
