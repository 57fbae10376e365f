"""The quantize technique: a searched bit-width per layer, PTQ or QAT, written into the ONNX artifact.

Model stage: the bits sampled for the uncompressed model's layers move onto the compressed
model's layers (the state's `layer_bits`, which describe and sharing read), and under QAT
the model fine-tunes through fake quantization. ONNX stage: the passes in `passes.py`
rewrite the exported graph, with QAT's learned scales where it ran.
"""

from __future__ import annotations

import optuna

from hardware.errors import SpaceError, allowed_list
from search.layers import LayerInfo, carry_over, layer_patterns, match_layers
from search.params import Categorical, Range, Rule
from search.techniques.base import (
    Anchor,
    CompressionState,
    FrozenMap,
    SampleContext,
    Technique,
    TechniqueSpace,
    layers_setting,
)
from search.techniques.quantize import qat
from search.techniques.quantize.anchors import quantize_anchors, quantize_off
from search.techniques.quantize.assign import ASSIGN, sample_by_sensitivity
from search.techniques.quantize.config import (
    ACTIVATIONS,
    BITS,
    CALIBRATIONS,
    EMBEDDING_BITS,
    INT4_ACCURACY_LEVELS,
    INT4_BLOCK,
    MODES,
    SIMULATED_BITS,
    QuantizeConfig,
)
from search.techniques.quantize.passes import quantize_onnx
from search.techniques.registry import register


@register
class Quantize(Technique):
    """A bit-width per layer (fp32, fp16, int8, int4, int2, binary) and for the embedding tables."""

    name = "quantize"
    config_type = QuantizeConfig
    rules = {
        "bits": Rule("str", default=list(BITS), choices=BITS, help="bit-widths each layer may take"),
        "calibration": Rule("str", default="minmax", choices=CALIBRATIONS, help="int8 PTQ range method"),
        "per_channel": Rule("bool", default=True, help="int8 PTQ weight scales per output channel"),
        "mode": Rule("str", default="ptq", choices=MODES, help="post-training or quantization-aware training"),
        "qat_epochs": Rule("int", default=2, minimum=1, maximum=1000,
                           help="fine-tuning epochs through fake quantization"),
        "activations": Rule("str", default="static", choices=ACTIVATIONS,
                            help="int8 PTQ activation ranges: calibrated once (static) or per batch at run time "
                                 "(dynamic)"),
        "embedding_bits": Rule("str", default="fp32", choices=EMBEDDING_BITS,
                               help="bit-width of the embedding tables (Gather on a constant 2-D table)"),
        "block_size": Rule("int", default=INT4_BLOCK, minimum=16, maximum=1024,
                           help="values per scale for int4 (MatMulNBits) and quantized embeddings: a power of 2"),
        "reduce_range": Rule("bool", default=False, help="int8 (PTQ and QAT): weights in 7 bits (ORT's reduce_range; "
                                                         "avoids saturation on x86 CPUs without VNNI)"),
        "preprocess": Rule("bool", default=False, help="int8 PTQ: ORT's quantization pre-processing (symbolic "
                                                       "shape inference + graph optimisation) before quantizing"),
        "symmetric_activations": Rule("bool", default=False,
                                      help="static int8: symmetric activation ranges (zero point 0)"),
        "int4_accuracy_level": Rule("int", default=0, choices=INT4_ACCURACY_LEVELS,
                                    help="int4 MatMulNBits compute type: 0 unset, 1 fp32, 2 fp16, 3 bf16, "
                                         "4 int8 (fastest on CPU)"),
    }
    settings = {
        "layers": layers_setting("fnmatch pattern(s) of layers whose bit-width is searched; others stay fp32"),
        "groups": Rule("mapping", optional=True, searchable=False,
                       items=Rule("patterns", searchable=False, parse=layer_patterns),
                       text="a mapping of group names to layer-name patterns, e.g. {attention: '*.attention.*'}",
                       help="{name: pattern(s)}: the layers of a group share one searched bit-width"),
        "assign": Rule("str", default="per_layer", choices=ASSIGN, searchable=False,
                       help="per_layer: one searched bit-width per layer (or group); sensitivity: the sampler picks "
                            "a floor bit-width and how many of the most sensitive layers stay above it, and the "
                            "study's per-layer sensitivity table decides which"),
    }
    conditions = {"qat_epochs": "mode is qat", "calibration": "mode is ptq, activations static and a layer is int8",
                  "per_channel": "mode is ptq and a layer is int8", "activations": "mode is ptq and a layer is int8",
                  "mode": "a layer or the embeddings are not fp32",
                  "block_size": "a layer is int4 or the embeddings are not fp32",
                  "reduce_range": "a layer is int8", "preprocess": "mode is ptq and a layer is int8",
                  "symmetric_activations": "mode is ptq, activations static and a layer is int8",
                  "int4_accuracy_level": "a layer is int4"}
    order = 60
    graph_order = 60
    anchor_priority = 0  # int8 everywhere: seconds to build, and the one-liner every front must beat

    def check(self, file: str, key: str, space: TechniqueSpace) -> None:
        """Block sizes are powers of 2; groups match searched layers; int4 (MatMulNBits) and QAT take Linear
        layers only."""
        dims, layers = space.dims, list(space.layers)
        blocks = dims["block_size"]
        if isinstance(blocks, Range):
            raise SpaceError(file, f"{key}.block_size", "takes a value or a list of powers of 2, not a range",
                             f"{blocks.low}..{blocks.high}")
        for value in blocks.choices:
            if int(value) & (int(value) - 1):
                raise SpaceError(file, f"{key}.block_size", "must be a power of 2 (16, 32, 64, 128, ...)", value)
        if space.settings.get("assign") == "sensitivity" and space.settings.get("groups"):
            raise SpaceError(file, f"{key}.groups", "applies to 'assign: per_layer' only (in 'assign: sensitivity' "
                             "the sensitivity ranking places the layers): drop one of them",
                             list(space.settings["groups"]))
        for group, patterns in (space.settings.get("groups") or {}).items():
            if not match_layers(layers, patterns):
                raise SpaceError(file, f"{key}.groups.{group}", "matches none of the searched layers; they are: "
                                 + allowed_list(layer.name for layer in layers), list(patterns))
        convs = [layer.name for layer in layers if layer.kind != "linear"]
        if not convs:
            return
        for name, dim, value in (("bits", dims["bits"], "int4"), ("mode", dims["mode"], "qat")):
            if isinstance(dim, Categorical) and value in dim.choices:
                raise SpaceError(file, f"{key}.{name}", f"{value!r} handles Linear layers only, and layer "
                                 f"{convs[0]!r} is a {dict((la.name, la.kind) for la in layers)[convs[0]]}: drop "
                                 f"{value!r} or narrow {key}.layers to Linear layers", list(dim.choices))

    def describe(self, space: TechniqueSpace) -> list[str]:
        if space.settings.get("assign") == "sensitivity":
            listed = tuple(space.dims["bits"].choices)
            return [f"quantize assign sensitivity: samples quantize.floor (one of {allowed_list(listed)}) and, per "
                    f"bit-width above it, quantize.keep.<bits> (0..{len(space.layers)} layers), placed by the "
                    "study's sensitivity ranking"]
        return [f"quantize group {group!r} shares one value ({len(members)}): {', '.join(members)}"
                for group, patterns in (space.settings.get("groups") or {}).items()
                for members in [[layer.name for layer in match_layers(list(space.layers), patterns)]]]

    def sample(self, trial: optuna.Trial, space: TechniqueSpace,
               context: SampleContext | None = None) -> QuantizeConfig | None:
        dims = space.dims
        groups = space.settings.get("groups") or {}
        chosen: dict[str, str] = {}  # group -> its bit-width, sampled once

        def bits_for(layer: LayerInfo) -> str:
            # A layer in a group takes the group's bit-width (first matching group wins); others their own.
            group = next((g for g, patterns in groups.items() if match_layers([layer], patterns)), None)
            if group is None:
                return dims["bits"].suggest(trial, f"quantize.bits.{layer.name}")
            if group not in chosen:
                chosen[group] = dims["bits"].suggest(trial, f"quantize.bits.group.{group}")
            return chosen[group]

        if space.settings.get("assign") == "sensitivity":
            layer_bits = sample_by_sensitivity(trial, space, context)
        else:
            layer_bits = {layer.name: bits_for(layer) for layer in space.layers}
        embedding_bits = dims["embedding_bits"].suggest(trial, "quantize.embedding_bits")
        if embedding_bits == "fp32" and all(bits == "fp32" for bits in layer_bits.values()):
            return None
        mode = dims["mode"].suggest(trial, "quantize.mode")
        # Conditional: qat_epochs exists only under QAT; calibration settings only for int8 PTQ.
        qat_epochs = int(dims["qat_epochs"].suggest(trial, "quantize.qat_epochs")) if mode == "qat" else 0
        calibration, per_channel, activations = "minmax", True, "static"
        knobs: dict = {}
        if "int8" in layer_bits.values():  # PTQ and QAT alike: the weights' range the kernel takes
            knobs["reduce_range"] = bool(dims["reduce_range"].suggest(trial, "quantize.reduce_range"))
        if mode == "ptq" and "int8" in layer_bits.values():
            activations = dims["activations"].suggest(trial, "quantize.activations")
            per_channel = dims["per_channel"].suggest(trial, "quantize.per_channel")
            knobs["preprocess"] = bool(dims["preprocess"].suggest(trial, "quantize.preprocess"))
            if activations == "static":  # a dynamic range needs no calibration method
                calibration = dims["calibration"].suggest(trial, "quantize.calibration")
                knobs["symmetric_activations"] = bool(dims["symmetric_activations"].suggest(
                    trial, "quantize.symmetric_activations"))
        if "int4" in layer_bits.values():
            level = dims["int4_accuracy_level"].suggest(trial, "quantize.int4_accuracy_level")
            knobs["int4_accuracy_level"] = int(level)
        block_size = INT4_BLOCK
        if embedding_bits != "fp32" or "int4" in layer_bits.values():
            block_size = int(dims["block_size"].suggest(trial, "quantize.block_size"))
        return QuantizeConfig(layer_bits=layer_bits, calibration=calibration, per_channel=per_channel, mode=mode,
                              qat_epochs=qat_epochs, activations=activations, embedding_bits=embedding_bits,
                              block_size=block_size, **knobs)

    def anchors(self, space: TechniqueSpace) -> list[Anchor]:
        return quantize_anchors(space)  # every searched layer at each listed bit-width (anchors.py)

    def off_params(self, space: TechniqueSpace) -> dict:
        return quantize_off(space)

    def apply_model(self, state: CompressionState, config: QuantizeConfig) -> None:
        # Bits were sampled for the uncompressed model's layers; earlier steps may have split or merged them.
        state.layer_bits = FrozenMap(carry_over(config.layer_bits, state.model))
        for layer, bits in state.layer_bits.items():
            # int2/binary: stored low-bit, computed by an fp32 kernel (no ONNX Runtime kernel exists).
            state.note(layer, simulated=bits in SIMULATED_BITS)
        # After transformer fusion, ORT quantizes a packed q/k/v Attention weight only as int8 with dynamic
        # activations (QAttention); other bit-widths keep q/k/v apart (search/fusion/stage.py).
        dynamic = config.mode == "ptq" and config.activations == "dynamic"
        state.packable_bits = frozenset({"fp32", "int8"} if dynamic else {"fp32"})
        if config.embedding_bits != "fp32":
            state.keep_embedding_gathers = (f"embedding_bits {config.embedding_bits}: GatherBlockQuantized "
                                            "replaces the Gather, which EmbedLayerNormalization would absorb")
        if config.mode == "qat":
            # QAT fine-tunes through fake quantization; the ONNX stage writes exactly what it learned.
            state.model, state.learned = qat.finetune(state, config, state.layer_bits).export_ready()

    def apply_graph(self, state: CompressionState, config: QuantizeConfig) -> None:
        assert state.artifact is not None and state.task is not None
        state.artifact = quantize_onnx(state.artifact, config, state.task.calibration_feeds(), state.artifact.path,
                                       state.learned or None, state.layer_bits)
