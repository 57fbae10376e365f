"""The quantize config: a bit-width per layer (one frozen mapping), and how the int8 ones are made."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from search.techniques.base import FrozenMap, TechniqueConfig

BITS = ("fp32", "fp16", "int8", "int4", "int2", "binary")
SIMULATED_BITS = ("int2", "binary")  # no runtime kernel: stored small, computed in fp32
CALIBRATIONS = ("minmax", "entropy", "percentile")
MODES = ("ptq", "qat")
ACTIVATIONS = ("static", "dynamic")
EMBEDDING_BITS = ("fp32", "int8", "int4", "int2")
INT4_ACCURACY_LEVELS = (0, 1, 2, 3, 4)  # MatMulNBits compute type: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8
INT4_BLOCK = 32  # default block along K (MatMulNBits) / along the row (embeddings); small layers need small blocks


@dataclass(frozen=True)
class QuantizeConfig(TechniqueConfig):
    type = "quantize"
    layer_bits: FrozenMap[str, str]  # layer of the uncompressed model -> bits
    calibration: str = "minmax"
    per_channel: bool = True
    mode: str = "ptq"
    qat_epochs: int = 0
    activations: str = "static"
    embedding_bits: str = "fp32"
    block_size: int = INT4_BLOCK
    # ONNX Runtime's quantizer options (issue 12): defaults are what the quantizer does by default.
    reduce_range: bool = False  # int8 weights in 7 bits (avoids int16 overflow on CPUs without VNNI)
    preprocess: bool = False  # ORT's quantization pre-processing (shape inference + graph optimisation) first
    symmetric_activations: bool = False  # static int8: activation zero point fixed at 0
    int4_accuracy_level: int = 0  # MatMulNBits compute type (4: int8 dot products on CPU)

    def __post_init__(self) -> None:
        super().__post_init__()
        for layer, bits in self.layer_bits.items():
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
        if self.int4_accuracy_level not in INT4_ACCURACY_LEVELS:
            raise ValueError(f"quantize: int4_accuracy_level must be one of {INT4_ACCURACY_LEVELS}, "
                             f"but got {self.int4_accuracy_level}")
        if self.mode == "qat" and self.qat_epochs < 1:
            raise ValueError(f"quantize: mode 'qat' needs qat_epochs >= 1, but got qat_epochs={self.qat_epochs}")

    def bits_of(self, layer: str) -> str:
        return self.layer_bits.get(layer, "fp32")

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for bits in self.layer_bits.values():
            counts[bits] = counts.get(bits, 0) + 1
        per = "/".join(self.layer_bits.values()) if len(self.layer_bits) <= 4 else ", ".join(
            f"{n} {b}" for b, n in sorted(counts.items()))
        if self.mode == "qat":
            how = f" qat {self.qat_epochs}ep"
        elif "int8" in counts and self.activations == "dynamic":
            how = " int8 dynamic"
        elif "int8" in counts:
            how = f" {self.calibration}{' per-channel' if self.per_channel else ''}"
        else:
            how = ""
        knobs = [name for name, on in (("reduce-range", self.reduce_range), ("preprocessed", self.preprocess),
                                       ("symmetric-act", self.symmetric_activations)) if on]
        if knobs and "int8" in counts and self.mode == "ptq":
            how += " " + " ".join(knobs)
        if self.int4_accuracy_level and "int4" in counts:
            how += f" acc{self.int4_accuracy_level}"
        if self.embedding_bits != "fp32":
            how += f" + embeddings {self.embedding_bits}"
        if "int4" in counts or self.embedding_bits != "fp32":
            how += f" b{self.block_size}"
        return f"quantize [{per}]{how}"


def layers_with(bits: Mapping[str, str], *wanted: str) -> list[str]:
    """The layers of `bits` (layer -> bit-width) that take one of `wanted`, in order."""
    return [layer for layer, b in bits.items() if b in wanted]
