"""The spine's compression path on a real model and a real ONNX Runtime session."""

from __future__ import annotations

from pathlib import Path

import pytest

from hardware.profiles import load_profile, make_backend
from search.compress import build_artifact
from search.recipe import Recipe
from search.tasks.digits import DigitsTask
from search.techniques.prune import PruneConfig
from search.techniques.quantize import QuantizeConfig


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> DigitsTask:
    return DigitsTask({"hidden": 128, "epochs": 15, "seed": 0}, tmp_path_factory.mktemp("cache"))


def measure(task: DigitsTask, artifact):
    backend = make_backend(load_profile("ort-cpu"))
    return backend.measure(artifact, task.evaluate, task.query_feeds(1))


def test_int8_layers_shrink_the_artifact_and_run_integer_kernels(task: DigitsTask, tmp_path: Path) -> None:
    model = task.build_model()
    fp32 = build_artifact(model, Recipe(), task, tmp_path / "fp32")
    layers = [info.name for info in task.layers()]
    all_int8 = Recipe((QuantizeConfig(layer_bits=tuple((name, "int8") for name in layers)),))
    int8 = build_artifact(model, all_int8, task, tmp_path / "int8")

    m32, m8 = measure(task, fp32), measure(task, int8)
    assert int8.bytes < fp32.bytes / 2.2, (int8.bytes, fp32.bytes)  # 4x on weights, less on biases
    assert m32.quality > 0.9
    assert abs(m32.quality - m8.quality) <= 0.03
    # Every int8 layer really ran as an integer kernel after ORT's QDQ fusion.
    assert all(op.endswith(("QGemm", "MatMulInteger", "QLinearMatMul")) for op in m8.kernels.values()), m8.kernels
    assert not any("QGemm" in op for op in m32.kernels.values())
    assert m8.latency is not None and m8.latency.queries >= 100 and m8.latency.p50_ms > 0


def test_per_layer_choice_quantizes_only_the_chosen_layer(task: DigitsTask, tmp_path: Path) -> None:
    recipe = Recipe((QuantizeConfig(layer_bits=(("net.0", "int8"), ("net.2", "fp32"), ("net.4", "fp32"))),))
    artifact = build_artifact(task.build_model(), recipe, task, tmp_path)
    kernels = measure(task, artifact).kernels
    assert kernels["net.0"].endswith("QGemm")
    assert not kernels["net.2"].endswith("QGemm") and not kernels["net.4"].endswith("QGemm")
    assert artifact.layers["net.0"]["bits"] == "int8" and artifact.layers["net.2"]["bits"] == "fp32"


def test_structured_pruning_shrinks_layers_and_bytes(task: DigitsTask, tmp_path: Path) -> None:
    model = task.build_model()
    fp32 = build_artifact(model, Recipe(), task, tmp_path / "a")
    pruned = build_artifact(model, Recipe((PruneConfig(ratio=0.5, structure="structured"),)), task, tmp_path / "b")
    assert pruned.layers["net.0"]["shape"] == [64, 64]  # 128 hidden neurons -> 64
    assert pruned.layers["net.2"]["shape"][1] == 64  # the consumer's inputs shrank with it
    assert pruned.bytes < fp32.bytes * 0.6


def test_unstructured_pruning_keeps_bytes_but_compresses(task: DigitsTask, tmp_path: Path) -> None:
    model = task.build_model()
    fp32 = build_artifact(model, Recipe(), task, tmp_path / "a")
    sparse = build_artifact(model, Recipe((PruneConfig(ratio=0.8, structure="unstructured"),)), task, tmp_path / "b")
    # Zeros are stored densely: the file is as large, only a codec sees the gain.
    assert abs(sparse.bytes - fp32.bytes) < 1024
    assert sparse.bytes_compressed() < fp32.bytes_compressed() * 0.5
    assert sparse.layers["net.0"]["sparsity"] > 0.5
