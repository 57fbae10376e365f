"""The technique contract.

A technique is a config dataclass (in `search.recipe`'s registry) plus:
  - `rules`: the YAML keys it accepts under `techniques.<name>` and what each allows,
  - `sample(trial, dims, layers)`: build its config from an Optuna trial, or None to skip it,
  - `stage`: "torch" (transforms an nn.Module before export: `apply(model, config, ctx)`)
    or "onnx" (transforms the exported artifact), and the apply function for that stage.
A technique never sees Optuna beyond `sample`, and never sees MLflow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from search.params import Rule

if TYPE_CHECKING:
    from torch import nn

    from search.tasks.base import Task

# The fixed pipeline order; a recipe that leaves a technique out skips it.
# Whole-structure cuts first (transformer_prune removes layers, neurons and heads), then the
# per-matrix ones on what is left; distillation recovers quality before weights are shared and quantized.
ORDER = ("transformer_prune", "factorize", "prune", "distill", "share", "quantize")


@dataclass(frozen=True)
class Technique:
    name: str
    stage: str
    rules: dict[str, Rule]
    sample: Callable[..., Any]
    apply: Callable[..., Any]
    # Keys that are settings rather than searched dimensions (layer patterns).
    settings: dict[str, Rule] = field(default_factory=dict)
    doc: str = ""
    # Optional space-time check beyond the per-key rules: check(file, key, dims, matched_layers)
    # raises SpaceError (e.g. a fixed rank larger than a matched layer).
    check: Callable[..., None] | None = None
    # Conditional keys: key -> when it is sampled ("mode is qat"); `validate` prints it.
    conditions: dict[str, str] = field(default_factory=dict)



@dataclass
class Context:
    """What torch-stage techniques may use besides the model: the uncompressed teacher and the
    task's training data (for distillation and fine-tuning)."""

    teacher: nn.Module
    task: Task
    seed: int = 0
    keep_zeros: bool = False  # set when unstructured pruning ran: fine-tuning keeps its zeros
    # What techniques did to each layer (keyed by the layer's name when the technique ran),
    # merged into the artifact's per-layer record (layers.json).
    layer_notes: dict[str, dict] = field(default_factory=dict)


def task_or_teacher_loss(ctx: Context, teacher: nn.Module, inputs: tuple, labels: object, out: object) -> object:
    """Fine-tuning loss: the task's own loss where it has labels, else MSE to the teacher's outputs."""
    import torch

    if labels is not None:
        return ctx.task.task_loss(out, labels)
    with torch.no_grad():
        target = teacher(*inputs)
    return torch.nn.functional.mse_loss(out, target)
