"""Low-rank factorization: replace a Linear or Conv layer by two thinner ones via truncated SVD.

Linear W (out x in) ~ B @ A with A = sqrt(S_r) Vh_r (r x in, no bias) and B = U_r sqrt(S_r)
(out x r, the original bias). A Conv's weight is read as the matrix (out x in*k) and split
the same way into a k-sized Conv in -> r (no bias) followed by a 1x1 Conv r -> out, so
stride, padding and dilation stay on the first half. The rank is chosen per layer by one of:
  - `rank_ratio`: r = round(ratio x full rank), at least 1;
  - `energy`: the smallest r whose singular values keep that fraction of sum(S^2);
  - `rank`: a fixed r (a rank above a layer's full rank is an error, not a silent clamp).
A layer where r (in + out) >= in x out would not get smaller and is left as it is; the
reason is recorded in the layer notes (layers.json). Grouped convolutions are skipped too.

The two halves live in a `LowRank` container at the layer's old name, so layer `net.0`
becomes `net.0.0` and `net.0.1`: layer discovery still finds both, and the pipeline gives
both halves the bit-width the search sampled for `net.0`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import optuna
import torch
from torch import nn

from search.errors import SpaceError, UserError, allowed_list
from search.params import Categorical, Dimension, Range, Rule
from search.techniques import anchoring as pick
from search.techniques.base import (
    Anchor,
    CompressionState,
    SampleContext,
    Technique,
    TechniqueConfig,
    TechniqueSpace,
    layers_setting,
)
from search.techniques.registry import register

CRITERIA = ("rank_ratio", "energy", "rank")
_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)


class LowRank(nn.Sequential):
    """A factorized layer: `0` projects to the rank (no bias), `1` maps back out (with the bias)."""

    def __init__(self, first: nn.Module, second: nn.Module, rank: int):
        super().__init__(first, second)
        self.rank = rank


@dataclass(frozen=True)
class FactorizeConfig(TechniqueConfig):
    type = "factorize"
    layers: tuple[str, ...]
    rank_ratio: float | None = None
    energy: float | None = None
    rank: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        given = [c for c in CRITERIA if getattr(self, c) is not None]
        if len(given) != 1:
            raise ValueError(f"factorize needs exactly one of {CRITERIA}, but got {given or 'none'}")
        if self.rank_ratio is not None and not 0.0 < self.rank_ratio <= 1.0:
            raise ValueError(f"factorize rank_ratio must satisfy 0 < rank_ratio <= 1, but got {self.rank_ratio}")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise ValueError(f"factorize energy must satisfy 0 < energy <= 1, but got {self.energy}")
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"factorize rank must be >= 1, but got {self.rank}")

    @property
    def criterion(self) -> str:
        return next(c for c in CRITERIA if getattr(self, c) is not None)

    def summary(self) -> str:
        value = getattr(self, self.criterion)
        return f"factorize {self.criterion}={value:g} ({len(self.layers)} layers)"


def _unused(dim: Dimension) -> bool:
    return isinstance(dim, Categorical) and dim.choices == (0,)


def _highest(dim: Dimension) -> float:
    return dim.high if isinstance(dim, Range) else max(dim.choices)


def full_rank(shape: tuple[int, ...]) -> int:
    """Full rank of a weight read as the matrix (out x everything else)."""
    inner = 1
    for d in shape[1:]:
        inner *= d
    return min(shape[0], inner)


def _choose_rank(config: FactorizeConfig, singular: torch.Tensor, full: int, name: str, shape: tuple) -> int:
    if config.rank is not None:
        if config.rank > full:
            raise UserError(f"factorize: rank {config.rank} is larger than layer {name!r}'s full rank {full} "
                            f"(weight {'x'.join(map(str, shape))}); choose rank <= {full}")
        return config.rank
    if config.rank_ratio is not None:
        return min(full, max(1, round(config.rank_ratio * full)))
    energy = torch.cumsum(singular**2, 0) / (singular**2).sum()
    return min(full, int((energy < config.energy - 1e-9).sum()) + 1)


def _halves(layer: nn.Module, a: torch.Tensor, b: torch.Tensor, r: int) -> tuple[nn.Module, nn.Module]:
    """Build the two modules holding A (r x in*k) and B (out x r)."""
    has_bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        first = nn.Linear(layer.in_features, r, bias=False)
        second = nn.Linear(r, layer.out_features, bias=has_bias)
    else:
        conv = type(layer)
        first = conv(layer.in_channels, r, layer.kernel_size, stride=layer.stride, padding=layer.padding,
                     dilation=layer.dilation, bias=False, padding_mode=layer.padding_mode)
        second = conv(r, layer.out_channels, 1, bias=has_bias)
    first = first.to(layer.weight)
    second = second.to(layer.weight)
    first.weight.copy_(a.reshape(first.weight.shape))
    second.weight.copy_(b.reshape(second.weight.shape))
    if has_bias:
        second.bias.copy_(layer.bias)
    return first, second


@register
class Factorize(Technique):
    """Truncated SVD: a layer becomes two thinner ones."""

    name = "factorize"
    config_type = FactorizeConfig
    rules = {
        "rank_ratio": Rule("float", default=0.0, minimum=0.0, maximum=1.0,
                           help="rank kept as a fraction of each layer's full rank; 0 = not used / skip"),
        "energy": Rule("float", default=0.0, minimum=0.0, maximum=1.0,
                       help="smallest rank keeping this fraction of sum(S^2); 0 = not used / skip"),
        "rank": Rule("int", default=0, minimum=0, maximum=1_000_000,
                     help="a fixed rank for every matched layer; 0 = not used / skip"),
    }
    settings = {"layers": layers_setting("fnmatch pattern(s) of the layers that may be factorized")}
    conditions = {c: f"factorize.by is {c}; 0 = not used" for c in CRITERIA}
    order = 20
    student = True
    severity = {"rank_ratio": "down", "energy": "down", "rank": "down"}  # less rank kept cuts more

    def check(self, file: str, key: str, space: TechniqueSpace) -> None:
        """Some criterion is given, and a fixed rank fits every matched layer."""
        dims = space.dims
        if all(_unused(dims[c]) for c in CRITERIA):
            raise SpaceError(file, key, f"needs one of {allowed_list(CRITERIA)} (a value or a search range)",
                             None, show_given=False)
        if not _unused(dims["rank"]):
            top = int(_highest(dims["rank"]))
            for layer in space.layers:
                if top > full_rank(layer.weight_shape):
                    raise SpaceError(
                        file, f"{key}.rank",
                        f"must not exceed the full rank of any matched layer; layer {layer.name!r} (weight "
                        f"{'x'.join(map(str, layer.weight_shape))}) has full rank {full_rank(layer.weight_shape)}; "
                        f"lower the rank or narrow techniques.factorize.layers", top)

    def sample(self, trial: optuna.Trial, space: TechniqueSpace,
               context: SampleContext | None = None) -> FactorizeConfig | None:
        enabled = [c for c in CRITERIA if not _unused(space.dims[c])]
        if not enabled or not space.layers:
            return None
        # Conditional: with several criteria the trial first picks one, then samples only its value.
        by = enabled[0] if len(enabled) == 1 else trial.suggest_categorical("factorize.by", enabled)
        value = space.dims[by].suggest(trial, f"factorize.{by}")
        if value == 0:
            return None  # 0 inside a range means "no factorization" for this trial
        value = int(value) if by == "rank" else float(value)
        return FactorizeConfig(layers=tuple(layer.name for layer in space.layers), **{by: value})

    def anchors(self, space: TechniqueSpace) -> list[Anchor]:
        # The mildest factorization keeps the most: the highest ratio, energy or rank the space lists.
        enabled = [c for c in CRITERIA if not _unused(space.dims[c])]
        if not enabled or not space.layers:
            return []
        by = enabled[0]
        value = pick.highest(space.dims[by])
        if value == 0:
            return []
        params = {f"factorize.{by}": value, **({"factorize.by": by} if len(enabled) > 1 else {})}
        return [Anchor(f"factorize {by} {value:g}", params)]

    def off_params(self, space: TechniqueSpace) -> dict:
        enabled = [c for c in CRITERIA if not _unused(space.dims[c])]
        for by in enabled:
            if pick.can_be(space.dims[by], 0):
                return {f"factorize.{by}": 0, **({"factorize.by": by} if len(enabled) > 1 else {})}
        anchors = self.anchors(space)  # no criterion can be 0: the mildest factorization
        return anchors[0].params if anchors else {}

    def apply_model(self, state: CompressionState, config: FactorizeConfig) -> None:
        state.model = factorize_model(state.model, config, state.notes, state.teacher)


@torch.no_grad()
def factorize_model(model: nn.Module, config: FactorizeConfig, notes: dict[str, dict] | None = None,
                    teacher: nn.Module | None = None) -> nn.Module:
    """A copy of `model` with the configured layers factorized; `notes` collects rank and energy per layer.

    `teacher`: the uncompressed model, to tell a layer an earlier step removed from a wrong name."""
    model = copy.deepcopy(model)
    notes = notes if notes is not None else {}
    modules = dict(model.named_modules())
    for name in config.layers:
        layer = modules.get(name)
        if layer is None and teacher is not None and name in dict(teacher.named_modules()):
            # The space found this layer in the model; an earlier step (transformer_prune's
            # keep_layers) removed it from this candidate: nothing to factorize.
            notes[name] = {"factorize": "skipped: removed by an earlier step"}
            continue
        if not isinstance(layer, _LAYER_TYPES):
            raise UserError(f"factorize: {name!r} is not a Linear/Conv layer of this model; its layers: "
                            f"{allowed_list(n for n, m in modules.items() if isinstance(m, _LAYER_TYPES))}")
        shape = tuple(layer.weight.shape)
        full = full_rank(shape)
        if not isinstance(layer, nn.Linear) and layer.groups != 1:
            notes[name] = {"factorize": f"skipped: grouped conv (groups={layer.groups})"}
            continue
        matrix = layer.weight.reshape(shape[0], -1).float()
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        r = _choose_rank(config, s, full, name, shape)
        out_dim, in_dim = matrix.shape
        if r * (out_dim + in_dim) >= out_dim * in_dim:
            notes[name] = {"factorize": f"skipped: rank {r} of {full} saves no parameters "
                                        f"({r * (out_dim + in_dim)} >= {out_dim * in_dim})"}
            continue
        root = s[:r].sqrt()
        first, second = _halves(layer, root[:, None] * vh[:r], u[:, :r] * root[None, :], r)
        model.set_submodule(name, LowRank(first, second, r), strict=True)
        kept = float((s[:r] ** 2).sum() / (s**2).sum())
        notes[name] = {"factorize": "factorized", "rank": r, "full_rank": full, "energy_kept": round(kept, 4)}
    return model
