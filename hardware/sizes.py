"""Artifact sizes: bytes on disk and bytes after a standard codec."""

from __future__ import annotations

import zlib
from pathlib import Path


def artifact_files(model_path: Path) -> list[Path]:
    """The .onnx file plus its external-data file, if the exporter wrote one."""
    data = model_path.with_name(model_path.name + ".data")
    return [model_path] + ([data] if data.exists() else [])


def artifact_bytes(model_path: Path) -> int:
    return sum(f.stat().st_size for f in artifact_files(model_path))


def compressed_bytes(model_path: Path) -> int:
    """Bytes after zlib (deflate, level 6): where zeros and shared weights show."""
    total = 0
    for path in artifact_files(model_path):
        comp = zlib.compressobj(6)
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                total += len(comp.compress(chunk))
        total += len(comp.flush())
    return total
