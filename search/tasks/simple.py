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
evaluation through the backend's own outputs.

A model with several inputs (a transformer's `input_ids` and `attention_mask`) gives each
split's inputs as a dict, name -> array, first axis = samples: the names become the ONNX
input names and `forward` receives the arrays in the dict's order. Integer arrays keep their
dtype (token ids stay int64); float arrays become float32. A Hugging Face model folder works
this way: `load_model` returns `AutoModel.from_pretrained(folder)` wrapped so that `forward`
returns one tensor (examples/hf_folder/ is a complete one).

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

from search.errors import UserError
from search.tasks.base import Feeds, Predict, ReportQuality, Task

# One input array, or several by name (first axis = samples in each).
Inputs = np.ndarray | dict[str, np.ndarray]


@dataclass(frozen=True)
class ArrayData:
    """Inputs (first axis = samples) and labels; labels may be None for a task without them.

    Each x may be one array or a dict name -> array for a model with several inputs."""

    x_train: Inputs
    y_train: np.ndarray | None
    x_eval: Inputs
    y_eval: np.ndarray | None
    batch_size: int = 64  # for distillation, QAT and evaluation
    calibration_samples: int = 256  # taken from the training inputs
    # An optional report split: evaluated only for the final front, never for choosing (see
    # Task.evaluate_report). Without it the study reports the selection split alone.
    x_report: Inputs | None = None
    y_report: np.ndarray | None = None
    # Task.proxy_quality: `score` on every k-th evaluation label (at most this many, at most half)
    # with its rows, so that a hopeless trial stops before the full evaluation; 0 = no proxy.
    proxy_samples: int = 256


def _cast(array: object) -> np.ndarray:
    # Integer (and bool) inputs are ids, masks or indices: a float copy would break an Embedding.
    a = np.asarray(array)
    return a if a.dtype.kind in "biu" else a.astype(np.float32)


def _normalise(x: Inputs, split: str, names: list[str] | None) -> Inputs:
    """`x` cast per array; several arrays must share the first axis and the training split's names."""
    if not isinstance(x, dict):
        return _cast(x)
    if not x:
        raise UserError(f"ArrayData.{split} is an empty dict: give one array or a dict name -> array")
    if names is not None and list(x) != names:
        raise UserError(f"ArrayData.{split} has inputs {list(x)}, but x_train has {names} (same names, same order)")
    out = {str(name): _cast(a) for name, a in x.items()}
    lengths = {name: len(a) for name, a in out.items()}
    if len(set(lengths.values())) > 1:
        raise UserError(f"ArrayData.{split}: every input needs the same number of samples (first axis), "
                        f"but got {lengths}")
    return out


def _length(x: Inputs) -> int:
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


class ModelTask(Task):
    """A Task from `load_model`, `data` and `score` (see the module docstring)."""

    name = "model-task"
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
        x_train = _normalise(d.x_train, "x_train", None)
        names = list(x_train) if isinstance(x_train, dict) else None
        x_report = None if d.x_report is None else _normalise(d.x_report, "x_report", names)
        return ArrayData(x_train, d.y_train, _normalise(d.x_eval, "x_eval", names), d.y_eval, d.batch_size,
                         d.calibration_samples, x_report, d.y_report, d.proxy_samples)

    @property
    def input_names(self) -> list[str]:
        """The dict's keys for several inputs, else "x" (a subclass may set its own name for one input)."""
        x = self.arrays.x_train
        return list(x) if isinstance(x, dict) else ["x"]

    def _feeds(self, x: Inputs, start: int, stop: int) -> Feeds:
        if isinstance(x, dict):
            return {name: a[start:stop] for name, a in x.items()}
        return {self.input_names[0]: x[start:stop]}

    def _tensors(self, x: Inputs, start: int, stop: int) -> tuple[torch.Tensor, ...]:
        """The model's positional arguments for samples start..stop."""
        return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in self._feeds(x, start, stop).values())

    def build_model(self, trained: bool = True) -> nn.Module:
        return self.load_model().eval()

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        return self._tensors(self.arrays.x_train, 0, 1)

    def calibration_feeds(self) -> list[Feeds]:
        d = self.arrays
        n = min(d.calibration_samples, _length(d.x_train))
        return [self._feeds(d.x_train, i, min(i + d.batch_size, n)) for i in range(0, n, d.batch_size)]

    def query_feeds(self, batch_size: int) -> Feeds:
        return self._feeds(self.arrays.x_eval, 0, batch_size)

    def _outputs(self, predict: Predict, x: Inputs) -> np.ndarray:
        bs = self.arrays.batch_size
        return np.concatenate([predict(self._feeds(x, i, i + bs)) for i in range(0, _length(x), bs)])

    def evaluate(self, predict: Predict) -> float:
        return float(self.score(self._outputs(predict, self.arrays.x_eval), self.arrays.y_eval))

    def proxy_quality(self, predict: Predict) -> float | None:
        """`score` on every k-th evaluation label and its rows (at most `proxy_samples`, at most half).

        Labels may cover several rows each (a pair of sentences per gold score: rows 2i and 2i+1 for
        label i); the rows of a label stay together. None without a proxy or when rows and labels
        do not divide evenly."""
        d = self.arrays
        rows = _length(d.x_eval)
        labels = rows if d.y_eval is None else len(d.y_eval)
        if not d.proxy_samples or labels < 2 or rows % labels:
            return None
        per_label = rows // labels
        chosen = np.arange(0, labels, max(2, -(-labels // d.proxy_samples)))
        take = (chosen[:, None] * per_label + np.arange(per_label)).ravel()
        x = {k: a[take] for k, a in d.x_eval.items()} if isinstance(d.x_eval, dict) else d.x_eval[take]
        y = None if d.y_eval is None else np.asarray(d.y_eval)[chosen]
        return float(self.score(self._outputs(predict, x), y))

    def evaluate_report(self, predict: Predict) -> ReportQuality | None:
        d = self.arrays
        if d.x_report is None:
            return None
        return ReportQuality(float(self.score(self._outputs(predict, d.x_report), d.y_report)))

    def train_batches(self) -> list[tuple[tuple[torch.Tensor, ...], torch.Tensor | None]]:
        d = self.arrays
        out = []
        for i in range(0, _length(d.x_train), d.batch_size):
            labels = None if d.y_train is None else torch.as_tensor(np.asarray(d.y_train[i:i + d.batch_size]))
            out.append((self._tensors(d.x_train, i, i + d.batch_size), labels))
        return out
