"""The environment recorded beside every figure: CPU, cores, library versions."""

from __future__ import annotations

from functools import lru_cache
from importlib import metadata

from hardware.agent import base_environment, cpu_flags, cpu_model, int8_features

__all__ = ["cpu_model", "environment", "int8_features", "int8_saturates", "version"]


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


INT8_DOT_PRODUCT = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def int8_saturates() -> bool:
    """Whether this host's ONNX Runtime int8 kernels add u8 x s8 products in saturating int16: x86 with
    AVX2 but no VNNI dot product (avx512_vnni, avx_vnni) or AMX. There full-range int8 weights can
    overflow and 7-bit weights (reduce_range) are the more accurate; with VNNI, ARM or unknown, False."""
    flags = cpu_flags() or frozenset()
    return "avx2" in flags and not flags & INT8_DOT_PRODUCT


@lru_cache(maxsize=1)
def environment() -> dict[str, str]:
    ort_dist = next((d for d in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino")
                     if version(d) != "not installed"), "onnxruntime")
    return {**base_environment(), "onnxruntime": version(ort_dist), "torch": version("torch"),
            "onnx": version("onnx")}
