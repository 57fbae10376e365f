"""The environment recorded beside every figure: CPU, cores, library versions."""

from __future__ import annotations

from functools import lru_cache
from importlib import metadata

from hardware.agent import base_environment, cpu_model

__all__ = ["cpu_model", "environment", "version"]


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


@lru_cache(maxsize=1)
def environment() -> dict[str, str]:
    ort_dist = next((d for d in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino")
                     if version(d) != "not installed"), "onnxruntime")
    return {**base_environment(), "onnxruntime": version(ort_dist), "torch": version("torch"),
            "onnx": version("onnx")}
