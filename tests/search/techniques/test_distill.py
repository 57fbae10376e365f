"""Distillation with a shallower student: hidden blocks folded away, then trained against the teacher."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import optuna
import pytest
import torch
from torch import nn

from search.errors import UserError
from search.export import export_onnx
from search.params import Categorical, Range
from search.tasks.digits import DigitsTask
from search.techniques.base import CompressionState, TechniqueSpace
from search.techniques.distill import Distill, DistillConfig, fold_block
from search.techniques.macs import count_params_macs
from search.techniques.prune import chains


def apply(model: nn.Module, config: DistillConfig, state: CompressionState) -> nn.Module:
    """The model-stage hook on `model`, with the task, teacher and notes of `state`."""
    state.model = model
    Distill().apply_model(state, config)
    return state.model


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> DigitsTask:
    return DigitsTask({"hidden": 128, "epochs": 15, "seed": 0}, tmp_path_factory.mktemp("cache"))


def ort_accuracy(task: DigitsTask, path: Path) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return task.evaluate(lambda feeds: session.run(None, feeds)[0])


@torch.no_grad()
def test_folding_a_block_without_a_nonlinearity_is_exact() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Dropout(0.1), nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    (chain, _) = chains(model)
    folded = fold_block(model, chain)
    assert isinstance(folded[0], nn.Identity) and folded[2].weight.shape == (3, 6)
    x = torch.randn(7, 6)
    torch.testing.assert_close(folded(x), model(x))


@pytest.mark.slow
def test_shallower_student_is_smaller_and_distills_back(task: DigitsTask, tmp_path: Path) -> None:
    teacher = task.build_model()
    notes: dict[str, dict] = {}
    ctx = CompressionState(teacher, task=task, notes=notes)
    student = apply(teacher, DistillConfig(epochs=4, drop_blocks=1), ctx)
    linears = [m for m in student.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2  # 64-128-64-10 became 64-?-10
    assert any(v.get("distill", "").startswith("dropped: folded into") for v in notes.values()), notes
    (p0, m0), (p1, m1) = (count_params_macs(m, task.example_inputs()) for m in (teacher, student))
    assert p1 < p0 * 0.8 and m1 < m0 * 0.8, (p0, p1)
    base = export_onnx(teacher, task.example_inputs(), task.input_names, tmp_path / "t.onnx")
    art = export_onnx(student, task.example_inputs(), task.input_names, tmp_path / "s.onnx")
    assert art.bytes < base.bytes * 0.8 and len(art.layer_nodes) == 2
    base_acc, acc = ort_accuracy(task, base.path), ort_accuracy(task, art.path)
    assert acc >= base_acc - 0.05, (base_acc, acc)


def test_dropping_more_blocks_than_exist_is_a_clear_error(task: DigitsTask) -> None:
    ctx = CompressionState(task.build_model(), task=task)
    with pytest.raises(UserError, match=r"drop_blocks=3, but this model has only 2 hidden block\(s\)"):
        apply(task.build_model(), DistillConfig(epochs=1, drop_blocks=3), ctx)
    cnn = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    with pytest.raises(UserError, match="only 0 hidden block"):
        apply(cnn, DistillConfig(epochs=1, drop_blocks=1), CompressionState(cnn, task=task))
    with pytest.raises(ValueError, match="drop_blocks must be >= 0"):
        DistillConfig(epochs=1, drop_blocks=-1)


def test_drop_blocks_is_searched_only_when_distillation_runs() -> None:
    dims = {k: Categorical((r.default,)) for k, r in Distill.rules.items() if r.default is not None}
    dims["epochs"] = Range(0, 3, integer=True)
    dims["drop_blocks"] = Range(0, 1, integer=True)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        config = Distill().sample(trial, TechniqueSpace("distill", dims))
        if config is None:
            assert "distill.drop_blocks" not in trial.params
        else:
            seen.add(config.drop_blocks)
            assert "distill.drop_blocks" in trial.params
        study.tell(trial, 0.0)
    assert seen == {0, 1}


@pytest.mark.slow
def test_shallower_student_composes_with_per_layer_quantization(task: DigitsTask, tmp_path: Path) -> None:
    from search.compress import build_artifact
    from search.recipe import Recipe
    from search.techniques.quantize import QuantizeConfig

    # Bits were sampled for all three layers of the teacher; the folded-away layer simply drops out.
    bits = tuple((layer.name, "int8") for layer in task.layers())
    recipe = Recipe((DistillConfig(epochs=1, drop_blocks=1), QuantizeConfig(layer_bits=bits)))
    artifact = build_artifact(task.build_model(), recipe, task, tmp_path)
    kept = [name for name, info in artifact.layers.items() if "bits" in info]
    dropped = [name for name, info in artifact.layers.items() if "bits" not in info]
    assert len(kept) == 2 and len(dropped) == 1
    assert all(artifact.layers[name]["bits"] == "int8" for name in kept)
    assert artifact.layers[dropped[0]]["distill"].startswith("dropped: folded into")
    assert ort_accuracy(task, artifact.path) > 0.8
