"""Knowledge distillation: fine-tune the compressed student against the uncompressed teacher.

Loss = alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * task loss
(Hinton et al.). It runs after factorization and pruning, so it is also how a pruned model
recovers the quality the cut cost. Tasks without labels distill with alpha = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
import torch
from torch import nn

from search.layers import LayerInfo
from search.params import Dimension, Rule
from search.recipe import TechniqueConfig, register_config
from search.techniques.base import Context, Technique


@register_config
@dataclass(frozen=True)
class DistillConfig(TechniqueConfig):
    type = "distill"
    epochs: int
    temperature: float = 4.0
    alpha: float = 0.7
    lr: float = 1e-3

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"distill epochs must be >= 1, but got epochs={self.epochs}")
        if self.temperature <= 0:
            raise ValueError(f"distill temperature must be > 0, but got temperature={self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distill alpha must satisfy 0 <= alpha <= 1, but got alpha={self.alpha}")

    def summary(self) -> str:
        return f"distill {self.epochs}ep T={self.temperature:g} a={self.alpha:g}"


RULES = {
    "epochs": Rule("int", minimum=0, maximum=1000, help="0 skips distillation"),
    "temperature": Rule("float", default=4.0, minimum=0.1, maximum=100.0),
    "alpha": Rule("float", default=0.7, minimum=0.0, maximum=1.0),
    "lr": Rule("float", default=1e-3, minimum=1e-7, maximum=1.0),
}


def sample(trial: optuna.Trial, dims: dict[str, Dimension], layers: list[LayerInfo]) -> DistillConfig | None:
    epochs = int(dims["epochs"].suggest(trial, "distill.epochs"))
    if epochs == 0:
        return None
    # Conditional: temperature, alpha and lr exist only when distillation runs.
    return DistillConfig(
        epochs=epochs,
        temperature=round(float(dims["temperature"].suggest(trial, "distill.temperature")), 6),
        alpha=round(float(dims["alpha"].suggest(trial, "distill.alpha")), 6),
        lr=float(dims["lr"].suggest(trial, "distill.lr")),
    )


def distill_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, labels: torch.Tensor | None,
                 config: DistillConfig, task_loss) -> torch.Tensor:
    t = config.temperature
    soft = nn.functional.kl_div(
        nn.functional.log_softmax(student_out / t, dim=-1), nn.functional.softmax(teacher_out / t, dim=-1),
        reduction="batchmean") * (t * t)
    if labels is None or config.alpha >= 1.0:
        return soft
    return config.alpha * soft + (1.0 - config.alpha) * task_loss(student_out, labels)


def apply(model: nn.Module, config: DistillConfig, ctx: Context) -> nn.Module:
    teacher = ctx.teacher.eval()
    torch.manual_seed(ctx.seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    # Weights pruned to exactly zero stay zero: distillation must not undo unstructured pruning.
    masks = {name: (p != 0) for name, p in model.named_parameters() if ctx.keep_zeros and p.dim() > 1}
    model.train()
    for _ in range(config.epochs):
        for inputs, labels in ctx.task.train_batches():
            with torch.no_grad():
                target = teacher(*inputs)
            loss = distill_loss(model(*inputs), target, labels, config, ctx.task.task_loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if masks:
                with torch.no_grad():
                    for name, p in model.named_parameters():
                        if name in masks:
                            p.mul_(masks[name])
    return model.eval()


TECHNIQUE = Technique(name="distill", stage="torch", rules=RULES, sample=sample, apply=apply, doc=__doc__ or "")
