"""Low-rank factorization on real layers, a real digits MLP and real ONNX Runtime sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from search.compress import build_artifact
from search.errors import SpaceError, UserError
from search.export import export_onnx
from search.recipe import Recipe
from search.space import load_space
from search.tasks.digits import DigitsTask
from search.techniques.factorize import FactorizeConfig, LowRank
from search.techniques.factorize import factorize_model as apply
from search.techniques.macs import count_params_macs
from search.techniques.quantize import QuantizeConfig


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> DigitsTask:
    return DigitsTask({"hidden": 128, "epochs": 15, "seed": 0}, tmp_path_factory.mktemp("cache"))


def ort_accuracy(task: DigitsTask, path: Path) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return task.evaluate(lambda feeds: session.run(None, feeds)[0])


@torch.no_grad()
def low_rank_(layer: nn.Module, rank: int) -> None:
    """Overwrite a layer's weight with a random matrix of exactly `rank` (as out x in*k)."""
    out = layer.weight.shape[0]
    inner = layer.weight[0].numel()
    layer.weight.copy_((torch.randn(out, rank) @ torch.randn(rank, inner)).reshape(layer.weight.shape) / 10)


def test_exact_rank_factorization_reproduces_linear_and_conv_outputs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Unflatten(1, (3, 8, 8)), nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(256, 64)).eval()
    low_rank_(model[1], 3)
    low_rank_(model[4], 5)
    x = torch.randn(4, 192)
    notes: dict[str, dict] = {}
    factored = apply(model, FactorizeConfig(layers=("1", "4"), energy=0.999999), notes, model)
    assert isinstance(factored[1], LowRank) and isinstance(factored[4], LowRank)
    # Conv: k x k conv to the rank (stride and padding kept) then a 1x1 conv back out.
    assert factored[1][0].weight.shape == (3, 3, 3, 3) and factored[1][0].stride == (2, 2)
    assert factored[1][1].weight.shape == (16, 3, 1, 1) and factored[1][0].bias is None
    assert factored[4][0].weight.shape == (5, 256) and factored[4][1].weight.shape == (64, 5)
    assert notes["1"]["rank"] == 3 and notes["4"]["rank"] == 5
    torch.testing.assert_close(factored(x), model(x), atol=1e-4, rtol=1e-4)
    p0, m0 = count_params_macs(model, (x[:1],))
    p1, m1 = count_params_macs(factored, (x[:1],))
    assert p1 < p0 / 3 and m1 < m0 / 3, (p0, p1, m0, m1)


def test_factorized_mlp_artifact_is_smaller_and_accurate(task: DigitsTask, tmp_path: Path) -> None:
    model = task.build_model()
    layers = tuple(layer.name for layer in task.layers())
    base = export_onnx(model, task.example_inputs(), task.input_names, tmp_path / "base.onnx")
    factored = apply(model, FactorizeConfig(layers=layers, energy=0.9))
    art = export_onnx(factored, task.example_inputs(), task.input_names, tmp_path / "lr.onnx")
    # Both halves of every factorized layer are discoverable and mapped to an ONNX node.
    assert {"net.0.0", "net.0.1", "net.2.0", "net.2.1"} <= set(art.layer_nodes)
    assert art.bytes < base.bytes * 0.7, (art.bytes, base.bytes)
    (p0, m0), (p1, m1) = count_params_macs(model, task.example_inputs()), count_params_macs(
        factored, task.example_inputs())
    assert p1 < p0 * 0.7 and m1 < m0 * 0.7
    base_acc, acc = ort_accuracy(task, base.path), ort_accuracy(task, art.path)
    assert base_acc > 0.9 and acc >= base_acc - 0.08, (base_acc, acc)


def test_layers_where_the_rank_saves_nothing_are_skipped_and_recorded(task: DigitsTask) -> None:
    notes: dict[str, dict] = {}
    out = apply(task.build_model(), FactorizeConfig(layers=("net.0", "net.4"), rank_ratio=1.0), notes,
                task.build_model())
    assert isinstance(out.net[0], nn.Linear) and isinstance(out.net[4], nn.Linear)
    assert notes["net.0"]["factorize"].startswith("skipped: rank 64 of 64 saves no parameters")
    assert notes["net.4"]["factorize"].startswith("skipped")


def test_rank_larger_than_the_layer_is_a_clear_error(task: DigitsTask, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"rank 20 is larger than layer 'net.4''s full rank 10"):
        apply(task.build_model(), FactorizeConfig(layers=("net.4",), rank=20))
    with pytest.raises(ValueError, match="exactly one of"):
        FactorizeConfig(layers=("net.0",), rank=4, energy=0.9)
    with pytest.raises(ValueError, match="0 < rank_ratio <= 1"):
        FactorizeConfig(layers=("net.0",), rank_ratio=1.5)

    space = tmp_path / "s.yaml"
    space.write_text("name: s\ntask: {name: digits, options: {hidden: 16, epochs: 1}}\n"
                     "techniques:\n  factorize:\n    rank: [4, 12]\n")
    with pytest.raises(SpaceError, match=r"factorize.rank: must not exceed .*'net.2' \(weight 8x16\) has full rank 8"):
        load_space(space, tmp_path / "cache")
    space.write_text("name: s\ntask: {name: digits, options: {hidden: 16, epochs: 1}}\n"
                     "techniques:\n  factorize:\n    layers: 'net.0'\n")
    with pytest.raises(SpaceError, match="techniques.factorize: needs one of 'rank_ratio', 'energy', 'rank'"):
        load_space(space, tmp_path / "cache")
    space.write_text("name: s\ntask: {name: digits, options: {hidden: 16, epochs: 1}}\n"
                     "techniques:\n  factorize:\n    layers: 'net.0'\n    rank: 4\n")
    lines = load_space(space, tmp_path / "cache").dimension_lines()
    assert any(line.startswith("factorize.rank: fixed 4") for line in lines)
    assert "factorize layers (1): net.0" in lines


def test_quantized_halves_take_the_bits_sampled_for_the_original_layer(task: DigitsTask, tmp_path: Path) -> None:
    recipe = Recipe((FactorizeConfig(layers=("net.0", "net.2"), rank_ratio=0.25),
                     QuantizeConfig(layer_bits=(("net.0", "int8"), ("net.2", "fp32"), ("net.4", "int8")))))
    artifact = build_artifact(task.build_model(), recipe, task, tmp_path)
    layers = artifact.layers
    assert layers["net.0.0"]["bits"] == layers["net.0.1"]["bits"] == "int8"
    assert layers["net.2.0"]["bits"] == layers["net.2.1"]["bits"] == "fp32"
    assert layers["net.0.0"]["rank"] == 16 and layers["net.0.1"]["shape"] == [128, 16]
    session = ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(artifact.path)).graph.node}
    assert "DequantizeLinear" in ops
    logits = session.run(None, task.query_feeds(4))[0]
    assert logits.shape == (4, 10) and np.isfinite(logits).all()
    assert ort_accuracy(task, artifact.path) > 0.8
