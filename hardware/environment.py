"""The environment recorded beside every figure: CPU, cores, library versions."""

from __future__ import annotations

from functools import lru_cache
from importlib import metadata
from pathlib import Path

from hardware.agent import base_environment, cpu_model

__all__ = ["cpu_model", "environment", "int8_features", "int8_saturates", "version"]


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str] | None:
    """The CPU flags of /proc/cpuinfo; None where there is none (not Linux, no flags line)."""
    try:
        line = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return None
    return frozenset(line.split(":", 1)[-1].split())


INT8_DOT_PRODUCT = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def int8_features() -> str:
    """The CPU flags that decide int8 speed (VNNI dot products, AMX tiles), recorded with every benchmark."""
    flags = _cpu_flags()
    if flags is None:
        return "unknown"
    found = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return ", ".join(found) or "none of avx2/avx512/vnni/amx"


def int8_saturates() -> bool:
    """Whether this host's ONNX Runtime int8 kernels add u8 x s8 products in saturating int16: x86 with
    AVX2 but no VNNI dot product (avx512_vnni, avx_vnni) or AMX. There full-range int8 weights can
    overflow and 7-bit weights (reduce_range) are the more accurate; with VNNI, ARM or unknown, False."""
    flags = _cpu_flags() or frozenset()
    return "avx2" in flags and not flags & INT8_DOT_PRODUCT


@lru_cache(maxsize=1)
def environment() -> dict[str, str]:
    ort_dist = next((d for d in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino")
                     if version(d) != "not installed"), "onnxruntime")
    # The int8 flags travel with every figure: int8 is about twice as fast with VNNI as without, so a
    # latency ratio only reads against the host that measured it.
    return {**base_environment(), "cpu_int8": int8_features(), "onnxruntime": version(ort_dist),
            "torch": version("torch"), "onnx": version("onnx")}
