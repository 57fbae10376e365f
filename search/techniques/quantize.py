"""Per-layer quantization with ONNX Runtime's own quantizer.

Each discovered layer (matching the space's `layers` patterns) gets a searched bit-width.
int8 layers are quantized together in one static QDQ pass, calibrated on the task's
calibration split; fp32 layers are excluded from it by node name. ONNX Runtime then fuses
Q/DQ pairs around a layer into an integer kernel (QGemm, QLinearMatMul, QLinearConv) where
it has one; the backend records which kernel each layer really ran on.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna

from search.errors import UserError
from search.export import Artifact
from search.layers import LayerInfo
from search.params import Dimension, Rule
from search.recipe import TechniqueConfig, register_config
from search.techniques.base import Technique

BITS = ("fp32", "int8")
CALIBRATIONS = ("minmax", "entropy", "percentile")


@register_config
@dataclass(frozen=True)
class QuantizeConfig(TechniqueConfig):
    type = "quantize"
    layer_bits: tuple[tuple[str, str], ...]
    calibration: str = "minmax"
    per_channel: bool = True

    def __post_init__(self) -> None:
        for layer, bits in self.layer_bits:
            if bits not in BITS:
                raise ValueError(f"quantize: layer {layer!r} bits must be one of {BITS}, but got {bits!r}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"quantize: calibration must be one of {CALIBRATIONS}, but got {self.calibration!r}")

    def bits_of(self, layer: str) -> str:
        return dict(self.layer_bits).get(layer, "fp32")

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for _, bits in self.layer_bits:
            counts[bits] = counts.get(bits, 0) + 1
        per = "/".join(bits for _, bits in self.layer_bits) if len(self.layer_bits) <= 4 else ", ".join(
            f"{n} {b}" for b, n in sorted(counts.items()))
        return f"quantize [{per}] {self.calibration}{' per-channel' if self.per_channel else ''}"


RULES = {
    "bits": Rule("str", default=list(BITS), choices=BITS, help="bit-widths each layer may take"),
    "calibration": Rule("str", default="minmax", choices=CALIBRATIONS),
    "per_channel": Rule("bool", default=True),
}
SETTINGS = {"layers": Rule("str", default="*", searchable=False,
                           help="fnmatch pattern(s) of layers whose bit-width is searched; others stay fp32")}


def sample(trial: optuna.Trial, dims: dict[str, Dimension], layers: list[LayerInfo]) -> QuantizeConfig | None:
    layer_bits = tuple((layer.name, dims["bits"].suggest(trial, f"quantize.bits.{layer.name}")) for layer in layers)
    if all(bits == "fp32" for _, bits in layer_bits):
        return None
    # Conditional: calibration settings exist only when some layer is integer.
    calibration = dims["calibration"].suggest(trial, "quantize.calibration")
    per_channel = dims["per_channel"].suggest(trial, "quantize.per_channel")
    return QuantizeConfig(layer_bits=layer_bits, calibration=calibration, per_channel=per_channel)


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
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(old)


def apply(artifact: Artifact, config: QuantizeConfig, calibration_feeds: list[dict[str, np.ndarray]],
          out_path: Path) -> Artifact:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    int8_layers = [layer for layer, bits in config.layer_bits if bits == "int8"]
    missing = [layer for layer in int8_layers if layer not in artifact.layer_nodes]
    if missing:
        raise UserError(f"quantize: layers {missing} have no node in the exported ONNX graph")
    if not int8_layers:
        shutil.copyfile(artifact.path, out_path)
        return Artifact(out_path, dict(artifact.layer_nodes), dict(artifact.layers))
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[config.calibration]
    with _quiet_quantizer():
        quantize_static(
            str(artifact.path), str(out_path), _Feeds(calibration_feeds),
            quant_format=QuantFormat.QDQ,
            # u8 activations x s8 weights: the pairing ONNX Runtime's x86 integer kernels favour.
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_quantize=[artifact.layer_nodes[layer] for layer in int8_layers],
            per_channel=config.per_channel, calibrate_method=method,
        )
    return Artifact(out_path, dict(artifact.layer_nodes), dict(artifact.layers))


TECHNIQUE = Technique(name="quantize", stage="onnx", rules=RULES, settings=SETTINGS, sample=sample,
                      apply=apply, doc=__doc__ or "")
