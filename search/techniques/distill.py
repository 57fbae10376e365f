"""Knowledge distillation: fine-tune the compressed student against the uncompressed teacher.

Loss = alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * task loss
(Hinton et al.). It runs after factorization and pruning, so it is also how a pruned model
recovers the quality the cut cost. Tasks without labels distill with alpha = 1.

A shallower student (`drop_blocks`, searchable): before training, that many hidden blocks
(Linear -> activation modules -> Linear) are removed. The dropped block's Linear is folded
into the next one (W = W_next W_block, b = W_next b_block + b_next, activation removed), so the
student starts from the teacher's own weights as the nearest shallower network, then learns
back what the lost nonlinearity did. Each drop takes the block whose folding changes the
outputs least on a training batch. A smaller *width* is not offered here: keeping the
highest-scoring neurons is exactly structured pruning, which composes with distillation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import optuna
import torch
from torch import nn

from search.errors import UserError
from search.params import Rule
from search.techniques import anchoring as pick
from search.techniques.base import Anchor, CompressionState, SampleContext, Technique, TechniqueConfig, TechniqueSpace
from search.techniques.factorize import LowRank
from search.techniques.prune import ELEMENTWISE_MODULES, Chain, chains
from search.techniques.registry import register
from search.techniques.training import fine_tune


@dataclass(frozen=True)
class DistillConfig(TechniqueConfig):
    type = "distill"
    epochs: int
    temperature: float = 4.0
    alpha: float = 0.7
    lr: float = 1e-3
    drop_blocks: int = 0  # hidden blocks removed from the student before training

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.drop_blocks < 0:
            raise ValueError(f"distill drop_blocks must be >= 0, but got drop_blocks={self.drop_blocks}")
        if self.epochs < 1:
            raise ValueError(f"distill epochs must be >= 1, but got epochs={self.epochs}")
        if self.temperature <= 0:
            raise ValueError(f"distill temperature must be > 0, but got temperature={self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distill alpha must satisfy 0 <= alpha <= 1, but got alpha={self.alpha}")

    def summary(self) -> str:
        fewer = f" -{self.drop_blocks} blocks" if self.drop_blocks else ""
        return f"distill {self.epochs}ep T={self.temperature:g} a={self.alpha:g}{fewer}"


@register
class Distill(Technique):
    """Fine-tune the compressed student against the uncompressed teacher (optionally shallower first)."""

    name = "distill"
    config_type = DistillConfig
    rules = {
        "epochs": Rule("int", minimum=0, maximum=1000, help="epochs of distillation; 0 skips distillation"),
        "temperature": Rule("float", default=4.0, minimum=0.1, maximum=100.0,
                            help="softens both models' outputs before they are compared (Hinton's T)"),
        "alpha": Rule("float", default=0.7, minimum=0.0, maximum=1.0,
                      help="weight of the teacher's loss; the task loss takes the rest (labelled tasks)"),
        "lr": Rule("float", default=1e-3, minimum=1e-7, maximum=1.0, help="Adam learning rate"),
        "drop_blocks": Rule("int", default=0, minimum=0, maximum=64,
                            help="hidden Linear+activation blocks removed from the student (folded into the next "
                                 "layer)"),
    }
    conditions = {k: "epochs > 0" for k in ("temperature", "alpha", "lr", "drop_blocks")}
    # Distillation recovers what the cuts before it cost, before weights are shared and quantized.
    order = 40
    student = True

    def sample(self, trial: optuna.Trial, space: TechniqueSpace,
               context: SampleContext | None = None) -> DistillConfig | None:
        dims = space.dims
        epochs = int(dims["epochs"].suggest(trial, "distill.epochs"))
        if epochs == 0:
            return None
        # Conditional: temperature, alpha and lr exist only when distillation runs.
        return DistillConfig(
            epochs=epochs,
            temperature=float(dims["temperature"].suggest(trial, "distill.temperature")),
            alpha=float(dims["alpha"].suggest(trial, "distill.alpha")),
            lr=float(dims["lr"].suggest(trial, "distill.lr")),
            drop_blocks=int(dims["drop_blocks"].suggest(trial, "distill.drop_blocks")),
        )

    def anchors(self, space: TechniqueSpace) -> list[Anchor]:
        epochs = pick.mild(space.dims["epochs"])
        return [] if epochs is None else [Anchor(f"distill {epochs} epoch(s)", self._params(space, epochs))]

    def off_params(self, space: TechniqueSpace) -> dict:
        return self._params(space, pick.off_or(space.dims["epochs"], 0, pick.lowest))

    @staticmethod
    def _params(space: TechniqueSpace, epochs: int) -> dict:
        # The space's first listed settings (its author's default), and no block removed: the mildest.
        dims = space.dims
        return {"distill.epochs": epochs, "distill.temperature": pick.first(dims["temperature"]),
                "distill.alpha": pick.first(dims["alpha"]), "distill.lr": pick.first(dims["lr"]),
                "distill.drop_blocks": pick.lowest(dims["drop_blocks"])}

    def apply_model(self, state: CompressionState, config: DistillConfig) -> None:
        assert state.task is not None, "distillation needs the task's training data"
        task = state.task
        if config.drop_blocks:
            model = reduce_depth(state.model, config.drop_blocks, task.train_batches()[0][0], state.notes)
        else:
            model = copy.deepcopy(state.model)
        # The task decides how outputs are compared (KL on logits for classifiers by default).
        fine_tune(state, model, model.parameters(), epochs=config.epochs, lr=config.lr,
                  loss=lambda out, labels, teacher_out: task.distill_loss(out, teacher_out(), labels, config))
        state.model = model


def _foldable(model: nn.Module, chain: Chain) -> bool:
    """A Linear -> activation modules -> Linear block outside any factorized layer."""
    layers = (model.get_submodule(chain.producer), model.get_submodule(chain.consumer))
    if chain.functional or chain.flatten or not all(type(m) is nn.Linear for m in layers):
        return False
    if not all(isinstance(model.get_submodule(n), ELEMENTWISE_MODULES) for n in chain.between):
        return False
    parents = {n.rpartition(".")[0] for n in (chain.producer, chain.consumer)}
    return not any(p and isinstance(model.get_submodule(p), LowRank) for p in parents)


@torch.no_grad()
def fold_block(model: nn.Module, chain: Chain) -> nn.Module:
    """A copy of `model` with `chain.producer` folded into `chain.consumer`; the producer and the
    activations between become Identity, so every other layer keeps its name."""
    model = copy.deepcopy(model)
    block, after = model.get_submodule(chain.producer), model.get_submodule(chain.consumer)
    merged = nn.Linear(block.in_features, after.out_features,
                       bias=block.bias is not None or after.bias is not None).to(after.weight)
    merged.weight.copy_(after.weight @ block.weight)
    if merged.bias is not None:
        bias = after.bias.clone() if after.bias is not None else torch.zeros_like(merged.bias)
        if block.bias is not None:
            bias += after.weight @ block.bias
        merged.bias.copy_(bias)
    for name in (chain.producer, *chain.between):
        model.set_submodule(name, nn.Identity(), strict=True)
    model.set_submodule(chain.consumer, merged, strict=True)
    return model


@torch.no_grad()
def reduce_depth(model: nn.Module, n: int, inputs: tuple[torch.Tensor, ...], notes: dict[str, dict]) -> nn.Module:
    """A copy of `model` with `n` hidden blocks removed, each time the one whose folding moves the
    outputs least on `inputs`."""
    model.eval()
    for done in range(n):
        candidates = [c for c in chains(model) if _foldable(model, c)]
        if not candidates:
            raise UserError(f"distill: drop_blocks={n}, but this model has only {done} hidden block(s) that can be "
                            f"dropped (Linear -> activation modules -> Linear, outside factorized layers)")
        reference = model(*inputs)
        folded = [(float((fold_block(model, c)(*inputs) - reference).pow(2).mean()), i, c)
                  for i, c in enumerate(candidates)]
        _, _, best = min(folded)
        model = fold_block(model, best)
        notes.setdefault(best.producer, {})["distill"] = f"dropped: folded into {best.consumer}"
        notes.setdefault(best.consumer, {})["distill_folded"] = best.producer
    return model

