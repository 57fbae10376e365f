"""What a student learns from: the teacher's outputs and hidden states, computed once and kept on disk.

Hidden-state matching (encoders only): the output of each encoder layer the student kept is
pulled towards the output of the teacher's layer with the same index. `transformer_prune`
turns a removed layer into a pass-through and keeps the others at their indices, so the
student's layer i *is* the teacher's layer i with fewer layers before it: its target is the
representation that layer produced in the full model. The distance is a relative MSE,
||s - t||^2 / ||t||^2 averaged over the kept layers, so layers whose activations differ in
scale weigh the same.

Teacher targets depend only on the teacher's weights and the batch, not on the student or
the epoch: they are computed on first use and stored under the task's cache directory
(one file per batch, keyed by the teacher's weights and the batch's tokens), so every trial
and epoch of a study, and every study on the same teacher, reads them back.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

VERSION = 1  # bump when what a target file holds changes


@dataclass
class Target:
    """The teacher's output for one batch, and its encoder layers' outputs (index -> tensor)."""

    output: torch.Tensor
    hidden: dict[int, torch.Tensor]


def encoder_stack(model: nn.Module) -> nn.ModuleList | None:
    """The model's encoder layers (BERT-style), or None for a model without them."""
    from search.errors import UserError
    from search.techniques.transformer_prune import encoder_layers

    try:
        return encoder_layers(model)[1]
    except UserError:
        return None


def kept_layers(model: nn.Module) -> list[int]:
    """Indices of the encoder layers the model still computes (removed ones are pass-throughs)."""
    from search.techniques.transformer_prune import SkipLayer

    layers = encoder_stack(model)
    return [] if layers is None else [i for i, m in enumerate(layers) if not isinstance(m, SkipLayer)]


@contextmanager
def capture_hidden(model: nn.Module, indices: list[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Within the block, every forward of `model` fills the dict with layer index -> that layer's output."""
    layers = encoder_stack(model)
    seen: dict[int, torch.Tensor] = {}
    handles = []
    for i in indices if layers is not None else []:
        def hook(_module: nn.Module, _args: tuple, output: object, i: int = i) -> None:
            seen[i] = output[0] if isinstance(output, tuple) else output  # type: ignore[index]
        handles.append(layers[i].register_forward_hook(hook))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def relative_mse(student: dict[int, torch.Tensor], teacher: dict[int, torch.Tensor]) -> torch.Tensor:
    """Mean over the layers both have of ||s - t||^2 / ||t||^2."""
    common = [i for i in student if i in teacher]
    if not common:
        raise ValueError("hidden-state matching: the student and the teacher share no encoder layer")
    terms = []
    for i in common:
        t = teacher[i].float()
        terms.append((student[i].float() - t).pow(2).sum() / t.pow(2).sum().clamp(min=1e-12))
    return torch.stack(terms).mean()


def _digest(tensors: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:20]


def teacher_key(teacher: nn.Module) -> str:
    """The teacher's identity: a digest of its weights (so a retrained or other teacher never hits)."""
    return _digest([p for _, p in sorted(teacher.state_dict().items())] + [torch.tensor(VERSION)])


class TeacherTargets:
    """Teacher targets per batch: in memory for this fine-tuning, on disk under `folder` for the study.

    Hidden states are stored in float16 (they are targets, not weights: the rounding is far below
    what the student can match); the output is stored as computed."""

    def __init__(self, teacher: nn.Module, folder: Path | None, hidden: bool):
        self.teacher, self.hidden = teacher.eval(), hidden
        self.layers = kept_layers(teacher) if hidden else []
        self.folder = None if folder is None else folder / teacher_key(teacher)
        self.memory: dict[int, Target] = {}
        self.computed = self.loaded = 0  # how many batches were run through the teacher / read back

    def path(self, inputs: tuple[torch.Tensor, ...]) -> Path | None:
        if self.folder is None:
            return None
        return self.folder / f"{_digest(list(inputs))}{'-h' if self.hidden else ''}.pt"

    def __call__(self, index: int, inputs: tuple[torch.Tensor, ...]) -> Target:
        if index in self.memory:
            return self.memory[index]
        path = self.path(inputs)
        if path is not None and path.exists():
            raw = torch.load(path, weights_only=True)
            target = Target(raw["output"], {int(k): v.float() for k, v in raw["hidden"].items()})
            self.loaded += 1
        else:
            with torch.no_grad(), capture_hidden(self.teacher, self.layers) as seen:
                output = self.teacher(*inputs)
            target = Target(output, {i: h.detach() for i, h in seen.items()})
            self.computed += 1
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")  # a parallel worker never reads half a file
                torch.save({"output": target.output, "hidden": {str(k): v.half() for k, v in target.hidden.items()}},
                           tmp)
                tmp.replace(path)
        # Large hidden states stay on disk between epochs rather than all in memory at once.
        if not target.hidden or self.folder is None:
            self.memory[index] = target
        return target
