"""The ONNX passes of quantization: each layer to fp32, fp16, int8, int4, int2 or binary in one artifact.

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
(see `embeddings.py`): in a transformer the word embeddings are half the parameters.

The backend then records the op each layer's node really ran as (QGemm, MatMulNBits, Gemm...).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from hardware.artifact import Artifact
from search.errors import UserError
from search.techniques import graph as rw
from search.techniques.quantize.config import INT4_BLOCK, SIMULATED_BITS, QuantizeConfig, layers_with
from search.techniques.quantize.embeddings import MIN_ROWS, quantize_embeddings
from search.techniques.quantize.preprocess import infer_types, preprocess

_LEVELS = {"int2": np.array([-1.5, -0.5, 0.5, 1.5], np.float32), "binary": np.array([-1.0, 1.0], np.float32)}
_CODE_BITS = {"int2": 2, "binary": 1}


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

# ORT's quantizer types tensors by ONNX shape inference, which knows no contrib op: in a fused
# transformer (SkipLayerNormalization, Attention, ...) the tensors after them are float.
_FUSED_TYPES = {"DefaultTensorType": onnx.TensorProto.FLOAT}


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


def _int8_ptq(model: onnx.ModelProto, nodes: list[str], config: QuantizeConfig,
              feeds: list[dict[str, np.ndarray]]) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[config.calibration]
    with tempfile.TemporaryDirectory(prefix="compsearch-q8-") as tmp, _quiet_quantizer():
        src, out = Path(tmp) / "in.onnx", Path(tmp) / "int8.onnx"
        onnx.save(infer_types(model), str(src))
        quantize_static(
            str(src), str(out), _Feeds(feeds), quant_format=QuantFormat.QDQ,
            # u8 activations x s8 weights: the pairing ONNX Runtime's x86 integer kernels favour.
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_quantize=nodes, per_channel=config.per_channel, calibrate_method=method,
            reduce_range=config.reduce_range,
            extra_options={**_FUSED_TYPES, "ActivationSymmetric": config.symmetric_activations},
        )
        model = onnx.load(str(out))
    # Each layer must read a quantized activation, else ORT runs it in fp32 with int8-stored weights only.
    producer = {out: n.op_type for n in model.graph.node for out in n.output}
    by_name = {n.name: n for n in model.graph.node}
    fp32 = [name for name in nodes if name in by_name and producer.get(by_name[name].input[0]) != "DequantizeLinear"]
    if fp32:
        raise RuntimeError(f"int8 static: ONNX Runtime's quantizer left the activations of {fp32} in fp32")
    return model


def _int8_dynamic(model: onnx.ModelProto, nodes: list[str], config: QuantizeConfig) -> tuple[onnx.ModelProto,
                                                                                            dict[str, str]]:
    """int8 weights, activations quantized per batch at run time (DynamicQuantizeMatMul). ORT's
    dynamic quantizer takes MatMul, not Gemm: Gemm layers become MatMul + Add first. A fused
    transformer's packed Attention node becomes QAttention (its q/k/v share the int8 weight)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops = {n.name: n.op_type for n in model.graph.node}
    for name in nodes:
        if ops.get(name) == "Gemm":
            rw.gemm_to_matmul(model, name)
    with tempfile.TemporaryDirectory(prefix="compsearch-q8d-") as tmp, _quiet_quantizer():
        src, out = Path(tmp) / "in.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8, per_channel=config.per_channel,
                         reduce_range=config.reduce_range, nodes_to_quantize=nodes,
                         op_types_to_quantize=["MatMul", "Attention"], extra_options=_FUSED_TYPES)
        model = onnx.load(str(out))
    return model, _renamed_nodes(model, nodes, ("MatMulInteger", "QAttention"), "_quant", "int8 dynamic")


def _follow_gemm_split(model: onnx.ModelProto, node_of: Mapping[str, str]) -> dict[str, str]:
    """ORT's dynamic quantizer splits every Gemm of the graph into `<name>_MatMul` + `<name>_Add`, also
    the Gemms it leaves in fp32: layer -> the node that computes it now (int4, fp16 and the reports
    look layers up by node name; they failed on an int8-dynamic graph before this)."""
    names = {n.name for n in model.graph.node}
    return {layer: node if node in names or f"{node}_MatMul" not in names else f"{node}_MatMul"
            for layer, node in node_of.items()}


def _renamed_nodes(model: onnx.ModelProto, nodes: list[str], op_types: tuple[str, ...], suffix: str,
                   what: str) -> dict[str, str]:
    """ORT's quantizers rename the nodes they replace (name + suffix): map each layer's node to its
    new name, and fail loudly if one was skipped rather than report an fp32 layer as quantized."""
    names = {n.name for n in model.graph.node if n.op_type in op_types}
    missing = [name for name in nodes if f"{name}{suffix}" not in names]
    if missing:
        raise RuntimeError(f"{what}: ONNX Runtime's quantizer skipped node(s) {missing}")
    return {name: f"{name}{suffix}" for name in nodes}


def _int4(model: onnx.ModelProto, nodes: list[str], block: int,
          accuracy_level: int = 0) -> tuple[onnx.ModelProto, dict[str, str]]:
    for name in nodes:
        rw.gemm_to_matmul(model, name)
    # nodes_to_include only adds to the MatMul op type the quantizer takes anyway: every other
    # MatMul (an fp32 layer of a transformer) must be excluded by name.
    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in nodes]
    with _quiet_quantizer():
        quantizer = _nbits_module().MatMulNBitsQuantizer(model, bits=4, block_size=block, is_symmetric=False,
                                                         accuracy_level=accuracy_level or None,
                                                         nodes_to_include=nodes, nodes_to_exclude=others)
        quantizer.process()
    model = quantizer.model.model
    return model, _renamed_nodes(model, nodes, ("MatMulNBits",), "_Q4", "int4")


def quantize_onnx(artifact: Artifact, config: QuantizeConfig, calibration_feeds: list[dict[str, np.ndarray]],
                  out_path: Path, learned: dict[str, dict] | None = None,
                  bits: Mapping[str, str] | None = None) -> Artifact:
    """Quantize `artifact` per `config` into `out_path` (which may be its own path).

    `bits`: the bit-width of each layer of the exported model (default: the config's own, for an
    uncompressed model); `learned`: QAT's int8 parameters by layer."""
    bits = config.layer_bits if bits is None else bits
    wanted = [layer for layer, b in bits.items() if b != "fp32"]
    missing = [layer for layer in wanted if layer not in artifact.layer_nodes]
    if missing:
        raise UserError(f"quantize: layers {missing} have no node in the exported ONNX graph")
    node_of = artifact.layer_nodes
    int8 = layers_with(bits, "int8")
    if int8 and learned is None and config.preprocess:
        model, node_of = preprocess(artifact.path, node_of)
    else:
        model = onnx.load(str(artifact.path))
    layer_nodes = dict(node_of)
    if int8 and learned is None and config.activations == "dynamic":
        model, renamed = _int8_dynamic(model, [node_of[layer] for layer in int8], config)
        int8_nodes = {layer: renamed[node_of[layer]] for layer in int8}
        node_of = _follow_gemm_split(model, node_of)  # the other layers' nodes, for the passes below
        layer_nodes = {**node_of, **int8_nodes}
    elif int8 and learned is None:
        model = _int8_ptq(model, [node_of[layer] for layer in int8], config, calibration_feeds)
    else:
        for layer in int8:
            if layer not in (learned or {}):
                raise RuntimeError(f"quantize: QAT learned no scales for int8 layer {layer!r}")
            rw.qdq_linear(model, node_of[layer], **learned[layer])
    int4 = layers_with(bits, "int4")
    if int4:
        model, renamed = _int4(model, [node_of[layer] for layer in int4], config.block_size,
                               config.int4_accuracy_level)
        layer_nodes.update({layer: renamed[node_of[layer]] for layer in int4})
    if config.embedding_bits != "fp32":
        width = {"int8": 8, "int4": 4, "int2": 2}[config.embedding_bits]
        if not quantize_embeddings(model, width, config.block_size):
            raise UserError(f"quantize: embedding_bits is {config.embedding_bits!r}, but the model has no embedding "
                            f"table (a Gather on a constant 2-D table of >= {MIN_ROWS} rows); use fp32")
    for layer in layers_with(bits, "fp16"):
        rw.to_fp16(model, node_of[layer])
    for layer in layers_with(bits, *SIMULATED_BITS):
        _, weight, axis = rw.weighted_node(model, node_of[layer])
        codes, levels, scales = lowbit_codes(weight, bits[layer], axis)
        rw.replace_weight_scaled(model, node_of[layer], codes, levels, scales, _CODE_BITS[bits[layer]], axis)
    onnx.save(model, str(out_path))
    return Artifact(out_path, layer_nodes, dict(artifact.layers), dict(artifact.stats), artifact.program,
                    dict(artifact.graph))

