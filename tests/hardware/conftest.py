"""Shared fixtures: a tiny real ONNX model, fast profiles, a private host lock."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

FAST = {"warmup_s": 0.02, "warmup_queries": 5, "min_queries": 50, "min_duration_s": 0.1, "max_duration_s": 5,
        "max_attempts": 1, "remeasure_factor": 2}


def write_mlp(path: Path, sizes: tuple[int, ...] = (16, 32, 4), seed: int = 0) -> dict[str, dict]:
    """Gemm-Relu-...-Gemm with a dynamic batch; returns its layers.json description."""
    rng = np.random.default_rng(seed)
    nodes, inits, layers = [], [], {}
    x = "x"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
        w, bias = rng.standard_normal((b, a)).astype(np.float32), np.zeros(b, np.float32)
        inits += [numpy_helper.from_array(w, f"net.{2 * i}.weight"), numpy_helper.from_array(bias, f"net.{2 * i}.bias")]
        out = f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, f"net.{2 * i}.weight", f"net.{2 * i}.bias"], [out], name=f"gemm{i}",
                                      transB=1))
        layers[f"net.{2 * i}"] = {"kind": "linear", "shape": [b, a], "params": a * b, "sparsity": 0.0, "bits": "fp32",
                                  "node": f"gemm{i}"}
        x = out
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
    graph = helper.make_graph(nodes, "mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", sizes[0]])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", sizes[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.save(model, str(path))
    (path.parent / "layers.json").write_text(json.dumps(layers))
    return layers


@pytest.fixture()
def mlp_writer():
    """`write_mlp` itself, for tests that need several models or their layers.json."""
    return write_mlp


@pytest.fixture()
def mlp(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    write_mlp(path)
    return path


@pytest.fixture(autouse=True)
def private_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tests take their own lock file: never wait behind another checkout's measurements."""
    path = tmp_path / "measure.lock"
    monkeypatch.setenv("COMPSEARCH_MEASURE_LOCK", str(path))
    return path


@pytest.fixture()
def fast_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """fast-cpu (1 thread), fast-cpu-2t and fast-npu (estimate) with short timings."""
    import yaml

    d = tmp_path / "profiles"
    d.mkdir()
    for name, threads in (("fast-cpu", 1), ("fast-cpu-2t", 2)):
        (d / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "backend": "onnxruntime", "threads": threads,
                                                        "measure": FAST}))
    npu = yaml.safe_load((Path(__file__).parents[2] / "hardware/profiles/est-edge-npu.yaml").read_text())
    npu["name"] = "fast-npu"
    (d / "fast-npu.yaml").write_text(yaml.safe_dump(npu))
    (d / "fast-torch.yaml").write_text(yaml.safe_dump({"name": "fast-torch", "backend": "torch", "threads": 1,
                                                       "measure": FAST}))
    (d / "fast-torch-bf16.yaml").write_text(yaml.safe_dump({"name": "fast-torch-bf16", "backend": "torch",
                                                            "precision": "bf16", "threads": 1, "measure": FAST}))
    monkeypatch.setenv("COMPSEARCH_PROFILE_PATH", str(d))
    return d
