"""ModelTask (search/tasks/simple.py) with one input array and with several named ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from search.compress import build_artifact
from search.errors import UserError
from search.recipe import Recipe
from search.tasks.simple import ArrayData, ModelTask
from search.techniques.distill import DistillConfig
from search.techniques.quantize import QuantizeConfig

_RNG = np.random.default_rng(5)


class Bag(nn.Module):
    """Token ids and a mask -> class logits: embedding mean over the unmasked tokens."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(20, 16)
        self.head = nn.Linear(16, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        return self.head((self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0))


def _tokens(n: int) -> dict[str, np.ndarray]:
    ids = _RNG.integers(1, 20, size=(n, 6))
    mask = (np.arange(6)[None, :] < _RNG.integers(2, 7, size=(n, 1))).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask}


class TwoInputs(ModelTask):
    name = "two-inputs"

    def load_model(self) -> nn.Module:
        return Bag()

    def data(self) -> ArrayData:
        x_train, x_eval, x_report = _tokens(200), _tokens(100), _tokens(50)
        label = lambda x: (x["input_ids"][:, 0] % 2).astype(np.int64)  # noqa: E731
        return ArrayData(x_train, label(x_train), x_eval, label(x_eval), batch_size=32, calibration_samples=64,
                         x_report=x_report, y_report=label(x_report))

    def score(self, outputs: np.ndarray, labels: np.ndarray | None) -> float:
        return float((outputs.argmax(1) == labels).mean())


class OneInput(ModelTask):
    name = "one-input"

    def load_model(self) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    def data(self) -> ArrayData:
        return ArrayData(_RNG.standard_normal((100, 4)), None, _RNG.standard_normal((40, 4)), None, batch_size=16)

    def score(self, outputs: np.ndarray, labels: np.ndarray | None) -> float:
        return float(outputs.mean())


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_one_input_array_keeps_its_name_and_becomes_float32(tmp_path: Path) -> None:
    task = OneInput({}, tmp_path)
    assert task.input_names == ["x"]
    assert task.arrays.x_train.dtype == np.float32  # given float64
    assert [f["x"].shape for f in task.calibration_feeds()] == [(16, 4)] * 6 + [(4, 4)]  # all 100 < 256
    assert task.query_feeds(8)["x"].shape == (8, 4)
    assert [len(inputs) for inputs, labels in task.train_batches()] == [1] * 7
    assert task.example_inputs()[0].shape == (1, 4)
    artifact = build_artifact(task.build_model(), Recipe(), task, tmp_path / "base")
    session = _session(artifact.path)
    assert [i.name for i in session.get_inputs()] == ["x"]
    model = task.build_model()
    with torch.no_grad():
        expected = float(model(torch.from_numpy(task.arrays.x_eval)).mean())
    assert task.evaluate(lambda feeds: session.run(None, feeds)[0]) == pytest.approx(expected, abs=1e-5)


def test_several_named_inputs_export_quantize_distill_and_evaluate(tmp_path: Path) -> None:
    task = TwoInputs({}, tmp_path)
    assert task.input_names == ["input_ids", "attention_mask"]
    assert {a.dtype for a in task.arrays.x_eval.values()} == {np.dtype(np.int64)}  # token ids stay integers
    calibration = task.calibration_feeds()
    assert [sorted(f) for f in calibration] == [["attention_mask", "input_ids"]] * 2
    assert sum(len(f["input_ids"]) for f in calibration) == 64
    np.testing.assert_array_equal(calibration[0]["input_ids"], task.arrays.x_train["input_ids"][:32])  # train only
    assert task.query_feeds(8)["attention_mask"].shape == (8, 6)
    batches = task.train_batches()
    assert len(batches) == 7 and all(len(inputs) == 2 and inputs[0].dtype == torch.int64 for inputs, _ in batches)
    assert batches[0][1].shape == (32,)

    model = task.build_model()
    with torch.no_grad():
        logits = model(*(torch.from_numpy(a) for a in task.arrays.x_eval.values())).numpy()
    expected = task.score(logits, task.arrays.y_eval)

    base = build_artifact(model, Recipe(), task, tmp_path / "base")
    session = _session(base.path)
    assert [(i.name, i.type) for i in session.get_inputs()] == [("input_ids", "tensor(int64)"),
                                                                ("attention_mask", "tensor(int64)")]
    assert session.run(None, task.query_feeds(3))[0].shape == (3, 2)  # a batch other than the export's
    assert task.evaluate(lambda feeds: session.run(None, feeds)[0]) == pytest.approx(expected)
    assert task.evaluate_report(lambda feeds: session.run(None, feeds)[0]).quality > 0.0

    recipe = Recipe((DistillConfig(epochs=1, lr=1e-3), QuantizeConfig(layer_bits=(("head", "int8"),))))
    small = build_artifact(model, recipe, task, tmp_path / "small")
    quality = task.evaluate(lambda feeds: _session(small.path).run(None, feeds)[0])
    assert 0.0 <= quality <= 1.0


@pytest.mark.parametrize(("x_eval", "message"), [
    ({"attention_mask": np.ones((4, 6)), "input_ids": np.ones((4, 6))}, "x_eval has inputs ['attention_mask'"),
    ({"input_ids": np.ones((4, 6)), "attention_mask": np.ones((3, 6))}, "same number of samples"),
    ({}, "empty dict"),
])
def test_mismatched_inputs_are_one_line(tmp_path: Path, x_eval: dict, message: str) -> None:
    class Bad(TwoInputs):
        def data(self) -> ArrayData:
            return ArrayData(_tokens(8), None, x_eval, None)

    with pytest.raises(UserError, match=message.replace("[", r"\[")):
        _ = Bad({}, tmp_path).arrays


class Pairs(ModelTask):
    """Two rows per label (a pair per gold score), like examples/hf_folder: the proxy keeps pairs whole."""

    name = "pairs"

    def load_model(self) -> nn.Module:
        return nn.Identity()

    def data(self) -> ArrayData:
        rows = np.arange(40, dtype=np.float32)[:, None]  # row r holds r
        return ArrayData(rows, None, rows, np.arange(20) * 2.0, proxy_samples=6)

    def score(self, outputs: np.ndarray, labels: np.ndarray | None) -> float:
        assert labels is not None and np.array_equal(outputs[0::2, 0], labels)  # each label with its own pair
        assert np.array_equal(outputs[1::2, 0], labels + 1)
        return float(len(labels))


def test_proxy_scores_every_kth_label_with_its_rows(tmp_path: Path) -> None:
    def identity(feeds: dict) -> np.ndarray:
        return feeds["x"]

    assert Pairs({}, tmp_path).evaluate(identity) == 20.0
    assert Pairs({}, tmp_path).proxy_quality(identity) == 5.0  # labels 0, 4, 8, 12, 16: at most 6
    one = OneInput({}, tmp_path)  # no labels: 40 rows, every other one
    session = _session(build_artifact(one.build_model(), Recipe(), one, tmp_path / "base").path)
    model = one.build_model()
    with torch.no_grad():
        expected = float(model(torch.from_numpy(one.arrays.x_eval[::2])).mean())
    assert one.proxy_quality(lambda feeds: session.run(None, feeds)[0]) == pytest.approx(expected, abs=1e-5)
