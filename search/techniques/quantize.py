"""Per-layer quantization of the exported ONNX graph: fp32, fp16, int8, int4, int2 or binary.

Each discovered layer (matching the space's `layers` patterns) gets a searched bit-width, and
one artifact holds them all. Passes run in this order, each on the nodes it owns by name:

  int8    static QDQ from ONNX Runtime's quantizer, calibrated on the task's calibration split
          (PTQ), or explicit QDQ with the scales quantization-aware training learned (QAT).
          ORT fuses it into QGemm / QLinearConv.
          With `activations: dynamic` the activation range is taken per batch at run time
          instead (ORT's quantize_dynamic, DynamicQuantizeMatMul): no calibration, and the
          usual choice for transformers, whose activations have outliers a fixed range clips.
  int4    weight-only: the Gemm becomes MatMul + Add, then MatMulNBits (4-bit blocks of
          `block_size` along K, asymmetric, ORT's own quantizer). Linear layers only.
  fp16    the node computes in fp16 with fp16 weights (Casts at its edges). ORT's CPU provider
          has no fp16 Gemm/MatMul: it inserts casts and runs fp32, so the layer shows as a
          fallback there; the stored bytes halve on every provider.
  int2,   no ONNX Runtime kernel exists: weights are stored as packed 2-bit codes / 1-bit signs
  binary  plus a per-output-channel scale and decoded to fp32 in the graph. Quality is measured
          on ORT's outputs; latency is that of an fp32 kernel, so these layers are marked
          simulated (`lowbit_simulated_layers`), never reported as low-bit kernel latency.

Embedding tables (a Gather on a constant 2-D table: word and position embeddings) take
`embedding_bits` (int8, int4, int2) through GatherBlockQuantized, blocks of `block_size`
(see `search.onnx_gather`): in a transformer the word embeddings are half the parameters.

The backend then records the op each layer's node really ran as (QGemm, MatMulNBits, Gemm...).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import optuna

from search import onnx_rewrite as rw
from search.errors import SpaceError, UserError
from search.export import Artifact
from search.layers import LayerInfo, match_layers
from search.onnx_gather import MIN_ROWS, quantize_embeddings
from search.params import Categorical, Dimension, Range, Rule
from search.recipe import TechniqueConfig, register_config
from search.techniques.base import Technique

BITS = ("fp32", "fp16", "int8", "int4", "int2", "binary")
SIMULATED_BITS = ("int2", "binary")  # no runtime kernel: stored small, computed in fp32
CALIBRATIONS = ("minmax", "entropy", "percentile")
MODES = ("ptq", "qat")
ACTIVATIONS = ("static", "dynamic")
EMBEDDING_BITS = ("fp32", "int8", "int4", "int2")
INT4_BLOCK = 32  # default block along K (MatMulNBits) / along the row (embeddings); small layers need small blocks
_LEVELS = {"int2": np.array([-1.5, -0.5, 0.5, 1.5], np.float32), "binary": np.array([-1.0, 1.0], np.float32)}
_CODE_BITS = {"int2": 2, "binary": 1}


@register_config
@dataclass(frozen=True)
class QuantizeConfig(TechniqueConfig):
    type = "quantize"
    layer_bits: tuple[tuple[str, str], ...]
    calibration: str = "minmax"
    per_channel: bool = True
    mode: str = "ptq"
    qat_epochs: int = 0
    activations: str = "static"
    embedding_bits: str = "fp32"
    block_size: int = INT4_BLOCK

    def __post_init__(self) -> None:
        for layer, bits in self.layer_bits:
            if bits not in BITS:
                raise ValueError(f"quantize: layer {layer!r} bits must be one of {BITS}, but got {bits!r}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"quantize: calibration must be one of {CALIBRATIONS}, but got {self.calibration!r}")
        if self.mode not in MODES:
            raise ValueError(f"quantize: mode must be one of {MODES}, but got {self.mode!r}")
        if self.activations not in ACTIVATIONS:
            raise ValueError(f"quantize: activations must be one of {ACTIVATIONS}, but got {self.activations!r}")
        if self.embedding_bits not in EMBEDDING_BITS:
            raise ValueError(f"quantize: embedding_bits must be one of {EMBEDDING_BITS}, "
                             f"but got {self.embedding_bits!r}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ValueError(f"quantize: block_size must be a power of 2 >= 16, but got {self.block_size}")
        if self.mode == "qat" and self.qat_epochs < 1:
            raise ValueError(f"quantize: mode 'qat' needs qat_epochs >= 1, but got qat_epochs={self.qat_epochs}")

    def bits_of(self, layer: str) -> str:
        return dict(self.layer_bits).get(layer, "fp32")

    def layers_with(self, *bits: str) -> list[str]:
        return [layer for layer, b in self.layer_bits if b in bits]

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for _, bits in self.layer_bits:
            counts[bits] = counts.get(bits, 0) + 1
        per = "/".join(bits for _, bits in self.layer_bits) if len(self.layer_bits) <= 4 else ", ".join(
            f"{n} {b}" for b, n in sorted(counts.items()))
        if self.mode == "qat":
            how = f" qat {self.qat_epochs}ep"
        elif "int8" in counts and self.activations == "dynamic":
            how = " int8 dynamic"
        elif "int8" in counts:
            how = f" {self.calibration}{' per-channel' if self.per_channel else ''}"
        else:
            how = ""
        if self.embedding_bits != "fp32":
            how += f" + embeddings {self.embedding_bits}"
        if "int4" in counts or self.embedding_bits != "fp32":
            how += f" b{self.block_size}"
        return f"quantize [{per}]{how}"


RULES = {
    "bits": Rule("str", default=list(BITS), choices=BITS, help="bit-widths each layer may take"),
    "calibration": Rule("str", default="minmax", choices=CALIBRATIONS, help="int8 PTQ range method"),
    "per_channel": Rule("bool", default=True, help="int8 PTQ weight scales per output channel"),
    "mode": Rule("str", default="ptq", choices=MODES, help="post-training or quantization-aware training"),
    "qat_epochs": Rule("int", default=2, minimum=1, maximum=1000, help="fine-tuning epochs; only when mode is qat"),
    "activations": Rule("str", default="static", choices=ACTIVATIONS,
                        help="int8 PTQ activation ranges: calibrated once (static) or per batch at run time (dynamic)"),
    "embedding_bits": Rule("str", default="fp32", choices=EMBEDDING_BITS,
                           help="bit-width of the embedding tables (Gather on a constant 2-D table)"),
    "block_size": Rule("int", default=INT4_BLOCK, minimum=16, maximum=1024,
                       help="values per scale for int4 (MatMulNBits) and quantized embeddings: a power of 2"),
}
SETTINGS = {"layers": Rule("str", default="*", searchable=False,
                           help="fnmatch pattern(s) of layers whose bit-width is searched; others stay fp32"),
            "groups": Rule("str", default=None, searchable=False,
                           help="{name: pattern(s)}: the layers of a group share one searched bit-width")}


def sample(trial: optuna.Trial, dims: dict[str, Dimension], layers: list[LayerInfo],
           groups: tuple[tuple[str, tuple[str, ...]], ...] = ()) -> QuantizeConfig | None:
    chosen: dict[str, str] = {}  # group -> its bit-width, sampled once

    def bits_for(layer: LayerInfo) -> str:
        # A layer in a group takes the group's bit-width (first matching group wins); others their own.
        group = next((g for g, patterns in groups if match_layers([layer], patterns)), None)
        if group is None:
            return dims["bits"].suggest(trial, f"quantize.bits.{layer.name}")
        if group not in chosen:
            chosen[group] = dims["bits"].suggest(trial, f"quantize.bits.group.{group}")
        return chosen[group]

    layer_bits = tuple((layer.name, bits_for(layer)) for layer in layers)
    embedding_bits = dims["embedding_bits"].suggest(trial, "quantize.embedding_bits")
    if embedding_bits == "fp32" and all(bits == "fp32" for _, bits in layer_bits):
        return None
    mode = dims["mode"].suggest(trial, "quantize.mode")
    # Conditional: qat_epochs exists only under QAT; calibration settings only for int8 PTQ.
    qat_epochs = int(dims["qat_epochs"].suggest(trial, "quantize.qat_epochs")) if mode == "qat" else 0
    calibration, per_channel, activations = "minmax", True, "static"
    if mode == "ptq" and any(bits == "int8" for _, bits in layer_bits):
        activations = dims["activations"].suggest(trial, "quantize.activations")
        per_channel = dims["per_channel"].suggest(trial, "quantize.per_channel")
        if activations == "static":  # a dynamic range needs no calibration method
            calibration = dims["calibration"].suggest(trial, "quantize.calibration")
    block_size = INT4_BLOCK
    if embedding_bits != "fp32" or any(bits == "int4" for _, bits in layer_bits):
        block_size = int(dims["block_size"].suggest(trial, "quantize.block_size"))
    return QuantizeConfig(layer_bits=layer_bits, calibration=calibration, per_channel=per_channel, mode=mode,
                          qat_epochs=qat_epochs, activations=activations, embedding_bits=embedding_bits,
                          block_size=block_size)


def check(file: str, key: str, dims: dict[str, Dimension], layers: list[LayerInfo]) -> None:
    """Space-time checks: block sizes are powers of 2; int4 (MatMulNBits) and QAT take Linear layers only."""
    blocks = dims["block_size"]
    if isinstance(blocks, Range):
        raise SpaceError(file, f"{key}.block_size", "takes a value or a list of powers of 2, not a range",
                         f"{blocks.low}..{blocks.high}")
    for value in blocks.choices:
        if int(value) & (int(value) - 1):
            raise SpaceError(file, f"{key}.block_size", "must be a power of 2 (16, 32, 64, 128, ...)", value)
    convs = [layer.name for layer in layers if layer.kind != "linear"]
    if not convs:
        return
    bits, mode = dims["bits"], dims["mode"]
    for name, dim, value in (("bits", bits, "int4"), ("mode", mode, "qat")):
        if isinstance(dim, Categorical) and value in dim.choices:
            raise SpaceError(file, f"{key}.{name}", f"{value!r} handles Linear layers only, and layer {convs[0]!r} "
                             f"is a {dict((la.name, la.kind) for la in layers)[convs[0]]}: drop {value!r} or narrow "
                             f"{key}.layers to Linear layers", list(dim.choices))


# --- numeric helpers shared with QAT (the forward pass must see exactly what is deployed) ---

def lowbit_codes(weight: np.ndarray, bits: str, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, levels, scales) with weight ~= levels[codes] * scale[channel] along `axis`."""
    levels = _LEVELS[bits]
    w = np.moveaxis(weight.astype(np.float32), axis, 0).reshape(weight.shape[axis], -1)
    scale = np.maximum(np.abs(w).mean(axis=1), 1e-8)  # the L2-optimal scale for signs (XNOR-Net)
    codes = (w >= 0).astype(np.uint8)
    for _ in range(6 if bits == "int2" else 1):
        if bits == "int2":
            codes = np.clip(np.round(w / scale[:, None] + 1.5), 0, 3).astype(np.uint8)
        # Least-squares scale for the chosen codes (Lloyd step on the scale).
        unit = levels[codes]
        scale = np.maximum((w * unit).sum(axis=1) / np.maximum((unit * unit).sum(axis=1), 1e-12), 1e-8)
    shape = (weight.shape[axis], *np.delete(weight.shape, axis))
    return np.moveaxis(codes.reshape(shape), 0, axis), levels, scale.astype(np.float32)


def lowbit_dequant(weight: np.ndarray, bits: str, axis: int = 0) -> np.ndarray:
    codes, levels, scales = lowbit_codes(weight, bits, axis)
    shape = [1] * weight.ndim
    shape[axis] = -1
    return levels[codes] * scales.reshape(shape)


def _nbits_module():
    """ORT's MatMulNBits quantizer module. Importing it calls logging.basicConfig(level=INFO),
    which would flood every later log line of the process (the exporter's INFO chatter): undo it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    import onnxruntime.quantization.matmul_nbits_quantizer as nbits

    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    return nbits


def _int4_quantizer(block: int):
    from onnxruntime.quantization import QuantFormat

    nbits = _nbits_module()
    return nbits.DefaultWeightOnlyQuantizer(nbits.DefaultWeightOnlyQuantConfig(
        block_size=block, is_symmetric=False, quant_format=QuantFormat.QOperator, bits=4))


def int4_dequant(weight_kn: np.ndarray, block: int = INT4_BLOCK) -> np.ndarray:
    """The fp32 weight [K, N] that MatMulNBits computes with, from ORT's own block quantizer."""
    k, n = weight_kn.shape
    packed, scales, zero_points = _int4_quantizer(block).qbits_block_quant(np.ascontiguousarray(weight_kn, np.float32))
    blocks = packed.shape[1]
    q = rw.unpack_codes(packed.reshape(-1), 4, packed.size * 2).reshape(n, blocks, block).astype(np.float32)
    zp = rw.unpack_codes(zero_points.reshape(-1), 4, zero_points.size * 2).reshape(n, -1)[:, :blocks]
    w = (q - zp[:, :, None].astype(np.float32)) * scales[:, :, None]
    return w.reshape(n, blocks * block)[:, :k].T


# --- the ONNX passes ---

class _Feeds:
    """CalibrationDataReader over a list of input dicts (ONNX Runtime asks for them one by one)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._iter = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)


@contextlib.contextmanager
def _quiet_quantizer():
    # The quantizer logs a pre-processing hint on the root logger for every call, and the
    # histogram calibrators print to stdout.
    loggers = [logging.getLogger(), logging.getLogger("onnx_ir")]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, old, strict=True):
            lg.setLevel(level)


def _int8_ptq(src: Path, nodes: list[str], config: QuantizeConfig,
              feeds: list[dict[str, np.ndarray]]) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[config.calibration]
    with tempfile.TemporaryDirectory(prefix="compsearch-q8-") as tmp, _quiet_quantizer():
        out = Path(tmp) / "int8.onnx"
        quantize_static(
            str(src), str(out), _Feeds(feeds), quant_format=QuantFormat.QDQ,
            # u8 activations x s8 weights: the pairing ONNX Runtime's x86 integer kernels favour.
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_quantize=nodes, per_channel=config.per_channel, calibrate_method=method,
        )
        return onnx.load(str(out))


def _int8_dynamic(model: onnx.ModelProto, nodes: list[str], config: QuantizeConfig) -> tuple[onnx.ModelProto,
                                                                                            dict[str, str]]:
    """int8 weights, activations quantized per batch at run time (DynamicQuantizeMatMul). ORT's
    dynamic quantizer takes MatMul, not Gemm: Gemm layers become MatMul + Add first."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for name in nodes:
        rw.gemm_to_matmul(model, name)
    with tempfile.TemporaryDirectory(prefix="compsearch-q8d-") as tmp, _quiet_quantizer():
        src, out = Path(tmp) / "in.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8, per_channel=config.per_channel,
                         nodes_to_quantize=nodes, op_types_to_quantize=["MatMul"])
        model = onnx.load(str(out))
    return model, _renamed_nodes(model, nodes, "MatMulInteger", "_quant", "int8 dynamic")


def _renamed_nodes(model: onnx.ModelProto, nodes: list[str], op_type: str, suffix: str, what: str) -> dict[str, str]:
    """ORT's quantizers rename the nodes they replace (name + suffix): map each layer's node to its
    new name, and fail loudly if one was skipped rather than report an fp32 layer as quantized."""
    names = {n.name for n in model.graph.node if n.op_type == op_type}
    missing = [name for name in nodes if f"{name}{suffix}" not in names]
    if missing:
        raise RuntimeError(f"{what}: ONNX Runtime's quantizer skipped node(s) {missing}")
    return {name: f"{name}{suffix}" for name in nodes}


def _int4(model: onnx.ModelProto, nodes: list[str], block: int) -> tuple[onnx.ModelProto, dict[str, str]]:
    for name in nodes:
        rw.gemm_to_matmul(model, name)
    # nodes_to_include only adds to the MatMul op type the quantizer takes anyway: every other
    # MatMul (an fp32 layer of a transformer) must be excluded by name.
    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in nodes]
    with _quiet_quantizer():
        quantizer = _nbits_module().MatMulNBitsQuantizer(model, bits=4, block_size=block, is_symmetric=False,
                                                         nodes_to_include=nodes, nodes_to_exclude=others)
        quantizer.process()
    model = quantizer.model.model
    return model, _renamed_nodes(model, nodes, "MatMulNBits", "_Q4", "int4")


def apply(artifact: Artifact, config: QuantizeConfig, calibration_feeds: list[dict[str, np.ndarray]],
          out_path: Path, learned: dict[str, dict] | None = None) -> Artifact:
    """Quantize `artifact` per `config` into `out_path`. `learned` holds QAT's int8 scales by layer."""
    wanted = [layer for layer, bits in config.layer_bits if bits != "fp32"]
    missing = [layer for layer in wanted if layer not in artifact.layer_nodes]
    if missing:
        raise UserError(f"quantize: layers {missing} have no node in the exported ONNX graph")
    node_of = artifact.layer_nodes
    layer_nodes = dict(node_of)
    int8 = config.layers_with("int8")
    if int8 and learned is None and config.activations == "dynamic":
        model, renamed = _int8_dynamic(onnx.load(str(artifact.path)), [node_of[layer] for layer in int8], config)
        layer_nodes.update({layer: renamed[node_of[layer]] for layer in int8})
    elif int8 and learned is None:
        model = _int8_ptq(artifact.path, [node_of[layer] for layer in int8], config, calibration_feeds)
    else:
        model = onnx.load(str(artifact.path))
        for layer in int8:
            if layer not in (learned or {}):
                raise RuntimeError(f"quantize: QAT learned no scales for int8 layer {layer!r}")
            rw.qdq_linear(model, node_of[layer], **learned[layer])
    int4 = config.layers_with("int4")
    if int4:
        model, renamed = _int4(model, [node_of[layer] for layer in int4], config.block_size)
        layer_nodes.update({layer: renamed[node_of[layer]] for layer in int4})
    if config.embedding_bits != "fp32":
        bits = {"int8": 8, "int4": 4, "int2": 2}[config.embedding_bits]
        if not quantize_embeddings(model, bits, config.block_size):
            raise UserError(f"quantize: embedding_bits is {config.embedding_bits!r}, but the model has no embedding "
                            f"table (a Gather on a constant 2-D table of >= {MIN_ROWS} rows); use fp32")
    for layer in config.layers_with("fp16"):
        rw.to_fp16(model, node_of[layer])
    for layer in config.layers_with(*SIMULATED_BITS):
        bits = config.bits_of(layer)
        _, weight, axis = rw.weighted_node(model, node_of[layer])
        codes, levels, scales = lowbit_codes(weight, bits, axis)
        rw.replace_weight_scaled(model, node_of[layer], codes, levels, scales, _CODE_BITS[bits], axis)
    onnx.save(model, str(out_path))
    return Artifact(out_path, layer_nodes, dict(artifact.layers))


CONDITIONS = {"qat_epochs": "mode is qat", "calibration": "mode is ptq, activations static and a layer is int8",
              "per_channel": "mode is ptq and a layer is int8", "activations": "mode is ptq and a layer is int8",
              "mode": "a layer or the embeddings are not fp32",
              "block_size": "a layer is int4 or the embeddings are not fp32"}
TECHNIQUE = Technique(name="quantize", stage="onnx", rules=RULES, settings=SETTINGS, sample=sample,
                      apply=apply, doc=__doc__ or "", check=check, conditions=CONDITIONS)
