"""The analytic roofline estimate: figures that move the right way, labelled as estimates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hardware.artifact import Artifact
from hardware.estimate import Roofline, layer_precision, output_positions
from hardware.profiles import load_profile, make_backend
from search.errors import SpaceError

SPEC = {"peak_tops": {"int8": 8, "fp16": 2}, "memory_bandwidth_gbs": 10, "compute_efficiency": 1,
        "memory_efficiency": 1, "float_precision": "fp16"}


def layer(bits: str, out: int = 1024, inp: int = 1024, sparsity: float = 0.0) -> dict:
    return {"kind": "linear", "shape": [out, inp], "params": out * inp, "sparsity": sparsity, "bits": bits}


def test_precision_labels() -> None:
    assert layer_precision("int8") == ("int8", 8)
    assert layer_precision("int4") == ("int4", 4)
    assert layer_precision("fp16") == ("fp16", 16)
    assert layer_precision("fp32") == ("fp32", 32)
    assert layer_precision("int2") == ("int4", 2) and layer_precision("binary") == ("int4", 1)


def test_batch_one_linear_is_memory_bound_and_int8_moves_a_quarter_of_the_bytes() -> None:
    roof = Roofline(SPEC, "spec")
    fp32 = roof.estimate({"a": layer("fp32")}, {"a": 1})
    int8 = roof.estimate({"a": layer("int8")}, {"a": 1})
    assert fp32["memory_est_ms"] > fp32["compute_est_ms"]  # 4 MB of weights at 10 GB/s vs 2 MFLOP at 2 TFLOP/s
    assert fp32["latency_est_ms"] == pytest.approx(fp32["memory_est_ms"])
    assert int8["latency_est_ms"] == pytest.approx(fp32["latency_est_ms"] / 4, rel=0.01)
    assert all("est" in key for key in fp32)


def test_large_batch_turns_compute_bound_and_a_missing_precision_runs_wider() -> None:
    roof = Roofline(SPEC, "spec")
    big = roof.estimate({"a": layer("fp32")}, {"a": 4096})
    assert big["compute_est_ms"] > big["memory_est_ms"]
    assert roof.runs_at("fp32") == "fp16" and roof.runs_at("int4") == "int8"
    int4 = roof.estimate({"a": layer("int4")}, {"a": 4096})
    int8 = roof.estimate({"a": layer("int8")}, {"a": 4096})
    assert int4["compute_est_ms"] == pytest.approx(int8["compute_est_ms"])  # no int4 units: int8 rate
    assert int4["bytes_moved_est"] < int8["bytes_moved_est"]  # but half the weight bytes


def test_zeros_are_skipped_only_when_the_target_says_so() -> None:
    sparse = {"a": layer("fp32", sparsity=0.5)}
    assert Roofline(SPEC, "s").estimate(sparse, {"a": 1})["macs_est"] == 1024 * 1024
    assert Roofline({**SPEC, "skips_zeros": True}, "s").estimate(sparse, {"a": 1})["macs_est"] == 1024 * 512


def test_bad_spec_is_one_line_with_the_key() -> None:
    with pytest.raises(SpaceError, match=r"spec\.peak_tops"):
        Roofline({"peak_tops": {"fp64": 1}, "memory_bandwidth_gbs": 1}, "x.yaml")
    with pytest.raises(SpaceError, match=r"spec\.bandwith"):
        Roofline({**SPEC, "bandwith": 3}, "x.yaml")


def test_output_positions_follow_batch_and_shape_inference(tmp_path: Path, mlp_writer) -> None:
    layers = mlp_writer(tmp_path / "model.onnx")
    assert output_positions(tmp_path / "model.onnx", layers, batch=8, seq=0) == {"net.0": 8, "net.2": 8}
    assert output_positions(tmp_path / "model.onnx", layers, 8, 0, {"x": (3, 16)}) == {"net.0": 3, "net.2": 3}


def test_estimate_backend_measures_quality_on_the_cpu_and_estimates_latency(mlp: Path, fast_profiles: Path) -> None:
    backend = make_backend(load_profile("fast-npu"))
    artifact = Artifact(mlp, layers=json.loads((mlp.parent / "layers.json").read_text()))  # what a search hands it
    m = backend.measure(artifact, lambda run: float(run({"x": np.ones((2, 16), np.float32)}).shape[0]), {})
    metrics = m.metrics()
    assert m.latency is None and "latency_p50_ms" not in metrics  # nothing pretends to be measured
    assert metrics["quality"] == 2.0 and "onnxruntime CPU" in m.environment["quality_from"]
    layers = json.loads((mlp.parent / "layers.json").read_text())
    assert metrics["macs_est"] == sum(info["params"] for info in layers.values())
    assert metrics["latency_est_ms"] > 0.2  # the NPU profile's 200 us fixed overhead


def test_an_estimated_profile_cannot_be_the_objective(tmp_path: Path) -> None:
    from search.space import validate

    raw = {"name": "x", "task": {"name": "digits", "options": {"hidden": 16}},
           "hardware": {"profiles": ["ort-cpu", "est-a100"], "objective": "est-a100"}}
    with pytest.raises(SpaceError, match="hardware.objective: must be a measured profile"):
        validate(raw, "x.yaml", tmp_path)
