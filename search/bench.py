"""`compsearch bench`: latency and size of any ONNX file on a hardware profile.

Without a task there is no quality to measure, so inputs are random data shaped from the
model's declared inputs (dynamic dimensions: the profile's batch size, else 1).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from hardware.environment import environment
from hardware.lock import measurement_lock
from hardware.profiles import load_profile, make_backend
from hardware.sizes import artifact_bytes, compressed_bytes
from hardware.timing import time_queries
from search.errors import UserError

_DTYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32,
           onnx.TensorProto.FLOAT16: np.float16}


def random_feeds(model: onnx.ModelProto, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    initializers = {i.name for i in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        tensor = inp.type.tensor_type
        dtype = _DTYPES.get(tensor.elem_type)
        if dtype is None:
            raise UserError(f"input {inp.name!r} has an element type bench cannot generate ({tensor.elem_type})")
        shape = [d.dim_value if d.dim_value > 0 else (batch_size if i == 0 else 1)
                 for i, d in enumerate(tensor.shape.dim)]
        feeds[inp.name] = (rng.integers(0, 100, shape) if np.issubdtype(dtype, np.integer)
                           else rng.standard_normal(shape)).astype(dtype)
    return feeds


def bench_artifact(path: Path, profile_name: str) -> dict[str, Any]:
    if not path.exists():
        raise UserError(f"{path}: no such file")
    profile = load_profile(profile_name, where="--hardware", key="profile")
    backend = make_backend(profile)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{path}: not an ONNX model ({type(exc).__name__})") from None
    feeds = random_feeds(model, profile.batch_size)
    t0 = time.perf_counter()
    prepared = backend.prepare(path, {})
    init_s = time.perf_counter() - t0
    with measurement_lock():
        latency = time_queries(lambda: prepared.run(feeds), profile.measure)
    return {"artifact": str(path), "profile": profile.name, "session_init_s": init_s, "latency": asdict(latency),
            "bytes": artifact_bytes(path), "bytes_compressed": compressed_bytes(path),
            "environment": {**environment(), "provider": profile.provider, "threads": str(profile.threads)}}
