"""Weight sharing (k-means codebooks) on a real digits MLP, stored as codebook + packed indices
and run by ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import optuna
import pytest
import torch
from onnx import numpy_helper

from hardware.profiles import load_profile, make_backend
from search.compress import build_artifact
from search.errors import SpaceError, UserError
from search.recipe import Recipe
from search.space import load_space
from search.tasks.digits import DigitsTask
from search.techniques.base import CompressionState
from search.techniques.prune import PruneConfig, prune_model
from search.techniques.quantize import QuantizeConfig
from search.techniques.share import Share, ShareConfig, kmeans_1d

LAYERS = ("net.0", "net.2", "net.4")


def apply(model: torch.nn.Module, config: ShareConfig, state: CompressionState) -> torch.nn.Module:
    """The model-stage hook on `model`, with the task, teacher and settings of `state`."""
    state.model = model
    Share().apply_model(state, config)
    return state.model


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> DigitsTask:
    return DigitsTask({"hidden": 128, "epochs": 15, "seed": 0}, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def backend():
    return make_backend(load_profile("ort-cpu"))


@pytest.fixture(scope="module")
def baseline(task: DigitsTask, backend, tmp_path_factory: pytest.TempPathFactory):
    artifact = build_artifact(task.build_model(), Recipe(), task, tmp_path_factory.mktemp("fp32"))
    return artifact, run(backend, task, artifact)[0]


def run(backend, task: DigitsTask, artifact) -> tuple[float, dict[str, str]]:
    prepared = backend.prepare(artifact)
    return task.evaluate(prepared.run), prepared.kernels()


def share_all(k: int, epochs: int = 0) -> ShareConfig:
    return ShareConfig(layer_clusters=tuple((layer, k) for layer in LAYERS), finetune_epochs=epochs)


def test_kmeans_error_falls_with_k() -> None:
    values = torch.randn(4000, generator=torch.Generator().manual_seed(0))
    errors = []
    for k in (2, 4, 16, 64):
        centroids, idx = kmeans_1d(values, k)
        assert len(centroids) == k and int(idx.max()) < k
        errors.append(float(((values - centroids[idx]) ** 2).mean()))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.01


def test_shared_layers_store_codebook_and_packed_indices(task, backend, baseline, tmp_path: Path) -> None:
    fp32, fp32_quality = baseline
    artifact = build_artifact(task.build_model(), Recipe((share_all(16),)), task, tmp_path)
    quality, kernels = run(backend, task, artifact)
    assert artifact.bytes < fp32.bytes * 0.35, (artifact.bytes, fp32.bytes)
    assert artifact.bytes_compressed() < fp32.bytes_compressed() * 0.3
    assert fp32_quality - quality <= 0.02, (fp32_quality, quality)
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(artifact.path)).graph.initializer}
    assert "net.0.weight" not in inits
    assert inits["net.0.weight_cb_packed"].dtype == np.uint8
    assert inits["net.0.weight_cb_packed"].size == 128 * 64 // 2  # 4-bit indices for k=16
    assert inits["net.0.weight_cb_table"].size <= 16
    # ORT folds the decoder: the layer runs the ordinary fp32 kernel, and is not reported as quantized.
    assert kernels["net.0"].split(".")[-1] in ("Gemm", "FusedGemm")
    assert artifact.layers["net.0"]["clusters"] == 16 and artifact.layers["net.0"]["bits"] == "fp32"


def test_finetuning_moves_centroids_and_lowers_the_training_loss(task: DigitsTask) -> None:
    model = task.build_model()
    ctx = CompressionState(model, task=task)
    plain, tuned = apply(model, share_all(4), ctx), apply(model, share_all(4, epochs=2), ctx)

    def train_loss(m) -> float:
        with torch.no_grad():
            return float(np.mean([task.task_loss(m(*x), y) for x, y in task.train_batches()]))

    for layer in LAYERS:
        w0, w1 = plain.get_submodule(layer).weight, tuned.get_submodule(layer).weight
        assert len(torch.unique(w1)) <= 4
        assert not torch.equal(torch.unique(w0), torch.unique(w1))
    assert train_loss(tuned) < train_loss(plain)


def test_quantize_wins_on_a_layer_both_touch(task, backend, tmp_path: Path) -> None:
    recipe = Recipe((share_all(16), QuantizeConfig(layer_bits=(("net.0", "int8"), ("net.2", "fp32"),
                                                                ("net.4", "int4")))))
    artifact = build_artifact(task.build_model(), recipe, task, tmp_path)
    _, kernels = run(backend, task, artifact)
    assert kernels["net.0"].endswith("QGemm") and kernels["net.4"].endswith("MatMulNBits")
    names = {i.name for i in onnx.load(str(artifact.path)).graph.initializer}
    assert "net.2.weight_cb_packed" in names
    assert "net.0.weight_cb_packed" not in names and "net.4.weight_cb_packed" not in names
    assert artifact.layers["net.2"]["codebook"] and not artifact.layers["net.0"]["codebook"]
    assert artifact.layers["net.0"]["clusters"] == 16  # its values were still clustered before int8


def test_pruned_zeros_stay_zero(task: DigitsTask) -> None:
    model = task.build_model()
    ctx = CompressionState(model, task=task, keep_zeros=True)
    pruned = prune_model(model, PruneConfig(ratio=0.6, structure="unstructured"))
    zeros = {layer: pruned.get_submodule(layer).weight == 0 for layer in LAYERS}
    shared = apply(pruned, share_all(8, epochs=1), ctx)
    for layer in LAYERS:
        weight = shared.get_submodule(layer).weight
        assert torch.all(weight[zeros[layer]] == 0)
        assert len(torch.unique(weight)) <= 8


def test_k_larger_than_the_weight_count_is_a_clear_error(task: DigitsTask, tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with pytest.raises(UserError, match=r"k=16 is larger than the 6 weights of layer '0'"):
        apply(model, ShareConfig(layer_clusters=(("0", 16),)), CompressionState(model, task=task))
    with pytest.raises(ValueError, match="2 <= k <= 256"):
        ShareConfig(layer_clusters=(("0", 1),))
    space = tmp_path / "s.yaml"
    space.write_text("name: t\ntask:\n  name: digits\n  options:\n    hidden: 4\n"
                     "techniques:\n  share:\n    k: [4, 16]\n")
    with pytest.raises(SpaceError, match=r"techniques\.share\.k: must be <= the weight count.*'net\.2' has 8"):
        load_space(space, tmp_path / "cache")


def test_k_is_sampled_only_when_sharing_is_on(tmp_path: Path) -> None:
    space = tmp_path / "s.yaml"
    space.write_text("name: t\ntask:\n  name: digits\n  options:\n    hidden: 16\n"
                     "techniques:\n  share:\n    enabled: [true, false]\n    k: [4, 16]\n"
                     "    finetune_epochs: [0, 1]\n    per_layer: true\n")
    loaded = load_space(space, tmp_path / "cache")
    tech = loaded.techniques[0]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(10):
        trial = study.ask()
        config = Share().sample(trial, tech)
        seen.add(config is not None)
        k_params = [p for p in trial.params if p.startswith("share.k.")]
        assert len(k_params) == (3 if config is not None else 0)
        assert ("share.finetune_epochs" in trial.params) == (config is not None)
        study.tell(trial, 0.0)
    assert seen == {True, False}
