"""The Task contract: a model, its data, and how its quality is measured.

A task builds its (trained) PyTorch model, gives example inputs for export, calibration
inputs for quantization, and evaluates quality through a `predict` function that a backend
supplies. Quality is therefore always computed from the backend's own outputs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from search.layers import LayerInfo, discover_layers
from search.params import Rule

if TYPE_CHECKING:
    from hardware.artifact import Artifact
    from search.fusion import FusionSpec

Feeds = dict[str, np.ndarray]
Predict = Callable[[Feeds], np.ndarray]


@dataclass(frozen=True)
class ReportQuality:
    """Quality on a task's report split: the main figure and, where the split has several files
    or subsets, each one's (e.g. {"sts2016-plagiarism": 81.2})."""

    quality: float
    per_file: dict[str, float] = field(default_factory=dict)


class Task(ABC):
    """Subclasses set the class attributes and implement the abstract methods.

    `options` holds the values of the task's OPTIONS rules, parsed from the space's
    `task.options`; `cache_dir` is where trained models may be cached.
    """

    name: ClassVar[str]
    quality_name: ClassVar[str] = "accuracy"
    OPTIONS: ClassVar[dict[str, Rule]] = {}
    input_names: list[str] = ["x"]
    output_names: list[str] = ["output"]

    def __init__(self, options: dict[str, Any], cache_dir: Path):
        self.options = options
        self.cache_dir = cache_dir

    @abstractmethod
    def build_model(self, trained: bool = True) -> nn.Module:
        """The uncompressed model; trained (or loaded from cache) unless `trained=False`."""

    @abstractmethod
    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        """Inputs used to trace the model for export (batch of 1)."""

    @abstractmethod
    def calibration_feeds(self) -> list[Feeds]:
        """Batches from the calibration split, never from the evaluation split."""

    @abstractmethod
    def query_feeds(self, batch_size: int) -> Feeds:
        """One query of `batch_size` samples for latency measurement."""

    @abstractmethod
    def evaluate(self, predict: Predict) -> float:
        """Quality (higher is better) of `predict` on the evaluation split."""

    @abstractmethod
    def train_batches(self) -> list[tuple[tuple[torch.Tensor, ...], torch.Tensor | None]]:
        """(inputs, labels or None) batches from the training split, for distillation and QAT."""

    def task_loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The supervised loss used beside distillation when the task has labels."""
        return nn.functional.cross_entropy(outputs, labels)

    def distill_loss(self, student_out: torch.Tensor, teacher_out: torch.Tensor, labels: torch.Tensor | None,
                     config: Any) -> torch.Tensor:
        """The loss that pulls the student towards the teacher during distillation.

        The default suits classifiers (KL on temperature-softened logits plus the task loss);
        a task whose output is not a logit vector (an embedding, a regression) overrides it.
        """
        return kd_loss(student_out, teacher_out, labels, config.temperature, config.alpha, self.task_loss)

    def proxy_quality(self, predict: Predict) -> float | None:
        """A cheap estimate of `evaluate(predict)`: the same metric on a few hundred samples of the
        selection split, or None when the task has none (the default; its trials are then never
        rejected early). Scored before the full evaluation and the latency measurement, so a trial
        that clearly misses the quality constraint stops there (search/rejection.py). `predict` is
        only called when the task has a proxy."""
        return None

    def evaluate_report(self, predict: Predict) -> ReportQuality | None:
        """Quality of `predict` on the report split, or None when the task has none (the default).

        The report split is never used for choosing: not for the quality constraint, the
        sampler, calibration or distillation. It is evaluated once, for the final front and the
        baseline, with the backend that measured quality, to show how much of a front's quality
        holds on data it was not selected on (search/study/report_split.py)."""
        return None

    def cached_fp32_export(self) -> Artifact | None:
        """An ONNX export of `build_model()` (with its layer -> node map) kept from an earlier run,
        or None (then the pipeline exports). Used only for recipes whose torch stage leaves the
        model as built."""
        return None

    def fusion(self, model: nn.Module) -> FusionSpec | None:
        """How `model` (this task's model, possibly compressed) fuses after export, or None when it does
        not: a transformer returns a FusionSpec (ONNX Runtime's optimizer model type, its encoder
        layers), and every candidate and the baseline are then exported and fused by search/fusion/."""
        return None

    def extra_metrics(self, predict: Predict) -> dict[str, float]:
        """Further quality figures beside the main one (per-subset scores, fidelity), logged as is.

        Called right after `evaluate` with the same `predict`, so a task may reuse the outputs
        it computed there instead of running the model twice.
        """
        return {}

    def dynamic_shapes(self) -> tuple | None:
        """Dynamic dimensions for export; None means the batch dimension of every input."""
        return None

    def layers(self) -> list[LayerInfo]:
        return discover_layers(self.build_model(trained=False))

    def check_data(self) -> None:  # noqa: B027 - an optional hook: by default there is nothing to check
        """Raise UserError if the task's data cannot be read (a missing folder, no files).

        Called when the space is loaded, so `validate` and `run` stop with one line before
        any study or run is written, not at the baseline trial."""

    def describe(self) -> str:
        return f"{self.name} ({', '.join(f'{k}={v}' for k, v in self.options.items())})"


def kd_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, labels: torch.Tensor | None, temperature: float,
            alpha: float, task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Hinton's distillation loss: alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * the task loss."""
    t = temperature
    soft = nn.functional.kl_div(
        nn.functional.log_softmax(student_out / t, dim=-1), nn.functional.softmax(teacher_out / t, dim=-1),
        reduction="batchmean") * (t * t)
    if labels is None or alpha >= 1.0:
        return soft
    return alpha * soft + (1.0 - alpha) * task_loss(student_out, labels)
