"""The shortest way to bring your own model: a trained PyTorch model, arrays, and a score.

    from search.tasks.simple import ArrayData, ModelTask

    class MyTask(ModelTask):
        quality_name = "accuracy"

        def load_model(self):                      # your trained model, e.g. from a checkpoint
            net = MyNet(); net.load_state_dict(torch.load("my_net.pt")); return net

        def data(self):                            # numpy arrays, loaded once
            return ArrayData(x_train, y_train, x_eval, y_eval)

        def score(self, outputs, labels):          # higher is better
            return float((outputs.argmax(1) == labels).mean())

Everything else a Task needs follows from these: export and latency inputs, calibration
batches (from the training inputs, never the evaluation ones), distillation batches, and the
evaluation through the backend's own outputs. It covers models with one input tensor; a
model with several inputs (a transformer's ids and mask) implements `Task` itself, as
`search/tasks/minilm_sts.py` does. A Hugging Face model folder works the same way:
`load_model` returns `AutoModelForSequenceClassification.from_pretrained(folder)` wrapped
so that `forward` returns the logits tensor.

compsearch searches techniques that act on the PyTorch weights (pruning, distillation,
factorization, sharing, quantization after export), so it needs the model in PyTorch; an
ONNX file alone can be measured with `compsearch bench`, not searched.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import nn

from search.tasks.base import Feeds, Predict, ReportQuality, Task


@dataclass(frozen=True)
class ArrayData:
    """Inputs (first axis = samples) and labels; labels may be None for a task without them."""

    x_train: np.ndarray
    y_train: np.ndarray | None
    x_eval: np.ndarray
    y_eval: np.ndarray | None
    batch_size: int = 64  # for distillation, QAT and evaluation
    calibration_samples: int = 256  # taken from the training inputs
    # An optional report split: evaluated only for the final front, never for choosing (see
    # Task.evaluate_report). Without it the study reports the selection split alone.
    x_report: np.ndarray | None = None
    y_report: np.ndarray | None = None


class ModelTask(Task):
    """A Task from `load_model`, `data` and `score` (see the module docstring)."""

    name = "model-task"
    input_names = ["x"]
    output_names = ["output"]

    @abstractmethod
    def load_model(self) -> nn.Module:
        """The trained model, in eval mode or not (it is put there)."""

    @abstractmethod
    def data(self) -> ArrayData:
        """The arrays; called once per process."""

    @abstractmethod
    def score(self, outputs: np.ndarray, labels: np.ndarray | None) -> float:
        """Quality of `outputs` (the backend's, for `x_eval`) against `y_eval`; higher is better."""

    @cached_property
    def arrays(self) -> ArrayData:
        d = self.data()
        x_report = None if d.x_report is None else np.asarray(d.x_report, dtype=np.float32)
        return ArrayData(np.asarray(d.x_train, dtype=np.float32), d.y_train, np.asarray(d.x_eval, dtype=np.float32),
                         d.y_eval, d.batch_size, d.calibration_samples, x_report, d.y_report)

    def build_model(self, trained: bool = True) -> nn.Module:
        return self.load_model().eval()

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        return (torch.from_numpy(self.arrays.x_train[:1]),)

    def calibration_feeds(self) -> list[Feeds]:
        d = self.arrays
        x = d.x_train[:d.calibration_samples]
        return [{self.input_names[0]: x[i:i + d.batch_size]} for i in range(0, len(x), d.batch_size)]

    def query_feeds(self, batch_size: int) -> Feeds:
        return {self.input_names[0]: self.arrays.x_eval[:batch_size]}

    def _outputs(self, predict: Predict, x: np.ndarray) -> np.ndarray:
        bs = self.arrays.batch_size
        return np.concatenate([predict({self.input_names[0]: x[i:i + bs]}) for i in range(0, len(x), bs)])

    def evaluate(self, predict: Predict) -> float:
        return float(self.score(self._outputs(predict, self.arrays.x_eval), self.arrays.y_eval))

    def evaluate_report(self, predict: Predict) -> ReportQuality | None:
        d = self.arrays
        if d.x_report is None:
            return None
        return ReportQuality(float(self.score(self._outputs(predict, d.x_report), d.y_report)))

    def train_batches(self) -> list[tuple[tuple[torch.Tensor, ...], torch.Tensor | None]]:
        d = self.arrays
        out = []
        for i in range(0, len(d.x_train), d.batch_size):
            labels = None if d.y_train is None else torch.as_tensor(np.asarray(d.y_train[i:i + d.batch_size]))
            out.append(((torch.from_numpy(d.x_train[i:i + d.batch_size]),), labels))
        return out
