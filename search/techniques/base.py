"""The technique contract: one abstract base class, one config base, one compression state.

A technique is one module that defines a frozen config (a `TechniqueConfig` with a JSON type
tag) and a `Technique` subclass registered for it (`@register`, search/techniques/registry.py).
The registry is the only list of techniques and holds their order; the stage runner
(search/compress.py) loops over it and names none of them.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from search.layers import LayerInfo, layer_patterns
from search.params import Dimension, Rule

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from hardware.artifact import Artifact
    from search.tasks.base import Task

K = TypeVar("K")
V = TypeVar("V")


class FrozenMap(Mapping[K, V], Generic[K, V]):
    """An immutable, ordered mapping: how configs hold per-layer values (layer -> bits, layer -> k).

    Built once from a mapping or from (key, value) pairs; JSON writes it as an object."""

    __slots__ = ("_data",)

    def __init__(self, items: Mapping[K, V] | Any = ()):
        self._data: dict[K, V] = dict(items)

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(tuple(self._data.items()))

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"


@dataclass(frozen=True)
class TechniqueConfig:
    """Base of every technique config: frozen, JSON round-trippable, tagged with `type`.

    Fields annotated `FrozenMap[...]` accept a mapping or (key, value) pairs and are frozen here,
    once; a subclass's `__post_init__` checks its invariants after calling this one."""

    type: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if str(f.type).startswith("FrozenMap") and not isinstance(getattr(self, f.name), FrozenMap):
                object.__setattr__(self, f.name, FrozenMap(getattr(self, f.name)))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        for f in dataclasses.fields(self):
            out[f.name] = _jsonable(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TechniqueConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names - {"type"}
        if unknown:
            raise ValueError(f"{cls.type}: unknown fields {sorted(unknown)}; allowed: {sorted(names)}")
        return cls(**{k: _freeze(v) for k, v in data.items() if k != "type"})

    def summary(self) -> str:
        return self.type


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return FrozenMap((str(k), _freeze(v)) for k, v in value.items())
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def layers_setting(help: str) -> Rule:
    """The `layers:` setting (fnmatch patterns over the discovered layer names, default all)."""
    return Rule("patterns", default="*", searchable=False, parse=layer_patterns, help=help,
                text="a layer-name pattern or a list of them (fnmatch, e.g. 'net.*')")


@dataclass(frozen=True)
class TechniqueSpace:
    """One technique's part of a validated space: what `sample`, `anchors` and `check` read.

    `dims` are its searched keys (one Dimension per rule), `layers` the model's layers its
    `layers` setting matched (all discovered layers when it has no such setting), `settings`
    its other validated, non-searched keys (layer patterns, groups)."""

    name: str
    dims: dict[str, Dimension]
    layers: tuple[LayerInfo, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SampleContext:
    """What the study knows beyond the space when a trial is sampled (none of it Optuna's).

    `sensitivity`: bit-width -> {layer: how much quality that layer alone loses at that bit-width},
    measured once per study (search/sensitivity.py); None until it exists. Quantize's
    `assign: sensitivity` mode orders its layers by it."""

    sensitivity: Mapping[str, Mapping[str, float]] | None = None

    def ranking(self, bits: str, layers: list[str]) -> list[str]:
        """`layers`, the most sensitive at `bits` first (model order breaks ties; unmeasured layers last)."""
        table = (self.sensitivity or {}).get(bits, {})
        order = {name: i for i, name in enumerate(layers)}
        return sorted(layers, key=lambda name: (-table.get(name, float("-inf")), order[name]))


@dataclass(frozen=True)
class Anchor:
    """One standard setting of a technique, as the Optuna params its `sample` reads.

    Params, not a config: the study enqueues them, so the sampler learns from the anchor like
    from any sampled trial. `label` reads "<technique> <setting>" ("quantize int8 dynamic
    per-channel") and marks the trial in progress lines, `show`, MLflow and the report."""

    label: str
    params: dict[str, Any]


@dataclass
class CompressionState:
    """Everything one candidate's compression works on, handed to every stage hook.

    Techniques replace `model` with a new module and never change a module in place: the
    teacher, and a cached student, must stay as they are. The stage runner records whether
    any step replaced the model (`changed`), exports it into `artifact` between the stages,
    and writes `notes` (what each technique did to each layer) into the artifact's records."""

    model: nn.Module
    task: Task | None = None
    teacher: nn.Module | None = None  # the uncompressed model (default: `model` as given)
    seed: int = 0
    keep_zeros: bool = False  # unstructured pruning ran: fine-tuning keeps its zeros at zero
    notes: dict[str, dict] = field(default_factory=dict)  # layer -> what techniques did to it
    layer_bits: Mapping[str, str] = field(default_factory=dict)  # bit-width per layer of `model` (default fp32)
    learned: dict[str, dict] = field(default_factory=dict)  # QAT: int8 parameters per layer for the ONNX stage
    artifact: Artifact | None = None  # the ONNX artifact, once exported
    changed: bool = False  # some model-stage step replaced `model`
    # Bit-widths a fused node packing several layers (q/k/v in one Attention weight) can take; graph
    # fusion keeps those layers apart when theirs differ or fall outside (search/fusion/stage.py).
    packable_bits: frozenset[str] = frozenset({"fp32"})
    own_node: dict[str, str] = field(default_factory=dict)  # layer -> why it must keep a node of its own
    # Why the embedding lookups must stay Gather nodes (not fused into EmbedLayerNormalization), or "".
    keep_embedding_gathers: str = ""

    def __post_init__(self) -> None:
        if self.teacher is None:
            self.teacher = self.model

    def note(self, layer: str, **values: Any) -> None:
        """Record what a technique did to `layer` (merged into the layer's entry in layers.json)."""
        self.notes.setdefault(layer, {}).update(values)

    def bits_of(self, layer: str) -> str:
        return self.layer_bits.get(layer, "fp32")

    @property
    def layer_nodes(self) -> dict[str, str]:
        """Layer -> the ONNX node computing it (empty before export)."""
        return self.artifact.layer_nodes if self.artifact is not None else {}


class Technique(ABC):
    """A compression technique: its config, its searchable settings, how it samples, what it does.

    Contract (one module per technique; `@register` adds it to the registry):

    - `name`: its key under `techniques:` in a space file; `config_type`: its frozen
      `TechniqueConfig` subclass, whose `type` tag equals `name`. A recipe holds one config per
      technique it uses; a technique left out of a recipe does not run.
    - `rules`: the searchable keys (a value, a list or a range each, see `search.params`);
      `settings`: the keys that are not searched (`layers` patterns, `groups`), with real
      schemas; `conditions`: key -> when it is sampled, as `validate` prints it. Every rule
      carries a `help`, which `compsearch validate --explain` prints.
    - `order`: its place in the model stage (lower runs first); `graph_order`: its place in
      the ONNX stage (default: `order`). `student`: its model-stage output depends only on the
      recipe's steps up to it and is a trained fp32 model, so it may be cached by the hash of
      that prefix; student techniques run before every other (the registry checks this).
    - `check(file, key, space)`: space-time checks beyond the per-key rules (a fixed rank
      larger than a matched layer); raise `SpaceError` naming `key`.
    - `sample(trial, space, context=None)`: the config for one Optuna trial, or None to leave
      the technique out. Sample only the parameters that matter for the values already drawn.
      `context` (a `SampleContext`) carries what the study measured beyond the space (the
      per-layer sensitivity table); a technique that needs none ignores it.
    - `anchors(space)`: the standard settings of this technique alone that the space allows, as
      `Anchor`s (a label and the Optuna params `sample` would read for them); a study runs them
      right after the baseline (search/guide.py). Default none.
      `anchor_priority` orders techniques' anchors (quantization's are cheap and strong: 0).
      `recovers`: this technique trains a cut student back (distillation). When the space has one,
      the anchors of the other student techniques (the cuts: pruning, factorization) run with its
      first anchor: a cut model is never used without recovery training, and an undistilled cut
      only tells the study what it already knows (it loses too much, and is rejected early).
      `training_length`: the setting of a recovering technique that trains longer (distillation's
      `epochs`): a promising cut student gets one follow-up trained twice as long (search/reuse.py).
      `severity`: a cut's searchable keys that cut harder, and which way (`"up"`: a larger value
      removes more, e.g. a pruning ratio; `"down"`: a smaller non-zero value, e.g. layers kept; 0 is
      off for both): a cut anchor that leaves quality to spare is pushed further (search/push.py).
    - `off_params(space)`: the params under which `sample` leaves the technique out (or, when the
      space cannot leave it out, takes its mildest setting): what another technique's anchor
      runs beside. Default none (a technique whose sample draws nothing).
    - `apply_model(state, config)`: the PyTorch stage, on `state.model` (replace it, never
      change it in place); `apply_graph(state, config)`: the ONNX stage, on `state.artifact`
      (rewrite its file, update its layer -> node map). Both default to doing nothing.
    - `describe(space)`: extra lines for `compsearch validate` (default none).

    A technique never sees Optuna beyond `sample`, never sees MLflow, and learns what other
    techniques did only through the state (`layer_bits`, `notes`, `keep_zeros`).
    """

    name: ClassVar[str]
    config_type: ClassVar[type[TechniqueConfig]]
    rules: ClassVar[dict[str, Rule]] = {}
    settings: ClassVar[dict[str, Rule]] = {}
    conditions: ClassVar[dict[str, str]] = {}
    order: ClassVar[int]
    graph_order: ClassVar[int | None] = None
    student: ClassVar[bool] = False
    anchor_priority: ClassVar[int] = 1  # whose anchors a study runs first (lower first)
    recovers: ClassVar[bool] = False  # trains a cut student back: the cuts' anchors run with it
    training_length: ClassVar[str | None] = None  # a recovering technique's setting that trains longer
    severity: ClassVar[dict[str, str]] = {}  # a cut's keys that cut harder: "up" or "down" (0 = off)

    def check(self, file: str, key: str, space: TechniqueSpace) -> None:  # noqa: B027 - optional hook
        """Raise SpaceError if the space asks for something this technique cannot do."""

    @abstractmethod
    def sample(self, trial: optuna.Trial, space: TechniqueSpace,
               context: SampleContext | None = None) -> TechniqueConfig | None:
        """This technique's config for one trial, or None to leave it out."""

    def anchors(self, space: TechniqueSpace) -> list[Anchor]:
        """The standard settings of this technique alone that the space allows, most useful first."""
        return []

    def off_params(self, space: TechniqueSpace) -> dict[str, Any]:
        """Optuna params under which `sample` returns None (else its mildest setting)."""
        return {}

    def apply_model(self, state: CompressionState, config: TechniqueConfig) -> None:  # noqa: B027 - optional hook
        """The PyTorch stage: replace `state.model`, record notes."""

    def apply_graph(self, state: CompressionState, config: TechniqueConfig) -> None:  # noqa: B027 - optional hook
        """The ONNX stage: rewrite `state.artifact`."""

    def describe(self, space: TechniqueSpace) -> list[str]:
        """Extra lines `compsearch validate` prints for this technique's part of the space."""
        return []
