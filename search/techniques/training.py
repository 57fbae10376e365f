"""The one fine-tuning loop: distillation, quantization-aware training and weight sharing all train here.

What every caller needs, written once: Adam over the parameters the caller chose, the
task's training batches in a seeded order per epoch, a waiting latency measurement on this
host let through before each batch, weights pruned to exactly zero kept at zero, and the
teacher's output for a batch computed once and reused in every epoch (only where the loss
asks for it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from hardware.lock import let_measurements_through
from search.techniques.base import CompressionState

# loss(student output, labels or None, teacher output of this batch (computed on first call)) -> scalar
Loss = Callable[[torch.Tensor, "torch.Tensor | None", Callable[[], torch.Tensor]], torch.Tensor]


def fine_tune(state: CompressionState, model: nn.Module, params: Iterable[nn.Parameter], *, epochs: int,
              lr: float, loss: Loss, forward: Callable[[tuple], torch.Tensor] | None = None,
              batches: list | None = None, targets: Callable[[int, tuple], Any] | None = None,
              schedule: str = "constant") -> None:
    """Train `params` of `model` (in place: pass a model of your own, never the state's teacher).

    `forward(inputs)` computes the output when the parameters do not live in `model`'s
    modules (weight sharing trains centroids through `torch.func.functional_call`).
    `batches` defaults to the task's training batches; `targets(index, inputs)` gives what the
    loss's third argument returns (default: the teacher's output, computed once per batch);
    `schedule` "linear" decays the learning rate linearly to zero over all steps."""
    assert state.task is not None and state.teacher is not None, "fine-tuning needs the task and the teacher"
    teacher = state.teacher.eval()
    torch.manual_seed(state.seed)
    opt = torch.optim.Adam(params, lr=lr)
    # Weights pruned to exactly zero stay zero: fine-tuning must not undo unstructured pruning.
    masks = {n: p != 0 for n, p in model.named_parameters() if state.keep_zeros and p.dim() > 1}
    batches = state.task.train_batches() if batches is None else batches
    steps = max(1, epochs * len(batches))
    decay = torch.optim.lr_scheduler.LambdaLR(opt, (lambda k: 1.0 - k / steps) if schedule == "linear"
                                              else (lambda k: 1.0))
    cached: dict[int, torch.Tensor] = {}

    def teacher_output(i: int, inputs: tuple) -> torch.Tensor:
        if i not in cached:
            with torch.no_grad():
                cached[i] = teacher(*inputs)
        return cached[i]

    targets = teacher_output if targets is None else targets
    order = torch.Generator().manual_seed(state.seed)
    model.train()
    for _ in range(epochs):
        for i in torch.randperm(len(batches), generator=order).tolist():
            let_measurements_through()  # a waiting timing on this host runs now, not after all epochs
            inputs, labels = batches[i]

            def target(i: int = i, inputs: tuple = inputs) -> Any:
                return targets(i, inputs)

            out = forward(inputs) if forward is not None else model(*inputs)
            value = loss(out, labels, target)
            opt.zero_grad()
            value.backward()
            opt.step()
            decay.step()
            if masks:
                with torch.no_grad():
                    for n, p in model.named_parameters():
                        if n in masks:
                            p.mul_(masks[n])
    model.eval()


def task_or_teacher_loss(state: CompressionState) -> Loss:
    """The task's own loss where a batch has labels, else MSE to the teacher's outputs."""
    assert state.task is not None
    task = state.task

    def loss(out: torch.Tensor, labels: torch.Tensor | None, teacher_out: Callable[[], torch.Tensor]) -> torch.Tensor:
        if labels is not None:
            return task.task_loss(out, labels)
        return nn.functional.mse_loss(out, teacher_out())

    return loss
