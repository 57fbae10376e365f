"""Pruning on real models: unstructured scopes, dependency-aware structured pruning of neurons and
conv channels (through BatchNorm, pooling and flatten), exported and run on ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from torch import nn

from search.errors import SpaceError, UserError
from search.export import export_onnx
from search.space import load_space
from search.tasks.digits import DigitsTask
from search.techniques.factorize import FactorizeConfig
from search.techniques.factorize import factorize_model as factorize
from search.techniques.macs import count_params_macs
from search.techniques.prune import PruneConfig, chains
from search.techniques.prune import prune_model as apply


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> DigitsTask:
    return DigitsTask({"hidden": 128, "epochs": 15, "seed": 0}, tmp_path_factory.mktemp("cache"))


def sparsity(layer: nn.Module) -> float:
    return float((layer.weight == 0).float().mean())


def ort_accuracy(task: DigitsTask, path: Path) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return task.evaluate(lambda feeds: session.run(None, feeds)[0])


def test_unstructured_scope_layer_prunes_every_layer_equally_global_does_not(task: DigitsTask,
                                                                           tmp_path: Path) -> None:
    model = task.build_model()
    per_layer = apply(model, PruneConfig(ratio=0.6, scope="layer"))
    global_ = apply(model, PruneConfig(ratio=0.6, scope="global"))
    linears = [i for i, m in enumerate(model.net) if isinstance(m, nn.Linear)]
    assert all(abs(sparsity(per_layer.net[i]) - 0.6) < 0.01 for i in linears)
    spreads = [sparsity(global_.net[i]) for i in linears]
    assert max(spreads) - min(spreads) > 0.05, spreads  # one threshold: layers lose different shares
    # Dense tensors keep their size: same bytes, fewer compressed bytes; ORT still runs it.
    base = export_onnx(model, task.example_inputs(), task.input_names, tmp_path / "base.onnx")
    pruned = export_onnx(per_layer, task.example_inputs(), task.input_names, tmp_path / "pruned.onnx")
    assert abs(pruned.bytes - base.bytes) < 256
    assert pruned.bytes_compressed() < base.bytes_compressed() * 0.8
    assert ort_accuracy(task, pruned.path) > 0.85


def test_structured_mlp_pruning_shrinks_params_macs_bytes(task: DigitsTask, tmp_path: Path) -> None:
    model = task.build_model()
    pruned = apply(model, PruneConfig(ratio=0.5, structure="structured"))
    assert pruned.net[0].out_features == 64 and pruned.net[2].in_features == 64
    assert pruned.net[2].out_features == 32 and pruned.net[4].in_features == 32
    (p0, m0), (p1, m1) = (count_params_macs(m, task.example_inputs()) for m in (model, pruned))
    assert p1 < p0 * 0.4 and m1 < m0 * 0.4
    base = export_onnx(model, task.example_inputs(), task.input_names, tmp_path / "base.onnx")
    art = export_onnx(pruned, task.example_inputs(), task.input_names, tmp_path / "pruned.onnx")
    assert art.bytes < base.bytes * 0.45
    assert ort_accuracy(task, art.path) > 0.5  # half the neurons gone and no fine-tuning
    # A quarter of the neurons gone costs little even before distillation recovers it.
    mild = apply(model, PruneConfig(ratio=0.25, structure="structured"))
    mild_art = export_onnx(mild, task.example_inputs(), task.input_names, tmp_path / "mild.onnx")
    drop = ort_accuracy(task, base.path) - ort_accuracy(task, mild_art.path)
    assert drop < 0.1, drop


def conv_net(norm: bool) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 8, 3, padding=1)]
    layers += [nn.BatchNorm2d(8)] if norm else []
    layers += [nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
               nn.Linear(8 * 16, 10)]
    return nn.Sequential(*layers).eval()


@torch.no_grad()
@pytest.mark.parametrize("norm", [False, True])
def test_dead_conv_channels_are_removed_exactly_through_bn_pool_and_flatten(norm: bool, tmp_path: Path) -> None:
    net = conv_net(norm)
    first = net[1]
    second = net[4 if norm else 3]
    if norm:
        # A channel whose BatchNorm outputs 0 is dead after the ReLU, whatever the conv computes.
        bn = net[2]
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight[[1, 6]] = 0.0
        bn.bias[[1, 6]] = 0.0
    else:
        first.weight[[1, 6]] = 0.0
        first.bias[[1, 6]] = 0.0
    # Dead channels 3 and 5 of the second conv: removing them must remove the right Linear columns.
    second.weight[[3, 5]] = 0.0
    second.bias[[3, 5]] = -1.0
    found = chains(net)
    assert [(c.producer, c.flatten) for c in found] == [("1", False), (str(4 if norm else 3), True)]

    pruned = apply(net, PruneConfig(ratio=0.25, structure="structured"))  # 8 -> 6 channels in both convs
    assert pruned[1].out_channels == 6 and pruned[-1].in_features == 6 * 16
    x = torch.rand(5, 64)
    torch.testing.assert_close(pruned(x), net(x), atol=1e-5, rtol=1e-5)
    if norm:
        assert pruned[2].num_features == 6
    art = export_onnx(pruned, (x[:1],), ["x"], tmp_path / "p.onnx")
    base = export_onnx(net, (x[:1],), ["x"], tmp_path / "b.onnx")
    assert art.bytes < base.bytes
    session = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    torch.testing.assert_close(torch.from_numpy(session.run(None, {"x": x.numpy()})[0]), net(x), atol=1e-4,
                               rtol=1e-4)
    assert count_params_macs(pruned, (x[:1],))[1] < count_params_macs(net, (x[:1],))[1] * 0.6


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        return self.head(self.b(h) + x)  # b's output also meets the skip connection


def test_only_safe_pairs_are_pruned() -> None:
    # a -> relu -> b is a chain; b feeds an add, so b's outputs stay as they are.
    assert [(c.producer, c.consumer) for c in chains(Residual())] == [("a", "b")]
    pruned = apply(Residual(), PruneConfig(ratio=0.5, structure="structured"))
    assert pruned.a.out_features == 8 and pruned.b.out_features == 16
    # A factorized layer's inner rank is not a set of neurons: it is never pruned.
    mlp = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    low = factorize(mlp, FactorizeConfig(layers=("2",), rank=4))
    assert [(c.producer, c.consumer) for c in chains(low)] == [("0", "2.0"), ("2.1", "4")]
    pruned_low = apply(low, PruneConfig(ratio=0.5, structure="structured"))
    assert pruned_low[2][0].weight.shape == (4, 16) and pruned_low[2][1].weight.shape == (16, 4)


def test_failure_modes_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"0 <= ratio < 1 \(1.0 would remove every weight\), but got ratio=1.0"):
        PruneConfig(ratio=1.0)
    with pytest.raises(ValueError, match="scope must be one of"):
        PruneConfig(ratio=0.5, scope="row")
    with pytest.raises(UserError, match="structured pruning found no layer"):
        apply(nn.Sequential(nn.Linear(4, 2)), PruneConfig(ratio=0.5, structure="structured"))
    space = tmp_path / "s.yaml"
    space.write_text("name: s\ntask: {name: digits, options: {hidden: 16, epochs: 1}}\n"
                     "techniques:\n  prune:\n    ratio: 1.0\n")
    with pytest.raises(SpaceError, match=r"techniques.prune.ratio: must be a number in \[0.0, 1.0\), but got 1.0"):
        load_space(space, tmp_path / "cache")
