"""The environment recorded beside every figure: CPU, cores, library versions."""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from importlib import metadata


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


@lru_cache(maxsize=1)
def environment() -> dict[str, str]:
    ort_dist = next((d for d in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino")
                     if _version(d) != "not installed"), "onnxruntime")
    return {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": _version(ort_dist),
        "torch": _version("torch"),
        "onnx": _version("onnx"),
    }
